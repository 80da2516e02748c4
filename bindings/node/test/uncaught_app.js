'use strict'
// A test server for the onUncaughtError policy (test/frameworks.test.js), in a child process:
//   node uncaught_app.js [--policy lame-duck|default]   (no --policy: the option is left out)
// Routes: GET /slow?ms=N, GET /throw?times=N (exceptions nothing catches, from timers), GET /reject
// (a rejected promise nobody handles). Prints `port N` once ready and `run settled` when the
// run's promise settles; lameduck's log lines go to stdout (console), its errors to stderr.
const http = require('node:http')
const { run, httpServer } = require('..')

const flag = process.argv.indexOf('--policy')
const policy = flag < 0 ? undefined : process.argv[flag + 1]
const server = http.createServer((req, res) => {
  const url = new URL(req.url, 'http://x')
  if (url.pathname === '/slow') {
    const ms = Number(url.searchParams.get('ms') ?? 1000)
    const timer = setTimeout(() => res.end(`slept ${ms} ms\n`), ms)
    res.once('close', () => clearTimeout(timer))
    return
  }
  if (url.pathname === '/throw') {
    for (let i = 0; i < Number(url.searchParams.get('times') ?? 1); i++) {
      setImmediate(() => {
        throw new Error('boom from /throw')
      })
    }
  } else if (url.pathname === '/reject') {
    Promise.reject(new Error('boom from /reject'))
  }
  res.end('ok\n')
})
const running = run(httpServer(server, { port: 0, host: '127.0.0.1' }), { period: 10000, onUncaughtError: policy })
running.runner.ready().then(() => console.log(`port ${server.address().port}`))
running.then(
  () => console.log('run settled: ok'),
  (err) => console.log(`run settled: ${err.name}`),
)
