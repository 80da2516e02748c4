const http = require('node:http')
const express = require('express')
const { run, httpServer } = require('lameduck')

const app = express()                          // or a plain http handler, or fastify's app.server
app.get('/', (req, res) => res.send(`hello from pid ${process.pid}\n`))
run(httpServer(http.createServer(app), { port: Number(process.env.PORT ?? 3000) }), { period: 5000, drainDelay: 0 })
  .catch((err) => { console.error(err); process.exitCode = 1 })
