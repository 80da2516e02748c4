'use strict'
// Child processes for test/hardening.test.js:
//   node hardening_app.js worker OPTIONS_JSON [forward]   a Runner inside a worker_threads Worker;
//                                  with `forward`, the main thread turns SIGTERM into a message
//                                  that makes the worker call runner.stop()
//   node hardening_app.js inflight IDLE_GRACE_MS   the http adapter with a request held in lame-duck
// Every line on stdout is one event the test waits for.
const { Worker, isMainThread, parentPort, workerData } = require('node:worker_threads')
const lameduck = require('..')

// Every process warning as one line, besides Node's own report on stderr.
process.on('warning', (w) => console.log(`warning ${w.name}: ${w.message}`))

if (!isMainThread) {
  // The worker: a server whose serve waits until shutdown or close releases it.
  let release
  const released = new Promise((r) => (release = r))
  const server = { serve: () => released, shutdown: () => release(), close: () => release() }
  const post = (line) => parentPort.postMessage(line)
  const runner = new lameduck.Runner(server, {
    ...workerData,
    logger: { info: (m) => post(`log ${m}`) },
    onStateChange: (from, to) => post(`state ${to}`),
  })
  parentPort.on('message', (m) => m === 'stop' && runner.stop())
  runner
    .run()
    .then(
      () => post('resolved'),
      (err) => {
        const classes = ['SignalSetupError', 'LameDuckError'].filter((c) => lameduck[c] && err instanceof lameduck[c])
        post(`rejected ${err.name} ${err.code} [${classes}] ${err instanceof Error}: ${err.message}`)
      },
    )
    // Then the worker ends by itself: nothing of lameduck keeps it alive, nor does the port.
    .finally(() => parentPort.unref())
} else if (process.argv[2] === 'worker') {
  const worker = new Worker(__filename, { workerData: JSON.parse(process.argv[3] ?? '{}') })
  worker.on('message', (line) => console.log(line))
  worker.on('error', (err) => console.log(`worker error ${err.stack}`))
  const forward = () => worker.postMessage('stop')
  worker.on('exit', (code) => {
    console.log(`worker exited ${code}`)
    process.removeListener('SIGTERM', forward)
  })
  if (process.argv[4] === 'forward') process.on('SIGTERM', forward)
  console.log('main started')
} else if (process.argv[2] === 'inflight') {
  const http = require('node:http')
  const { getEventListeners } = require('node:events')
  const idleGrace = Number(process.argv[3])
  let signal = null // ctx.signal, once shutdown has it
  let shutdownAt = 0
  const server = http.createServer((req, res) => {
    // GET /hold: answered once lame-duck has lasted idleGrace + 800 ms, with the most abort
    // listeners ctx.signal carried meanwhile (sampled every 10 ms).
    console.log(`request ${req.url}`)
    let most = 0
    const timer = setInterval(() => {
      if (signal) most = Math.max(most, getEventListeners(signal, 'abort').length)
      if (shutdownAt && Date.now() - shutdownAt > idleGrace + 800) {
        clearInterval(timer)
        res.end(`most abort listeners ${most}\n`)
      }
    }, 10)
  })
  const adapter = lameduck.httpServer(server, { port: 0, host: '127.0.0.1' }, { idleGrace })
  const shutdown = adapter.shutdown
  adapter.shutdown = (ctx) => {
    signal = ctx.signal
    shutdownAt = Date.now()
    return shutdown.call(adapter, ctx)
  }
  server.once('listening', () => console.log(`port ${server.address().port}`))
  lameduck
    .run(adapter, { period: 20000, logger: false, onStateChange: (from, to) => console.log(`state ${to}`) })
    .then(
      () => console.log('resolved'),
      (err) => console.log(`rejected ${err.name}: ${err.message}`),
    )
}
