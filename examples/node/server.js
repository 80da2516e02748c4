// The same as server.ts, in plain JavaScript: node examples/node/server.js
'use strict'
const http = require('node:http')
const { run, httpServer } = require('lameduck')

const server = http.createServer((req, res) => {
  const timer = setTimeout(() => res.end('hello from lameduck\n'), req.url === '/sleep' ? 5000 : 0)
  res.once('close', () => clearTimeout(timer))
})
console.log('listening on http://127.0.0.1:3000 (try /sleep, then Ctrl-C)')
run(httpServer(server, { port: 3000, host: '127.0.0.1' }), { period: 5000 }).catch((err) => {
  console.error(`${err.name}: ${err.message}`)
  process.exitCode = 1
})
