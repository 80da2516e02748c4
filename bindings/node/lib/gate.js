'use strict'
/**
 * The connection gate (the core's `Gate`, nserv's run-time connection limit): the run's one count
 * of the connections in flight, which lame-duck waits on, and an optional limit on it.
 *
 * Every call here is per connection, never per request: `tryAcquire()` is one native call (the
 * core decides under its lock, so a lowered limit never over-admits), `permit.release()` another.
 *
 * How a waiting `acquire()` learns that a slot is free, without blocking the event loop or
 * polling: in a Node process every change that can free a slot is made on this JS thread, through
 * this module (a permit released, the limit set) or by the run (lame-duck and close, which the
 * runner reports here from its state events). Each of those calls `wake()`, which admits the
 * waiters in order, synchronously. No native thread waits and nothing polls; a permit the garbage
 * collector releases (one its owner dropped without `release()`) wakes nobody until the next
 * change, which is the owner's bug and documented.
 */
const { LameDuckError, codeOf, errorOf, describeValue } = require('./errors')

/** The largest limit (the core's: i32::MAX). */
const MAX_LIMIT = 2147483647

/** Checks a connection limit: undefined, null and 0 mean unlimited (returned as 0). */
function connectionLimit(name, value) {
  if (value === undefined || value === null) return 0
  if (typeof value !== 'number') throw new TypeError(`${name} must be a number of connections (0, null or undefined: unlimited), got ${describeValue(value)}`)
  if (!Number.isInteger(value) || value < 0 || value > MAX_LIMIT) {
    throw new RangeError(`${name}=${value} is invalid: it must be an integer from 0 to ${MAX_LIMIT} (0 or null: unlimited)`)
  }
  return value
}

/** The core's "the gate is closed" (its message carries `GATE_CLOSED: `) as a GateClosedError. */
function gateError(err) {
  const message = String(err?.message ?? err)
  if (message.startsWith('GATE_CLOSED: ')) return errorOf('GATE_CLOSED', message.slice('GATE_CLOSED: '.length))
  return err
}

/** One admitted connection's slot: `release()` gives it back (idempotent). */
class Permit {
  #native
  #gate
  constructor(nativePermit, gate) {
    this.#native = nativePermit
    this.#gate = gate
  }
  /** Gives the slot back; true the first time, false afterwards (a second call does nothing). */
  release() {
    if (this.#native === null) return false
    const native = this.#native
    this.#native = null
    native.release()
    this.#gate.wake()
    return true
  }
  /** True once released. */
  get released() {
    return this.#native === null
  }
}

/** The run's connection gate (`runner.gate`, `ctx.gate`). */
class Gate {
  #native
  /** acquire() calls waiting, in order: { queued, resolve, reject, done } */
  #waiters = []
  /** Adapters' listeners paused on the gate: called on every change that may free a slot. */
  #watchers = new Set()
  #waking = false
  #again = false

  constructor(nativeGate) {
    this.#native = nativeGate
  }

  /** The limit; null when unlimited. */
  get limit() {
    return this.#native.limit ?? null
  }
  /** Free slots now; null when unlimited. */
  get free() {
    return this.#native.free ?? null
  }
  /** 'open', 'draining' (lame-duck: only queued connections are admitted) or 'closed'. */
  get phase() {
    return this.#native.phase
  }

  /** Sets the limit (0, null or undefined: unlimited); returns the free slots before (null: it was unlimited). */
  setLimit(limit) {
    const n = connectionLimit('maxConnections', limit)
    const before = this.#native.setLimit(n) ?? null
    this.wake()
    return before
  }

  /**
   * A Permit if a slot is free now, else null. Throws GateClosedError once lame-duck began
   * (with `queued: true`, for a connection already accepted or in the accept queue: once close
   * was called). Never waits.
   */
  tryAcquire({ queued = false } = {}) {
    let native
    try {
      native = this.#native.tryAcquire(!!queued)
    } catch (err) {
      throw gateError(err)
    }
    return native === null ? null : new Permit(native, this)
  }

  /**
   * Resolves to a Permit once a slot is free, in order of the calls; never blocks the event loop.
   * Rejects with GateClosedError when lame-duck begins (or has begun), with a LameDuckError
   * coded LD_TIMEOUT after `timeout` ms, and with `signal.reason` when `signal` aborts.
   */
  acquire({ signal, timeout, queued = false } = {}) {
    if (signal !== undefined && !(signal instanceof AbortSignal)) return Promise.reject(new TypeError(`signal must be an AbortSignal, got ${describeValue(signal)}`))
    if (timeout !== undefined && (typeof timeout !== 'number' || !(timeout >= 0))) {
      return Promise.reject(new RangeError(`timeout=${describeValue(timeout)} is invalid: it must be a non-negative number of milliseconds`))
    }
    if (signal?.aborted) return Promise.reject(signal.reason)
    if (this.#waiters.length === 0) {
      try {
        const permit = this.tryAcquire({ queued })
        if (permit) return Promise.resolve(permit)
      } catch (err) {
        return Promise.reject(err)
      }
    }
    return new Promise((resolve, reject) => {
      let timer
      const onAbort = () => settle(null, signal.reason)
      const waiter = { queued: !!queued, settle: (permit, err) => settle(permit, err) }
      const settle = (permit, err) => {
        const at = this.#waiters.indexOf(waiter)
        if (at >= 0) this.#waiters.splice(at, 1)
        clearTimeout(timer)
        signal?.removeEventListener('abort', onAbort)
        if (permit) resolve(permit)
        else reject(err)
      }
      if (timeout !== undefined) {
        timer = setTimeout(() => settle(null, new LameDuckError(`no connection slot became free within ${timeout}ms`, { code: codeOf('TIMEOUT') })), timeout)
      }
      signal?.addEventListener('abort', onAbort, { once: true })
      this.#waiters.push(waiter)
    })
  }

  /** The counts: { limit, admitted, waiting, total, peak, phase } (waiting: acquire() calls and connections held by adapters). */
  stats() {
    const s = this.#native.stats()
    let held = 0
    for (const watcher of this.#watchers) held += watcher.held?.() ?? 0
    return { limit: s.limit ?? null, admitted: s.admitted, waiting: s.waiting + this.#waiters.length + held, total: s.total, peak: s.peak, phase: s.phase }
  }

  /** Internal (adapters): `onChange()` is called on every change that may free or take a slot. */
  watch(watcher) {
    this.#watchers.add(watcher)
    return () => this.#watchers.delete(watcher)
  }

  /**
   * Admits waiting acquire() calls while slots are free, rejects them once the gate is closed to
   * them, then tells the watchers. Called on release, on setLimit, and by the runner when
   * lame-duck begins or close is called.
   */
  wake() {
    if (this.#waiters.length === 0 && this.#watchers.size === 0) return
    if (this.#waking) {
      this.#again = true // a change made by a watcher: the loop below goes round once more
      return
    }
    this.#waking = true
    try {
      do {
        this.#again = false
        this.#admitWaiters()
        for (const watcher of this.#watchers) watcher.onChange()
      } while (this.#again)
    } finally {
      this.#waking = false
    }
  }

  #admitWaiters() {
    {
      while (this.#waiters.length > 0) {
        const waiter = this.#waiters[0]
        let permit
        try {
          permit = this.tryAcquire({ queued: waiter.queued })
        } catch (err) {
          waiter.settle(null, err)
          continue
        }
        if (!permit) break
        waiter.settle(permit)
      }
    }
  }
}

module.exports = { Gate, Permit, connectionLimit, gateError, MAX_LIMIT }
