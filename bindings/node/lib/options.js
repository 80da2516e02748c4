'use strict'
/**
 * The options of a run: defaults, type checks (TypeError for a wrong type, RangeError for a
 * value JS can judge itself), and what the native half takes (`RunnerOptions` in native.d.ts).
 * The core validates the values; the native half names a rejected one in the spelling used here.
 */
const os = require('node:os')
const { describeValue } = require('./errors')
const { connectionLimit } = require('./gate')

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
  onUncaughtError: 'default',
}
// explicitReady has no default here: left out, the server decides (see Runner).
const OPTION_NAMES = new Set([...Object.keys(DEFAULTS), 'explicitReady', 'logger', 'signal', 'onStateChange', 'upgradeCommand', 'pidFile', 'maxConnections', 'health', 'drainQuiet'])

// What onUncaughtError takes: the lame-duck policy (lib/uncaught.js), or Node's own handling.
const UNCAUGHT_POLICIES = ['lame-duck', 'default']

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

/** The options as given to Runner, type-checked, with the defaults filled in and signals as [name, number] pairs. */
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
  if (o.health !== undefined && o.health !== null && typeof o.health !== 'string') {
    throw new TypeError(`health must be an address string such as '127.0.0.1:8081', got ${describeValue(o.health)}`)
  }
  if (typeof o.onUncaughtError !== 'string') throw new TypeError(`onUncaughtError must be 'lame-duck' or 'default', got ${describeValue(o.onUncaughtError)}`)
  if (!UNCAUGHT_POLICIES.includes(o.onUncaughtError)) {
    throw new RangeError(`onUncaughtError=${JSON.stringify(o.onUncaughtError)} is invalid: use 'lame-duck' (log, lame-duck, then exit 1) or 'default' (Node's own handling)`)
  }
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
    maxConnections: connectionLimit('maxConnections', options.maxConnections),
    health: o.health ?? undefined,
    drainQuiet: milliseconds('drainQuiet', o.drainQuiet ?? 0),
    onUncaughtError: o.onUncaughtError,
  }
}

/** What the native half takes (`RunnerOptions`): the normalized options `o` in milliseconds and signal numbers. */
function nativeOptions(o, explicitReady) {
  return {
    period: o.period,
    signals: o.signals.map(([, number]) => number),
    drainDelay: o.drainDelay,
    closeTimeout: o.closeTimeout,
    repeatSignal: o.repeatSignal,
    explicitReady,
    logging: o.logger !== false,
    upgradeSignals: o.upgradeSignals.map(([, number]) => number),
    upgradeTimeout: o.upgradeTimeout,
    upgradeCommand: o.upgradeCommand,
    pidFile: o.pidFile,
    listenTimeout: o.listenTimeout,
    upgradeConfirm: o.upgradeConfirm,
    upgradeWithoutListeners: o.upgradeWithoutListeners,
    maxConnections: o.maxConnections || undefined,
    health: o.health,
    drainQuiet: o.drainQuiet,
  }
}

module.exports = { normalizeOptions, nativeOptions, milliseconds, workerSignalsMessage }
