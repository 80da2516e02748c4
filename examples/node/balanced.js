// An http server meant to run behind a load balancer (benches/fleet.rs runs two behind haproxy):
//
//   node examples/node/balanced.js [--port N] [--health ADDRESS] [--drain MS] [--drain-quiet MS]
//                                  [--period MS] [--pid-file PATH]
//
// Each flag may come from the environment instead: PORT, HEALTH, DRAIN, DRAIN_QUIET, PERIOD,
// PID_FILE (a flag wins). The balancer checks GET /ready on the --health port, which lameduck's
// core answers on its own thread (200 while serving, 503 from SIGTERM on), so a busy event loop
// never fails a check. SIGTERM drains: the server keeps serving, unready, for --drain ms, or less
// with --drain-quiet once the balancer has seen the 503 and no new connection came for that long;
// then it finishes what is in flight and exits. SIGHUP upgrades: the script starts again on the
// same sockets (the port and the health port), and this process hands over.
// Every answer names the process (pid), so a client can tell the generations apart; lameduck's
// log lines and each state change ("state READY") go to stderr.
'use strict'
const http = require('node:http')
const { Console } = require('node:console')
const { Runner, httpServer } = require('lameduck')

const FLAGS = { port: 'PORT', health: 'HEALTH', drain: 'DRAIN', 'drain-quiet': 'DRAIN_QUIET', period: 'PERIOD', 'pid-file': 'PID_FILE' }

/** The flags as { name: string }, from argv, else the environment; exits 2 on an unknown flag. */
function options(argv) {
  const given = {}
  for (let i = 0; i < argv.length; i += 2) {
    const name = argv[i].replace(/^--/, '')
    if (!argv[i].startsWith('--') || !(name in FLAGS) || argv[i + 1] === undefined) {
      console.error(`usage: balanced.js ${Object.keys(FLAGS).map((f) => `[--${f} VALUE]`).join(' ')} (${argv[i]}?)`)
      process.exit(2)
    }
    given[name] = argv[i + 1]
  }
  for (const [name, env] of Object.entries(FLAGS)) given[name] ??= process.env[env]
  return given
}

/** A number of milliseconds (or a port), or `fallback` when absent; exits 2 on anything else. */
function number(given, name, fallback) {
  const text = given[name]
  if (text === undefined) return fallback
  const n = Number(text)
  if (text.trim() === '' || !Number.isInteger(n) || n < 0) {
    console.error(`balanced.js: --${name} needs a non-negative integer, got ${JSON.stringify(text)}`)
    process.exit(2)
  }
  return n
}

const given = options(process.argv.slice(2))
const server = http.createServer((req, res) => res.end(`hello from lameduck (pid ${process.pid})\n`))
const stderr = new Console({ stdout: process.stderr, stderr: process.stderr })
const runner = new Runner(httpServer(server, { port: number(given, 'port', 3000), host: '127.0.0.1' }), {
  health: given.health,
  drainDelay: number(given, 'drain', 0),
  drainQuiet: number(given, 'drain-quiet', 0),
  period: number(given, 'period', 10000),
  pidFile: given['pid-file'],
  logger: stderr,
  onStateChange: (_old, state) => stderr.log(`state ${state}`),
})
runner.run().catch((err) => {
  console.error(`${err.name}: ${err.message}`)
  process.exitCode = 1
})
