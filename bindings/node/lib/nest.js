'use strict'
/**
 * NestJS under lameduck (`require('lameduck/nest')`), with what `app.enableShutdownHooks()` gives
 * but without its signal listeners: lameduck's httpServer adapter serves the app's HTTP server
 * (`app.getHttpServer()`) in place of `app.listen()`, and once lame-duck's shutdown has drained it,
 * `app.close(signal)` runs Nest's hooks in Nest's order, exactly once: onModuleDestroy(),
 * beforeApplicationShutdown(signal), then (Nest's own server close: nothing left) onApplicationShutdown(signal),
 * `signal` being the trigger signal's name ('SIGTERM', …; undefined when stop() started it).
 * Requests in flight finish before any hook runs, with every provider still up (see lib/framework.js).
 * Nest itself is the caller's: nothing here requires it.
 */
const { describeValue } = require('./errors')
const { frameworkServer, runWith, httpServer } = require('./framework')

/**
 * Nest's enableShutdownHooks() listens to the signals itself and, after its own close, sends the
 * signal again: lameduck would take that for a repeated signal and force close. Nest 12 keeps
 * those listeners in `shutdownCleanupRefs` (a Map): when it holds any, refuse. (A Nest that keeps
 * them elsewhere is not caught here; the README says to leave enableShutdownHooks() out.)
 */
function refuseNestSignals(app) {
  const refs = app.shutdownCleanupRefs
  if (refs instanceof Map && refs.size > 0) {
    throw new TypeError(
      `nestServer(app, …): app.enableShutdownHooks() was called, so Nest takes ${[...refs.keys()].join(', ')} itself; ` +
        'leave it out: lameduck runs the same hooks, once, inside its shutdown',
    )
  }
}

/**
 * A lameduck server for a Nest application made with `NestFactory.create()` and neither
 * listening nor given `enableShutdownHooks()`. serve awaits `app.init()` before it listens.
 */
function nestServer(app, listenOptions, adapterOptions) {
  if (app === null || typeof app !== 'object' || typeof app.init !== 'function' || typeof app.close !== 'function' || typeof app.getHttpServer !== 'function') {
    throw new TypeError(`nestServer(app, …): app must be a Nest application (with init(), close() and getHttpServer()), got ${describeValue(app)}`)
  }
  refuseNestSignals(app)
  const adapter = httpServer(app.getHttpServer(), listenOptions, adapterOptions)
  const start = async () => {
    refuseNestSignals(app) // enableShutdownHooks() may have come after nestServer()
    await app.init()
  }
  return frameworkServer(adapter, { start, cleanUp: (signal) => app.close(signal) }, { app })
}

/** `run(nestServer(app, listenOptions, adapterOptions), options)`: the run's promise, whose `runner` is its Runner. */
function runNest(app, listenOptions, options, adapterOptions) {
  return runWith(nestServer, app, listenOptions, options, adapterOptions)
}

module.exports = { nestServer, runNest }
