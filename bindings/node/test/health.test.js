'use strict'
// Health answers (issue 14) from Node: the built-in listener (`health:`) over real HTTP in
// READY and DRAINING, the adaptive drain (`drainQuiet`) ending on a failed probe, the
// http/Express-style and Koa/Fastify-style handlers on real servers, and the options' errors.
// The rules themselves are the core's (tests/health.rs).
const { test } = require('node:test')
const assert = require('node:assert/strict')
const http = require('node:http')
const lameduck = require('..')
const { LIMIT } = require('./helpers')

async function until(what, done, limit = LIMIT) {
  const deadline = Date.now() + limit
  while (!done()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`)
    await new Promise((resolve) => setTimeout(resolve, 5))
  }
}

async function get(url) {
  const res = await fetch(url, { signal: AbortSignal.timeout(LIMIT) })
  return [res.status, await res.text()]
}

/** A server whose serve waits for shutdown. */
function waiter() {
  let stop
  const stopped = new Promise((resolve) => (stop = resolve))
  return { serve: () => stopped, shutdown: () => stop(), close: () => stop() }
}

test('the listener answers, and the adaptive drain ends once a probe saw "not ready"', async () => {
  const runner = new lameduck.Runner(waiter(), { health: '127.0.0.1:0', drainDelay: 30000, drainQuiet: 200, logger: false, signals: [], upgradeSignals: [] })
  const running = runner.run()
  await until('READY', () => runner.state === 'READY')
  const address = runner.healthAddress
  assert.match(address, /^127\.0\.0\.1:[1-9]\d*$/)
  assert.deepEqual(await get(`http://${address}/ready`), [200, 'ready\n'])
  const [status, body] = await get(`http://${address}/health`)
  assert.equal(status, 200)
  const doc = JSON.parse(body)
  assert.equal(doc.state, 'READY')
  assert.equal(doc.pid, process.pid)
  assert.deepEqual(runner.health('/live'), { status: 200, contentType: 'text/plain; charset=utf-8', body: 'live\n' })
  runner.stop()
  await until('DRAINING', () => runner.state === 'DRAINING')
  await new Promise((resolve) => setTimeout(resolve, 400))
  assert.equal(runner.state, 'DRAINING', 'quiet, but no probe has seen "not ready" yet')
  const probed = Date.now()
  assert.deepEqual(await get(`http://${address}/ready`), [503, 'not ready: DRAINING\n'])
  await running
  assert.ok(Date.now() - probed < 30000, 'the drain ended before its fixed delay')
  assert.equal(runner.healthAddress, null)
})

test('healthHandler, koaHealth and fastifyHealth answer on real node:http, Express, Koa and Fastify servers', async (t) => {
  const runner = new lameduck.Runner(waiter(), { logger: false, signals: [], upgradeSignals: [] })
  const running = runner.run()
  t.after(async () => {
    runner.stop()
    await running
  })
  await until('READY', () => runner.state === 'READY')
  const listen = async (server) => {
    await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve))
    t.after(() => server.close())
    return `http://127.0.0.1:${server.address().port}`
  }
  // node:http, with next() for the app's own paths.
  const handler = lameduck.healthHandler(runner)
  const plain = await listen(http.createServer((req, res) => handler(req, res, () => res.end('app\n'))))
  assert.deepEqual(await get(`${plain}/ready`), [200, 'ready\n'])
  assert.deepEqual(await get(`${plain}/elsewhere`), [200, 'app\n'], 'other paths go to next()')
  assert.equal(JSON.parse((await get(`${plain}/healthz`))[1]).state, 'READY')
  // Express: app.use, without a runner (currentRunner() at each request).
  const express = require('express')()
  express.use(lameduck.healthHandler())
  express.get('/', (req, res) => res.send('express\n'))
  const ex = await listen(http.createServer(express))
  assert.deepEqual(await get(`${ex}/live`), [200, 'live\n'])
  assert.deepEqual(await get(`${ex}/`), [200, 'express\n'])
  // Koa middleware.
  const Koa = require('koa')
  const koa = new Koa()
  koa.use(lameduck.koaHealth(runner))
  koa.use((ctx) => { ctx.body = 'koa\n' })
  const k = await listen(http.createServer(koa.callback()))
  const [status, body] = await get(`${k}/health`)
  assert.equal(status, 200)
  assert.equal(JSON.parse(body).pid, process.pid)
  assert.deepEqual(await get(`${k}/other`), [200, 'koa\n'])
  // A Fastify route.
  const fastify = require('fastify')()
  fastify.get('/ready', lameduck.fastifyHealth(runner))
  await fastify.listen({ port: 0, host: '127.0.0.1' })
  t.after(() => fastify.close())
  const f = `http://127.0.0.1:${fastify.server.address().port}`
  const res = await fetch(`${f}/ready`)
  assert.equal(res.status, 200)
  assert.equal(res.headers.get('cache-control'), 'no-store')
  assert.equal(await res.text(), 'ready\n')
  // After the run: the handler without a runner says no run is in progress.
  runner.stop()
  await running
  assert.deepEqual(await get(`${ex}/ready`), [503, 'not ready: no run in progress\n'])
  assert.throws(() => lameduck.healthHandler(null), TypeError)
})

test('bad health options are errors naming them', () => {
  assert.throws(() => new lameduck.Runner(waiter(), { health: 8081, logger: false }), { name: 'TypeError', message: /health must be an address string/ })
  assert.throws(() => new lameduck.Runner(waiter(), { health: '[::1:80', logger: false }), { name: 'RangeError', message: /health=/ })
  assert.throws(() => new lameduck.Runner(waiter(), { drainQuiet: 100, logger: false }), { name: 'RangeError', message: /drainQuiet=100: drain quiet time 100ms is invalid/ })
  assert.throws(() => new lameduck.Runner(waiter(), { drainQuiet: -1, logger: false }), { name: 'RangeError', message: /drainQuiet/ })
})
