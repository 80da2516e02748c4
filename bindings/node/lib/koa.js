'use strict'
/**
 * Koa under lameduck (`require('lameduck/koa')`): an http server for `app.callback()`, served by
 * lameduck's httpServer adapter. Koa has no shutdown hooks of its own. Koa itself is the
 * caller's: nothing here requires it.
 */
const http = require('node:http')
const { describeValue } = require('./errors')
const { frameworkServer, runWith, httpServer } = require('./framework')

/**
 * A lameduck server for a Koa app: `http.createServer(app.callback())` through httpServer. For
 * https or http2, give httpServer a server of your own made with `app.callback()`.
 */
function koaServer(app, listenOptions, adapterOptions) {
  if (app === null || typeof app !== 'object' || typeof app.callback !== 'function') {
    throw new TypeError(`koaServer(app, …): app must be a Koa application (with callback()), got ${describeValue(app)}`)
  }
  const adapter = httpServer(http.createServer(app.callback()), listenOptions, adapterOptions)
  return frameworkServer(adapter, {}, { app })
}

/** `run(koaServer(app, listenOptions, adapterOptions), options)`: the run's promise, whose `runner` is its Runner. */
function runKoa(app, listenOptions, options, adapterOptions) {
  return runWith(koaServer, app, listenOptions, options, adapterOptions)
}

module.exports = { koaServer, runKoa }
