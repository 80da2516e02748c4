'use strict'
// Zero-downtime upgrades from Node: SIGHUP to a real http server, and Runner.upgrade().
const { test } = require('node:test')
const assert = require('node:assert/strict')
const fs = require('node:fs')
const os = require('node:os')
const path = require('node:path')
const lameduck = require('..')
const { App, Load } = require('./helpers')

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

/** A server that binds nothing, so these tests are about the upgrade protocol alone. */
function idle() {
  let stop
  const stopped = new Promise((r) => (stop = r))
  const server = { shutdowns: 0, serve: () => stopped, shutdown: () => (server.shutdowns++, stop()), close: () => stop() }
  return server
}

async function started(options) {
  const server = idle()
  const runner = new lameduck.Runner(server, { signals: [], logger: false, ...options })
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
  while (runner.state !== 'UPGRADING') await new Promise((r) => setTimeout(r, 1))
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
  ]
  for (const [options, Class, message] of cases) {
    assert.throws(() => new lameduck.Runner(idle(), options), (err) => err instanceof Class && message.test(err.message), JSON.stringify(options))
  }
  assert.equal(lameduck.isShared(-1), false)
})
