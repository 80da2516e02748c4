// Fastify under lameduck: node examples/node/fastify.js (PORT, default 3000).
// Try: curl 'http://127.0.0.1:3000/slow?ms=5000' and press Ctrl-C while it runs: the request
// finishes, then Fastify's onClose hooks run, once. /stats shows the run's state and counts;
// /crash throws where nothing catches it: with onUncaughtError: 'lame-duck' the process
// lame-ducks, then exits with code 1.
'use strict'
const fastify = require('fastify')()
const { runFastify } = require('lameduck/fastify')
const { currentRunner } = require('lameduck')

// The run's state and connection counts (requests in flight included): currentRunner() finds the
// Runner, so a handler needs no variable holding it.
function stats() {
  const runner = currentRunner()
  return `${JSON.stringify({ state: runner.state, ...runner.connectionStats() })}\n`
}

fastify.get('/', async () => `hello from fastify (pid ${process.pid})\n`)
fastify.get('/slow', async (req) => {
  const ms = Number(req.query.ms ?? 1000)
  await new Promise((resolve) => setTimeout(resolve, ms))
  return `slept ${ms} ms\n`
})
fastify.get('/stats', async () => stats())
fastify.get('/crash', async () => {
  setImmediate(() => {
    throw new Error('boom from /crash')
  })
  return 'crashing\n'
})
fastify.addHook('onClose', async () => {
  // Runs inside lameduck's shutdown, after every request in flight finished.
  console.log(`fastify: onClose hook ran (connections open: ${currentRunner().connectionStats().admitted})`)
})

const running = runFastify(fastify, { port: Number(process.env.PORT ?? 3000), host: '127.0.0.1' }, { period: 10000, onUncaughtError: 'lame-duck' })
running.runner.ready().then(
  () => console.log(`listening on http://127.0.0.1:${fastify.server.address().port} (pid ${process.pid})`),
  () => {}, // the run ended first: its own promise says why
)
running.then(
  () => console.log('stopped'),
  (err) => {
    console.error(`${err.name}: ${err.message}`)
    process.exitCode = 1
  },
)
