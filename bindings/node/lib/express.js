'use strict'
/**
 * Express under lameduck (`require('lameduck/express')`): an http server for the app (an Express
 * app is a request listener), served by lameduck's httpServer adapter in place of `app.listen()`.
 * Express has no shutdown hooks of its own. Express itself is the caller's: nothing here requires it.
 */
const http = require('node:http')
const { describeValue } = require('./errors')
const { frameworkServer, runWith, httpServer } = require('./framework')

/**
 * A lameduck server for an Express app (or any `(req, res)` request listener):
 * `http.createServer(app)` through httpServer. For https or http2, give httpServer a server of
 * your own.
 */
function expressServer(app, listenOptions, adapterOptions) {
  if (typeof app !== 'function') {
    throw new TypeError(`expressServer(app, …): app must be an Express application (a request listener function), got ${describeValue(app)}`)
  }
  const adapter = httpServer(http.createServer(app), listenOptions, adapterOptions)
  return frameworkServer(adapter, {}, { app })
}

/** `run(expressServer(app, listenOptions, adapterOptions), options)`: the run's promise, whose `runner` is its Runner. */
function runExpress(app, listenOptions, options, adapterOptions) {
  return runWith(expressServer, app, listenOptions, options, adapterOptions)
}

module.exports = { expressServer, runExpress }
