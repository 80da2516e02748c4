'use strict'
// Zero-downtime upgrades from Node: SIGHUP to a real http server, and Runner.upgrade().
const { test } = require('node:test')
const assert = require('node:assert/strict')
const fs = require('node:fs')
const http = require('node:http')
const os = require('node:os')
const path = require('node:path')
const { spawn, spawnSync } = require('node:child_process')
const { setTimeout: sleep } = require('node:timers/promises')
const lameduck = require('..')
const { App, Load, get, start } = require('./helpers')

/** A new process that reports ready by the one-line protocol if it was handed `fds` listeners. */
const readyIfHanded = (fds) => ['sh', '-c', `[ "\${LISTEN_FDS:-0}" = ${fds} ] && echo READY=1 >&"$LAMEDUCK_READY_FD"; exec sleep 30`]

function killAll(pids) {
  for (const pid of pids) {
    try {
      process.kill(pid, 'SIGKILL')
    } catch {}
  }
}

test('SIGHUP upgrades of the http adapter lose no request', async (t) => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'lameduck-node-'))
  const pidFile = path.join(dir, 'app.pid')
  const app = new App(['--app', 'http', '--listen', '127.0.0.1:0', '--pid-file', pidFile])
  const generations = []
  t.after(() => (killAll(generations), app.kill(), fs.rmSync(dir, { recursive: true, force: true })))
  const [, port] = await app.waitFor('^out: port (\\d+)')
  await app.waitFor('^out: state READY')
  assert.equal(fs.readFileSync(pidFile, 'utf8'), `${app.child.pid}\n`)
  const load = new Load(Number(port))
  await load.waitMore(20)
  let current = app.child.pid
  for (let n = 1; n <= 4; n++) {
    process.kill(current, 'SIGHUP')
    current = Number((await app.waitCount('lameduck: New process (\\d+) is ready', n))[1])
    generations.push(current)
    await load.waitMore(20)
  }
  const { ok, errors } = await load.stop()
  assert.deepEqual(errors, [], `${errors.length} of ${ok + errors.length} requests failed`)
  assert.equal(fs.readFileSync(pidFile, 'utf8'), `${current}\n`)
  assert.equal(app.text().split('\n').filter((l) => l === 'out: inherited true').length, 4, app.text())
  process.kill(current, 'SIGTERM')
  await app.waitCount('^out: clean exit', 5)
  assert.equal((await app.finish()).code, 0)
  assert.equal(fs.existsSync(pidFile), false)
})

/** A server that binds nothing (upgrades allowed anyway), so these tests are about the upgrade protocol alone. */
function idle() {
  let stop
  const stopped = new Promise((r) => (stop = r))
  const server = { shutdowns: 0, serve: () => stopped, shutdown: () => (server.shutdowns++, stop()), close: () => stop() }
  return server
}

async function started(options) {
  const server = idle()
  const runner = new lameduck.Runner(server, { signals: [], logger: false, upgradeWithoutListeners: true, ...options })
  const done = runner.run()
  await runner.ready()
  return { runner, server, done }
}

test('a failed upgrade rejects and the run keeps serving', async () => {
  const { runner, server, done } = await started({ upgradeCommand: [process.execPath, '-e', 'process.exit(3)'] })
  await assert.rejects(runner.upgrade(), (err) => {
    assert.ok(err instanceof lameduck.UpgradeFailedError && err instanceof lameduck.LameDuckError && err instanceof Error)
    assert.equal(err.code, 'LD_UPGRADE_FAILED')
    assert.match(err.message, /exited with status 3 before it was ready/)
    return true
  })
  assert.equal(runner.state, 'READY')
  assert.equal(server.shutdowns, 0)
  runner.stop()
  await done
  await assert.rejects(runner.upgrade(), lameduck.NotRunningError)
})

test('never ready: terminated at the timeout; a second upgrade meanwhile is busy', async () => {
  const { runner, done } = await started({ upgradeCommand: ['sleep', '30'], upgradeTimeout: 1000 })
  const first = runner.upgrade()
  for (const until = Date.now() + 10000; runner.state !== 'UPGRADING'; ) {
    assert.ok(Date.now() < until, `state ${runner.state}`)
    await new Promise((r) => setTimeout(r, 1))
  }
  await assert.rejects(runner.upgrade(), (err) => err instanceof lameduck.BusyError && /already in progress/.test(err.message))
  await assert.rejects(first, (err) => err instanceof lameduck.UpgradeFailedError && /not ready within 1s; stopped it with SIGTERM/.test(err.message))
  assert.equal(runner.state, 'READY')
  runner.stop()
  await done
})

test('a missing program', async () => {
  const { runner, done } = await started({ upgradeCommand: ['/nonexistent/server'] })
  await assert.rejects(runner.upgrade(), /cannot start \/nonexistent\/server: No such file or directory/)
  runner.stop()
  await done
})

test('a successful upgrade (one-line protocol) hands over and ends the run', async () => {
  const command = ['sh', '-c', 'echo READY=1 >&"$LAMEDUCK_READY_FD"; exec sleep 30']
  const { runner, server, done } = await started({ upgradeCommand: command })
  const pid = await runner.upgrade()
  try {
    assert.ok(pid > 0)
    await done
    assert.equal(server.shutdowns, 1)
    assert.equal(runner.state, 'STOPPED')
  } finally {
    process.kill(pid, 'SIGKILL')
  }
})

test('invalid upgrade options throw before anything starts', () => {
  const cases = [
    [{ upgradeTimeout: 0 }, RangeError, /upgradeTimeout=0/],
    [{ upgradeTimeout: 'x' }, TypeError, /upgradeTimeout must be a number/],
    [{ upgradeSignals: ['SIGTERM'] }, RangeError, /cannot both trigger lame-duck and start an upgrade/],
    [{ upgradeSignals: ['SIGNOPE'] }, RangeError, /upgradeSignals: "SIGNOPE" is not a signal name/],
    [{ upgradeCommand: 'server' }, TypeError, /upgradeCommand must be an array of strings/],
    [{ upgradeCommand: [] }, RangeError, /upgradeCommand/],
    [{ pidFile: 3 }, TypeError, /pidFile must be a path string/],
    [{ pidFile: '' }, RangeError, /pidFile=""/],
    [{ listenTimeout: 0 }, RangeError, /listenTimeout=0: listen timeout 0s is invalid/],
    [{ listenTimeout: '10s' }, TypeError, /listenTimeout must be a number of milliseconds/],
    [{ upgradeConfirm: 61000 }, RangeError, /upgradeConfirm=61000: upgrade confirmation window 1m1s is invalid: it must be at most 1m0s/],
    [{ upgradeConfirm: -1 }, RangeError, /upgradeConfirm=-1 is invalid/],
    [{ upgradeWithoutListeners: 1 }, TypeError, /upgradeWithoutListeners must be a boolean, got 1/],
  ]
  for (const [options, Class, message] of cases) {
    assert.throws(() => new lameduck.Runner(idle(), options), (err) => err instanceof Class && message.test(err.message), JSON.stringify(options))
  }
  assert.equal(lameduck.isShared(-1), false)
  new lameduck.Runner(idle(), { upgradeConfirm: 0, listenTimeout: 1, upgradeWithoutListeners: true }) // the limits are allowed
})

test('the confirmation window: a new process that exits within it fails the upgrade; with 0 it has taken over', async () => {
  const command = ['sh', '-c', 'echo READY=1 >&"$LAMEDUCK_READY_FD"; sleep 0.3; exit 4']
  let { runner, server, done } = await started({ upgradeCommand: command, upgradeConfirm: 5000 })
  await assert.rejects(runner.upgrade(), (err) => err instanceof lameduck.UpgradeFailedError && /exited with status 4 within 5s of reporting ready/.test(err.message))
  assert.equal(runner.state, 'READY')
  assert.equal(server.shutdowns, 0)
  runner.stop()
  await done
  ;({ runner, server, done } = await started({ upgradeCommand: command, upgradeConfirm: 0 }))
  assert.ok((await runner.upgrade()) > 0) // handed over before the new process exited
  await done
  assert.equal(server.shutdowns, 1)
})

/** A hand-written server on a socket it binds itself: lameduck does not know it. */
function ownSocketServer() {
  const server = http.createServer((req, res) => res.end('mine\n'))
  return {
    server,
    serve: (ctx) => new Promise((resolve) => server.listen({ port: 0, host: '127.0.0.1' }, () => ctx.ready()).once('close', resolve)),
    shutdown: () => new Promise((resolve) => server.close(() => resolve())),
    close: () => server.closeAllConnections(),
  }
}

test('an upgrade of a server whose socket lameduck does not know is refused, and it still serves; upgradeWithoutListeners allows it', async (t) => {
  const own = ownSocketServer()
  // This command would succeed: the refusal is lameduck's, before any process starts.
  let runner = new lameduck.Runner(own, { signals: [], logger: false, explicitReady: true, upgradeCommand: readyIfHanded(0) })
  t.after(() => runner.stop())
  let done = runner.run()
  await runner.ready()
  await assert.rejects(runner.upgrade(), (err) => {
    assert.ok(err instanceof lameduck.UpgradeFailedError && err instanceof lameduck.LameDuckError && err instanceof Error, String(err))
    assert.equal(err.code, 'LD_UPGRADE_FAILED')
    assert.match(err.message, /no listener known to lameduck/)
    assert.match(err.message, /listen\(\).*adopt/)
    return true
  })
  assert.equal(runner.state, 'READY')
  assert.match(await get(own.server.address().port, '/'), /^HTTP\/1.1 200[^]*mine/)
  runner.stop()
  await done

  const again = ownSocketServer()
  runner = new lameduck.Runner(again, { signals: [], logger: false, explicitReady: true, upgradeCommand: readyIfHanded(0), upgradeWithoutListeners: true, upgradeConfirm: 0 })
  done = runner.run()
  await runner.ready()
  const pid = await runner.upgrade()
  try {
    await done
    assert.equal(runner.state, 'STOPPED')
  } finally {
    process.kill(pid, 'SIGKILL')
  }
})

test('SIGHUP to a server that binds its own socket: logged and refused, it goes on serving', async (t) => {
  const [app, port] = await start(t, '--app', 'plain')
  app.signal('SIGHUP')
  await app.waitFor('lameduck: Received signal \\[hangup\\]; not upgrading: this process has no listener known to lameduck')
  assert.match(await get(port, '/'), /^HTTP\/1.1 200/)
  assert.doesNotMatch(app.text(), /Started new process/)
  app.signal('SIGTERM')
  assert.equal((await app.finish()).code, 0, app.text())
})

// The adopted one first: the core's adopt() keeps a stale record when a descriptor number is
// reused by a new socket (reported; not the Node wrapper's to fix), and listen() records replace
// stale ones, so this order never reuses a recorded number for adopt.
for (const [what, listenOptions] of [
  ['a server that arrives listening is adopted', null],
  ['{ port, host } is bound through listen()', { port: 0, host: '127.0.0.1' }],
]) {
  test(`httpServer: ${what}, so an upgrade hands its socket on`, async (t) => {
    const server = http.createServer((req, res) => res.end('ok\n'))
    if (listenOptions === null) await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve))
    const adapter = lameduck.httpServer(server, listenOptions ?? undefined, { idleGrace: 0 })
    const runner = new lameduck.Runner(adapter, { signals: [], logger: false, upgradeCommand: readyIfHanded(1), upgradeConfirm: 0 })
    t.after(() => (runner.stop(), server.close()))
    const done = runner.run()
    await runner.ready()
    assert.ok(server.listening) // the adapter reports ready itself, once listening
    assert.match(await get(server.address().port, '/'), /^HTTP\/1.1 200/)
    const pid = await runner.upgrade() // the new process saw LISTEN_FDS=1
    try {
      await done
      assert.equal(server.listening, false)
    } finally {
      process.kill(pid, 'SIGKILL')
    }
  })
}

test('adopt() and httpServer listen options: errors are TypeError/RangeError naming the problem', () => {
  assert.throws(() => lameduck.adopt('3'), TypeError)
  assert.throws(() => lameduck.adopt(1.5), TypeError)
  assert.throws(() => lameduck.adopt(-1), (err) => err instanceof RangeError && /fd -1 from adopt is not open/.test(err.message))
  assert.throws(() => lameduck.adopt(0), RangeError) // stdin: not a listening socket
  assert.throws(() => lameduck.adopt(http.createServer()), (err) => err instanceof RangeError && /not listening/.test(err.message))
  const server = http.createServer()
  assert.throws(() => lameduck.httpServer(server, { port: 0, reusePort: true }), (err) => err instanceof TypeError && /reusePort is not supported/.test(err.message))
  assert.throws(() => lameduck.httpServer(server, { port: 70000 }), (err) => err instanceof RangeError && /port=70000 is invalid/.test(err.message))
  assert.throws(() => lameduck.httpServer(server, { port: 'http' }), TypeError)
  assert.throws(() => lameduck.httpServer(server, { port: 80, path: '/tmp/x.sock' }), RangeError)
})

test('httpServer { path }: a unix socket bound through listen(), removed by the last generation', async (t) => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'lameduck-unix-'))
  const sock = path.join(dir, 'http.sock')
  try {
    const server = http.createServer((req, res) => res.end('unix ok\n'))
    const runner = new lameduck.Runner(lameduck.httpServer(server, { path: sock }, { idleGrace: 0 }), { signals: [], logger: false })
    t.after(() => runner.stop())
    const done = runner.run()
    await runner.ready()
    const body = await new Promise((resolve, reject) => {
      http.get({ socketPath: sock, path: '/' }, (res) => {
        let data = ''
        res.on('data', (d) => (data += d))
        res.on('end', () => resolve(data))
      }).on('error', reject)
    })
    assert.equal(body, 'unix ok\n')
    runner.stop()
    await done
    assert.equal(fs.existsSync(sock), false)
  } finally {
    fs.rmSync(dir, { recursive: true, force: true })
  }
})

test('listenTimeout: a new process that binds its own socket is not ready; the upgrade fails naming the listener', async (t) => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'lameduck-lt-'))
  const log = path.join(dir, 'new.log')
  const { fd } = lameduck.listen('127.0.0.1:0') // a listener lameduck knows, for the new process to take
  t.after(() => (fs.closeSync(fd), fs.rmSync(dir, { recursive: true, force: true })))
  // The new process is test/app.js `plain`: ready on a socket of its own, it never takes fd 3.
  const command = ['sh', '-c', `exec "$0" "$@" >'${log}' 2>&1`, process.execPath, path.join(__dirname, 'app.js'), '--app', 'plain', '--listen-timeout', '300']
  const { runner, done } = await started({ upgradeCommand: command, upgradeWithoutListeners: false })
  t.after(() => runner.stop())
  await assert.rejects(runner.upgrade(), (err) => {
    assert.ok(err instanceof lameduck.UpgradeFailedError, String(err))
    assert.match(err.message, /cannot take over: no listen\(\) call took fd 3 \(127\.0\.0\.1:\d+\) within 300ms/, fs.readFileSync(log, 'utf8'))
    return true
  })
  assert.equal(runner.state, 'READY')
  runner.stop()
  await done
})

const hasWrk = spawnSync('wrk', ['--version']).error === undefined
test('the last generation drains its socket once the previous one has exited: SIGTERM under wrk loses nothing', { skip: !hasWrk && 'wrk is installed by scripts/test-all.sh' }, async (t) => {
  // After an upgrade the socket is shared only while the old process lives. It used to stay
  // "shared" for ever, so the last generation closed it undrained, resetting what was queued.
  const app = new App(['--app', 'http', '--listen', '127.0.0.1:0', '--period', '10000'])
  let current = app.child.pid
  t.after(() => (killAll([current]), app.kill()))
  const [, port] = await app.waitFor('^out: port (\\d+)')
  await app.waitFor('^out: state READY')
  process.kill(current, 'SIGHUP')
  current = Number((await app.waitCount('lameduck: New process (\\d+) is ready', 1))[1])
  await app.waitCount('^out: clean exit', 1)
  await app.exited // the old process is gone (its pidfd is readable)
  const wrk = spawn('wrk', ['-t2', '-c20', '-d4s', '--timeout', '10s', `http://127.0.0.1:${port}/`])
  let out = ''
  wrk.stdout.on('data', (d) => (out += d))
  await sleep(1500) // load is flowing
  process.kill(current, 'SIGTERM')
  await new Promise((resolve) => wrk.once('exit', resolve))
  await app.waitCount('^out: clean exit', 2)
  assert.ok(Number(out.match(/(\d+) requests in/)[1]) > 100, out)
  const errors = out.match(/Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)/)
  // As in servers.test.js: refused reconnects after the close are wrk "write" errors.
  assert.deepEqual(errors ? [Number(errors[2]), Number(errors[4])] : [0, 0], [0, 0], out)
  assert.doesNotMatch(out, /Non-2xx/, out)
})
