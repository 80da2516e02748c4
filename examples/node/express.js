// Express under lameduck: node examples/node/express.js (PORT, default 3000).
// Try: curl 'http://127.0.0.1:3000/slow?ms=5000' and press Ctrl-C while it runs: the request
// finishes, new connections are refused, kept-alive clients get `Connection: close`. /stats
// shows the run's state and counts; /crash throws where nothing catches it: with
// onUncaughtError: 'lame-duck' the process lame-ducks, then exits with code 1.
'use strict'
const express = require('express')
const { expressServer } = require('lameduck/express')
const { run, currentRunner } = require('lameduck')

// The run's state and connection counts (requests in flight included): currentRunner() finds the
// Runner, so a handler needs no variable holding it.
function stats() {
  const runner = currentRunner()
  return `${JSON.stringify({ state: runner.state, ...runner.connectionStats() })}\n`
}

const app = express()
app.get('/', (req, res) => res.send(`hello from express (pid ${process.pid})\n`))
app.get('/slow', (req, res) => {
  const ms = Number(req.query.ms ?? 1000)
  const timer = setTimeout(() => res.send(`slept ${ms} ms\n`), ms)
  res.once('close', () => clearTimeout(timer)) // the client (or close) went away: stop working
})
app.get('/stats', (req, res) => res.send(stats()))
app.get('/crash', (req, res) => {
  setImmediate(() => {
    throw new Error('boom from /crash')
  })
  res.send('crashing\n')
})

// expressServer(app, …) is http.createServer(app) through lameduck's httpServer adapter;
// runExpress(app, listenOptions, options) is run(expressServer(app, listenOptions), options) in one call.
const adapter = expressServer(app, { port: Number(process.env.PORT ?? 3000), host: '127.0.0.1' })
const running = run(adapter, { period: 10000, onUncaughtError: 'lame-duck' })
running.runner.ready().then(
  () => console.log(`listening on http://127.0.0.1:${adapter.server.address().port} (pid ${process.pid})`),
  () => {}, // the run ended first: its own promise says why
)
running.then(
  () => console.log('stopped'),
  (err) => {
    console.error(`${err.name}: ${err.message}`)
    process.exitCode = 1
  },
)
