'use strict'
/**
 * lameduck for Node: coordinated lame-duck shutdown, on the same Rust core as the C and
 * Python packages. The package mirrors Python's: lib/errors.js, lib/runner.js (with
 * lib/options.js), lib/listen.js, lib/gate.js (the connection gate) and lib/http.js (the httpServer adapter), over the native half
 * (lib/native.js loads src/lib.rs); lib/uncaught.js is the onUncaughtError policy, and
 * lib/{fastify,koa,express,nest}.js (also `lameduck/fastify` …) the framework helpers over
 * lib/framework.js. This file only re-exports; index.d.ts is the public types.
 */
const { Runner, Context, run, currentRunner } = require('./lib/runner')
const { listen, adopt, isShared } = require('./lib/listen')
const { httpServer } = require('./lib/http')
const {
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
} = require('./lib/errors')
const { Gate, Permit } = require('./lib/gate')
const { healthHandler, koaHealth, fastifyHealth } = require('./lib/health')
const { fastifyServer, runFastify } = require('./lib/fastify')
const { koaServer, runKoa } = require('./lib/koa')
const { expressServer, runExpress } = require('./lib/express')
const { nestServer, runNest } = require('./lib/nest')

module.exports = {
  run,
  currentRunner,
  listen,
  adopt,
  isShared,
  Runner,
  Context,
  httpServer,
  fastifyServer,
  runFastify,
  koaServer,
  runKoa,
  expressServer,
  runExpress,
  nestServer,
  runNest,
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
  Gate,
  Permit,
  healthHandler,
  koaHealth,
  fastifyHealth,
  version: require('./package.json').version,
}
