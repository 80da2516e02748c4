'use strict'
/**
 * What the framework helpers (lib/fastify.js, koa.js, express.js, nest.js) share: a lameduck
 * server made of the httpServer adapter around the framework's HTTP server, plus the framework's
 * own start (Fastify's ready(), Nest's init()) and its own shutdown hooks (Fastify's onClose,
 * Nest's onModuleDestroy … onApplicationShutdown).
 *
 * The framework's hooks run once the adapter's shutdown is over: the listener is closed and every
 * request in flight has finished, with every resource they use still open. The framework's own
 * server close then finds nothing left to close, so it cannot cut a kept-alive client short (Node's
 * server.close() closes idle sockets at once; Fastify's forceCloseConnections destroys them). At the
 * deadline (or a forced close) they run from close instead, once the adapter destroyed what was
 * left and it has closed; either way exactly once.
 */
const { httpServer } = require('./http')
const { run, rejectedRun } = require('./runner')

/**
 * A lameduck server: `adapter` (from httpServer), with `start()` awaited before it listens and
 * `cleanUp(signalName)` run once after it stopped (see above). `extra` is merged into the result
 * (the framework's app, say).
 */
function frameworkServer(adapter, { start, cleanUp }, extra) {
  let context = null // serve's: close has none, and the hooks want the trigger signal's name
  let served = null // serve's promise: it settles once the server closed, its last connection included
  let cleaned = null
  const cleanUpOnce = () => {
    if (cleaned === null) cleaned = Promise.resolve().then(() => cleanUp?.(context?.triggerSignal ?? undefined))
    return cleaned
  }
  return {
    ...extra,
    server: adapter.server,
    /** serve reports ready once listening, as httpServer's does. */
    explicitReady: true,
    /** True once shutdown began (responses carry Connection: close). */
    get lameDuck() {
      return adapter.lameDuck
    },
    inFlightRequests() {
      return adapter.inFlightRequests()
    },
    async serve(ctx) {
      context = ctx
      if (start) await start()
      served = adapter.serve(ctx)
      return served
    },
    async shutdown(ctx) {
      await adapter.shutdown(ctx)
      await cleanUpOnce()
    },
    async close() {
      adapter.close()
      // The destroyed connections close on the next turns of the event loop: the hooks run once
      // they have, as after a drain (the core's closeTimeout bounds the wait).
      await served?.catch(() => {})
      await cleanUpOnce()
    },
  }
}

/**
 * `make(app, listenOptions, adapterOptions)` as the framework's server, then run() with `options`
 * as they are (every Runner option, those added later included). A bad app or listen option
 * rejects (the promise's `runner` is then null), as run() does for bad options.
 */
function runWith(make, app, listenOptions, options, adapterOptions) {
  let server
  try {
    server = make(app, listenOptions, adapterOptions)
  } catch (err) {
    return rejectedRun(err)
  }
  return run(server, options)
}

module.exports = { frameworkServer, runWith, httpServer }
