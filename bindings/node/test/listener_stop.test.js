'use strict'
// How httpServer stops its listener when lame-duck begins: the connections queued then are
// served, and a client that arrives afterwards is refused at once, never left waiting for its
// SYN to be retransmitted (see the core's src/listener/drain.rs). A child process, real
// SIGTERM, real sockets on 127.0.0.1.
const { test } = require('node:test')
const assert = require('node:assert/strict')
const net = require('node:net')
const { LIMIT, send, sleep, start } = require('./helpers')

/**
 * The kernel retransmits a dropped SYN only after the initial RTO of one second, so a connect
 * that needed it cannot end sooner: an attempt that resolved (connected or refused) in under
 * 1000 ms had no SYN dropped. (JS cannot read the socket's TCP_INFO retransmission count, which
 * the Python and C tests check; the bound is the RTO itself, far above a loopback connect even
 * on a busy machine.)
 */
const RTO_MS = 1000

/** One fresh connection (`GET /`, `Connection: close`): its outcome and how long its connect took (ms). */
function attempt(port) {
  return new Promise((resolve) => {
    const began = process.hrtime.bigint()
    const took = () => Number(process.hrtime.bigint() - began) / 1e6
    const socket = net.connect(port, '127.0.0.1')
    let connectMs = null
    let data = ''
    socket.setEncoding('utf8')
    socket.on('data', (d) => (data += d))
    socket.once('connect', () => {
      connectMs = took()
      socket.end('GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n')
    })
    socket.once('error', (err) => {
      if (connectMs === null) resolve({ outcome: err.code === 'ECONNREFUSED' ? 'refused' : `lost: ${err.code}`, ms: took() })
      else resolve({ outcome: `lost: ${err.code} after the connect`, ms: connectMs })
    })
    socket.once('close', (hadError) => {
      if (hadError) return
      resolve({ outcome: data.startsWith('HTTP/1.1 ') ? data.split('\r\n', 1)[0] : `lost: ${JSON.stringify(data)}`, ms: connectMs })
    })
  })
}

test('a client storm while lame-duck waits for a slot is refused at once', async (t) => {
  // The gate is full (a slow request holds the only slot, another client waits in the queue)
  // when lame-duck begins, so it lasts until the slot frees. The adapter stops its listener at
  // once all the same: a storm of clients arriving meanwhile is refused at once. With the drop
  // filter on for the whole drain (as the adapter did) each one waited out the 1 s RTO, and was
  // refused only once the slot freed and the listener closed. The storm begins 1 s into
  // lame-duck (the new adapter stops its listener as shutdown begins; the old one had the filter
  // on until the slow request, 4 s, ended) and ends when the server exits.
  const [app, port] = await start(t, '--app', 'http', '--max-connections', '1', '--period', '10000')
  const slow = send(port, '/sleep?ms=4000')
  await app.waitFor('app: request GET /sleep\\?ms=4000')
  const queued = send(port, '/') // waits in the backlog for the slot
  app.signal('SIGTERM')
  await app.waitFor('^out: state SHUTTING_DOWN')
  await sleep(1000)
  let exited = false
  const finished = app.finish(LIMIT).then((r) => ((exited = true), r))
  const storm = async () => {
    const seen = []
    while (!exited && seen.length < 200) seen.push(await attempt(port))
    return seen
  }
  const results = (await Promise.all([storm(), storm(), storm(), storm()])).flat()
  const { code } = await finished
  assert.ok(results.length > 0)
  results.forEach(({ outcome, ms }, i) => {
    assert.ok(outcome === 'refused' || outcome === 'HTTP/1.1 200 OK', `attempt ${i} was neither served nor refused: ${outcome}`)
    assert.ok(ms < RTO_MS, `attempt ${i} (${outcome}) took ${ms.toFixed(0)} ms to connect: its SYN was dropped, and it waited out the 1 s RTO`)
  })
  assert.match(await slow.ended, /^HTTP\/1\.1 200/, 'the request in flight completes')
  assert.match(await queued.ended, /^HTTP\/1\.1 200/, 'the client queued when lame-duck began is served')
  assert.equal(code, 0, app.text())
})
