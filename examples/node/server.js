// The same as server.ts, in plain JavaScript: node examples/node/server.js
'use strict'
const http = require('node:http')
const { run, httpServer, listen } = require('lameduck')

const server = http.createServer((req, res) => {
  const timer = setTimeout(() => res.end('hello from lameduck\n'), req.url === '/sleep' ? 5000 : 0)
  res.once('close', () => clearTimeout(timer))
})
const port = Number(process.env.PORT ?? 3000)
// The socket survives upgrades (kill -HUP): a new generation gets this one back from listen().
const socket = listen(`127.0.0.1:${port}`)
console.log(`listening on http://127.0.0.1:${port} (pid ${process.pid}; try /sleep, then Ctrl-C; kill -HUP upgrades)`)
run(httpServer(server, socket), { period: 5000 }).catch((err) => {
  console.error(`${err.name}: ${err.message}`)
  process.exitCode = 1
})
