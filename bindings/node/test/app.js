'use strict'
// A test server run in a child process:
//   node app.js --app http|express|fastify|plain [--period ms] [--drain ms] [--repeat p]
//               [--close-timeout ms] [--fail-serve] [--hang-close] [--listen ADDRESS]
//               [--listen-timeout ms] [--upgrade-confirm ms] [--upgrade-without-listeners]
//               [--max-connections n]
// Routes: GET / (hello), GET /sleep?ms=N (slow), GET /health (200 READY, UPGRADING or HANDING_OVER / 503 + state),
// GET /stop (runner.stop()).
// SIGHUP upgrades (the app is started again; the adapters bind through lameduck.listen, so the
// new process takes the listener over). `plain` binds its own socket: lameduck does not know it.
// Prints `port N` and `state NEW` on stdout, lameduck's log lines too (console). It never calls
// process.exit: after the run settles the process must exit by itself.
const http = require('node:http')
const lameduck = require('..')

const args = Object.fromEntries(
  process.argv.slice(2).reduce((pairs, a, i, all) => (a.startsWith('--') ? [...pairs, [a.slice(2), all[i + 1]?.startsWith('--') || all[i + 1] === undefined ? true : all[i + 1]]] : pairs), []),
)
let runner

function sleepMs(url) {
  return Number(new URL(url, 'http://x').searchParams.get('ms') ?? 1000)
}

function handler(req, res) {
  if (req.url.startsWith('/sleep')) {
    const ms = sleepMs(req.url)
    process.stderr.write(`app: request GET ${req.url}\n`)
    const timer = setTimeout(() => res.end(`slept ${ms} ms\n`), ms)
    res.once('close', () => clearTimeout(timer)) // the client (or close) went away: stop working
  } else if (req.url === '/stop') {
    runner.stop()
    res.end('stopping\n')
  } else if (req.url === '/health') {
    res.statusCode = ['READY', 'UPGRADING', 'HANDING_OVER'].includes(runner.state) ? 200 : 503
    res.end(`${runner.state}\n`)
  } else {
    res.end('hello\n')
  }
}

async function makeServer() {
  const listen = args.listen ? lameduck.listen(args.listen) : { port: 0, host: '127.0.0.1' }
  if (args.listen) console.log(`inherited ${listen.fd === 3}`)
  const adapterOptions = { idleGrace: Number(args['idle-grace'] ?? 1000) }
  if (args.app === 'http') return lameduck.httpServer(http.createServer(handler), listen, adapterOptions)
  if (args.app === 'express') {
    const app = require('express')()
    app.get(/.*/, handler)
    return lameduck.httpServer(http.createServer(app), listen, adapterOptions)
  }
  if (args.app === 'fastify') {
    const app = require('fastify')()
    app.get('/*', (req, reply) => {
      reply.hijack()
      handler(req.raw, reply.raw)
    })
    await app.ready()
    return lameduck.httpServer(app.server, listen, adapterOptions)
  }
  // plain: hooks written by hand
  const server = http.createServer(handler)
  return {
    server,
    serve(ctx) {
      if (args['fail-serve']) return Promise.reject(new Error('cannot bind: address on fire'))
      return new Promise((resolve) => server.listen(listen, () => ctx.ready()).once('close', resolve))
    },
    shutdown() {
      return new Promise((resolve) => server.close(() => resolve()))
    },
    close() {
      if (args['hang-close']) return new Promise(() => {}) // never settles
      server.closeAllConnections()
    },
  }
}

async function main() {
  const adapter = await makeServer()
  runner = new lameduck.Runner(adapter, {
    period: Number(args.period ?? 3000),
    drainDelay: Number(args.drain ?? 0),
    closeTimeout: Number(args['close-timeout'] ?? 5000),
    repeatSignal: args.repeat ?? 'force',
    explicitReady: true,
    pidFile: args['pid-file'],
    listenTimeout: args['listen-timeout'] === undefined ? undefined : Number(args['listen-timeout']),
    upgradeConfirm: args['upgrade-confirm'] === undefined ? undefined : Number(args['upgrade-confirm']),
    upgradeWithoutListeners: !!args['upgrade-without-listeners'],
    maxConnections: args['max-connections'] === undefined ? undefined : Number(args['max-connections']),
    onStateChange: (from, to) => {
      if (to === 'READY') console.log(`port ${adapter.server.address().port}`)
      console.log(`state ${to}`)
    },
  })
  try {
    await runner.run()
    const s = runner.connectionStats()
    console.log(`final admitted=${s.admitted} waiting=${s.waiting} total=${s.total} peak=${s.peak}`)
    console.log('clean exit')
  } catch (err) {
    console.log(`error ${err.constructor.name} ${err.code}: ${err.message} cause=${err.cause ? `${err.cause.name}: ${err.cause.message}` : 'none'}`)
    process.exitCode = 1
  }
}

main()
