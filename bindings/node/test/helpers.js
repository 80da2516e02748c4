'use strict'
// Test helpers: run test/app.js in a child process, wait for its lines, talk HTTP on 127.0.0.1.
const { spawn } = require('node:child_process')
const net = require('node:net')
const path = require('node:path')

const LIMIT = 30000

class App {
  /** `script` defaults to test/app.js; `env` is added to this process's environment. */
  constructor(args, { script = path.join(__dirname, 'app.js'), env } = {}) {
    this.child = spawn(process.execPath, [script, ...args], { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, ...env } })
    this.lines = []
    this.waiters = []
    this.exited = new Promise((resolve) => this.child.once('exit', (code, signal) => resolve({ code, signal })))
    for (const [stream, tag] of [[this.child.stdout, 'out'], [this.child.stderr, 'err']]) {
      let buffered = ''
      stream.setEncoding('utf8')
      stream.on('data', (chunk) => {
        buffered += chunk
        const parts = buffered.split('\n')
        buffered = parts.pop()
        for (const line of parts) this.#add(`${tag}: ${line}`)
      })
    }
  }
  #add(line) {
    this.lines.push(line)
    for (const w of this.waiters.slice()) if (w.rx.test(line)) w.resolve(line.match(w.rx))
  }
  waitFor(pattern, limit = LIMIT) {
    const rx = new RegExp(pattern)
    const found = this.lines.find((l) => rx.test(l))
    if (found) return Promise.resolve(found.match(rx))
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`no line matching ${pattern}; got:\n${this.text()}`)), limit)
      this.waiters.push({ rx, resolve: (m) => (clearTimeout(timer), resolve(m)) })
    })
  }
  /** Resolves with the match of the `n`th line matching `pattern`. */
  async waitCount(pattern, n, limit = LIMIT) {
    const rx = new RegExp(pattern)
    const until = Date.now() + limit
    for (;;) {
      const found = this.lines.filter((l) => rx.test(l))
      if (found.length >= n) return found[n - 1].match(rx)
      if (Date.now() > until) throw new Error(`fewer than ${n} lines matching ${pattern}; got:\n${this.text()}`)
      await new Promise((r) => setTimeout(r, 10))
    }
  }
  text() {
    return this.lines.join('\n')
  }
  signal(name) {
    process.kill(this.child.pid, name)
  }
  async finish(limit = LIMIT) {
    const timer = setTimeout(() => this.child.kill('SIGKILL'), limit)
    const result = await this.exited
    clearTimeout(timer)
    await new Promise((r) => setTimeout(r, 50)) // the last lines
    return result
  }
  kill() {
    if (this.child.exitCode === null && this.child.signalCode === null) this.child.kill('SIGKILL')
  }
}

/** Starts the app and waits until it is ready; returns [app, port]. */
async function start(t, ...args) {
  const app = new App(args)
  t.after(() => app.kill())
  const [, port] = await app.waitFor('^out: port (\\d+)')
  await app.waitFor('^out: state READY')
  return [app, Number(port)]
}

/** Sends one request on a new socket; returns the socket and a promise of everything read. */
function send(port, urlPath, keepAlive = false) {
  const socket = net.connect(port, '127.0.0.1')
  socket.write(`GET ${urlPath} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: ${keepAlive ? 'keep-alive' : 'close'}\r\n\r\n`)
  let data = ''
  socket.setEncoding('utf8')
  const waiters = []
  socket.on('data', (d) => {
    data += d
    for (const w of waiters.splice(0)) w()
  })
  const ended = new Promise((resolve) => socket.once('close', () => resolve(data)))
  socket.on('error', () => {})
  return {
    socket,
    ended,
    /** Resolves once something arrived (the first response on a keep-alive socket). */
    firstData: () => (data ? Promise.resolve(data) : new Promise((r) => waiters.push(() => r(data)))),
    write: (text) => socket.write(text),
    clear: () => (data = ''),
    get data() {
      return data
    },
  }
}

async function get(port, urlPath) {
  return send(port, urlPath).ended
}

function refused(port) {
  return new Promise((resolve) => {
    const s = net.connect(port, '127.0.0.1')
    s.once('connect', () => (s.destroy(), resolve(false)))
    s.once('error', (err) => resolve(err.code === 'ECONNREFUSED'))
  })
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms))

/**
 * Keep-alive HTTP/1.1 load: `connections` clients sending GET / back to back (a keep-alive
 * agent reconnects when the server answers `Connection: close`). Every failure is recorded.
 */
class Load {
  constructor(port, connections = 4) {
    const http = require('node:http')
    this.ok = 0
    this.errors = []
    this.stopped = false
    const agent = new http.Agent({ keepAlive: true, maxSockets: connections })
    const client = async () => {
      while (!this.stopped) {
        await new Promise((resolve) => {
          const req = http.get({ host: '127.0.0.1', port, path: '/', agent, timeout: 20000 }, (res) => {
            res.resume()
            res.on('end', () => {
              if (res.statusCode === 200) this.ok++
              else this.errors.push(`status ${res.statusCode}`)
              resolve()
            })
            res.on('error', (err) => (this.errors.push(`response: ${err.message}`), resolve()))
          })
          req.on('error', (err) => (this.errors.push(`${err.code}: ${err.message}`), resolve()))
        })
      }
    }
    this.agent = agent
    this.clients = Array.from({ length: connections }, client)
  }
  async waitMore(n, limit = LIMIT) {
    const target = this.ok + n
    const until = Date.now() + limit
    while (this.ok < target) {
      if (Date.now() > until) throw new Error(`load stalled at ${this.ok}; errors ${this.errors}`)
      await sleep(5)
    }
  }
  async stop() {
    this.stopped = true
    await Promise.all(this.clients)
    this.agent.destroy()
    return { ok: this.ok, errors: this.errors }
  }
}

module.exports = { App, Load, start, send, get, refused, sleep, LIMIT }
