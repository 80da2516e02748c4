'use strict'
// The README's Node quick start (test/readme_quickstart.js, the README's code with the port taken
// from PORT) and examples/node/server.js, each as a real process under wrk -c20 keep-alive load
// while it is upgraded by 8 SIGHUPs, each sent once the previous new generation has taken over.
// Nothing may be lost, and the port must answer from the new generation after every upgrade.
const { test } = require('node:test')
const assert = require('node:assert/strict')
const { spawn, spawnSync } = require('node:child_process')
const fs = require('node:fs')
const net = require('node:net')
const os = require('node:os')
const path = require('node:path')
const { App, get, sleep } = require('./helpers')

const REPO = path.join(__dirname, '..', '..', '..')
const UPGRADES = 8
const LIMIT = 30000
const hasWrk = spawnSync('wrk', ['--version']).error === undefined

test('the README prints test/readme_quickstart.js exactly', () => {
  const readme = fs.readFileSync(path.join(REPO, 'README.md'), 'utf8')
  const code = fs.readFileSync(path.join(__dirname, 'readme_quickstart.js'), 'utf8')
  assert.ok(readme.includes('```js\n' + code + '```\n'), 'README.md must show test/readme_quickstart.js as its Node quick start')
})

function freePort() {
  return new Promise((resolve) => {
    const s = net.createServer().listen(0, '127.0.0.1', () => {
      const { port } = s.address()
      s.close(() => resolve(port))
    })
  })
}

/** What a process is doing, for a failure message. */
function describeProcess(pid) {
  const read = (file) => {
    try {
      return fs.readFileSync(`/proc/${pid}/${file}`, 'utf8').trim()
    } catch (err) {
      return `(${err.code})`
    }
  }
  return `process ${pid}: ${read('status').split('\n').filter((l) => /^(State|Threads|SigBlk|SigIgn)/.test(l)).join(', ')}; wchan ${read('wchan')}; stack:\n${read('stack')}`
}

/** Polls GET / until the answer names `pid` (the new generation serves), within LIMIT. */
async function answeredBy(port, pid) {
  const until = Date.now() + LIMIT
  let last = ''
  for (;;) {
    last = await get(port, '/')
    assert.match(last, /^HTTP\/1.1 200/, `the port did not answer 200:\n${last}`)
    if (last.includes(`pid ${pid})`) || last.includes(`pid ${pid}\n`)) return
    assert.ok(Date.now() < until, `pid ${pid} never answered; last answer:\n${last}`)
    await sleep(10)
  }
}

async function upgradesUnderLoad(t, script) {
  // `require('lameduck')` from a script outside a project that installed it: NODE_PATH names a
  // directory holding a `lameduck` link to this package, as `npm install ./bindings/node` would.
  const modules = fs.mkdtempSync(path.join(os.tmpdir(), 'lameduck-modules-'))
  fs.symlinkSync(path.join(__dirname, '..'), path.join(modules, 'lameduck'))
  const port = await freePort()
  const app = new App([], { script, env: { PORT: String(port), NODE_PATH: modules } })
  const generations = [app.child.pid]
  let wrk
  t.after(() => {
    if (wrk && wrk.exitCode === null) wrk.kill('SIGKILL')
    for (const pid of generations) {
      try {
        process.kill(pid, 'SIGKILL')
      } catch {}
    }
    fs.rmSync(modules, { recursive: true, force: true })
  })
  const until = Date.now() + LIMIT
  while (!(await get(port, '/')).startsWith('HTTP/1.1 200')) {
    assert.ok(Date.now() < until, `the server never answered:\n${app.text()}`)
    await sleep(20)
  }
  await answeredBy(port, app.child.pid)

  wrk = spawn('wrk', ['-t2', '-c20', '-d120s', `http://127.0.0.1:${port}/`])
  let out = ''
  wrk.stdout.on('data', (d) => (out += d))
  wrk.stderr.on('data', (d) => (out += d))
  const wrkDone = new Promise((resolve) => wrk.once('exit', resolve))
  let current = app.child.pid
  for (let n = 1; n <= UPGRADES; n++) {
    process.kill(current, 'SIGHUP')
    const started = await app.waitCount('lameduck: (Started new process (\\d+)|.*not upgrading.*)', n, LIMIT)
    assert.ok(started[2], app.text()) // not "Received signal [hangup]; not upgrading: …"
    const next = Number(started[2])
    generations.push(next)
    // Logged by the old process once the new one reported ready, the confirmation window passed
    // and it wrote HANDOVER=1: from then on the new one is the current generation and may be
    // upgraded itself (a SIGHUP during the window is refused as busy). Within the upgrade
    // timeout (60 s) there is either this line or "Upgrade failed".
    const outcome = await app.waitCount(`lameduck: (New process ${next} is ready|Upgrade failed)`, 1, 70000).catch((err) => {
      throw new Error(`${err.message}\n${describeProcess(next)}`)
    })
    assert.equal(outcome[1], `New process ${next} is ready`, app.text())
    current = next
    await answeredBy(port, current)
  }
  wrk.kill('SIGINT') // wrk prints its summary on SIGINT
  await wrkDone
  const requests = Number(out.match(/(\d+) requests in/)?.[1])
  const socket = out.match(/Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)/)
  const non2xx = Number(out.match(/Non-2xx or 3xx responses: (\d+)/)?.[1] ?? 0)
  console.error(`${path.basename(script)}: ${UPGRADES} SIGHUP upgrades under wrk -c20: ${requests} requests, socket errors ${socket ? socket.slice(1).join('/') : '0/0/0/0'}, non-2xx ${non2xx}`)
  assert.ok(requests > 1000, out)
  assert.deepEqual(socket ? socket.slice(1).map(Number) : [0, 0, 0, 0], [0, 0, 0, 0], `connect/read/write/timeout errors\n${out}\n${app.text()}`)
  assert.equal(non2xx, 0, out)

  process.kill(current, 'SIGTERM')
  // Every generation (the first, 8 upgraded ones) stops cleanly by itself.
  await app.waitCount('lameduck: Server stopped', UPGRADES + 1, LIMIT)
  assert.equal((await app.finish()).code, 0, app.text())
  assert.doesNotMatch(app.text(), /Upgrade failed|not upgrading|forcing close|Run ended/, app.text())
}

const skip = !hasWrk && 'wrk is installed by scripts/test-all.sh'

test('README quick start: 8 SIGHUP upgrades under wrk keep-alive load lose nothing', { skip, timeout: 240000 }, (t) =>
  upgradesUnderLoad(t, path.join(__dirname, 'readme_quickstart.js')),
)

test('examples/node/server.js: 8 SIGHUP upgrades under wrk keep-alive load lose nothing', { skip, timeout: 240000 }, (t) =>
  upgradesUnderLoad(t, path.join(REPO, 'examples', 'node', 'server.js')),
)
