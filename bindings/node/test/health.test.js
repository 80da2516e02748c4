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

test('healthHandler, koaHealth and fastifyHealth answer on the server\'s own port', async (t) => {
  const runner = new lameduck.Runner(waiter(), { logger: false, signals: [], upgradeSignals: [] })
  const running = runner.run()
  await until('READY', () => runner.state === 'READY')
  const handler = lameduck.healthHandler(runner)
  const server = http.createServer((req, res) => handler(req, res, () => res.end('app\n')))
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve))
  t.after(() => server.close())
  const base = `http://127.0.0.1:${server.address().port}`
  assert.deepEqual(await get(`${base}/ready`), [200, 'ready\n'])
  assert.deepEqual(await get(`${base}/elsewhere`), [200, 'app\n'], 'other paths go to next()')
  assert.equal(JSON.parse((await get(`${base}/healthz`))[1]).state, 'READY')
  // Koa's and Fastify's shapes, driven with the objects they pass.
  const koa = { path: '/ready', headers: {}, set(k, v) { this.headers[k] = v } }
  let nextCalled = false
  await lameduck.koaHealth(runner)(koa, async () => { nextCalled = true })
  assert.equal(koa.status, 200)
  assert.equal(koa.body, 'ready\n')
  assert.equal(nextCalled, false)
  const reply = { code(c) { this.status = c; return this }, header() { return this }, type(t) { this.contentType = t; return this } }
  assert.equal(await lameduck.fastifyHealth(runner)({ url: '/live' }, reply), 'live\n')
  assert.equal(reply.status, 200)
  assert.throws(() => lameduck.healthHandler(null), TypeError)
  runner.stop()
  await running
})

test('bad health options are errors naming them', () => {
  assert.throws(() => new lameduck.Runner(waiter(), { health: 8081, logger: false }), { name: 'TypeError', message: /health must be an address string/ })
  assert.throws(() => new lameduck.Runner(waiter(), { health: '[::1:80', logger: false }), { name: 'RangeError', message: /health=/ })
  assert.throws(() => new lameduck.Runner(waiter(), { drainQuiet: 100, logger: false }), { name: 'RangeError', message: /drainQuiet=100: drain quiet time 100ms is invalid/ })
  assert.throws(() => new lameduck.Runner(waiter(), { drainQuiet: -1, logger: false }), { name: 'RangeError', message: /drainQuiet/ })
})
