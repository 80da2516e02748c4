'use strict'
/**
 * Runner and Context (Python's lameduck/_runner.py): the JS side of one run. It turns the
 * native half's events into logger calls, onStateChange calls, hook calls and the run's
 * promise, and takes the signals with process.on; the lifecycle itself is the core's.
 */
const { isMainThread } = require('node:worker_threads')
const native = require('./native')
const { LameDuckError, DeadlineExceededError, codeOf, errorOf, describeError, describeValue } = require('./errors')
const { normalizeOptions, nativeOptions, workerSignalsMessage } = require('./options')
const { Gate } = require('./gate')
const { watchUncaughtErrors } = require('./uncaught')

/** States in which the gate admits no new connection (lame-duck, close, the end): acquire() waiters are told at once. */
const GATE_SHUT_STATES = new Set(['SHUTTING_DOWN', 'HANDING_OVER', 'CLOSING', 'STOPPED', 'FAILED'])
/** States before lame-duck: a trigger signal arriving in one of them is what starts it. */
const SERVING_STATES = new Set(['NOT_STARTED', 'STARTING', 'SERVING', 'READY', 'UPGRADING'])

/** Runners whose run() is in progress, in the order they started (see currentRunner). */
const running = []

/** What serve and shutdown receive: the lame-duck deadline, an AbortSignal, readiness. */
class Context {
  #native
  #controller
  #gate
  #runner
  constructor(nativeRunner, controller, gate, runner) {
    this.#native = nativeRunner
    this.#controller = controller
    this.#gate = gate
    this.#runner = runner
  }
  /**
   * The name of the trigger signal that started lame-duck ('SIGTERM', 'SIGINT', …): what
   * frameworks' shutdown hooks take (Nest's `onApplicationShutdown(signal)`). Null before, and
   * when stop(), the `signal` option, an upgrade's hand-over or the uncaught-error policy started it.
   */
  get triggerSignal() {
    return this.#runner.triggerSignal
  }
  /** The run's connection gate (the same as runner.gate): a permit per connection; lame-duck waits until every one is back. */
  get gate() {
    return this.#gate
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

/** Why ready() rejects once the run is over without having been ready. */
function endedBeforeReady() {
  return new LameDuckError('the run ended before the server became ready', { code: codeOf('NOT_RUNNING') })
}

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
  #gate
  #triggerSignal = null
  #stopRequested = false // stop(), the signal option or the uncaught-error policy: a later signal is not the trigger

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
      this.#native = new native.NativeRunner(nativeOptions(o, explicitReady))
    } catch (err) {
      throw new RangeError(err.message) // the core rejected a value; the message names the option
    }
    this.#gate = new Gate(this.#native.gate())
    this.#context = new Context(this.#native, this.#controller, this.#gate, this)
  }

  /** The name of the trigger signal that started lame-duck (see `ctx.triggerSignal`), or null. */
  get triggerSignal() {
    return this.#triggerSignal
  }

  /** The run's connection gate (also ctx.gate): its limit, counts and permits, for servers of your own. */
  get gate() {
    return this.#gate
  }

  /**
   * The health answer for a request path ('/ready', '/live', '/health'; 404 for any other):
   * { status, contentType, body }, the same as the built-in `health` listener serves. For a
   * route on your own port; see healthHandler(). Never blocks.
   */
  health(path = '/health') {
    return this.#native.health(String(path))
  }

  /** Where the built-in health listener listens ('127.0.0.1:8081'), while it does; else null. */
  get healthAddress() {
    return this.#native.healthAddress ?? null
  }

  /** The connection limit; null when unlimited. Setting it is setMaxConnections(n). */
  get maxConnections() {
    return this.#gate.limit
  }
  set maxConnections(limit) {
    this.setMaxConnections(limit)
  }

  /**
   * Sets the connection limit at any time (0, null or undefined: unlimited) and returns the free
   * slots before the change (null: it was unlimited), as nserv's MaxConns(n). Raising admits
   * waiting connections at once; lowering closes none and takes effect as they close: nothing
   * new is admitted until fewer than the new limit are open. Throws TypeError/RangeError for a
   * value that is not an integer from 0 to 2147483647.
   */
  setMaxConnections(limit) {
    return this.#gate.setLimit(limit)
  }

  /**
   * The gate's counts: { limit, admitted, waiting, total, peak, phase }, plus `requests` (in
   * flight now) when the server counts them (the httpServer adapter does, on demand).
   */
  connectionStats() {
    const stats = this.#gate.stats()
    if (typeof this.#server.inFlightRequests === 'function') stats.requests = this.#server.inFlightRequests()
    return stats
  }

  /** NOT_STARTED, STARTING, SERVING, READY, UPGRADING, HANDING_OVER, DRAINING, SHUTTING_DOWN, CLOSING, STOPPED or FAILED. */
  get state() {
    return this.#native.state
  }

  /** Starts lame-duck exactly like a trigger signal. Before run() it makes run() reject with CanceledError. */
  stop() {
    this.#stopRequested = true
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
    if (outcome.kind === 'upgraded') return outcome.pid
    throw errorOf(outcome.error, outcome.message)
  }

  /** Resolves once ready (listening, with explicitReady); rejects if the run ends without becoming ready. */
  ready() {
    if (this.#readiness === 'ready') return Promise.resolve()
    if (this.#readiness === 'ended') return Promise.reject(endedBeforeReady())
    return new Promise((resolve, reject) => this.#readyWaiters.push({ resolve, reject }))
  }

  /**
   * Runs until the server stopped; rejects with a LameDuckError subclass otherwise. In a worker
   * thread it rejects with SignalSetupError unless `signals` is [] and no `upgradeSignals` were
   * given: Node delivers signals to the main thread only. The promise's `runner` is this runner.
   */
  run() {
    const promise = this.#run()
    promise.runner = this
    return promise
  }

  #run() {
    if (this.#started) return Promise.reject(errorOf('BUSY', 'the runner has already run; create a new Runner for another run'))
    this.#started = true
    const o = this.#options
    if (!isMainThread && (o.signals.length > 0 || o.upgradeSignals.length > 0)) {
      // process.on() in a Worker never sees a signal: the signal would reach the main thread,
      // and with nobody listening there it ends the whole process. Refuse, as Python does.
      this.#setReadiness('ended')
      return Promise.reject(errorOf('SIGNAL_SETUP', workerSignalsMessage(o)))
    }
    if (o.signal?.aborted) this.stop()
    return new Promise((resolve, reject) => {
      const triggers = new Set(o.signals.map(([name]) => name))
      const listeners = [...o.signals, ...o.upgradeSignals].map(([name, number]) => {
        const listener = () => {
          if (triggers.has(name)) this.#noteTrigger(name)
          this.#native.deliverSignal(number)
        }
        process.on(name, listener)
        return [name, listener]
      })
      const onAbort = () => this.stop()
      o.signal?.addEventListener('abort', onAbort, { once: true })
      const uncaught = o.onUncaughtError === 'lame-duck' ? watchUncaughtErrors((message) => this.#log('error', message), () => this.stop()) : null
      running.push(this)
      const finish = ({ error }) => {
        for (const [name, listener] of listeners) process.removeListener(name, listener)
        o.signal?.removeEventListener('abort', onAbort)
        running.splice(running.indexOf(this), 1)
        uncaught?.end() // after an uncaught error: exit(1) once the run's own handlers ran
        clearTimeout(this.#deadlineTimer)
        this.#abortContext('the run is over')
        this.#setReadiness('ended')
        if (!error) return resolve()
        const cause = error.cause === undefined ? undefined : this.#causes.get(error.cause)
        this.#causes.clear()
        reject(errorOf(error.kind, error.message, { abandoned: error.abandoned, cause }))
      }
      try {
        this.#native.run((event) => this.#dispatch(event, finish))
      } catch (err) {
        finish({ kind: 'done', error: { kind: 'BUSY', message: err.message, abandoned: false } })
      }
    })
  }

  /**
   * Remembers `name` as the trigger when it starts lame-duck: the first trigger signal while the
   * run still serves and nothing else asked to stop (a signal after a stop is the same event).
   */
  #noteTrigger(name) {
    if (this.#triggerSignal !== null || this.#stopRequested || !SERVING_STATES.has(this.#native.state)) return
    this.#triggerSignal = name
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

  /**
   * `level` is the logger method the line goes to: 'debug', 'info', 'warn' or 'error'. A logger
   * of your own gets the core's text as it is, as C's and Python's do; `console` (the default)
   * gets it prefixed with `lameduck: `, since console lines carry no logger name.
   */
  #log(level, message) {
    const logger = this.#options.logger
    if (logger === false) return
    const method = logger[level] || logger.info || logger.log
    method.call(logger, logger === console ? `lameduck: ${message}` : message)
  }

  #onState(from, to) {
    if (GATE_SHUT_STATES.has(to)) this.#gate.wake() // the core drained or closed the gate: waiters learn it now
    if (to === 'READY') this.#setReadiness('ready')
    if (to === 'CLOSING') this.#abortWhenDone()
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
      else reject(endedBeforeReady())
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
   * Aborts ctx.signal for close, once ctx.done reads true. The core sets the context done right
   * after it has started close (so that close is not kept waiting behind the threads that
   * waking the context wakes), and the CLOSING event can reach JS first: aborting then would
   * give an AbortError where the deadline (or a forced close) is the reason, and a shutdown hook
   * that rethrows `ctx.signal.reason` would not be taken as out of time. Every close sets it done,
   * within microseconds, so this re-checks on the next turns of the loop until then.
   */
  #abortWhenDone() {
    if (this.#controller.signal.aborted) return
    if (this.#native.done()) return this.#abortContext('close was called')
    setImmediate(() => this.#abortWhenDone())
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
      this.#native.settle(token, { message: describeError(err), cause: id, deadlineExceeded: deadline })
    }
    let result
    try {
      result = hook === 'close' ? this.#server.close() : this.#server[hook](this.#context)
    } catch (err) {
      return fail(err)
    }
    Promise.resolve(result).then(() => this.#native.settle(token), fail)
  }
}


/** A run that could not start (bad options or server): its promise rejects with `err`, and its `runner` is null. */
function rejectedRun(err) {
  const promise = Promise.reject(err)
  promise.runner = null
  return promise
}

/**
 * Runs `server` under lame-duck coordination (Go's lameduck.Run). The promise's `runner` is the
 * Runner (null when the options or the server are invalid: the promise then rejects with a
 * TypeError or RangeError), for `stop()`, `ready()`, `state` or `upgrade()`.
 */
function run(server, options) {
  let runner
  try {
    runner = new Runner(server, options)
  } catch (err) {
    return rejectedRun(err)
  }
  return runner.run()
}

/**
 * The Runner whose run is in progress (the most recently started one if several are), or null:
 * for code that has no reference to it, say a request handler deep in a framework.
 */
function currentRunner() {
  return running.length === 0 ? null : running[running.length - 1]
}

module.exports = { Runner, Context, run, currentRunner, rejectedRun }
