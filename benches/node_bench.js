'use strict'
// Node benchmarks (prints numbers; not pass/fail):   node benches/node_bench.js [seconds] [runs]
// 1. Requests/s of a plain node:http server with and without lameduck, under `wrk -t1 -c20`
//    keep-alive load from a separate process (server pinned to CPU 0, wrk to CPU 1), six rounds
//    in ABBA order; the median round's ratio is printed.
// 2. Signal -> shutdown hook latency in Node (SIGTERM via process.kill), median and p99.
const { spawn, spawnSync, execFileSync } = require('node:child_process')
const http = require('node:http')
const lameduck = require('../bindings/node')

const [seconds = '4', runs = '200'] = process.argv.slice(2).filter((a) => !a.startsWith('--'))

if (process.argv.includes('--serve')) {
  const server = http.createServer((req, res) => res.end('hello\n'))
  const listen = { port: 0, host: '127.0.0.1' }
  const announce = () => console.log(server.address().port)
  if (process.argv.includes('--lameduck')) {
    lameduck.run(lameduck.httpServer(server, listen), { logger: false, explicitReady: true, onStateChange: (f, t) => t === 'READY' && announce() })
  } else {
    server.listen(listen, announce)
    process.on('SIGTERM', () => server.close())
  }
} else {
  main()
}

function hasTool(name) {
  return spawnSync(name, ['--version']).error === undefined
}

function requestsPerSecond(withLameduck) {
  return new Promise((resolve, reject) => {
    const pin = hasTool('taskset') ? ['taskset', '-c', '0'] : []
    const args = [...pin, process.execPath, __filename, '--serve', ...(withLameduck ? ['--lameduck'] : [])]
    const child = spawn(args[0], args.slice(1), { stdio: ['ignore', 'pipe', 'inherit'] })
    child.stdout.once('data', (d) => {
      const port = Number(String(d).trim())
      const wrk = [...(pin.length ? ['taskset', '-c', '1'] : []), 'wrk', '-t1', '-c20', `-d${seconds}s`, `http://127.0.0.1:${port}/`]
      const out = execFileSync(wrk[0], wrk.slice(1), { encoding: 'utf8' })
      child.kill('SIGTERM')
      child.once('exit', () => resolve(Number(out.match(/Requests\/sec:\s+([\d.]+)/)[1])))
    })
    child.once('error', reject)
  })
}

async function signalLatency(n) {
  const samples = []
  for (let i = 0; i < n; i++) {
    let release
    let entered = 0n
    const server = {
      serve: () => new Promise((r) => (release = r)),
      shutdown() {
        entered = process.hrtime.bigint()
        release()
      },
      close: () => release(),
    }
    const runner = new lameduck.Runner(server, { logger: false })
    const running = runner.run()
    await runner.ready()
    const sent = process.hrtime.bigint()
    process.kill(process.pid, 'SIGTERM')
    await running
    samples.push(Number(entered - sent) / 1e6)
  }
  return samples.sort((a, b) => a - b)
}

async function main() {
  console.log(`lameduck ${lameduck.version} Node benchmarks (Node ${process.version}, ${require('node:os').cpus().length} CPUs)`)
  if (!hasTool('wrk')) {
    console.log('wrk is not installed (apt-get install wrk); skipping requests/s')
  } else {
    const rounds = []
    for (let i = 0; i < 6; i++) {
      const order = i % 2 === 0 ? [false, true] : [true, false]
      const measured = {}
      for (const withLameduck of order) measured[withLameduck] = await requestsPerSecond(withLameduck)
      rounds.push([measured.true / measured.false, measured.false, measured.true])
    }
    const [ratio, plain, withLd] = rounds.slice().sort((a, b) => a[0] - b[0])[3]
    console.log(
      `node:http requests/s without lameduck ${plain.toFixed(0)}   with ${withLd.toFixed(0)}   ratio ${ratio.toFixed(3)}   (rounds: ${rounds.map((r) => r[0].toFixed(3)).join(', ')})`,
    )
  }
  const samples = await signalLatency(Number(runs))
  const p99 = samples[Math.min(samples.length - 1, Math.floor(samples.length * 0.99))]
  console.log(
    `signal -> Node shutdown hook: n=${samples.length} median ${samples[samples.length >> 1].toFixed(3)} ms   p99 ${p99.toFixed(3)} ms   max ${samples[samples.length - 1].toFixed(3)} ms`,
  )
}
