'use strict'
// The adapter with an http2 (h2c) server: an in-flight stream completes after lame-duck began
// (GOAWAY, not a reset), new connections are refused, and the run settles.
const { test } = require('node:test')
const assert = require('node:assert/strict')
const http2 = require('node:http2')
const net = require('node:net')
const lameduck = require('..')

test('http2: GOAWAY lets the in-flight stream finish; new connections are refused', async () => {
  const server = http2.createServer((req, res) => setTimeout(() => res.end('slow done'), 400))
  const runner = new lameduck.Runner(lameduck.httpServer(server, { port: 0, host: '127.0.0.1' }), {
    logger: false,
    signals: [],
    explicitReady: true,
  })
  const running = runner.run()
  await runner.ready()
  const port = server.address().port
  const client = http2.connect(`http://127.0.0.1:${port}`)
  const request = client.request({ ':path': '/' })
  let body = ''
  request.setEncoding('utf8')
  request.on('data', (d) => (body += d))
  const responded = new Promise((resolve, reject) => {
    request.on('response', (headers) => resolve(headers[':status']))
    request.on('error', reject)
  })
  const ended = new Promise((resolve) => request.on('end', resolve))
  await new Promise((r) => setTimeout(r, 50)) // the stream is in flight
  runner.stop()
  assert.equal(await responded, 200)
  await ended
  assert.equal(body, 'slow done')
  client.close()
  await running
  const refused = await new Promise((resolve) => {
    const s = net.connect(port, '127.0.0.1')
    s.once('connect', () => (s.destroy(), resolve(false)))
    s.once('error', (err) => resolve(err.code === 'ECONNREFUSED'))
  })
  assert.ok(refused)
})

test('https: the in-flight request completes with Connection: close; the run settles', async (t) => {
  const { execFileSync, spawnSync } = require('node:child_process')
  if (spawnSync('openssl', ['version']).error) return t.skip('openssl is not installed')
  const fs = require('node:fs')
  const os = require('node:os')
  const path = require('node:path')
  const https = require('node:https')
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'lameduck-tls-'))
  t.after(() => fs.rmSync(dir, { recursive: true, force: true }))
  const key = path.join(dir, 'key.pem')
  const cert = path.join(dir, 'cert.pem')
  execFileSync('openssl', ['req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-keyout', key, '-out', cert, '-days', '1', '-subj', '/CN=127.0.0.1'], { stdio: 'ignore' })
  const server = https.createServer({ key: fs.readFileSync(key), cert: fs.readFileSync(cert) }, (req, res) => setTimeout(() => res.end('tls done'), 400))
  const runner = new lameduck.Runner(lameduck.httpServer(server, { port: 0, host: '127.0.0.1' }), { logger: false, signals: [], explicitReady: true })
  const running = runner.run()
  await runner.ready()
  const answer = new Promise((resolve, reject) => {
    const req = https.get({ host: '127.0.0.1', port: server.address().port, path: '/', rejectUnauthorized: false, agent: new https.Agent({ keepAlive: true }) }, (res) => {
      let body = ''
      res.on('data', (d) => (body += d))
      res.on('end', () => resolve({ status: res.statusCode, connection: res.headers.connection, body }))
    })
    req.on('error', reject)
  })
  await new Promise((r) => setTimeout(r, 100)) // in flight
  runner.stop()
  assert.deepEqual(await answer, { status: 200, connection: 'close', body: 'tls done' })
  await running
})
