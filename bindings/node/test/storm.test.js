'use strict'
// A HUP storm under the Rust start_server (src/bin/start_server) with Node lameduck workers:
// 50 SIGHUPs 20 ms apart to start_server, keep-alive load, and slow requests started during the
// storm so old workers are still in lame-duck when later generations arrive. start_server sends
// each old worker TERM once, so nothing is lost and no worker sees a repeated signal. The C
// worker version (and Perl's start_server for comparison) is tests/start_server_storm.rs.
// Needs the start_server binary that `cargo test` / `cargo build` leaves in target/debug (or
// $START_SERVER); skipped without it.
const { test } = require('node:test')
const assert = require('node:assert/strict')
const { spawn } = require('node:child_process')
const fs = require('node:fs')
const net = require('node:net')
const os = require('node:os')
const path = require('node:path')
const { Load, send, sleep } = require('./helpers')

const APP = path.join(__dirname, 'app.js')
const REPO = path.join(__dirname, '..', '..', '..')
const LIMIT = 60000
// The storm's generations start one after another: on a busy machine that takes minutes.
const STORM_LIMIT = 240000
const HUPS = 50

function startServerBinary() {
  if (process.env.START_SERVER) return process.env.START_SERVER
  const target = process.env.CARGO_TARGET_DIR || path.join(REPO, 'target')
  return ['debug', 'release'].map((p) => path.join(target, p, 'start_server')).find((p) => fs.existsSync(p))
}
const BINARY = startServerBinary()

function freePort() {
  return new Promise((resolve) => {
    const s = net.createServer().listen(0, '127.0.0.1', () => {
      const { port } = s.address()
      s.close(() => resolve(port))
    })
  })
}

async function waitUntil(what, ok, limit = LIMIT) {
  const until = Date.now() + limit
  while (!ok()) {
    if (Date.now() > until) throw new Error(`timed out waiting for ${typeof what === 'function' ? what() : what}`)
    await sleep(20)
  }
}

/** start_server in its own process group (detached); its and its workers' lines collected. */
class Starter {
  constructor(args) {
    this.child = spawn(BINARY, args, { stdio: ['ignore', 'pipe', 'pipe'], detached: true })
    this.lines = []
    for (const stream of [this.child.stdout, this.child.stderr]) {
      let buffered = ''
      stream.setEncoding('utf8')
      stream.on('data', (chunk) => {
        const parts = (buffered + chunk).split('\n')
        buffered = parts.pop()
        this.lines.push(...parts)
      })
    }
    this.exited = new Promise((resolve) => this.child.once('exit', resolve))
  }
  text() {
    return this.lines.join('\n')
  }
  async waitCount(needle, n, limit = LIMIT) {
    const count = () => this.lines.filter((l) => l.includes(needle)).length
    await waitUntil(() => `${n} lines with ${needle} (${count()} so far)\n${this.text()}`, () => count() >= n, limit)
  }
  /** TERM (start_server stops its workers), then SIGKILL whatever is left in the group. */
  async stop() {
    if (this.child.exitCode === null && this.child.signalCode === null) {
      this.child.kill('SIGTERM')
      await Promise.race([this.exited, sleep(20000)])
    }
    try {
      process.kill(-this.child.pid, 'SIGKILL')
    } catch {}
  }
}

function statusEntries(file) {
  try {
    return fs.readFileSync(file, 'utf8').split('\n').filter(Boolean)
  } catch {
    return []
  }
}

test('a HUP storm under start_server loses nothing', { skip: !BINARY && 'no start_server binary in target/ (run cargo build first)', timeout: 2 * STORM_LIMIT }, async (t) => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'lameduck-storm-'))
  const status = path.join(dir, 'status')
  const port = await freePort()
  const address = `127.0.0.1:${port}`
  // --interval=10: only READY=1 makes a worker count as started.
  const run = new Starter([`--port=${address}`, `--status-file=${status}`, '--interval=10', '--', process.execPath, APP, '--app', 'http', '--listen', address, '--period', '3000'])
  t.after(async () => (await run.stop(), fs.rmSync(dir, { recursive: true, force: true })))
  await run.waitCount('state READY', 1)
  await waitUntil('generation 1', () => statusEntries(status).length === 1)
  const load = new Load(port, 8)
  await load.waitMore(50, LIMIT)
  const slow = []
  for (let n = 1; n <= HUPS; n++) {
    run.child.kill('SIGHUP')
    if (n % 10 === 5) slow.push(send(port, '/sleep?ms=2000').ended)
    await sleep(20)
  }
  const answers = await Promise.all(slow)
  // Settled: every HUP taken has its "killing old workers", and the old workers are gone. Fewer
  // HUPs than were sent may be taken: the kernel merges a HUP that arrives while the previous one
  // is still pending (start_server not scheduled for 20 ms on a busy machine).
  const count = (needle) => run.lines.filter((l) => l.includes(needle)).length
  const hups = () => count('received HUP, spawning a new worker')
  await waitUntil(() => `the storm to settle\n${run.text()}`, () => hups() > 0 && hups() === count('killing old workers') && statusEntries(status).length === 1, STORM_LIMIT)
  await load.waitMore(50, LIMIT)
  const { ok, errors } = await load.stop()
  run.child.kill('SIGTERM')
  await run.waitCount('exiting', 1)
  const text = run.text()
  console.error(`ours, Node worker, ${HUPS} HUPs sent, ${hups()} taken: ${ok} requests ok, ${errors.length} lost`)
  assert.deepEqual(errors, [], `${errors.length} of ${ok + errors.length} requests failed\n${text}`)
  const answered = answers.filter((a) => a.startsWith('HTTP/1.1 200') && a.endsWith('slept 2000 ms\n'))
  assert.equal(answered.length, 5, `slow requests: ${JSON.stringify(answers)}\n${text}`)
  assert.deepEqual(text.split('\n').filter((l) => l.includes('again;') || l.includes('forcing close')), [], text)
  const exits = [...text.matchAll(/worker \d+ died, status:(\d+)/g)].map((m) => m[1])
  assert.ok(exits.length > 0 && exits.every((s) => s === '0'), text)
  assert.equal(exits.length, text.split('starting new worker').length - 1, text)
  assert.equal(exits.length, hups() + 1, text)
})
