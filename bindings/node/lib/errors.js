'use strict'
/**
 * The errors of lameduck for Node (Python's lameduck/errors.py): one LameDuckError subclass per
 * core error kind, whose code is always `LD_` + the kind.
 */

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
/**
 * The connection gate admits no new connection: lame-duck has begun (or close was called).
 * `gate.tryAcquire()` throws it and `gate.acquire()` rejects with it; stop accepting.
 */
class GateClosedError extends LameDuckError {}
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

/** The class for each core error kind (`RunError.kind`, `UpgradeOutcome.error`); any other kind is a plain LameDuckError. */
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
  GATE_CLOSED: GateClosedError,
}

/** The JS code of a core error kind: `EXPIRED` is `LD_EXPIRED`, and so on for every kind. */
function codeOf(kind) {
  return `LD_${kind}`
}

/** The LameDuckError (subclass) for the core error `kind`, with its code. */
function errorOf(kind, message, { abandoned = false, cause } = {}) {
  const Class = ERROR_CLASSES[kind] || LameDuckError
  return new Class(message, { code: codeOf(kind), abandoned, cause })
}

/** A native function's error (napi status `InvalidArg` for a bad value) as a JS one: a RangeError, or an Error. */
function nativeError(err) {
  return err.code === 'InvalidArg' ? new RangeError(err.message) : new Error(err.message)
}

/** How a thrown value reads in a message: `Name: message` for an Error. */
function describeError(err) {
  if (err instanceof Error) return err.message ? `${err.name}: ${err.message}` : err.name
  return String(err)
}

/** How a bad argument reads in a TypeError/RangeError: strings quoted, the rest as String() gives it. */
function describeValue(value) {
  return typeof value === 'string' ? JSON.stringify(value) : String(value)
}

module.exports = {
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
  GateClosedError,
  DeadlineExceededError,
  codeOf,
  errorOf,
  nativeError,
  describeError,
  describeValue,
}
