'use strict'
/**
 * The opt-in policy for errors nothing caught (the Runner option `onUncaughtError: 'lame-duck'`).
 * Node's default ends the process at once, cutting every request in flight; after an uncaught
 * exception the process is not safe to keep serving either. The policy sits between the two:
 * it logs the error, starts lame-duck (new connections go elsewhere, requests in flight
 * finish), and once the run is over exits with code 1, as Node would have at once.
 */

/** Node's own exit code for an uncaught exception (and, by default, an unhandled rejection). */
const EXIT_CODE = 1

/** How an uncaught value reads in the log: an Error's stack, anything else as String() gives it. */
function describeUncaught(value) {
  if (value instanceof Error) return value.stack || `${value.name}: ${value.message}`
  try {
    return String(value)
  } catch {
    return Object.prototype.toString.call(value)
  }
}

/**
 * Takes uncaughtException and unhandledRejection for one run: each error is logged with
 * `log(message)`, and the first one calls `stop()`. `end()` (when the run is over) removes the
 * listeners and, if an error was seen, exits with code 1 on the next turn of the event loop:
 * after the run's promise handlers ran, before anything else the broken process would go on to.
 */
function watchUncaughtErrors(log, stop) {
  let seen = false
  const take = (what) => (value) => {
    const then = seen ? 'already in lame-duck mode' : 'entering lame-duck mode'
    log(`${what}; ${then}, the process exits with code ${EXIT_CODE} once it is over: ${describeUncaught(value)}`)
    if (seen) return
    seen = true
    stop()
  }
  // An unhandled rejection raised as an uncaught exception (--unhandled-rejections=strict) says so in `origin`.
  const onException = (err, origin) => take(origin === 'unhandledRejection' ? 'Unhandled promise rejection' : 'Uncaught exception')(err)
  const onRejection = take('Unhandled promise rejection')
  process.on('uncaughtException', onException)
  process.on('unhandledRejection', onRejection)
  return {
    end() {
      process.removeListener('uncaughtException', onException)
      process.removeListener('unhandledRejection', onRejection)
      if (seen) setImmediate(() => process.exit(EXIT_CODE))
    },
  }
}

module.exports = { watchUncaughtErrors }
