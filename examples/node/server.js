// The same as server.ts, in plain JavaScript: node examples/node/server.js [--max-connections N]
'use strict'
const http = require('node:http')
const { Runner, httpServer } = require('lameduck')

const server = http.createServer((req, res) => {
  const timer = setTimeout(() => res.end(`hello from lameduck (pid ${process.pid})\n`), req.url === '/sleep' ? 5000 : 0)
  res.once('close', () => clearTimeout(timer))
})
const port = Number(process.env.PORT ?? 3000)
// --max-connections N: at most N connections at once; the others wait in the kernel backlog.
const flag = process.argv.indexOf('--max-connections')
const maxConnections = flag < 0 ? undefined : Number(process.argv[flag + 1])
console.log(`listening on http://127.0.0.1:${port} (pid ${process.pid}; try /sleep, then Ctrl-C; kill -HUP upgrades)`)
// httpServer binds through lameduck's listen(): an upgrade (kill -HUP) hands the socket to the
// new generation, which gets this one back from the same call.
const runner = new Runner(httpServer(server, { port, host: '127.0.0.1' }), { period: 5000, maxConnections })
// kill -USR1 / -USR2 raise / lower the limit by one while it runs (a listener on SIGUSR1 replaces
// Node's default of starting the inspector).
const step = (by) => () => {
  const limit = runner.maxConnections
  if (limit === null) return console.log('max connections: unlimited (start with --max-connections N to change it)')
  runner.maxConnections = Math.max(1, limit + by)
  const { admitted } = runner.connectionStats()
  console.log(`max connections: ${runner.maxConnections} (${admitted} open)`)
}
process.on('SIGUSR1', step(+1))
process.on('SIGUSR2', step(-1))
runner.run().then(
  () => process.removeAllListeners('SIGUSR1').removeAllListeners('SIGUSR2'),
  (err) => {
    console.error(`${err.name}: ${err.message}`)
    process.exitCode = 1
    process.removeAllListeners('SIGUSR1').removeAllListeners('SIGUSR2')
  },
)
