'use strict'
// The Node leg of tests/conformance: one driver process of the cross-language conformance suite.
// The protocol (arguments, hook behaviours, event lines, exit status) is tests/conformance/README.md;
// tests/conformance.rs runs this file with `node` against the package in bindings/node, using only
// its public API. The driver passes every option on unchanged and never validates one itself:
// the library's own TypeError/RangeError is the `invalid_argument` result.
//
//   node tests/conformance/node_driver.js period_ms=1000 serve=block shutdown=release ...

const fs = require('node:fs')
const lameduck = require('../../bindings/node')

// ---------------------------------------------------------------------------------------------
// Arguments and generation

function usage(message) {
  fs.writeSync(2, `node_driver: ${message}\n`)
  process.exit(2)
}

const genText = process.env.CONFORMANCE_GEN
if (genText !== undefined && !/^\d+$/.test(genText)) usage(`malformed CONFORMANCE_GEN=${JSON.stringify(genText)}`)
const gen = genText === undefined ? 0 : Number(genText)

const KEYS = new Set([
  'period_ms', 'drain_delay_ms', 'close_timeout_ms', 'signals', 'upgrade_signals', 'repeat',
  'explicit_ready', 'logging', 'upgrade_confirm_ms', 'upgrade_timeout_ms', 'listen_timeout_ms',
  'listen', 'serve', 'shutdown', 'close', 'before_run', 'after_run', 'max_connections',
  'drain_quiet_ms', 'health',
])

const args = {}
const g1Args = {}
for (const arg of process.argv.slice(2)) {
  const eq = arg.indexOf('=')
  if (eq < 0) usage(`argument ${JSON.stringify(arg)} is not key=value`)
  let key = arg.slice(0, eq)
  const value = arg.slice(eq + 1)
  const target = key.startsWith('g1.') ? g1Args : args
  if (target === g1Args) key = key.slice(3)
  if (!KEYS.has(key)) usage(`unknown key ${JSON.stringify(arg.slice(0, eq))}`)
  target[key] = value
}
if (gen === 1) Object.assign(args, g1Args)

// Every event line is written at once, synchronously, so that ordering and flushing are exact.
function ev(text) {
  const buf = Buffer.from(`g${gen} ${text}\n`)
  for (let off = 0; off < buf.length; ) {
    try {
      off += fs.writeSync(1, buf, off)
    } catch (err) {
      if (err.code !== 'EAGAIN') throw err
    }
  }
}

// The behaviours each hook accepts (README's table), with each hook's default.
const BEHAVIOURS = {
  serve: ['block', 'return', 'fail', 'ready_block', 'stop_block', 'ignore_gate', 'hang', 'upgrade', 'upgrade_busy', 'hold_permits'],
  shutdown: ['fail', 'release', 'hang', 'wait_deadline', 'ignore_deadline', 'stop', 'release_permits', 'health_answers'],
  close: ['fail', 'release', 'hang'],
}
const DEFAULT_BEHAVIOUR = { serve: 'block', shutdown: 'release', close: 'release' }

function behaviour(hook) {
  const text = args[hook] ?? DEFAULT_BEHAVIOUR[hook]
  const m = /^fail:(-?\d+)$/.exec(text)
  if (m) return { name: 'fail', code: Number(m[1]) }
  if (text === 'fail' || !BEHAVIOURS[hook].includes(text)) usage(`${hook}=${text} is not a ${hook} behaviour`)
  return { name: text }
}
const behaviours = { serve: behaviour('serve'), shutdown: behaviour('shutdown'), close: behaviour('close') }
if (args.before_run !== undefined && args.before_run !== 'stop') usage(`before_run=${args.before_run}`)
if (args.after_run !== undefined && !['stop', 'run_again'].includes(args.after_run)) usage(`after_run=${args.after_run}`)
if (args.logging !== undefined && !['on', 'off'].includes(args.logging)) usage(`logging=${args.logging}`)

// An int option as a number; anything else goes to the library as it was given.
const int = (v) => (v !== undefined && /^-?\d+$/.test(v) ? Number(v) : v)
const bool = (v) => (v === 'true' ? true : v === 'false' ? false : v)
const signals = (v) => (v === undefined ? undefined : v === 'none' ? [] : v.split(','))

// ---------------------------------------------------------------------------------------------
// Kinds and hooks

/** A hook's failure N. */
class HookError extends Error {
  constructor(code) {
    super(`hook failure ${code}`)
    this.name = 'HookError'
    this.code = code
  }
}

// An error's KIND: its code without LD_, lower-cased ('unknown', with the error on stderr, for
// an error that is not the library's).
function kind(err) {
  if (typeof err?.code === 'string') return err.code.replace(/^LD_/, '').toLowerCase()
  fs.writeSync(2, `node_driver: not a lameduck error: ${err?.stack ?? err}\n`)
  return 'unknown'
}

function result(err) {
  const k = err === null ? 'ok' : kind(err)
  const cause = err?.cause instanceof HookError ? err.cause.code : 'none'
  ev(`result ${k} cause=${cause} abandoned=${err?.abandoned === true}`)
  process.exit(k === 'ok' ? 0 : 1)
}

// The gate (serve waits on it; release opens it), and a Promise for "close was called".
let openGate
const gate = new Promise((resolve) => (openGate = resolve))
let closeWasCalled
const closeCalled = new Promise((resolve) => (closeWasCalled = resolve))
const never = () => new Promise(() => {})

let runner = null

async function reportUpgrade(promise) {
  try {
    await promise
    ev('upgrade ok')
  } catch (err) {
    ev(`upgrade ${kind(err)}`)
  }
}

// Starts an upgrade in the background; once the state is UPGRADING (polled every 1 ms, up to
// 30 s), calls upgrade again and reports it; then reports the first one.
async function upgradeBusy() {
  const first = runner.upgrade().then(
    () => 'upgrade ok',
    (err) => `upgrade ${kind(err)}`,
  )
  const until = Date.now() + 30000
  while (runner.state !== 'UPGRADING' && Date.now() < until) await new Promise((r) => setTimeout(r, 1))
  await reportUpgrade(runner.upgrade())
  ev(await first)
}

// Resolves once the context is done: ctx.signal aborts, or ctx.done reads true (polled every
// 1 ms, since the core's deadline can pass a moment before the signal's timer fires).
function waitDeadline(ctx) {
  return new Promise((resolve) => {
    const timer = setInterval(() => ctx.done && settle(), 1)
    const settle = () => {
      clearInterval(timer)
      ctx.signal.removeEventListener('abort', settle)
      resolve()
    }
    if (ctx.done || ctx.signal.aborted) return settle()
    ctx.signal.addEventListener('abort', settle, { once: true })
  })
}

// The permits hold_permits took from the run's connection gate; release_permits and close give
// them back.
const MAX_HELD = 64
const held = []

// Admits through the gate (awaiting each acquire) until it refuses: with a limit, the last
// acquire waits on the full gate until lame-duck ends it.
async function holdPermits(ctx) {
  for (;;) {
    if (held.length === MAX_HELD) return ev('accept busy')
    try {
      held.push(await ctx.gate.acquire())
    } catch (err) {
      return ev(`accept ${kind(err)}`)
    }
    ev(`admitted ${held.length}`)
  }
}

function releasePermits() {
  for (const permit of held.splice(0)) permit.release()
}

// What each behaviour does: a value (sync hook) or a Promise (async hook). Failure N is thrown.
function act(hook, b, ctx) {
  switch (b.name) {
    case 'block':
      return gate
    case 'return':
      return undefined
    case 'fail':
      if (hook !== 'serve') openGate()
      throw new HookError(b.code)
    case 'release':
      openGate()
      return undefined
    case 'ready_block':
      ctx.ready()
      return gate
    case 'stop_block':
      runner.stop()
      return gate
    case 'ignore_gate':
      return closeCalled
    case 'hang':
      return never()
    case 'wait_deadline':
      return waitDeadline(ctx).then(() => {
        throw new lameduck.DeadlineExceededError()
      })
    case 'ignore_deadline':
      return closeCalled.then(() => openGate())
    case 'stop':
      runner.stop()
      openGate()
      return undefined
    case 'upgrade':
      return reportUpgrade(runner.upgrade()).then(() => gate)
    case 'upgrade_busy':
      return upgradeBusy().then(() => gate)
    case 'hold_permits':
      return holdPermits(ctx)
    case 'release_permits':
      releasePermits()
      openGate()
      return undefined
    case 'health_answers':
      for (const path of ['/ready', '/live', '/health', '/nope']) {
        const { status, contentType, body } = runner.health(path)
        ev(`answer ${path} ${status} [${contentType}] ${body.endsWith('\n') ? body.slice(0, -1) : body}`)
      }
      openGate()
      return undefined
  }
  throw new Error(`no behaviour ${b.name}`)
}

// A hook prints `enter` when it starts and `exit` when it returns or fails (a hang never exits).
function hook(name) {
  return (ctx) => {
    ev(`enter ${name}`)
    if (name === 'serve' && args.health !== undefined) ev(`health ${runner.healthAddress ?? 'not_running'}`)
    if (name === 'close') {
      closeWasCalled()
      releasePermits()
    }
    let value
    try {
      value = act(name, behaviours[name], ctx)
    } catch (err) {
      ev(`exit ${name}`)
      throw err
    }
    if (!(value instanceof Promise)) {
      ev(`exit ${name}`)
      return undefined
    }
    return value.then(
      () => ev(`exit ${name}`),
      (err) => {
        ev(`exit ${name}`)
        throw err
      },
    )
  }
}

// ---------------------------------------------------------------------------------------------
// The run

ev(`start pid=${process.pid}`)
process.env.CONFORMANCE_GEN = String(gen + 1) // a process started by an upgrade is the next generation

const options = {}
const set = (name, value) => value !== undefined && (options[name] = value)
set('period', int(args.period_ms))
set('drainDelay', int(args.drain_delay_ms))
set('closeTimeout', int(args.close_timeout_ms))
set('signals', signals(args.signals))
set('upgradeSignals', signals(args.upgrade_signals))
set('repeatSignal', args.repeat)
set('explicitReady', bool(args.explicit_ready))
set('upgradeConfirm', int(args.upgrade_confirm_ms))
set('upgradeTimeout', int(args.upgrade_timeout_ms))
set('listenTimeout', int(args.listen_timeout_ms))
set('maxConnections', int(args.max_connections))
set('drainQuiet', int(args.drain_quiet_ms))
set('health', args.health)
options.logger =
  args.logging === 'off'
    ? false
    : Object.fromEntries(['debug', 'info', 'warn', 'error'].map((level) => [level, (text) => ev(`log ${level} ${text}`)]))
options.onStateChange = (from, to) => ev(`state ${from} ${to}`)

const server = { serve: hook('serve'), shutdown: hook('shutdown'), close: hook('close') }
try {
  runner = new lameduck.Runner(server, options)
} catch (err) {
  if (!(err instanceof TypeError || err instanceof RangeError)) throw err
  ev(`message ${err.message}`)
  ev('result invalid_argument cause=none abandoned=false')
  process.exit(1)
}

let listener = null // kept for the whole run
if (args.listen !== undefined) {
  try {
    listener = lameduck.listen(args.listen)
  } catch (err) {
    const k = err instanceof TypeError || err instanceof RangeError ? 'invalid_argument' : 'system'
    fs.writeSync(2, `node_driver: listen(${args.listen}): ${err.message}\n`)
    ev(`result ${k} cause=none abandoned=false`)
    process.exit(1)
  }
  ev(`listen ${args.listen} shared=${lameduck.isShared(listener.fd)}`)
}

if (args.before_run === 'stop') runner.stop()

runner.run().then(
  () => afterRun(null),
  (err) => afterRun(err),
)

async function afterRun(err) {
  if (args.after_run === 'stop') {
    try {
      runner.stop()
      ev('stop_after ok')
    } catch (e) {
      ev(`stop_after ${kind(e)}`)
    }
  } else if (args.after_run === 'run_again') {
    try {
      await runner.run()
      ev('run_again ok')
    } catch (e) {
      ev(`run_again ${kind(e)}`)
    }
  }
  void listener
  if (err !== null) ev(`message ${err.message}`)
  result(err)
}
