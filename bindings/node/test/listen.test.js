'use strict'
// listen(): fresh sockets, systemd socket activation through the http adapter, and malformed
// environments (a RangeError naming the value).
const { test } = require('node:test')
const assert = require('node:assert/strict')
const { spawn, spawnSync } = require('node:child_process')
const net = require('node:net')
const path = require('node:path')
const lameduck = require('..')
const { get } = require('./helpers')

const APP = path.join(__dirname, 'app.js')

function freePort() {
  return new Promise((resolve) => {
    const s = net.createServer().listen(0, '127.0.0.1', () => {
      const { port } = s.address()
      s.close(() => resolve(port))
    })
  })
}

test('listen() gives a fresh listening socket that server.listen() takes', async () => {
  const handle = lameduck.listen('127.0.0.1:0')
  assert.equal(typeof handle.fd, 'number')
  const server = net.createServer()
  await new Promise((resolve) => server.listen(handle, resolve))
  assert.equal(server.address().address, '127.0.0.1')
  await new Promise((resolve) => server.close(resolve))
  assert.throws(() => lameduck.listen('nope'), RangeError)
  assert.throws(() => lameduck.listen(8080), TypeError)
})

const hasActivate = spawnSync('systemd-socket-activate', ['--version']).error === undefined
test('systemd socket activation through the http adapter', { skip: !hasActivate && 'systemd-socket-activate is not installed' }, async () => {
  const port = await freePort()
  const address = `127.0.0.1:${port}`
  const child = spawn('systemd-socket-activate', ['-l', address, process.execPath, APP, '--app', 'http', '--listen', address])
  let out = ''
  let err = ''
  child.stdout.on('data', (d) => (out += d))
  child.stderr.on('data', (d) => (err += d))
  const exited = new Promise((resolve) => child.once('exit', resolve))
  try {
    while (!err.includes(`Listening on ${address}`)) await new Promise((r) => setTimeout(r, 10))
    assert.match(await get(port, '/'), /^HTTP\/1.1 200/) // the first connection starts the app
    while (!out.includes('state READY')) await new Promise((r) => setTimeout(r, 10))
    assert.match(out, /inherited true/)
    child.kill('SIGTERM') // systemd-socket-activate exec()s node: same pid
    assert.equal(await exited, 0, out + err)
  } finally {
    child.kill('SIGKILL')
  }
})

test('a malformed environment is a RangeError naming the value', async () => {
  const port = await freePort()
  for (const [env, message] of [
    ['LISTEN_PID=$$ LISTEN_FDS=abc', 'LISTEN_FDS="abc" is not a number of descriptors'],
    ['SERVER_STARTER_PORT=8080', 'SERVER_STARTER_PORT="8080": entry "8080" is not KEY=FD'],
  ]) {
    const result = spawnSync('sh', ['-c', `${env} exec "${process.execPath}" "${APP}" --app http --listen 127.0.0.1:${port}`], { encoding: 'utf8', timeout: 30000 })
    assert.notEqual(result.status, 0)
    assert.ok(result.stderr.includes(`RangeError: ${message}`), result.stderr)
  }
})
