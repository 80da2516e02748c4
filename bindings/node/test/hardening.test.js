'use strict'
// Issue 10 (hardening): a Runner in a worker thread, the adapter's abort listeners, ctx.signal
// against ctx.done, and the native side's error texts. The child processes are
// test/hardening_app.js; real signals (process.kill), real sockets, Node's http.
const { test } = require('node:test')
const assert = require('node:assert/strict')
const path = require('node:path')
const lameduck = require('..')
const { App, send } = require('./helpers')

const LIMIT = 20000
const script = path.join(__dirname, 'hardening_app.js')

function child(t, ...args) {
  const app = new App(args, { script })
  t.after(() => app.kill())
  return app
}

test('in a worker thread the default signals make run() reject with SignalSetupError, saying why; explicit upgradeSignals too', async (t) => {
  const cases = [
    [{ period: 1000 }, /signals \[SIGINT, SIGTERM\]/],
    [{ signals: ['SIGUSR2'] }, /signals \[SIGUSR2\]/],
    [{ signals: [], upgradeSignals: ['SIGHUP'] }, /upgradeSignals \[SIGHUP\]/],
  ]
  await Promise.all(
    cases.map(async ([options, which]) => {
      const app = child(t, 'worker', JSON.stringify(options))
      const [line] = await app.waitFor('^out: (rejected.*|state READY)', LIMIT)
      if (/READY/.test(line)) {
        // What it did before: "Waiting for signals", yet a SIGTERM kills the whole process.
        app.signal('SIGTERM')
        const { code, signal } = await app.finish(LIMIT)
        assert.fail(`the run started in a worker with ${JSON.stringify(options)}; SIGTERM then ended the process with code ${code}, signal ${signal}:\n${app.text()}`)
      }
      assert.match(line, /^out: rejected SignalSetupError LD_SIGNAL_SETUP \[SignalSetupError,LameDuckError\] true: /)
      assert.match(line, which)
      assert.match(line, /worker thread/)
      assert.match(line, /main thread only/)
      assert.match(line, /signals: \[\]/)
      assert.match(line, /stop\(\)/)
      assert.ok(!/out: state /.test(app.text()), `no hook may run:\n${app.text()}`)
      await app.waitFor('^out: worker exited 0', LIMIT)
      assert.deepEqual(await app.finish(LIMIT), { code: 0, signal: null })
    }),
  )
})

test('in a worker thread with signals: [] the run works: the main thread takes SIGTERM and the worker calls stop()', async (t) => {
  const app = child(t, 'worker', JSON.stringify({ signals: [], period: 5000 }), 'forward')
  await app.waitFor('^out: state READY', LIMIT)
  app.signal('SIGTERM')
  await app.waitFor('^out: resolved', LIMIT)
  await app.waitFor('^out: worker exited 0', LIMIT)
  assert.deepEqual(await app.finish(LIMIT), { code: 0, signal: null })
  const text = app.text()
  assert.match(text, /out: log Stop requested; entering lame-duck mode for 5s/)
  // Off the main thread the default upgrade signal (SIGHUP) is not taken, and not claimed.
  assert.doesNotMatch(text, /Upgrade on signals/)
  assert.doesNotMatch(text, /Waiting for signals: \[/)
})

test('a request in flight long past idleGrace: the abort listeners stay bounded, no MaxListenersExceededWarning', async (t) => {
  const app = child(t, 'inflight', '50')
  const [, port] = await app.waitFor('^out: port (\\d+)', LIMIT)
  await app.waitFor('^out: state READY', LIMIT)
  const hold = send(Number(port), '/hold')
  await app.waitFor('^out: request /hold', LIMIT)
  app.signal('SIGTERM')
  const body = await hold.ended // answered idleGrace + 800 ms into lame-duck: ~160 polls of 5 ms
  const [, most] = body.match(/most abort listeners (\d+)/) ?? assert.fail(`no answer:\n${body}\n${app.text()}`)
  assert.ok(Number(most) >= 1 && Number(most) <= 3, `ctx.signal carried ${most} abort listeners:\n${app.text()}`)
  assert.deepEqual(await app.finish(LIMIT), { code: 0, signal: null })
  assert.match(app.text(), /out: resolved/)
  assert.doesNotMatch(app.text(), /MaxListenersExceededWarning|out: warning/)
})

test('ctx.signal aborts with a TimeoutError only once ctx.done reads true (200 runs of 1-5 ms)', async () => {
  const quiet = { logger: false, signals: [], upgradeSignals: [] }
  const violations = []
  let deadlineAborts = 0
  let waitingRuns = 0
  for (let i = 0; i < 200; i++) {
    // 0: shutdown waits for the abort and throws its reason; 1: waits, then resolves;
    // 2: resolves at once (the run may end before the deadline).
    const variant = i % 3
    const period = 1 + (i % 5)
    let release
    const released = new Promise((r) => (release = r))
    let aborted = false
    const server = {
      serve(ctx) {
        ctx.signal.addEventListener('abort', () => {
          aborted = true
          const { reason } = ctx.signal
          const done = ctx.done
          if (reason?.name === 'TimeoutError') {
            deadlineAborts++
            if (done !== true) violations.push(`run ${i} (variant ${variant}, ${period} ms): TimeoutError abort while ctx.done is ${done}, remaining ${ctx.remaining()}`)
            else if (ctx.remaining() !== 0) violations.push(`run ${i}: done but remaining ${ctx.remaining()}`)
            if (!(reason instanceof lameduck.DeadlineExceededError)) violations.push(`run ${i}: reason ${reason}`)
          } else if (reason?.name !== 'AbortError') {
            violations.push(`run ${i} (variant ${variant}): the signal aborted with ${reason}`)
          }
        })
        return released
      },
      async shutdown(ctx) {
        if (variant === 2) return release()
        if (!ctx.signal.aborted) await new Promise((resolve) => ctx.signal.addEventListener('abort', resolve, { once: true }))
        release()
        if (variant === 0) throw ctx.signal.reason
      },
      close: () => release(),
    }
    if (variant !== 2) waitingRuns++
    const runner = new lameduck.Runner(server, { ...quiet, period })
    const running = runner.run()
    await runner.ready()
    runner.stop()
    const outcome = await running.then(
      () => 'resolved',
      (err) => err,
    )
    if (variant === 0 && !(outcome instanceof lameduck.ExpiredError)) violations.push(`run ${i}: ${outcome}`)
    if (variant !== 0 && outcome !== 'resolved' && !(outcome instanceof lameduck.ExpiredError)) violations.push(`run ${i}: ${outcome}`)
    if (!aborted) violations.push(`run ${i} (variant ${variant}): ctx.signal never aborted`)
  }
  assert.deepEqual(violations, [])
  assert.ok(deadlineAborts >= waitingRuns, `${deadlineAborts} deadline aborts for ${waitingRuns} runs that waited for one`)
})

test('serve is called before ready() resolves and before shutdown (300 runs)', async () => {
  // The core calls serve on a thread of its own: its hook event used to reach JS after the
  // READY state in about half the runs, and on a busy machine after shutdown's.
  const misordered = []
  for (let i = 0; i < 300; i++) {
    const calls = []
    let release
    const released = new Promise((r) => (release = r))
    const server = {
      serve: () => (calls.push('serve'), released),
      shutdown: () => (calls.push('shutdown'), release()),
      close: () => release(),
    }
    const onStateChange = (from, to) => to === 'READY' && calls.push('READY')
    const runner = new lameduck.Runner(server, { logger: false, signals: [], upgradeSignals: [], onStateChange })
    const running = runner.run()
    await runner.ready()
    calls.push('ready()')
    runner.stop()
    await running
    if (calls.join() !== 'serve,READY,ready(),shutdown') misordered.push(`run ${i}: ${calls.join(', ')}`)
  }
  assert.deepEqual(misordered, [])
})

test('error texts from the native side are in Display form, not Rust Debug', () => {
  const server = { serve() {}, shutdown() {}, close() {} }
  assert.throws(() => new lameduck.Runner(server, { upgradeCommand: ['node', 'a\0b'] }), {
    name: 'RangeError',
    message: 'upgradeCommand=["node","a\\u0000b"]: upgrade command is invalid: it contains a NUL byte',
  })
  assert.throws(() => new lameduck.Runner(server, { upgradeCommand: [] }), {
    name: 'RangeError',
    message: 'upgradeCommand=[]: upgrade command is invalid: the program is empty',
  })
  assert.throws(() => new lameduck.Runner(server, { upgradeSignals: ['SIGUSR1', 'SIGTERM'] }), {
    name: 'RangeError',
    message: 'upgradeSignals=[10,15]: signal 15 (terminated) cannot both trigger lame-duck and start an upgrade',
  })
})
