// The same as server.ts, in plain JavaScript: node examples/node/server.js
'use strict'
const http = require('node:http')
const { run, httpServer } = require('lameduck')

const server = http.createServer((req, res) => {
  const timer = setTimeout(() => res.end(`hello from lameduck (pid ${process.pid})\n`), req.url === '/sleep' ? 5000 : 0)
  res.once('close', () => clearTimeout(timer))
})
const port = Number(process.env.PORT ?? 3000)
console.log(`listening on http://127.0.0.1:${port} (pid ${process.pid}; try /sleep, then Ctrl-C; kill -HUP upgrades)`)
// httpServer binds through lameduck's listen(): an upgrade (kill -HUP) hands the socket to the
// new generation, which gets this one back from the same call.
run(httpServer(server, { port, host: '127.0.0.1' }), { period: 5000 }).catch((err) => {
  console.error(`${err.name}: ${err.message}`)
  process.exitCode = 1
})
