'use strict'
/**
 * Health answers on your own port: the /ready, /live and /health the built-in listener
 * (`health: '127.0.0.1:8081'`) serves, computed by the core from the run's state
 * (runner.health(path)). One handler per framework shape; each answers by the request's path,
 * so one handler serves all three routes.
 *
 * - healthHandler(runner): (req, res, next?) for node:http, Express and Connect. A path that is
 *   not a health endpoint goes to next() when there is one, else gets the core's 404.
 * - koaHealth(runner): Koa middleware (ctx, next).
 * - fastifyHealth(runner): a Fastify route handler (request, reply).
 *
 * Without a runner, each asks currentRunner() at every request (503 "not ready: no run in
 * progress" while none runs), so a handler can be added to an app before its runner exists, as
 * with runFastify(app) or runExpress(app).
 */
const HEALTH_PATH = /^\/(ready|live|health)z?(?:[?#]|$)/

function pathOf(url) {
  return typeof url === 'string' && url.length > 0 ? url : '/'
}

const NO_RUN = { status: 503, contentType: 'text/plain; charset=utf-8', body: 'not ready: no run in progress\n' }

/** The answer for `path` from `runner`, or from the run in progress when none was given. */
function answerer(runner, name) {
  if (runner !== undefined && (runner === null || typeof runner !== 'object' || typeof runner.health !== 'function')) {
    throw new TypeError(`${name}(runner) needs a lameduck Runner, or nothing for currentRunner()`)
  }
  return (path) => {
    const current = runner ?? require('./runner').currentRunner()
    return current ? current.health(path) : NO_RUN
  }
}

function healthHandler(runner) {
  const answer = answerer(runner, 'healthHandler')
  return function lameduckHealth(req, res, next) {
    const path = pathOf(req.originalUrl || req.url)
    if (typeof next === 'function' && !HEALTH_PATH.test(path)) return next()
    const report = answer(path)
    res.writeHead(report.status, { 'Content-Type': report.contentType, 'Content-Length': Buffer.byteLength(report.body), 'Cache-Control': 'no-store' })
    res.end(req.method === 'HEAD' ? undefined : report.body)
  }
}

function koaHealth(runner) {
  const answer = answerer(runner, 'koaHealth')
  return async function lameduckHealth(ctx, next) {
    if (!HEALTH_PATH.test(pathOf(ctx.path))) return next()
    const report = answer(ctx.path)
    ctx.status = report.status
    ctx.set('Cache-Control', 'no-store')
    ctx.type = report.contentType
    ctx.body = report.body
  }
}

function fastifyHealth(runner) {
  const answer = answerer(runner, 'fastifyHealth')
  return async function lameduckHealth(request, reply) {
    const report = answer(pathOf(request.url))
    reply.code(report.status).header('Cache-Control', 'no-store').type(report.contentType)
    return report.body
  }
}

module.exports = { healthHandler, koaHealth, fastifyHealth }
