'use strict'
// The connection gate (issue 13): the httpServer adapter at a limit (clients wait in the kernel
// backlog, never refused or reset), the limit changed at run time, lame-duck with a full gate
// (in a child process, with a real SIGTERM), the JS Gate API, counts over 10,000 connections.
// Real sockets on 127.0.0.1. Every wait is on an event or a condition, with a generous limit.
const { test } = require('node:test')
const assert = require('node:assert/strict')
const http = require('node:http')
const net = require('node:net')
const fs = require('node:fs')
const lameduck = require('..')
const { App, LIMIT } = require('./helpers')

/** Resolves once `done()` is true (checked on every turn of the event loop, 5 ms apart). */
async function until(what, done, limit = LIMIT) {
  const deadline = Date.now() + limit
  while (!done()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`)
    await new Promise((resolve) => setTimeout(resolve, 5))
  }
}

/** An httpServer adapter run in this process with `limit`; stopped (and its clients closed) after the test. */
async function serve(t, limit, handler = (req, res) => res.end('hi\n')) {
  const server = http.createServer(handler)
  const adapter = lameduck.httpServer(server, { port: 0, host: '127.0.0.1' }, { idleGrace: 100 })
  const runner = new lameduck.Runner(adapter, { maxConnections: limit, logger: false, signals: [], upgradeSignals: [], period: 10000 })
  const running = runner.run()
  const clients = []
  // What the kernel-visible accept did: connections Node made a socket for, at most at once.
  const seen = { open: 0, most: 0 }
  server.on('connection', (socket) => {
    seen.open++
    seen.most = Math.max(seen.most, seen.open)
    socket.once('close', () => seen.open--)
  })
  t.after(async () => {
    for (const c of clients) c.socket.destroy()
    runner.stop()
    await running.catch(() => {})
  })
  await runner.ready()
  const port = server.address().port
  return { runner, server, port, running, seen, connect: () => clients[clients.push(client(port)) - 1] }
}

/** A raw HTTP/1.1 client that sends one keep-alive request at once and records what happens. */
function client(port) {
  const c = { data: '', error: null, closed: false, socket: net.connect(port, '127.0.0.1') }
  c.socket.setEncoding('utf8')
  c.socket.write('GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n')
  c.socket.on('data', (d) => (c.data += d))
  c.socket.on('error', (err) => (c.error = err))
  c.socket.on('close', () => (c.closed = true))
  c.responded = () => /\r\n\r\nhi\n$/.test(c.data) || /^HTTP\/1.1 200/.test(c.data)
  return c
}

const responded = (clients) => clients.filter((c) => c.responded()).length

/**
 * The length of the accept queue of the socket listening on 127.0.0.1:`port`, as the kernel
 * reports it (/proc/net/tcp: rx_queue of a LISTEN socket is its count of connections that
 * completed the handshake and were not accepted yet).
 */
function acceptQueue(port) {
  const local = `0100007F:${port.toString(16).toUpperCase().padStart(4, '0')}`
  for (const line of fs.readFileSync('/proc/net/tcp', 'utf8').split('\n').slice(1)) {
    const f = line.trim().split(/\s+/)
    if (f[1] === local && f[3] === '0A') return parseInt(f[4].split(':')[1], 16)
  }
  throw new Error(`no listening socket on 127.0.0.1:${port}`)
}

test('limit 10, 100 clients holding their connection: never more than 10 admitted, all served, none refused or reset', { timeout: 120000 }, async (t) => {
  const s = await serve(t, 10)
  const clients = Array.from({ length: 100 }, () => s.connect())
  let active = 0
  let mostActive = 0
  let served = 0
  // Each client holds its connection after its answer, until a few more clients were answered.
  await Promise.all(
    clients.map(
      (c) =>
        new Promise((resolve) => {
          c.socket.on('data', () => {
            if (!c.counted) {
              c.counted = true
              active++
              mostActive = Math.max(mostActive, active)
              served++
              setImmediate(() => setImmediate(() => (active--, c.socket.end(), resolve())))
            }
          })
          c.socket.on('close', resolve)
        }),
    ),
  )
  await until('every connection to close', () => s.runner.connectionStats().admitted === 0)
  const stats = s.runner.connectionStats()
  assert.equal(served, 100, 'all 100 served')
  assert.deepEqual(clients.filter((c) => c.error).map((c) => c.error.code), [], 'none refused or reset')
  assert.ok(mostActive <= 10, `client side: ${mostActive} answered connections at once`)
  assert.ok(s.seen.most <= 10, `server side: Node accepted ${s.seen.most} connections at once`)
  assert.ok(stats.peak <= 10 && stats.peak >= 1, JSON.stringify(stats))
  assert.equal(stats.total, 100)
  assert.equal(stats.waiting, 0)
  assert.equal(stats.limit, 10)
})

test('at the limit, the clients above it are not accepted: connected, no data, no reset, until admitted', { timeout: 120000 }, async (t) => {
  const s = await serve(t, 3)
  const clients = Array.from({ length: 8 }, () => s.connect())
  await until('3 answers', () => responded(clients) === 3)
  // A round trip on an admitted connection: by its answer the server's loop has turned many
  // times, so an accept would have happened.
  const admitted = clients.filter((c) => c.responded())
  admitted[0].data = ''
  admitted[0].socket.write('GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n')
  await until('the second answer', () => admitted[0].responded())
  const waiting = clients.filter((c) => !admitted.includes(c))
  await until('the 5 others to complete their handshake', () => waiting.every((c) => c.socket.readyState === 'open'))
  assert.ok(waiting.every((c) => c.data === '' && !c.error), 'nothing read, no reset')
  assert.equal(acceptQueue(s.port), 5, 'the 5 above the limit wait in the kernel accept queue, not accepted')
  assert.equal(s.server._connections, 3, 'Node made sockets for 3 only')
  assert.equal(s.runner.connectionStats().admitted, 3)
  admitted[1].socket.destroy()
  await until('one waiting client admitted', () => responded(waiting) === 1)
  assert.equal(s.server._connections, 3)
  assert.ok(clients.every((c) => !c.error))
})

test('raising the limit 10 -> 50 at run time admits waiting clients promptly', { timeout: 120000 }, async (t) => {
  const s = await serve(t, 10)
  const clients = Array.from({ length: 60 }, () => s.connect())
  await until('10 answers', () => responded(clients) === 10)
  await until('50 clients in the accept queue', () => acceptQueue(s.port) === 50)
  assert.equal(s.runner.maxConnections, 10)
  const began = Date.now()
  assert.equal(s.runner.setMaxConnections(50), 0, 'free slots before the change')
  await until('50 answers', () => responded(clients) === 50)
  assert.ok(Date.now() - began < 5000, `raising took ${Date.now() - began} ms`)
  const stats = s.runner.connectionStats()
  assert.equal(stats.admitted, 50)
  assert.equal(stats.limit, 50)
  assert.equal(s.server._connections, 50)
  assert.equal(acceptQueue(s.port), 10)
  assert.ok(clients.every((c) => !c.error && !c.closed))
})

test('lowering the limit 50 -> 5 with 50 active closes none and admits nothing until fewer than 5 are open', { timeout: 120000 }, async (t) => {
  const s = await serve(t, 50)
  const clients = Array.from({ length: 60 }, () => s.connect())
  await until('50 answers', () => responded(clients) === 50)
  const active = clients.filter((c) => c.responded())
  const waiting = clients.filter((c) => !c.responded())
  s.runner.maxConnections = 5
  assert.equal(s.runner.maxConnections, 5)
  // A round trip on each active connection: none was closed, all still served.
  for (const c of active) {
    c.data = ''
    c.socket.write('GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n')
  }
  await until('50 second answers', () => responded(active) === 50)
  assert.ok(active.every((c) => !c.closed && !c.error), 'lowering closed a connection')
  for (const c of active.slice(0, 45)) c.socket.destroy()
  await until('45 releases', () => s.runner.connectionStats().admitted === 5)
  const still = active.slice(45)
  still[0].data = ''
  still[0].socket.write('GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n')
  await until('a round trip', () => still[0].responded())
  assert.equal(responded(waiting), 0, 'admitted a new connection with 5 open at limit 5')
  assert.equal(s.server._connections, 5)
  still[1].socket.destroy()
  await until('one waiting client admitted', () => responded(waiting) === 1)
  const stats = s.runner.connectionStats()
  assert.equal(stats.admitted, 5)
  assert.ok(clients.every((c) => !c.error))
})

test('counts are right after 10,000 connections (no drift); release is idempotent', { timeout: 120000 }, async (t) => {
  const s = await serve(t, 3)
  let done = 0
  let errors = 0
  const one = () =>
    new Promise((resolve) => {
      const req = http.get({ host: '127.0.0.1', port: s.port, path: '/', agent: false }, (res) => {
        res.resume()
        res.on('end', () => (done++, resolve()))
      })
      req.on('error', () => (errors++, resolve()))
    })
  await Promise.all(
    Array.from({ length: 20 }, async () => {
      while (done + errors < 10000) await one()
    }),
  )
  await until('every connection to close', () => s.runner.connectionStats().admitted === 0)
  const stats = s.runner.connectionStats()
  assert.equal(errors, 0)
  assert.ok(stats.total >= 10000, JSON.stringify(stats))
  assert.equal(stats.total, done)
  assert.ok(stats.peak <= 3 && stats.peak >= 1, JSON.stringify(stats))
  assert.equal(stats.waiting, 0)
  assert.equal(s.runner.gate.free, 3)
  const permit = s.runner.gate.tryAcquire()
  assert.equal(s.runner.gate.free, 2)
  assert.equal(permit.release(), true)
  assert.equal(permit.release(), false)
  assert.equal(permit.released, true)
  assert.equal(s.runner.gate.free, 3, 'a second release gave nothing back')
})

test('the JS Gate: tryAcquire, acquire in order without blocking, timeout, abort, GateClosedError at lame-duck', { timeout: 120000 }, async () => {
  let seenGate
  const server = {
    serve: (ctx) => ((seenGate = ctx.gate), new Promise((resolve) => (server.release = resolve))),
    shutdown: () => server.release(),
    close: () => server.release(),
  }
  const runner = new lameduck.Runner(server, { maxConnections: 1, logger: false, signals: [], upgradeSignals: [] })
  const running = runner.run()
  await runner.ready()
  const gate = runner.gate
  assert.equal(seenGate, gate, 'ctx.gate is runner.gate')
  assert.ok(gate instanceof lameduck.Gate)
  const first = gate.tryAcquire()
  assert.ok(first instanceof lameduck.Permit)
  assert.equal(gate.tryAcquire(), null, 'full')
  const order = []
  const a = gate.acquire().then((p) => (order.push('a'), p))
  const b = gate.acquire().then((p) => (order.push('b'), p))
  await assert.rejects(gate.acquire({ timeout: 20 }), (err) => err instanceof lameduck.LameDuckError && err.code === 'LD_TIMEOUT')
  const controller = new AbortController()
  const aborted = gate.acquire({ signal: controller.signal })
  controller.abort(new Error('no longer wanted'))
  await assert.rejects(aborted, /no longer wanted/)
  let ticks = 0
  const ticker = setInterval(() => ticks++, 1)
  await until('the event loop to turn while acquire() waits', () => ticks >= 3)
  clearInterval(ticker)
  assert.equal(runner.connectionStats().waiting, 2)
  first.release()
  const pa = await a
  assert.deepEqual(order, ['a'])
  pa.release()
  const pb = await b
  assert.deepEqual(order, ['a', 'b'])
  // Lame-duck: a waiting acquire() is refused at once, tryAcquire() throws.
  const late = gate.acquire()
  const began = Date.now()
  runner.stop()
  await assert.rejects(late, (err) => err instanceof lameduck.GateClosedError && err instanceof lameduck.LameDuckError && err.code === 'LD_GATE_CLOSED')
  assert.ok(Date.now() - began < 5000)
  assert.throws(() => gate.tryAcquire(), lameduck.GateClosedError)
  assert.equal(gate.phase, 'draining')
  // The run ends only once the last permit is back.
  let over = false
  running.then(() => (over = true))
  await until('the phase to show the shutdown hook ran', () => runner.state === 'SHUTTING_DOWN')
  assert.equal(over, false)
  pb.release()
  await running
  assert.equal(runner.connectionStats().phase, 'closed')
})

test('invalid limits throw, naming maxConnections; 0, null and undefined are unlimited', { timeout: 120000 }, () => {
  const hooks = { serve() {}, shutdown() {}, close() {} }
  for (const bad of [-1, 1.5, NaN, Infinity, 2147483648]) {
    assert.throws(() => new lameduck.Runner(hooks, { maxConnections: bad }), (e) => e instanceof RangeError && /maxConnections/.test(e.message), String(bad))
  }
  for (const bad of ['3', true, {}]) {
    assert.throws(() => new lameduck.Runner(hooks, { maxConnections: bad }), (e) => e instanceof TypeError && /maxConnections/.test(e.message), String(bad))
  }
  const runner = new lameduck.Runner(hooks, { maxConnections: 7, logger: false })
  for (const bad of [-5, 0.5, 2 ** 31]) {
    assert.throws(() => (runner.maxConnections = bad), RangeError)
    assert.throws(() => runner.setMaxConnections(bad), RangeError)
  }
  assert.throws(() => runner.setMaxConnections('10'), TypeError)
  assert.equal(runner.maxConnections, 7, 'a refused limit changes nothing')
  assert.equal(runner.setMaxConnections(2147483647), 7)
  for (const unlimited of [0, null, undefined]) {
    runner.setMaxConnections(unlimited)
    assert.equal(runner.maxConnections, null)
    assert.equal(runner.gate.free, null)
  }
  assert.equal(runner.setMaxConnections(3), null, 'it was unlimited')
  assert.equal(new lameduck.Runner(hooks, { maxConnections: 0 }).maxConnections, null)
  assert.equal(new lameduck.Runner(hooks, {}).connectionStats().limit, null)
})

/** Sends `GET path` on a new socket now; records the answer, errors and the close. */
function raw(port, path = '/', keepAlive = true) {
  const c = { data: '', error: null, closed: false, socket: net.connect(port, '127.0.0.1') }
  c.socket.setEncoding('utf8')
  c.socket.write(`GET ${path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: ${keepAlive ? 'keep-alive' : 'close'}\r\n\r\n`)
  c.socket.on('data', (d) => (c.data += d))
  c.socket.on('error', (err) => (c.error = err))
  c.ended = new Promise((resolve) => c.socket.on('close', () => ((c.closed = true), resolve())))
  c.connected = new Promise((resolve) => c.socket.once('connect', resolve)) // the handshake is done: in the backlog
  return c
}

async function startApp(t, ...args) {
  const app = new App(['--app', 'http', ...args])
  t.after(() => app.kill())
  const [, port] = await app.waitFor('^out: port (\\d+)')
  await app.waitFor('^out: state READY')
  return [app, Number(port)]
}

test('SIGTERM with a full gate: queued clients are served (Connection: close), no resets, the run ends when the gate is empty', { timeout: 120000 }, async (t) => {
  const [app, port] = await startApp(t, '--max-connections', '2', '--period', '30000', '--idle-grace', '300')
  const idle = [raw(port), raw(port)] // admitted, then idle on keep-alive
  await until('2 answers', () => idle.every((c) => /^HTTP\/1.1 200/.test(c.data)))
  const queued = [raw(port), raw(port), raw(port)]
  await Promise.all(queued.map((c) => c.connected))
  const began = Date.now()
  app.signal('SIGTERM')
  await Promise.all([...idle, ...queued].map((c) => c.ended))
  for (const c of queued) {
    assert.match(c.data, /^HTTP\/1.1 200/, 'a queued client was not served')
    assert.match(c.data, /connection: close/i)
  }
  assert.deepEqual([...idle, ...queued].map((c) => c.error?.code).filter(Boolean), [], 'a client was reset')
  const { code } = await app.finish()
  assert.equal(code, 0, app.text())
  assert.ok(Date.now() - began < 20000, 'the run waited for the deadline')
  assert.match(app.text(), /out: clean exit/)
  assert.match(app.text(), /out: final admitted=0 waiting=0 total=5 peak=2/)
})

test('SIGTERM with a full gate and a request past the deadline: close cuts what is left, promptly', { timeout: 120000 }, async (t) => {
  const [app, port] = await startApp(t, '--max-connections', '1', '--period', '800')
  const slow = raw(port, '/sleep?ms=60000')
  await app.waitFor('app: request GET /sleep')
  const queued = [raw(port), raw(port)]
  await Promise.all(queued.map((c) => c.connected))
  const began = Date.now()
  app.signal('SIGTERM')
  await slow.ended
  assert.equal(slow.data, '', 'close destroyed the request in flight')
  assert.equal((await app.finish()).code, 1)
  assert.ok(Date.now() - began < 15000)
  assert.match(app.text(), /out: error ExpiredError LD_EXPIRED: Lame-duck period has expired/)
  await Promise.all(queued.map((c) => c.ended)) // cut with the listener
  assert.deepEqual(queued.map((c) => c.data), ['', ''], 'the gate was full until the deadline: nothing else was served')
})

test('nothing of lameduck runs per request before lame-duck: no request listener, no listener on responses', { timeout: 120000 }, async (t) => {
  const listeners = []
  const handler = (req, res) => {
    listeners.push([req.socket.server.listenerCount('request'), res.listenerCount('close'), res.listenerCount('finish'), req.listenerCount('close')])
    res.end('hi\n')
  }
  const get = (port) =>
    new Promise((resolve, reject) => http.get({ host: '127.0.0.1', port, agent: false }, (res) => res.resume().on('end', resolve)).on('error', reject))
  const plain = http.createServer(handler)
  await new Promise((resolve) => plain.listen(0, '127.0.0.1', resolve))
  t.after(() => plain.close())
  await get(plain.address().port)
  const s = await serve(t, 5, handler)
  await get(s.port)
  assert.deepEqual(listeners[1], listeners[0], 'the adapter adds listeners per request (plain node:http, then lameduck)')
  assert.equal(s.runner.connectionStats().requests, 0)
})

test('a SIGHUP upgrade while the gate is full: the paused socket is handed on, the new process serves the queued clients', { timeout: 120000 }, async (t) => {
  const app = new App(['--app', 'http', '--listen', '127.0.0.1:0', '--max-connections', '1', '--idle-grace', '300'])
  let next
  t.after(() => {
    app.kill()
    try {
      if (next) process.kill(next, 'SIGKILL')
    } catch {}
  })
  const port = Number((await app.waitFor('^out: port (\\d+)'))[1])
  await app.waitFor('^out: state READY')
  const held = raw(port) // admitted, then idle on keep-alive: the gate is full
  await until('an answer', () => /^HTTP\/1.1 200/.test(held.data))
  const queued = [raw(port, '/', false), raw(port, '/', false)]
  await Promise.all(queued.map((c) => c.connected))
  await until('2 clients in the accept queue', () => acceptQueue(port) === 2)
  process.kill(app.child.pid, 'SIGHUP')
  next = Number((await app.waitFor('lameduck: New process (\\d+) is ready'))[1])
  await Promise.all(queued.map((c) => c.ended))
  for (const c of queued) assert.match(c.data, /^HTTP\/1.1 200/, app.text())
  await held.ended // the old process closed it after the idle grace
  assert.deepEqual([held, ...queued].map((c) => c.error?.code).filter(Boolean), [])
  await app.waitCount('^out: clean exit', 1) // the old generation
  process.kill(next, 'SIGTERM')
  await app.waitCount('^out: clean exit', 2)
  assert.equal((await app.finish()).code, 0)
})
