'use strict'
/**
 * Fastify under lameduck (`require('lameduck/fastify')`): lameduck's httpServer adapter serves
 * the app's own server (`app.server`) in place of `app.listen()`, and Fastify's `close()` runs
 * inside lameduck's shutdown once every request in flight has finished, so that its preClose and
 * onClose hooks run exactly once, with nothing left for its server close to cut (see
 * lib/framework.js). Fastify itself is the caller's: nothing here requires it.
 */
const { describeValue } = require('./errors')
const { frameworkServer, runWith, httpServer } = require('./framework')

/**
 * A lameduck server for a Fastify app that has not been started with `app.listen()` (one that
 * has is adopted as it is, as httpServer adopts a listening server: leave `listenOptions` out).
 * serve awaits `app.ready()` (plugins loaded, routes registered) before it listens; shutdown
 * drains as httpServer's does, then awaits `app.close()`.
 */
function fastifyServer(app, listenOptions, adapterOptions) {
  if (app === null || typeof app !== 'object' || typeof app.ready !== 'function' || typeof app.close !== 'function' || !app.server) {
    throw new TypeError(`fastifyServer(app, …): app must be a Fastify instance (with ready(), close() and server), got ${describeValue(app)}`)
  }
  const adapter = httpServer(app.server, listenOptions, adapterOptions)
  return frameworkServer(adapter, { start: () => app.ready(), cleanUp: () => app.close() }, { app })
}

/** `run(fastifyServer(app, listenOptions, adapterOptions), options)`: the run's promise, whose `runner` is its Runner. */
function runFastify(app, listenOptions, options, adapterOptions) {
  return runWith(fastifyServer, app, listenOptions, options, adapterOptions)
}

module.exports = { fastifyServer, runFastify }
