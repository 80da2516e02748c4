'use strict'
// Plain http, Express and Fastify through lameduck.httpServer, and a hand-written server, each in
// a child process with real signals (process.kill) and real HTTP clients on 127.0.0.1.
const { test } = require('node:test')
const assert = require('node:assert/strict')
const { spawnSync, spawn } = require('node:child_process')
const { App, start, send, get, refused, sleep } = require('./helpers')

const ADAPTERS = ['http', 'express', 'fastify']

for (const kind of [...ADAPTERS, 'plain']) {
  test(`${kind}: in-flight request completes, new connections are refused, exit 0 by itself`, async (t) => {
    const [app, port] = await start(t, '--app', kind, '--period', '10000')
    assert.match(await get(port, '/'), /^HTTP\/1.1 200/)
    const slow = send(port, '/sleep?ms=1500')
    await app.waitFor('app: request GET /sleep\\?ms=1500')
    app.signal('SIGTERM')
    await app.waitFor('^out: state SHUTTING_DOWN')
    const deadline = Date.now() + 10000
    while (!(await refused(port))) {
      assert.ok(Date.now() < deadline, 'new connections are still accepted')
      await sleep(10)
    }
    const answer = await slow.ended
    assert.match(answer, /^HTTP\/1.1 200/)
    assert.match(answer, /slept 1500 ms/)
    const { code, signal } = await app.finish()
    assert.equal(signal, null, app.text())
    assert.equal(code, 0, app.text()) // and app.js never calls process.exit
    assert.match(app.text(), /lameduck: Received signal \[terminated\]; entering lame-duck mode for 10s/)
    assert.match(app.text(), /lameduck: Completed lame-duck mode/)
    assert.match(app.text(), /out: clean exit/)
  })
}

for (const kind of ADAPTERS) {
  test(`${kind}: an idle keep-alive client does not hold shutdown until the deadline`, async (t) => {
    const [app, port] = await start(t, '--app', kind, '--period', '30000', '--idle-grace', '200')
    const idle = send(port, '/', true)
    assert.match(await idle.firstData(), /^HTTP\/1.1 200/)
    const began = Date.now()
    app.signal('SIGTERM')
    const { code } = await app.finish()
    assert.equal(code, 0, app.text())
    assert.ok(Date.now() - began < 20000, 'an idle connection held shutdown until the deadline')
    await idle.ended // the server closed it after the idle grace
  })

  test(`${kind}: a request on a kept-alive socket during lame-duck is answered with Connection: close`, async (t) => {
    const [app, port] = await start(t, '--app', kind, '--period', '10000', '--idle-grace', '3000')
    const conn = send(port, '/', true)
    assert.match(await conn.firstData(), /^HTTP\/1.1 200/)
    app.signal('SIGTERM')
    await app.waitFor('^out: state SHUTTING_DOWN')
    await sleep(300) // inside the idle grace: the socket is still open
    conn.clear()
    conn.write('GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n')
    const second = await conn.ended
    assert.match(second, /^HTTP\/1.1 200/)
    assert.match(second, /connection: close/i)
    assert.equal((await app.finish()).code, 0, app.text())
  })

  test(`${kind}: a request longer than the period expires (ExpiredError, exit 1)`, async (t) => {
    const [app, port] = await start(t, '--app', kind, '--period', '500')
    const slow = send(port, '/sleep?ms=20000')
    await app.waitFor('app: request GET /sleep')
    app.signal('SIGTERM')
    assert.equal(await slow.ended, '') // close destroyed it
    assert.equal((await app.finish()).code, 1)
    assert.match(app.text(), /out: error ExpiredError LD_EXPIRED: Lame-duck period has expired/)
  })

  test(`${kind}: drain delay keeps accepting but reports not ready`, async (t) => {
    const [app, port] = await start(t, '--app', kind, '--drain', '4000')
    assert.match(await get(port, '/health'), /^HTTP\/1.1 200/)
    app.signal('SIGTERM')
    await app.waitFor('^out: state DRAINING')
    const health = await get(port, '/health')
    assert.match(health, /^HTTP\/1.1 503/)
    assert.match(health, /DRAINING/)
    assert.match(await get(port, '/'), /^HTTP\/1.1 200/)
    assert.equal((await app.finish()).code, 0, app.text())
    assert.match(app.text(), /draining for 4s, then entering lame-duck mode for 3s/)
  })

  test(`${kind}: a second SIGTERM forces close (ForcedError)`, async (t) => {
    const [app, port] = await start(t, '--app', kind, '--period', '60000')
    const slow = send(port, '/sleep?ms=60000')
    await app.waitFor('app: request GET /sleep')
    app.signal('SIGTERM')
    await app.waitFor('^out: state SHUTTING_DOWN')
    app.signal('SIGTERM')
    assert.equal(await slow.ended, '')
    assert.equal((await app.finish()).code, 1)
    assert.match(app.text(), /out: error ForcedError LD_FORCED: Lame-duck period was cut short by a repeated signal/)
  })
}

test('a third SIGTERM kills the process; the exit policy kills on the second', async (t) => {
  // close never settles, so the run is still going when the third signal comes
  let [app, port] = await start(t, '--app', 'plain', '--period', '60000', '--hang-close', '--close-timeout', '60000')
  send(port, '/sleep?ms=60000')
  await app.waitFor('app: request GET /sleep')
  app.signal('SIGTERM')
  await app.waitFor('^out: state SHUTTING_DOWN')
  app.signal('SIGTERM')
  await app.waitFor('forcing close now')
  app.signal('SIGTERM')
  assert.equal((await app.finish()).signal, 'SIGTERM')
  ;[app, port] = await start(t, '--app', 'http', '--period', '60000', '--repeat', 'exit')
  send(port, '/sleep?ms=60000')
  await app.waitFor('app: request GET /sleep')
  app.signal('SIGINT')
  await app.waitFor('^out: state SHUTTING_DOWN')
  app.signal('SIGINT')
  assert.equal((await app.finish()).signal, 'SIGINT')
})

test('serve rejecting before any signal is FailedError with the original error as cause', async (t) => {
  const app = new App(['--app', 'plain', '--fail-serve'])
  t.after(() => app.kill())
  assert.equal((await app.finish()).code, 1)
  assert.match(app.text(), /out: error FailedError LD_FAILED: Error: cannot bind: address on fire cause=Error: cannot bind: address on fire/)
})

const hasWrk = spawnSync('wrk', ['--version']).error === undefined
for (const kind of ADAPTERS) {
  test(`${kind}: SIGTERM under wrk keep-alive load loses nothing`, { skip: !hasWrk && 'wrk is installed by scripts/test-all.sh' }, async (t) => {
    const [app, port] = await start(t, '--app', kind, '--period', '10000')
    const wrk = spawn('wrk', ['-t2', '-c20', '-d4s', `http://127.0.0.1:${port}/`])
    let out = ''
    wrk.stdout.on('data', (d) => (out += d))
    await sleep(1500) // load is flowing
    app.signal('SIGTERM')
    await new Promise((resolve) => wrk.once('exit', resolve))
    assert.equal((await app.finish()).code, 0, app.text())
    assert.ok(Number(out.match(/(\d+) requests in/)[1]) > 100, out)
    const errors = out.match(/Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)/)
    // No request lost: no read errors, no timeouts. wrk counts its refused reconnects, once the
    // listener is closed, as "write" errors (it has a "connect" bucket only for TLS).
    assert.deepEqual(errors ? [Number(errors[2]), Number(errors[4])] : [0, 0], [0, 0], out)
    assert.doesNotMatch(out, /Non-2xx/, out)
  })
}

test('a stop followed by a SIGTERM is one event: not forced, the in-flight request completes', async (t) => {
  const [app, port] = await start(t, '--app', 'http', '--period', '10000')
  const slow = send(port, '/sleep?ms=1500')
  await app.waitFor('app: request GET /sleep\\?ms=1500')
  assert.match(await get(port, '/stop'), /^HTTP\/1.1 200/) // runner.stop() from a request handler
  await app.waitFor('^out: state SHUTTING_DOWN')
  app.signal('SIGTERM') // the supervisor's ordinary stop, after the application stopped itself
  await app.waitFor('lameduck: Received signal \\[terminated\\]; already in lame-duck mode since the stop request')
  const answer = await slow.ended
  assert.match(answer, /^HTTP\/1.1 200/)
  assert.match(answer, /slept 1500 ms/)
  const { code, signal } = await app.finish()
  assert.deepEqual({ code, signal }, { code: 0, signal: null }, app.text())
  assert.doesNotMatch(app.text(), /forcing close|ForcedError/, app.text())
  assert.match(app.text(), /out: clean exit/)
})

test('a stop followed by two SIGTERMs forces close (ForcedError); the process is not killed', async (t) => {
  const [app, port] = await start(t, '--app', 'http', '--period', '60000')
  const slow = send(port, '/sleep?ms=60000')
  await app.waitFor('app: request GET /sleep')
  assert.match(await get(port, '/stop'), /^HTTP\/1.1 200/)
  await app.waitFor('^out: state SHUTTING_DOWN')
  app.signal('SIGTERM')
  await app.waitFor('already in lame-duck mode since the stop request')
  app.signal('SIGTERM') // the first repeat: forces close, never kills
  assert.equal(await slow.ended, '') // close destroyed it
  const { code, signal } = await app.finish()
  assert.deepEqual({ code, signal }, { code: 1, signal: null }, app.text())
  assert.match(app.text(), /out: error ForcedError LD_FORCED: Lame-duck period was cut short by a repeated signal/)
})
