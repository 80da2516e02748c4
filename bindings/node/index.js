'use strict'
/**
 * lameduck for Node: coordinated lame-duck shutdown, on the same Rust core as the C and
 * Python packages. This file converts types, errors, signals and the event loop; the
 * lifecycle itself is the core's (see src/lib.rs).
 */
const fs = require('node:fs')
const os = require('node:os')
const path = require('node:path')
const net = require('node:net')
const { isMainThread } = require('node:worker_threads')

const native = loadNative()

function loadNative() {
  // `napi build --platform` names the addon after the platform, e.g. lameduck.linux-x64-gnu.node.
  const candidates = fs.readdirSync(__dirname).filter((f) => /^lameduck\..+\.node$/.test(f))
  const preferred = candidates.filter((f) => f.includes(`${process.platform}-${process.arch}`))
  const errors = []
  for (const file of [...preferred, ...candidates]) {
    try {
      return require(path.join(__dirname, file))
    } catch (err) {
      errors.push(`${file}: ${err.message}`)
    }
  }
  throw new Error(
    `lameduck: the native addon is not built (run \`npm install\` or \`npm run build\` in ${__dirname})` +
      (errors.length ? `: ${errors.join('; ')}` : ''),
  )
}

// ---------------------------------------------------------------------------------------------
// Errors

const CODES = {
  EXPIRED: 'LD_EXPIRED',
  FAILED: 'LD_FAILED',
  SHUTDOWN_FAILED: 'LD_SHUTDOWN_FAILED',
  FORCED: 'LD_FORCED',
  CANCELED: 'LD_CANCELED',
  BUSY: 'LD_BUSY',
  NOT_RUNNING: 'LD_NOT_RUNNING',
  PANIC: 'LD_PANIC',
  SYSTEM: 'LD_SYSTEM',
  SIGNAL_SETUP: 'LD_SIGNAL_SETUP',
  UPGRADE_FAILED: 'LD_UPGRADE_FAILED',
}

/** Every failed run is a LameDuckError; a hook's own error is its `.cause`. */
class LameDuckError extends Error {
  constructor(message, { code = 'LD_ERROR', abandoned = false, cause } = {}) {
    super(message, cause === undefined ? undefined : { cause })
    this.name = new.target.name
    /** `LD_EXPIRED`, `LD_FAILED`, `LD_SHUTDOWN_FAILED`, `LD_FORCED`, `LD_CANCELED`, … */
    this.code = code
    /** True when a hook did not settle within the close timeout and was left running. */
    this.abandoned = abandoned
  }
  /** Go's Expired: the period ran out (or was forced short) and close was called. */
  get expired() {
    return this.code === 'LD_EXPIRED' || this.code === 'LD_FORCED'
  }
  /** Go's Failed: serve threw or rejected. */
  get failed() {
    return this.code === 'LD_FAILED'
  }
  /** A repeated signal cut the period short. */
  get forced() {
    return this.code === 'LD_FORCED'
  }
}
class ExpiredError extends LameDuckError {}
class ForcedError extends ExpiredError {}
class FailedError extends LameDuckError {}
class ShutdownError extends LameDuckError {}
class CanceledError extends LameDuckError {}
/**
 * The signals cannot be taken here: run() in a worker thread with trigger (or explicit upgrade)
 * signals, which Node delivers to the main thread only.
 */
class SignalSetupError extends LameDuckError {}
class BusyError extends LameDuckError {}
/** An upgrade's new process could not start, exited, or was not ready in time; it was terminated and this process goes on serving. */
class UpgradeFailedError extends LameDuckError {}
/** The runner is not serving (not started, in lame-duck, or over): there is nothing to upgrade. */
class NotRunningError extends LameDuckError {}

/**
 * What a shutdown hook throws (or rejects with) to say "I ran out of time" (Go's
 * context.DeadlineExceeded): close is then called and the run rejects with ExpiredError.
 * Any error named 'TimeoutError' means the same, e.g. `ctx.signal.reason`.
 */
class DeadlineExceededError extends Error {
  constructor(message = 'lame-duck deadline exceeded') {
    super(message)
    this.name = 'TimeoutError'
  }
}

const ERROR_CLASSES = {
  EXPIRED: ExpiredError,
  FORCED: ForcedError,
  FAILED: FailedError,
  SHUTDOWN_FAILED: ShutdownError,
  CANCELED: CanceledError,
  SIGNAL_SETUP: SignalSetupError,
  BUSY: BusyError,
  UPGRADE_FAILED: UpgradeFailedError,
  NOT_RUNNING: NotRunningError,
}

function describeError(err) {
  if (err instanceof Error) return err.message ? `${err.name}: ${err.message}` : err.name
  return String(err)
}

function describeValue(value) {
  return typeof value === 'string' ? JSON.stringify(value) : String(value)
}

// ---------------------------------------------------------------------------------------------
// Options

const DEFAULTS = {
  period: 3000,
  signals: ['SIGINT', 'SIGTERM'],
  drainDelay: 0,
  closeTimeout: 5000,
  repeatSignal: 'force',
  upgradeSignals: ['SIGHUP'],
  upgradeTimeout: 60000,
  listenTimeout: 10000,
  upgradeConfirm: 1000,
  upgradeWithoutListeners: false,
}
// explicitReady has no default here: left out, the server decides (see Runner).
const OPTION_NAMES = new Set([...Object.keys(DEFAULTS), 'explicitReady', 'logger', 'signal', 'onStateChange', 'upgradeCommand', 'pidFile'])

function milliseconds(name, value) {
  if (typeof value !== 'number') throw new TypeError(`${name} must be a number of milliseconds, got ${describeValue(value)}`)
  if (!Number.isFinite(value) || value < 0) throw new RangeError(`${name}=${value} is invalid: it must be a finite, non-negative number of milliseconds`)
  return value
}

function signalNumbers(signals, option = 'signals') {
  if (!Array.isArray(signals)) throw new TypeError(`${option} must be an array of signal names, got ${describeValue(signals)}`)
  return signals.map((s) => {
    if (typeof s === 'number' && Number.isInteger(s)) {
      const name = Object.keys(os.constants.signals).find((n) => os.constants.signals[n] === s)
      if (!name) throw new RangeError(`${option}: ${s} is not a signal number`)
      return [name, s]
    }
    if (typeof s !== 'string') throw new TypeError(`${option}: ${describeValue(s)} is not a signal name`)
    const name = s.toUpperCase().startsWith('SIG') ? s.toUpperCase() : `SIG${s.toUpperCase()}`
    const number = os.constants.signals[name]
    if (number === undefined) throw new RangeError(`${option}: ${JSON.stringify(s)} is not a signal name`)
    return [name, number]
  })
}

/** Why run() refuses its signals in a worker thread, and what to do instead. */
function workerSignalsMessage(o) {
  const names = (signals) => `[${signals.map(([name]) => name).join(', ')}]`
  const which = [o.signals.length > 0 && `signals ${names(o.signals)}`, o.upgradeSignals.length > 0 && `upgradeSignals ${names(o.upgradeSignals)}`]
  return (
    `${which.filter(Boolean).join(' and ')} cannot be taken in a worker thread: Node delivers signals to the main thread only, ` +
    'so process.on() in a Worker never sees them (and unless the main thread listens, they end the whole process). ' +
    'Pass signals: [] (and leave upgradeSignals out), and call runner.stop() (or runner.upgrade()) when the main thread tells ' +
    'the worker to, say with a message; or run the Runner on the main thread'
  )
}

function normalizeOptions(options) {
  if (options === undefined) options = {}
  if (options === null || typeof options !== 'object') throw new TypeError(`options must be an object, got ${describeValue(options)}`)
  for (const key of Object.keys(options)) {
    if (!OPTION_NAMES.has(key)) throw new TypeError(`unknown option ${JSON.stringify(key)}`)
  }
  const o = { ...DEFAULTS, ...Object.fromEntries(Object.entries(options).filter(([, v]) => v !== undefined)) }
  const logger = options.logger === undefined ? console : options.logger
  if (logger !== false && (logger === null || typeof logger !== 'object' || typeof (logger.info || logger.log) !== 'function')) {
    throw new TypeError(`logger must be a console-like object or false, got ${describeValue(logger)}`)
  }
  if (typeof o.repeatSignal !== 'string') throw new TypeError(`repeatSignal must be 'force', 'ignore' or 'exit', got ${describeValue(o.repeatSignal)}`)
  if (!['force', 'ignore', 'exit'].includes(o.repeatSignal)) {
    throw new RangeError(`repeatSignal=${JSON.stringify(o.repeatSignal)} is invalid: use 'force', 'ignore' or 'exit'`)
  }
  if (o.signal !== undefined && !(o.signal instanceof AbortSignal)) throw new TypeError(`signal must be an AbortSignal, got ${describeValue(o.signal)}`)
  if (o.onStateChange !== undefined && typeof o.onStateChange !== 'function') throw new TypeError('onStateChange must be a function')
  if (o.explicitReady !== undefined && typeof o.explicitReady !== 'boolean') throw new TypeError(`explicitReady must be a boolean, got ${describeValue(o.explicitReady)}`)
  if (typeof o.upgradeWithoutListeners !== 'boolean') {
    throw new TypeError(`upgradeWithoutListeners must be a boolean, got ${describeValue(o.upgradeWithoutListeners)}`)
  }
  if (o.upgradeCommand !== undefined && (!Array.isArray(o.upgradeCommand) || !o.upgradeCommand.every((a) => typeof a === 'string'))) {
    throw new TypeError(`upgradeCommand must be an array of strings (an argv), got ${describeValue(o.upgradeCommand)}`)
  }
  if (o.pidFile !== undefined && typeof o.pidFile !== 'string') throw new TypeError(`pidFile must be a path string, got ${describeValue(o.pidFile)}`)
  return {
    period: milliseconds('period', o.period),
    signals: signalNumbers(o.signals),
    drainDelay: milliseconds('drainDelay', o.drainDelay),
    closeTimeout: milliseconds('closeTimeout', o.closeTimeout),
    repeatSignal: o.repeatSignal,
    explicitReady: o.explicitReady,
    logger,
    signal: o.signal,
    onStateChange: o.onStateChange,
    upgradeSignals: signalNumbers(o.upgradeSignals, 'upgradeSignals'),
    upgradeTimeout: milliseconds('upgradeTimeout', o.upgradeTimeout),
    upgradeCommand: o.upgradeCommand,
    pidFile: o.pidFile,
    listenTimeout: milliseconds('listenTimeout', o.listenTimeout),
    upgradeConfirm: milliseconds('upgradeConfirm', o.upgradeConfirm),
    upgradeWithoutListeners: o.upgradeWithoutListeners,
  }
}

// ---------------------------------------------------------------------------------------------
// Context and Runner

/** What serve and shutdown receive: the lame-duck deadline, an AbortSignal, readiness. */
class Context {
  #native
  #controller
  constructor(nativeRunner, controller) {
    this.#native = nativeRunner
    this.#controller = controller
  }
  /** The deadline as a `Date.now()`-style timestamp in ms, or null before lame-duck. */
  get deadline() {
    return this.#native.deadline()
  }
  /** Milliseconds left until the deadline; null before lame-duck; 0 once done. */
  remaining() {
    return this.#native.remaining()
  }
  /** True once the deadline passed or a repeated signal forced the close. */
  get done() {
    return this.#native.done()
  }
  /** Aborts at the deadline (or when close is forced): hand it to fetch, timers, streams. */
  get signal() {
    return this.#controller.signal
  }
  /** Reports that serve is listening (see the explicitReady option). */
  ready() {
    this.#native.ready()
  }
}

const LOG_METHODS = ['debug', 'info', 'warn', 'error']
const IN_FLIGHT = Symbol('lameduck.inFlight')

/** Runs one server once under lame-duck coordination (Go's lameduck.Runner). */
class Runner {
  #server
  #options
  #native
  #started = false
  #readiness = 'pending' // 'pending' | 'ready' | 'ended'
  #readyWaiters = []
  #causes = new Map()
  #nextCause = 1
  #controller = new AbortController()
  #deadlineTimer = null
  #context
  #serveCalled = false
  #held = null // events waiting for serve's hook event (see #dispatch)

  constructor(server, options) {
    if (server === null || typeof server !== 'object' && typeof server !== 'function') {
      throw new TypeError(`server must be an object with serve, shutdown and close methods, got ${describeValue(server)}`)
    }
    for (const hook of ['serve', 'shutdown', 'close']) {
      if (typeof server[hook] !== 'function') throw new TypeError(`server has no ${hook}() method`)
    }
    if (server.explicitReady !== undefined && typeof server.explicitReady !== 'boolean') {
      throw new TypeError(`server.explicitReady must be a boolean, got ${describeValue(server.explicitReady)}`)
    }
    this.#server = server
    this.#options = normalizeOptions(options)
    const o = this.#options
    // In a worker thread no signal can be taken (see run()): the default upgrade signal is
    // dropped, so that the core does not claim to upgrade on it; upgrade() still works.
    if (!isMainThread && options?.upgradeSignals === undefined) o.upgradeSignals = []
    // A server that says it reports readiness itself (the http adapter does, once listening)
    // gets explicit readiness unless the explicitReady option says otherwise.
    const explicitReady = o.explicitReady ?? server.explicitReady === true
    try {
      this.#native = new native.NativeRunner(
        o.period,
        o.signals.map(([, n]) => n),
        o.drainDelay,
        o.closeTimeout,
        o.repeatSignal,
        explicitReady,
        o.logger !== false,
        o.upgradeSignals.map(([, n]) => n),
        o.upgradeTimeout,
        o.upgradeCommand ?? null,
        o.pidFile ?? null,
        o.listenTimeout,
        o.upgradeConfirm,
        o.upgradeWithoutListeners,
      )
    } catch (err) {
      throw new RangeError(err.message)
    }
    this.#context = new Context(this.#native, this.#controller)
  }

  /** NOT_STARTED, STARTING, SERVING, READY, UPGRADING, HANDING_OVER, DRAINING, SHUTTING_DOWN, CLOSING, STOPPED or FAILED. */
  get state() {
    return this.#native.state
  }

  /** Starts lame-duck exactly like a trigger signal. Before run() it makes run() reject with CanceledError. */
  stop() {
    this.#native.stop()
  }

  /**
   * Upgrades with zero downtime; resolves to the new process's pid. Starts the program again
   * (`upgradeCommand`, by default this process's own command line) with every listener from
   * `listen()` at fd 3.. (LISTEN_FDS, LISTEN_PID, LISTEN_FDNAMES), waits until it reports ready
   * (a lameduck program does so by itself; any other writes `READY=1\n` to the fd named by
   * LAMEDUCK_READY_FD), then this run enters lame-duck exactly as for a stop signal.
   * Rejects with UpgradeFailedError (the new process failed and was terminated; this one goes on
   * serving; or the upgrade was refused: no listener known to lameduck without
   * upgradeWithoutListeners, or a start_server worker), BusyError (one is in flight),
   * NotRunningError or CanceledError.
   */
  async upgrade() {
    const outcome = await this.#native.upgrade()
    if (!outcome.error) return outcome.pid
    const Class = ERROR_CLASSES[outcome.error] || LameDuckError
    throw new Class(outcome.message, { code: CODES[outcome.error] || `LD_${outcome.error}` })
  }

  /** Resolves once ready (listening, with explicitReady); rejects if the run ends without becoming ready. */
  ready() {
    if (this.#readiness === 'ready') return Promise.resolve()
    if (this.#readiness === 'ended') return Promise.reject(new LameDuckError('the run ended before the server became ready', { code: 'LD_NOT_RUNNING' }))
    return new Promise((resolve, reject) => this.#readyWaiters.push({ resolve, reject }))
  }

  /**
   * Runs until the server stopped; rejects with a LameDuckError subclass otherwise. In a worker
   * thread it rejects with SignalSetupError unless `signals` is [] and no `upgradeSignals` were
   * given: Node delivers signals to the main thread only.
   */
  run() {
    if (this.#started) return Promise.reject(new BusyError('the runner has already run; create a new Runner for another run', { code: 'LD_BUSY' }))
    this.#started = true
    const o = this.#options
    if (!isMainThread && (o.signals.length > 0 || o.upgradeSignals.length > 0)) {
      // process.on() in a Worker never sees a signal: the signal would reach the main thread,
      // and with nobody listening there it ends the whole process. Refuse, as Python does.
      this.#setReadiness('ended')
      return Promise.reject(new SignalSetupError(workerSignalsMessage(o), { code: CODES.SIGNAL_SETUP }))
    }
    if (o.signal?.aborted) this.#native.stop()
    return new Promise((resolve, reject) => {
      const listeners = [...o.signals, ...o.upgradeSignals].map(([name, number]) => {
        const listener = () => this.#native.deliverSignal(number)
        process.on(name, listener)
        return [name, listener]
      })
      const onAbort = () => this.#native.stop()
      o.signal?.addEventListener('abort', onAbort, { once: true })
      const finish = (event) => {
        for (const [name, listener] of listeners) process.removeListener(name, listener)
        o.signal?.removeEventListener('abort', onAbort)
        clearTimeout(this.#deadlineTimer)
        this.#abortContext('the run is over')
        this.#setReadiness('ended')
        if (!event.error) return resolve()
        const Class = ERROR_CLASSES[event.error] || LameDuckError
        const cause = event.cause === undefined || event.cause === null ? undefined : this.#causes.get(event.cause)
        this.#causes.clear()
        reject(new Class(event.message, { code: CODES[event.error] || `LD_${event.error}`, abandoned: !!event.abandoned, cause }))
      }
      try {
        this.#native.run((event) => this.#dispatch(event, finish))
      } catch (err) {
        finish({ error: 'BUSY', message: err.message })
      }
    })
  }

  /**
   * Passes the core's events on in order, but for one thing. The core calls serve on a thread of
   * its own, whose hook event can reach JS after the READY state (in about half the runs) or, on
   * a busy machine, after shutdown's. So from SERVING (serve is then sure to come) until serve
   * has been called, every other event waits: serve is called first, and ready() resolves only
   * once it has been. `done` waits for nothing (a starved serve thread may never get through); the
   * hook calls still held then are dropped, since the core has given up on them.
   */
  #dispatch(event, finish) {
    if (event.kind === 'hook' && event.hook === 'serve') {
      this.#serveCalled = true
      this.#handle(event, finish)
      return this.#release(finish, true)
    }
    if (this.#held && event.kind !== 'done') return this.#held.push(event)
    this.#release(finish, false)
    this.#handle(event, finish)
    if (event.kind === 'state' && event.to === 'SERVING' && !this.#serveCalled) this.#held = []
  }

  #release(finish, hooksToo) {
    const held = this.#held ?? []
    this.#held = null
    for (const event of held) if (hooksToo || event.kind !== 'hook') this.#handle(event, finish)
  }

  #handle(event, finish) {
    switch (event.kind) {
      case 'log':
        return this.#log(event.level, event.message)
      case 'state':
        return this.#onState(event.from, event.to)
      case 'hook':
        return this.#callHook(event.hook, event.token)
      case 'done':
        return finish(event)
    }
  }

  #log(level, message) {
    const logger = this.#options.logger
    if (logger === false) return
    const method = logger[LOG_METHODS[level]] || logger.info || logger.log
    method.call(logger, `lameduck: ${message}`)
  }

  #onState(from, to) {
    if (to === 'READY') this.#setReadiness('ready')
    if (to === 'CLOSING') this.#abortContext('close was called')
    if (this.#options.onStateChange) {
      try {
        this.#options.onStateChange(from, to)
      } catch (err) {
        process.emitWarning(`lameduck: onStateChange threw: ${describeError(err)}`)
      }
    }
  }

  #setReadiness(readiness) {
    if (this.#readiness !== 'pending') return
    this.#readiness = readiness
    for (const { resolve, reject } of this.#readyWaiters.splice(0)) {
      if (readiness === 'ready') resolve()
      else reject(new LameDuckError('the run ended before the server became ready', { code: 'LD_NOT_RUNNING' }))
    }
  }

  /**
   * Aborts ctx.signal, unless it has aborted already. The reason is a DeadlineExceededError
   * (a TimeoutError) only when ctx.done reads true; otherwise (the run ended before the
   * deadline, or close came without it) an AbortError saying `why`, so that a TimeoutError
   * reason always means the deadline.
   */
  #abortContext(why) {
    if (this.#controller.signal.aborted) return
    this.#controller.abort(this.#native.done() ? new DeadlineExceededError() : new DOMException(why, 'AbortError'))
  }

  /**
   * Aborts ctx.signal once the core says the deadline has passed. Node's timers count whole
   * milliseconds on their own clock and may fire a little before the core's deadline, so the
   * timer re-arms until ctx.done reads true: the signal never aborts before ctx.done.
   */
  #armDeadline() {
    const left = this.#native.remaining()
    if (left === null || this.#controller.signal.aborted) return
    if (left <= 0 || this.#native.done()) return this.#abortContext('the deadline has passed')
    this.#deadlineTimer = setTimeout(() => this.#armDeadline(), Math.ceil(left))
    this.#deadlineTimer.unref()
  }

  #callHook(hook, token) {
    if (hook === 'shutdown') this.#armDeadline()
    const fail = (err) => {
      const id = this.#nextCause++
      this.#causes.set(id, err)
      const deadline = hook === 'shutdown' && err !== null && typeof err === 'object' && err.name === 'TimeoutError'
      this.#native.settle(token, describeError(err), id, deadline)
    }
    let result
    try {
      result = hook === 'close' ? this.#server.close() : this.#server[hook](this.#context)
    } catch (err) {
      return fail(err)
    }
    Promise.resolve(result).then(() => this.#native.settle(token, null, null, false), fail)
  }
}

/** True when the listening socket `fd` is shared with other processes (inherited, or handed on by an upgrade). */
function isShared(fd) {
  if (typeof fd !== 'number') throw new TypeError(`fd must be a number, got ${describeValue(fd)}`)
  return native.isShared(fd)
}

/** The core's errors as JS ones: a RangeError for a bad value, an Error otherwise. */
function nativeError(err) {
  return err.code === 'InvalidArg' ? new RangeError(err.message) : new Error(err.message)
}

/**
 * A listening socket for `address` (`PORT`, `HOST:PORT`, `[V6]:PORT` or a unix socket path),
 * as `{ fd }`, which `server.listen()` accepts. It is the socket this process inherited for that
 * address when there is one: systemd socket activation (LISTEN_FDS with LISTEN_PID equal to this
 * process, matched by `name` or by address), then Server::Starter's SERVER_STARTER_PORT.
 * Otherwise it is a fresh one (SO_REUSEADDR, close-on-exec, backlog SOMAXCONN). The variables
 * are read, and removed, on the first call. Throws a TypeError for a non-string, a RangeError
 * naming the value for a bad address or a malformed variable, and an Error when binding fails.
 */
function listen(address, name) {
  if (typeof address !== 'string') throw new TypeError(`address must be a string, got ${describeValue(address)}`)
  if (name !== undefined && typeof name !== 'string') throw new TypeError(`name must be a string, got ${describeValue(name)}`)
  try {
    return { fd: native.listen(address, name ?? null) }
  } catch (err) {
    throw nativeError(err)
  }
}

/** The descriptor of a listening net.Server (http, https, http2 included), or undefined. */
function serverFd(server) {
  const fd = server?._handle?.fd
  return typeof fd === 'number' && fd >= 0 ? fd : undefined
}

/**
 * Registers a listening socket bound by other means, so that an upgrade hands it on exactly like
 * one from `listen()`: `target` is its descriptor, or a `net.Server` (http, https, http2) that is
 * listening. The socket stays the caller's; adopting it again is harmless. Throws a TypeError for
 * a wrong type, a RangeError for a descriptor that is not a listening socket (or a server that
 * is not listening) or a bad `name`.
 */
function adopt(target, name) {
  let fd = target
  if (target !== null && typeof target === 'object' && typeof target.listen === 'function') {
    if (!target.listening) throw new RangeError('adopt(server): the server is not listening')
    fd = serverFd(target)
    if (fd === undefined) throw new RangeError('adopt(server): the server has no file descriptor')
  } else if (typeof fd !== 'number' || !Number.isInteger(fd)) {
    throw new TypeError(`adopt: expected a file descriptor or a listening net.Server, got ${describeValue(target)}`)
  }
  if (name !== undefined && typeof name !== 'string') throw new TypeError(`name must be a string, got ${describeValue(name)}`)
  try {
    native.adopt(fd, name ?? null)
  } catch (err) {
    throw nativeError(err)
  }
}

/** Runs `server` under lame-duck coordination (Go's lameduck.Run). */
function run(server, options) {
  let runner
  try {
    runner = new Runner(server, options)
  } catch (err) {
    return Promise.reject(err)
  }
  return runner.run()
}

// ---------------------------------------------------------------------------------------------
// Adapter for http, https and http2 servers

// Node listen options that a socket from the core's listen() cannot honour.
const UNSUPPORTED_LISTEN_OPTIONS = ['ipv6Only', 'reusePort']
// Node listen options passed on to server.listen({ fd, … }).
const PASSED_LISTEN_OPTIONS = ['backlog', 'exclusive', 'signal']

/**
 * How httpServer listens, decided (and checked) when the adapter is made:
 * - `{ address }`: the core's listen(address) binds (or takes the inherited socket), then
 *   server.listen({ fd }); `{ port, host }` is `HOST:PORT` (`[V6]:PORT`), or `PORT` (every IPv4
 *   address) without a host; `{ path }` is a unix socket;
 * - `{ raw }`: `{ fd }` or `{ handle }` goes to server.listen() as it is, and the listening
 *   socket is adopted.
 */
function listenPlan(listenOptions) {
  let o = listenOptions
  if (o === undefined || o === null) o = {}
  else if (typeof o === 'number') o = { port: o }
  else if (typeof o === 'string') o = /^\d+$/.test(o) ? { port: Number(o) } : { path: o }
  else if (typeof o !== 'object') throw new TypeError(`httpServer(server, listenOptions): listenOptions must be an object, a port or a path, got ${describeValue(o)}`)
  if (o.fd !== undefined || o.handle !== undefined || o._handle !== undefined) return { raw: o }
  for (const key of UNSUPPORTED_LISTEN_OPTIONS) {
    if (o[key]) {
      throw new TypeError(
        `httpServer: listen option ${key} is not supported: lameduck binds the socket (so that an upgrade can hand it on); ` +
          'bind it yourself and pass { fd } or a server that is already listening',
      )
    }
  }
  const pass = Object.fromEntries(PASSED_LISTEN_OPTIONS.filter((k) => o[k] !== undefined).map((k) => [k, o[k]]))
  if (o.path !== undefined && o.port !== undefined) throw new RangeError('httpServer: give listen options port (and host) or path, not both')
  if (o.path !== undefined) {
    if (typeof o.path !== 'string' || o.path === '') throw new TypeError(`httpServer: path must be a non-empty string, got ${describeValue(o.path)}`)
    if (o.host !== undefined) throw new RangeError('httpServer: a unix socket path takes no host')
    const mode = (o.readableAll ? 0o444 : 0) | (o.writableAll ? 0o222 : 0)
    return { address: o.path.startsWith('/') ? o.path : `unix:${o.path}`, path: o.path, mode, pass }
  }
  let port = o.port ?? 0
  if (typeof port === 'string' && /^\d+$/.test(port)) port = Number(port)
  if (typeof port !== 'number') throw new TypeError(`httpServer: port must be a number, got ${describeValue(o.port)}`)
  if (!Number.isInteger(port) || port < 0 || port > 65535) throw new RangeError(`httpServer: port=${port} is invalid: it must be an integer from 0 to 65535`)
  if (o.host !== undefined && (typeof o.host !== 'string' || o.host === '')) throw new TypeError(`httpServer: host must be a non-empty string, got ${describeValue(o.host)}`)
  const host = o.host?.replace(/^\[(.*)\]$/, '$1')
  const address = host === undefined ? String(port) : host.includes(':') ? `[${host}]:${port}` : `${host}:${port}`
  return { address, pass }
}

/**
 * A lameduck server for a `http`, `https` or `http2` server (Express and Fastify apps included).
 *
 * serve listens, reports ready once listening (the adapter has `explicitReady: true`), and
 * resolves when the server has closed. It binds through lameduck's `listen()`, so that an
 * upgrade hands the socket on: `{ port, host }` (no host: every IPv4 address, `0.0.0.0`) or
 * `{ path }`; `{ fd }` is passed to `server.listen()` as it is; a server that is already
 * listening is adopted (`adopt`). shutdown:
 * - stops accepting at once; connections already queued are still accepted and answered
 *   (`drainListener`);
 * - answers later requests on kept-alive sockets with `Connection: close` (http2: GOAWAY);
 * - closes an idle keep-alive socket only after `idleGrace` ms (never past the deadline);
 * - waits for in-flight requests until the deadline.
 * close destroys what is left. Node's own `server.close()` closes idle sockets at once, which
 * races with clients reusing them.
 */
function httpServer(server, listenOptions, { idleGrace = 1000, drainListener } = {}) {
  if (!server || typeof server.listen !== 'function' || typeof server.on !== 'function') {
    throw new TypeError('httpServer(server, …): server must be an http, https or http2 server')
  }
  milliseconds('idleGrace', idleGrace)
  if (server.listening && listenOptions !== undefined) {
    throw new TypeError('httpServer(server, listenOptions): the server is already listening (it is adopted as it is); leave listenOptions out')
  }
  const plan = listenPlan(listenOptions)
  // Never drain a listener shared with other processes (systemd's or start_server's, one handed
  // on by an upgrade, or one a previous generation handed us while it still runs): the drop
  // filter would stop them accepting too. The core knows where each socket came from (it went
  // through listen() or adopt()), and its answer changes when it should, so it is asked when
  // shutdown comes.
  const shared = (fd) => native.isShared(fd)
  const drainable = (fd) => (drainListener === undefined ? !shared(fd) : !!drainListener)
  // http2 multiplexes streams on one socket: track its sessions (GOAWAY), never its sockets.
  const isHttp2 = /^Http2/.test(server.constructor?.name || '')
  const sockets = new Set() // http/https sockets; each carries its in-flight count
  const sessions = new Set() // http2
  const responses = new Set() // http/https responses not finished yet
  let lameDuck = false

  if (!isHttp2) {
    const tls = typeof server.addContext === 'function' // https: track the TLS sockets requests use
    server.on(tls ? 'secureConnection' : 'connection', (socket) => {
      socket[IN_FLIGHT] = 0
      sockets.add(socket)
      socket.once('close', () => sockets.delete(socket))
    })
  }
  server.on('session', (session) => {
    sessions.add(session)
    session.once('close', () => sessions.delete(session))
    if (lameDuck) session.close()
  })
  server.prependListener('request', (req, res) => {
    if (isHttp2) return
    const socket = req.socket
    socket[IN_FLIGHT] = (socket[IN_FLIGHT] || 0) + 1
    if (lameDuck && !res.headersSent) res.setHeader('Connection', 'close')
    responses.add(res)
    // 'close' follows every response, finished or aborted: one listener is enough.
    res.once('close', () => {
      responses.delete(res)
      socket[IN_FLIGHT]--
    })
  })

  const idle = () => [...sockets].filter((socket) => socket[IN_FLIGHT] === 0)
  // Resolves after `ms`, or at once when `signal` aborts. Each wait removes its abort listener
  // when it settles: shutdown polls every few ms for as long as requests are in flight.
  const wait = (ms, signal) =>
    new Promise((resolve) => {
      if (signal.aborted) return resolve()
      const settle = () => {
        clearTimeout(timer)
        signal.removeEventListener('abort', settle)
        resolve()
      }
      const timer = setTimeout(settle, ms)
      signal.addEventListener('abort', settle, { once: true })
    })

  /** Binds through the core's listen(); returns what server.listen() takes. */
  const bind = () => {
    if (plan.raw) return plan.raw
    const { fd } = listen(plan.address)
    try {
      if (plan.mode) fs.chmodSync(plan.path, (fs.statSync(plan.path).mode & 0o7777) | plan.mode) // readableAll, writableAll
    } catch (err) {
      fs.closeSync(fd)
      throw err
    }
    return { fd, ...plan.pass }
  }

  return {
    server,
    /** serve calls ctx.ready() once the server is listening; the Runner waits for that. */
    explicitReady: true,
    get lameDuck() {
      return lameDuck
    },
    serve(ctx) {
      return new Promise((resolve, reject) => {
        const onError = (err) => reject(err)
        let bound = false // by the core's listen()
        const listening = () => {
          server.removeListener('error', onError)
          const fd = serverFd(server)
          // A socket lameduck did not bind (a server that came listening, { fd }): register it,
          // so that an upgrade hands it on. Harmless for one it knows already.
          if (!bound && fd !== undefined) {
            try {
              native.adopt(fd, null)
            } catch (err) {
              net.Server.prototype.close.call(server)
              return reject(nativeError(err))
            }
          }
          ctx.ready()
        }
        server.once('error', onError)
        server.once('close', () => resolve())
        if (server.listening) return listening()
        let options
        try {
          options = bind()
          bound = !plan.raw
        } catch (err) {
          server.removeListener('error', onError)
          return reject(err)
        }
        server.listen(options, listening)
      })
    },
    async shutdown(ctx) {
      lameDuck = true
      for (const res of responses) if (!res.headersSent) res.setHeader('Connection', 'close') // in flight
      const fd = server._handle && server._handle.fd
      if (typeof fd === 'number' && fd >= 0 && drainable(fd)) {
        native.stopAccepting(fd) // no new connections; queued ones are still accepted
        while (native.hasPendingConnection(fd) && !ctx.signal.aborted) await wait(2, ctx.signal)
      }
      net.Server.prototype.close.call(server) // stop listening, without Node's idle-socket sweep
      for (const session of sessions) session.close() // http2: GOAWAY, then close when streams end
      await wait(Math.min(idleGrace, ctx.remaining() ?? idleGrace), ctx.signal)
      const closeIdle = () => idle().forEach((s) => s.destroy())
      closeIdle()
      while (sockets.size > 0 || sessions.size > 0) {
        if (ctx.signal.aborted) throw new DeadlineExceededError(`${sockets.size + sessions.size} connection(s) still open at the deadline`)
        await wait(5, ctx.signal)
        closeIdle() // a busy socket whose response said Connection: close, now idle
      }
    },
    close() {
      lameDuck = true
      net.Server.prototype.close.call(server)
      for (const session of sessions) session.destroy()
      for (const socket of sockets) socket.destroy()
    },
  }
}

module.exports = {
  run,
  listen,
  adopt,
  isShared,
  Runner,
  Context,
  httpServer,
  LameDuckError,
  ExpiredError,
  ForcedError,
  FailedError,
  ShutdownError,
  CanceledError,
  SignalSetupError,
  BusyError,
  UpgradeFailedError,
  NotRunningError,
  DeadlineExceededError,
  version: require('./package.json').version,
}
