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
 */
const HEALTH_PATH = /^\/(ready|live|health)z?(?:[?#]|$)/

function pathOf(url) {
  return typeof url === 'string' && url.length > 0 ? url : '/'
}

function runnerOf(runner, name) {
  if (runner === null || typeof runner !== 'object' || typeof runner.health !== 'function') {
    throw new TypeError(`${name}(runner) needs a lameduck Runner`)
  }
  return runner
}

function healthHandler(runner) {
  runnerOf(runner, 'healthHandler')
  return function lameduckHealth(req, res, next) {
    const path = pathOf(req.originalUrl || req.url)
    if (typeof next === 'function' && !HEALTH_PATH.test(path)) return next()
    const report = runner.health(path)
    res.writeHead(report.status, { 'Content-Type': report.contentType, 'Content-Length': Buffer.byteLength(report.body), 'Cache-Control': 'no-store' })
    res.end(req.method === 'HEAD' ? undefined : report.body)
  }
}

function koaHealth(runner) {
  runnerOf(runner, 'koaHealth')
  return async function lameduckHealth(ctx, next) {
    if (!HEALTH_PATH.test(pathOf(ctx.path))) return next()
    const report = runner.health(ctx.path)
    ctx.status = report.status
    ctx.set('Cache-Control', 'no-store')
    ctx.type = report.contentType
    ctx.body = report.body
  }
}

function fastifyHealth(runner) {
  runnerOf(runner, 'fastifyHealth')
  return async function lameduckHealth(request, reply) {
    const report = runner.health(pathOf(request.url))
    reply.code(report.status).header('Cache-Control', 'no-store').type(report.contentType)
    return report.body
  }
}

module.exports = { healthHandler, koaHealth, fastifyHealth }
