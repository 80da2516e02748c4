// Koa under lameduck: node examples/node/koa.js (PORT, default 3000).
// Try: curl 'http://127.0.0.1:3000/slow?ms=5000' and press Ctrl-C while it runs: the request
// finishes, new connections are refused, kept-alive clients get `Connection: close`. /stats
// shows the run's state and counts; /crash throws where nothing catches it: with
// onUncaughtError: 'lame-duck' the process lame-ducks, then exits with code 1.
'use strict'
const Koa = require('koa')
const { koaServer } = require('lameduck/koa')
const { run, currentRunner } = require('lameduck')

// The run's state and connection counts (requests in flight included): currentRunner() finds the
// Runner, so a handler needs no variable holding it.
function stats() {
  const runner = currentRunner()
  return `${JSON.stringify({ state: runner.state, ...runner.connectionStats() })}\n`
}

const app = new Koa()
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms))
app.use(async (ctx) => {
  if (ctx.path === '/slow') {
    const ms = Number(ctx.query.ms ?? 1000)
    await sleep(ms)
    ctx.body = `slept ${ms} ms\n`
  } else if (ctx.path === '/stats') {
    ctx.body = stats()
  } else if (ctx.path === '/crash') {
    setImmediate(() => {
      throw new Error('boom from /crash')
    })
    ctx.body = 'crashing\n'
  } else {
    ctx.body = `hello from koa (pid ${process.pid})\n`
  }
})

// koaServer(app, …) is http.createServer(app.callback()) through lameduck's httpServer adapter;
// runKoa(app, listenOptions, options) is run(koaServer(app, listenOptions), options) in one call.
const adapter = koaServer(app, { port: Number(process.env.PORT ?? 3000), host: '127.0.0.1' })
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
