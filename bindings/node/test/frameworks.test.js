'use strict'
// The framework helpers (lameduck/fastify, koa, express, nest) through the runnable examples in
// examples/node (and the README's block), each a real child process taking a real SIGTERM, with
// real HTTP clients on 127.0.0.1; the onUncaughtError policy (test/uncaught_app.js and the
// examples' /crash); in process: the hooks at the deadline, run()'s runner, currentRunner(),
// ctx.triggerSignal, bad arguments, and the helpers' types.
const { test, after } = require('node:test')
const assert = require('node:assert/strict')
const { spawnSync } = require('node:child_process')
const fs = require('node:fs')
const os = require('node:os')
const path = require('node:path')
const lameduck = require('..')
const { App, send, get, refused, sleep, LIMIT } = require('./helpers')

const EXAMPLES = path.join(__dirname, '..', '..', '..', 'examples', 'node')
const quiet = { signals: [], upgradeSignals: [], logger: false }

// The examples `require('lameduck')` and their framework from outside any project: NODE_PATH names
// a directory holding a `lameduck` link to this package (as `npm install ./bindings/node` would
// make), then this package's node_modules (the frameworks are its devDependencies).
const modules = fs.mkdtempSync(path.join(os.tmpdir(), 'lameduck-frameworks-'))
fs.symlinkSync(path.join(__dirname, '..'), path.join(modules, 'lameduck'))
after(() => fs.rmSync(modules, { recursive: true, force: true }))
const NODE_PATH = [modules, path.join(__dirname, '..', 'node_modules')].join(path.delimiter)

/** Starts examples/node/<name>.js on a free port; resolves to [app, port] once it is listening. */
async function example(t, name) {
  const app = new App([], { script: path.join(EXAMPLES, `${name}.js`), env: { PORT: '0', NODE_PATH } })
  t.after(() => app.kill())
  const [, port] = await app.waitFor('^out: listening on http://127.0.0.1:(\\d+)')
  return [app, Number(port)]
}

/** GET /stats: the example's run state and connection counts, read through currentRunner(). */
async function stats(port) {
  const answer = await get(port, '/stats')
  assert.match(answer, /^HTTP\/1.1 200/, answer)
  return JSON.parse(answer.slice(answer.indexOf('\r\n\r\n') + 4))
}

/** Resolves once the example has `n` requests in flight (the /stats request itself counted). */
async function inFlight(port, n) {
  const until = Date.now() + LIMIT
  while ((await stats(port)).requests < n) {
    assert.ok(Date.now() < until, `fewer than ${n} requests ever in flight`)
    await sleep(10)
  }
}

/** Resolves with the next whole response on `conn` (from send(): ours end in a newline), or what came before it closed. */
async function response(conn) {
  const until = Date.now() + LIMIT
  let closed = false
  conn.ended.then(() => (closed = true))
  while (!/\r\n\r\n[^]*\n$/.test(conn.data) && !closed) {
    assert.ok(Date.now() < until, `no whole response; got:\n${conn.data}`)
    await sleep(2)
  }
  return conn.data
}

/** `promise`, or a rejection once LIMIT ms have passed without it settling. */
function within(promise, what = 'a promise') {
  let timer
  const late = new Promise((resolve, reject) => (timer = setTimeout(() => reject(new Error(`${what} did not settle within ${LIMIT} ms`)), LIMIT)))
  return Promise.race([promise, late]).finally(() => clearTimeout(timer))
}

/** The lines of `app`'s output matching `rx`. */
const matching = (app, rx) => app.lines.filter((l) => rx.test(l))

// What each example's shutdown hooks print, in order, each exactly once (`open: 0`: no connection
// was left when they ran, so every request in flight had finished).
const HOOK_LINES = {
  fastify: [/^out: fastify: onClose hook ran \(connections open: 0\)$/],
  koa: [],
  express: [],
  nest: [/^out: nest: onModuleDestroy \(connections open: 0\)$/, /^out: nest: beforeApplicationShutdown SIGTERM$/, /^out: nest: onApplicationShutdown SIGTERM$/],
}

for (const name of Object.keys(HOOK_LINES)) {
  test(`examples/node/${name}.js: SIGTERM finishes the slow request, serves a kept-alive client, refuses new ones, runs the hooks once, exits 0`, async (t) => {
    const [app, port] = await example(t, name)
    assert.match(await get(port, '/'), new RegExp(`^HTTP/1.1 200[^]*hello from ${name}`))
    const before = await stats(port)
    assert.equal(before.state, 'READY') // currentRunner() in the example's handler
    const kept = send(port, '/', true)
    assert.match(await within(kept.firstData()), /^HTTP\/1.1 200/)
    const slow = send(port, '/slow?ms=1500')
    await inFlight(port, 2) // the slow one and this /stats
    app.signal('SIGTERM')
    await app.waitFor('^out: lameduck: Received signal \\[terminated\\]; entering lame-duck mode for 10s')
    // The idle kept-alive socket is still open (idleGrace) and served. The shutdown hook starts a
    // little after the log line: until it has, answers keep the socket alive; from then on the
    // answer says Connection: close and the server closes the socket after it.
    let reused
    for (let i = 0; ; i++) {
      assert.ok(i < 1000, 'no answer with Connection: close')
      kept.clear()
      kept.write('GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n')
      reused = await response(kept)
      assert.match(reused, /^HTTP\/1.1 200[^]*hello from/, `a kept-alive request after SIGTERM got:\n${reused}`)
      if (/connection: close/i.test(reused)) break
    }
    await within(kept.ended)
    const until = Date.now() + LIMIT
    while (!(await refused(port))) {
      assert.ok(Date.now() < until, 'new connections are still accepted')
      await sleep(10)
    }
    const answer = await within(slow.ended)
    assert.match(answer, /^HTTP\/1.1 200/, answer)
    assert.match(answer, /slept 1500 ms/)
    const { code, signal } = await app.finish()
    assert.deepEqual({ code, signal }, { code: 0, signal: null }, app.text())
    assert.match(app.text(), /out: lameduck: Completed lame-duck mode/)
    assert.match(app.text(), /out: stopped/)
    const hooks = HOOK_LINES[name]
    const indexes = hooks.map((rx) => {
      assert.equal(matching(app, rx).length, 1, `${rx} not exactly once:\n${app.text()}`)
      return app.lines.findIndex((l) => rx.test(l))
    })
    assert.deepEqual(indexes, [...indexes].sort((a, b) => a - b), `hooks out of order:\n${app.text()}`)
    assert.equal(matching(app, /^out: (fastify|nest): /).length, hooks.length, app.text()) // no other hook line
    if (name === 'nest') assert.match(app.text(), /SIGTERM listeners: 1\)/) // lameduck's: Nest installed none
  })
}

test("README's Fastify block, as printed: served, SIGTERM, onClose once, exit 0", async (t) => {
  const readme = fs.readFileSync(path.join(__dirname, '..', '..', '..', 'README.md'), 'utf8')
  const section = readme.slice(readme.indexOf('### Frameworks (Node)'))
  const block = section.match(/^```js\n([^]*?)^```$/m)
  assert.ok(block, 'README.md has no js block under "### Frameworks (Node)"')
  const script = path.join(modules, 'readme_fastify.js')
  fs.writeFileSync(script, block[1])
  const app = new App([], { script, env: { PORT: '0', NODE_PATH } })
  t.after(() => app.kill())
  const [, port] = await app.waitFor('^out: listening on (\\d+)')
  assert.match(await get(Number(port), '/'), /^HTTP\/1.1 200[^]*hello\n$/)
  app.signal('SIGTERM')
  const { code, signal } = await app.finish()
  assert.deepEqual({ code, signal }, { code: 0, signal: null }, app.text())
  assert.equal(matching(app, /^out: onClose: every request has finished$/).length, 1, app.text())
})

for (const name of ['express', 'nest']) {
  test(`examples/node/${name}.js: an exception nothing catches lame-ducks (the slow request finishes), logs it and exits 1`, async (t) => {
    const [app, port] = await example(t, name)
    const slow = send(port, '/slow?ms=1500')
    await inFlight(port, 2)
    assert.match(await get(port, '/crash'), /^HTTP\/1.1 200/)
    await app.waitFor('^err: lameduck: Uncaught exception; entering lame-duck mode, the process exits with code 1 once it is over: Error: boom from /crash$')
    const answer = await within(slow.ended)
    assert.match(answer, /^HTTP\/1.1 200/, answer)
    assert.match(answer, /slept 1500 ms/)
    const { code, signal } = await app.finish()
    assert.deepEqual({ code, signal }, { code: 1, signal: null }, app.text())
    assert.match(app.text(), /out: lameduck: Stop requested; entering lame-duck mode/)
    assert.match(app.text(), /out: lameduck: Completed lame-duck mode/)
    assert.match(app.text(), /out: stopped/) // the run's own handlers ran before the exit
    if (name === 'nest') assert.equal(matching(app, /^out: nest: onApplicationShutdown undefined$/).length, 1, app.text())
  })
}

/** Starts test/uncaught_app.js with `args`; resolves to [app, port] once ready. */
async function uncaughtApp(t, args) {
  const app = new App(args, { script: path.join(__dirname, 'uncaught_app.js') })
  t.after(() => app.kill())
  const [, port] = await app.waitFor('^out: port (\\d+)')
  return [app, Number(port)]
}

test("onUncaughtError 'lame-duck': an unhandled rejection lame-ducks (the slow request finishes), is logged, exit 1", async (t) => {
  const [app, port] = await uncaughtApp(t, ['--policy', 'lame-duck'])
  const slow = send(port, '/slow?ms=1500')
  await sleep(200) // the connection is admitted whether or not its request was read: it is answered either way
  assert.match(await get(port, '/reject'), /^HTTP\/1.1 200/)
  await app.waitFor('^err: lameduck: Unhandled promise rejection; entering lame-duck mode, the process exits with code 1 once it is over: Error: boom from /reject$')
  assert.match(await within(slow.ended), /slept 1500 ms/)
  const { code, signal } = await app.finish()
  assert.deepEqual({ code, signal }, { code: 1, signal: null }, app.text())
  assert.match(app.text(), /out: run settled: ok/)
  assert.match(app.text(), /err: {5}at /) // the stack is logged
})

test("onUncaughtError 'lame-duck': a second error during lame-duck is logged too; lame-duck goes on, not forced", async (t) => {
  const [app, port] = await uncaughtApp(t, ['--policy', 'lame-duck'])
  const slow = send(port, '/slow?ms=1500')
  await sleep(200)
  await get(port, '/throw?times=2')
  await app.waitFor('^err: lameduck: Uncaught exception; entering lame-duck mode')
  await app.waitFor('^err: lameduck: Uncaught exception; already in lame-duck mode')
  assert.match(await within(slow.ended), /slept 1500 ms/)
  const { code } = await app.finish()
  assert.equal(code, 1, app.text())
  assert.equal(matching(app, /Stop requested/).length, 1, app.text())
  assert.doesNotMatch(app.text(), /forcing close|Forced/, app.text())
})

test('without onUncaughtError, Node\'s own handling stays: an uncaught exception ends the process at once', async (t) => {
  const [app, port] = await uncaughtApp(t, [])
  const slow = send(port, '/slow?ms=5000')
  await sleep(200)
  await get(port, '/throw')
  assert.equal(await within(slow.ended), '') // cut, not answered
  const { code, signal } = await app.finish()
  assert.deepEqual({ code, signal }, { code: 1, signal: null }, app.text())
  assert.match(app.text(), /err: Error: boom from \/throw/)
  assert.doesNotMatch(app.text(), /lame-duck mode|run settled/, app.text())
})

/** A hand-written server: serve until shutdown; records the trigger signal shutdown saw. */
function server() {
  let stop
  const seen = { trigger: undefined }
  return {
    seen,
    serve: () => new Promise((resolve) => (stop = resolve)),
    shutdown: (ctx) => {
      seen.trigger = ctx.triggerSignal
      stop()
    },
    close: () => stop?.(),
  }
}

test('run() returns its promise with the runner; currentRunner() is the run in progress', async () => {
  assert.equal(lameduck.currentRunner(), null)
  const first = server()
  const a = lameduck.run(first, quiet)
  const b = new lameduck.Runner(server(), quiet)
  try {
    assert.ok(a instanceof Promise)
    assert.ok(a.runner instanceof lameduck.Runner)
    assert.equal(lameduck.currentRunner(), a.runner)
    await a.runner.ready()
    const running = b.run()
    assert.equal(running.runner, b)
    assert.equal(lameduck.currentRunner(), b) // the most recently started
    await b.ready() // a stop() before the core started the run would cancel it
    b.stop()
    await running
    assert.equal(lameduck.currentRunner(), a.runner)
    a.runner.stop()
    await a
    assert.equal(lameduck.currentRunner(), null)
    assert.equal(first.seen.trigger, null) // stop(), not a signal
    assert.equal(a.runner.triggerSignal, null)
  } finally {
    a.runner.stop() // a failed assertion must not leave a run keeping this process alive
    b.stop()
  }
  const bad = lameduck.run(server(), { period: -1 })
  assert.equal(bad.runner, null)
  await assert.rejects(bad, RangeError)
})

test('ctx.triggerSignal names the signal that started lame-duck; a signal after a stop() is not one', async () => {
  const s = server()
  const running = lameduck.run(s, { ...quiet, signals: ['SIGUSR2'] })
  try {
    await running.runner.ready()
    assert.equal(running.runner.triggerSignal, null)
    process.kill(process.pid, 'SIGUSR2') // taken by the run's listener (until the run is over)
    await running
    assert.equal(s.seen.trigger, 'SIGUSR2')
    assert.equal(running.runner.triggerSignal, 'SIGUSR2')
  } finally {
    running.runner.stop()
  }
  const stopped = server()
  const again = lameduck.run(stopped, { ...quiet, signals: ['SIGUSR2'] })
  try {
    await again.runner.ready()
    again.runner.stop()
    process.kill(process.pid, 'SIGUSR2') // the supervisor's signal after a stop: the same event
    await again
    assert.equal(stopped.seen.trigger, null)
  } finally {
    again.runner.stop()
  }
})

test('bad options and apps: TypeError/RangeError, thrown by the servers, rejected by the run helpers', async () => {
  assert.throws(() => new lameduck.Runner(server(), { onUncaughtError: 'crash' }), RangeError)
  assert.throws(() => new lameduck.Runner(server(), { onUncaughtError: true }), TypeError)
  assert.throws(() => new lameduck.Runner(server(), { onUncaughtError: null }), TypeError)
  for (const [make, name] of [
    [lameduck.fastifyServer, 'Fastify instance'],
    [lameduck.koaServer, 'Koa application'],
    [lameduck.expressServer, 'Express application'],
    [lameduck.nestServer, 'Nest application'],
  ]) {
    for (const app of [undefined, null, 42, 'app', {}]) assert.throws(() => make(app), (err) => err instanceof TypeError && err.message.includes(name))
  }
  const fastify = require('fastify')()
  const koa = new (require('koa'))()
  const express = require('express')()
  assert.throws(() => lameduck.fastifyServer(fastify, { port: 70000 }), RangeError)
  assert.throws(() => lameduck.koaServer(koa, { port: 'x' }), TypeError)
  assert.throws(() => lameduck.expressServer(express, 0, { idleGrace: -1 }), RangeError)
  for (const running of [lameduck.runFastify({}), lameduck.runKoa(koa, { port: -1 }), lameduck.runExpress(express, 0, { period: 'long' })]) {
    assert.equal(running.runner, null)
    await assert.rejects(running, (err) => err instanceof TypeError || err instanceof RangeError)
  }
  // Runner options reach the Runner as they are: an unknown one is the Runner's own TypeError.
  await assert.rejects(lameduck.runExpress(express, 0, { drainQuietly: 5 }), { name: 'TypeError', message: 'unknown option "drainQuietly"' })
  await assert.rejects(lameduck.runKoa(koa, 0, { onUncaughtError: 'exit' }), RangeError)
  // The subpath modules are the same functions.
  assert.equal(require('lameduck/fastify').runFastify, lameduck.runFastify)
  assert.equal(require('lameduck/koa').koaServer, lameduck.koaServer)
  assert.equal(require('lameduck/express').runExpress, lameduck.runExpress)
  assert.equal(require('lameduck/nest').nestServer, lameduck.nestServer)
})

test('at the deadline the framework\'s hooks run from close, once: cutting a request, or while they still run', async (t) => {
  // A request longer than the period: shutdown gives up at the deadline, close cuts the request,
  // then Fastify's onClose hooks run (once).
  const fastify = require('fastify')()
  const seen = []
  let request = null
  fastify.get('/slow', (req) => {
    request = req.raw
    return new Promise(() => {}) // never answers
  })
  fastify.addHook('onClose', async () => seen.push(`onClose, request socket destroyed: ${request.socket.destroyed}, listening: ${fastify.server.listening}`))
  const running = lameduck.runFastify(fastify, { port: 0, host: '127.0.0.1' }, { ...quiet, period: 300 })
  t.after(() => running.runner.stop())
  await running.runner.ready()
  const slow = send(fastify.server.address().port, '/slow')
  t.after(() => slow.socket.destroy())
  for (const until = Date.now() + LIMIT; running.runner.connectionStats().requests < 1; await sleep(5)) assert.ok(Date.now() < until, 'the request never came')
  running.runner.stop()
  await assert.rejects(within(running), lameduck.ExpiredError)
  assert.equal(await within(slow.ended), '') // cut by close
  assert.deepEqual(seen, ['onClose, request socket destroyed: true, listening: false'])
  // A close (an app's own, that does not guard against a second call) outlasting the period: close
  // comes while it runs, and waits for the same one.
  let calls = 0
  const app = { server: require('node:http').createServer(), ready: async () => {}, close: () => (calls++, sleep(600)) }
  const again = lameduck.runFastify(app, { port: 0, host: '127.0.0.1' }, { ...quiet, period: 200 })
  t.after(() => again.runner.stop())
  await again.runner.ready()
  again.runner.stop()
  await assert.rejects(within(again), lameduck.ExpiredError)
  assert.equal(calls, 1)
})

test('nestServer refuses an app given enableShutdownHooks(): Nest would take the signals itself', async () => {
  require('reflect-metadata')
  const { Module } = require('@nestjs/common')
  const { NestFactory } = require('@nestjs/core')
  class Empty {}
  Module({})(Empty)
  const app = await NestFactory.create(Empty, { logger: false })
  try {
    const s = lameduck.nestServer(app) // fine before
    assert.equal(s.app, app)
    const listeners = process.listenerCount('SIGTERM')
    app.enableShutdownHooks()
    assert.ok(process.listenerCount('SIGTERM') > listeners, 'Nest did not listen: this check proves nothing')
    assert.throws(() => lameduck.nestServer(app), (err) => err instanceof TypeError && /enableShutdownHooks/.test(err.message))
    // Called after nestServer(): serve refuses (the run fails with that TypeError as cause) before listening.
    const err = await lameduck.run(s, quiet).catch((e) => e)
    assert.ok(err instanceof lameduck.FailedError, String(err))
    assert.ok(err.cause instanceof TypeError && /enableShutdownHooks/.test(err.cause.message), String(err.cause))
    assert.equal(s.server.listening, false)
  } finally {
    await app.close() // removes Nest's listeners
  }
})

test('the helpers\' types check against Fastify\'s and Nest\'s own (tsc --strict)', () => {
  const tsc = path.join(__dirname, '..', 'node_modules', 'typescript', 'bin', 'tsc')
  const args = ['--strict', '--noEmit', '--module', 'nodenext', '--moduleResolution', 'nodenext', '--target', 'es2022', '--types', 'node', '--skipLibCheck']
  const result = spawnSync(process.execPath, [tsc, ...args, path.join(__dirname, 'frameworks_types.ts')], { encoding: 'utf8', timeout: LIMIT * 2 })
  assert.equal(result.status, 0, `${result.stdout}${result.stderr}${result.error ?? ''}`)
})
