'use strict'
// The Node API in-process: options, errors and causes, AbortSignal, readiness, signals.
const { test } = require('node:test')
const assert = require('node:assert/strict')
const lameduck = require('..')

const quiet = { logger: false }

/** serve waits until shutdown (or close) releases it. */
function server(overrides = {}) {
  let release
  const released = new Promise((r) => (release = r))
  const calls = []
  return Object.assign(
    {
      calls,
      serve(ctx) {
        calls.push('serve')
        return released
      },
      shutdown(ctx) {
        calls.push('shutdown')
        this.shutdownCtx = { remaining: ctx.remaining(), deadline: ctx.deadline }
        this.release()
      },
      close() {
        calls.push('close')
        this.release()
      },
      release,
    },
    overrides,
  )
}

test('bad options throw TypeError or RangeError naming the value, before anything starts', () => {
  const cases = [
    [{ period: 0 }, RangeError, /period=0: lame-duck period 0s is invalid/],
    [{ period: -1 }, RangeError, /period=-1 is invalid/],
    [{ period: Infinity }, RangeError, /period=Infinity is invalid/],
    [{ period: 90000000 }, RangeError, /lame-duck period 25h0m0s is invalid/],
    [{ period: '3000' }, TypeError, /period must be a number of milliseconds, got "3000"/],
    [{ drainDelay: NaN }, RangeError, /drainDelay=NaN is invalid/],
    [{ closeTimeout: 0 }, RangeError, /closeTimeout=0: close timeout 0s is invalid/],
    [{ signals: 'SIGTERM' }, TypeError, /signals must be an array/],
    [{ signals: ['SIGNOPE'] }, RangeError, /"SIGNOPE" is not a signal name/],
    [{ signals: ['SIGKILL'] }, RangeError, /signal 9 \(killed\) cannot be a trigger signal/],
    [{ signals: [{}] }, TypeError, /is not a signal name/],
    [{ repeatSignal: 'twice' }, RangeError, /repeatSignal="twice" is invalid/],
    [{ logger: 'stdout' }, TypeError, /logger must be a console-like object or false/],
    [{ signal: {} }, TypeError, /signal must be an AbortSignal/],
    [{ perod: 3000 }, TypeError, /unknown option "perod"/],
    [null, TypeError, /options must be an object/],
  ]
  for (const [options, Class, message] of cases) {
    const s = server()
    assert.throws(() => new lameduck.Runner(s, options), (err) => err instanceof Class && message.test(err.message), String(message))
    assert.equal(s.calls.length, 0)
  }
  assert.throws(() => new lameduck.Runner({ serve() {}, shutdown() {} }), /server has no close\(\) method/)
  assert.equal(process.listenerCount('SIGTERM'), 0)
})

test('run() rejects (does not throw) for bad options', async () => {
  await assert.rejects(lameduck.run(server(), { period: 0 }), RangeError)
})

test('SIGTERM: lame-duck, the user’s own listener still runs, listeners are removed after', async () => {
  let mine = 0
  const own = () => mine++
  process.on('SIGTERM', own)
  try {
    const s = server()
    const runner = new lameduck.Runner(s, { ...quiet, period: 5000 })
    const running = runner.run()
    await runner.ready()
    assert.equal(runner.state, 'READY')
    process.kill(process.pid, 'SIGTERM')
    await running
    assert.deepEqual(s.calls, ['serve', 'shutdown'])
    assert.equal(mine, 1)
    assert.ok(s.shutdownCtx.remaining > 4000 && s.shutdownCtx.remaining <= 5000)
    assert.ok(Math.abs(s.shutdownCtx.deadline - (Date.now() + s.shutdownCtx.remaining)) < 1500)
    assert.equal(runner.state, 'STOPPED')
    assert.deepEqual(process.listeners('SIGTERM'), [own])
    assert.equal(process.listenerCount('SIGINT'), 0)
  } finally {
    process.removeListener('SIGTERM', own)
  }
})

test('an AbortSignal starts lame-duck exactly like a trigger signal', async () => {
  const controller = new AbortController()
  const s = server()
  const runner = new lameduck.Runner(s, { ...quiet, signal: controller.signal })
  const running = runner.run()
  await runner.ready()
  controller.abort()
  await running
  assert.deepEqual(s.calls, ['serve', 'shutdown'])
})

test('stop before run: CanceledError and no hook; a runner runs once (BusyError)', async () => {
  const s = server()
  const runner = new lameduck.Runner(s, quiet)
  runner.stop()
  await assert.rejects(runner.run(), (err) => err instanceof lameduck.CanceledError && err.code === 'LD_CANCELED')
  assert.equal(s.calls.length, 0)
  await assert.rejects(runner.ready(), /ended before the server became ready/)
  await assert.rejects(runner.run(), lameduck.BusyError)

  const aborted = new AbortController()
  aborted.abort()
  await assert.rejects(lameduck.run(server(), { ...quiet, signal: aborted.signal }), lameduck.CanceledError)
})

test('serve rejecting is FailedError with the original error as cause', async () => {
  const original = new Error('no config')
  const err = await lameduck.run(server({ serve: async () => Promise.reject(original) }), quiet).catch((e) => e)
  assert.ok(err instanceof lameduck.FailedError && err instanceof lameduck.LameDuckError && err instanceof Error)
  assert.equal(err.cause, original)
  assert.equal(err.message, 'Error: no config')
  assert.ok(err.failed && !err.expired && !err.forced)
  assert.equal(err.code, 'LD_FAILED')
})

test('shutdown throwing is ShutdownError; a thrown non-Error is the cause as well', async () => {
  const s = server()
  s.shutdown = function () {
    this.release()
    throw 'drain failed' // eslint-disable-line no-throw-literal
  }
  const runner = new lameduck.Runner(s, quiet)
  const running = runner.run()
  await runner.ready()
  runner.stop()
  const err = await running.catch((e) => e)
  assert.ok(err instanceof lameduck.ShutdownError, String(err))
  assert.equal(err.cause, 'drain failed')
})

test('a TimeoutError from shutdown means expired; ctx.signal aborts at the deadline; close error is the cause', async () => {
  const s = server()
  let aborted = false
  s.shutdown = async (ctx) => {
    await new Promise((resolve) => ctx.signal.addEventListener('abort', resolve))
    aborted = ctx.signal.aborted && ctx.done
    throw ctx.signal.reason
  }
  s.close = () => {
    s.release()
    throw new Error('reset everything')
  }
  const runner = new lameduck.Runner(s, { ...quiet, period: 200 })
  const running = runner.run()
  await runner.ready()
  runner.stop()
  const err = await running.catch((e) => e)
  assert.ok(err instanceof lameduck.ExpiredError, String(err))
  assert.ok(aborted)
  assert.equal(err.message, 'Lame-duck period has expired + Error: reset everything')
  assert.equal(err.cause.message, 'reset everything')
})

test('a hook that never settles is bounded (close at the deadline, then the close timeout)', async () => {
  const s = server({ shutdown: () => new Promise(() => {}) })
  const runner = new lameduck.Runner(s, { ...quiet, period: 200, closeTimeout: 300 })
  const running = runner.run()
  await runner.ready()
  const began = Date.now()
  runner.stop()
  const err = await running.catch((e) => e)
  assert.ok(err instanceof lameduck.ExpiredError)
  assert.ok(err.abandoned)
  assert.match(err.message, /shutdown did not return within 300ms \(abandoned\)/)
  assert.ok(Date.now() - began < 10000)
})

test('explicit readiness, state names, logger and onStateChange', async () => {
  const lines = []
  const states = []
  const s = server({
    serve(ctx) {
      assert.equal(ctx.remaining(), null)
      assert.equal(ctx.deadline, null)
      setTimeout(() => ctx.ready(), 100)
      return new Promise((r) => (this.release = r))
    },
  })
  const runner = new lameduck.Runner(s, {
    drainDelay: 50,
    explicitReady: true,
    logger: { info: (m) => lines.push(m) },
    onStateChange: (from, to) => states.push(to),
  })
  const running = runner.run()
  await runner.ready()
  runner.stop()
  await running
  assert.deepEqual(states, ['STARTING', 'SERVING', 'READY', 'DRAINING', 'SHUTTING_DOWN', 'STOPPED'])
  assert.deepEqual(lines, [
    'Waiting for signals: [interrupt terminated]',
    'Upgrade on signals: [hangup]',
    'Starting server',
    'Stop requested; draining for 50ms, then entering lame-duck mode for 3s',
    'Completed lame-duck mode',
    'Server stopped',
  ])
})

test('ESM import gives the same objects', async () => {
  const esm = await import('lameduck')
  assert.equal(esm.Runner, lameduck.Runner)
  assert.equal(esm.default.run, lameduck.run)
  assert.equal(typeof esm.httpServer, 'function')
})

test('the http adapter reports ready itself, once listening; the explicitReady option overrides it', async () => {
  const http = require('node:http')
  const net = require('node:net')
  /** A server whose listen() takes 300 ms to get going, so "called" and "listening" differ. */
  const slowServer = () => {
    const server = http.createServer((req, res) => res.end())
    server.listen = (...args) => (setTimeout(() => net.Server.prototype.listen.apply(server, args), 300), server)
    return server
  }
  for (const [explicitReady, listeningWhenReady] of [[undefined, true], [false, false]]) {
    const server = slowServer()
    const adapter = lameduck.httpServer(server, { port: 0, host: '127.0.0.1' }, { idleGrace: 0 })
    assert.equal(adapter.explicitReady, true)
    const runner = new lameduck.Runner(adapter, { ...quiet, signals: [], explicitReady })
    const running = runner.run()
    await runner.ready()
    assert.equal(server.listening, listeningWhenReady, `explicitReady: ${explicitReady}`)
    for (const until = Date.now() + 10000; !server.listening; ) {
      assert.ok(Date.now() < until, 'the server never listened')
      await new Promise((r) => setTimeout(r, 10))
    }
    runner.stop()
    await running
  }
  assert.throws(() => new lameduck.Runner({ ...server(), explicitReady: 'yes' }), /server.explicitReady must be a boolean/)
})
