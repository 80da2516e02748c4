'use strict'
/**
 * The adapter for http, https and http2 servers, Express and Fastify apps included (Python's
 * lameduck/adapters.py): a lameduck server whose serve listens and whose shutdown drains.
 */
const fs = require('node:fs')
const net = require('node:net')
const native = require('./native')
const { DeadlineExceededError, describeValue, nativeError } = require('./errors')
const { milliseconds } = require('./options')
const { listen, serverFd } = require('./listen')

/** Each http/https socket's count of requests in flight. */
const IN_FLIGHT = Symbol('lameduck.inFlight')

// Node listen options that a socket from the core's listen() cannot honour.
const UNSUPPORTED_LISTEN_OPTIONS = ['ipv6Only', 'reusePort']
// Node listen options passed on to server.listen({ fd, … }).
const PASSED_LISTEN_OPTIONS = ['backlog', 'exclusive', 'signal']

/**
 * How httpServer listens, decided (and checked) when the adapter is made:
 * - `{ address }`: the core's listen(address) binds (or takes the inherited socket), then
 *   server.listen({ fd }); `{ port, host }` is `HOST:PORT` (`[V6]:PORT`), or `PORT` (every IPv4
 *   address) without a host; `{ path }` is a unix socket;
 * - `{ raw }`: `{ fd }` or `{ handle }` goes to server.listen() as it is, and the listening
 *   socket is adopted.
 */
function listenPlan(listenOptions) {
  let o = listenOptions
  if (o === undefined || o === null) o = {}
  else if (typeof o === 'number') o = { port: o }
  else if (typeof o === 'string') o = /^\d+$/.test(o) ? { port: Number(o) } : { path: o }
  else if (typeof o !== 'object') throw new TypeError(`httpServer(server, listenOptions): listenOptions must be an object, a port or a path, got ${describeValue(o)}`)
  if (o.fd !== undefined || o.handle !== undefined || o._handle !== undefined) return { raw: o }
  for (const key of UNSUPPORTED_LISTEN_OPTIONS) {
    if (o[key]) {
      throw new TypeError(
        `httpServer: listen option ${key} is not supported: lameduck binds the socket (so that an upgrade can hand it on); ` +
          'bind it yourself and pass { fd } or a server that is already listening',
      )
    }
  }
  const pass = Object.fromEntries(PASSED_LISTEN_OPTIONS.filter((k) => o[k] !== undefined).map((k) => [k, o[k]]))
  if (o.path !== undefined && o.port !== undefined) throw new RangeError('httpServer: give listen options port (and host) or path, not both')
  if (o.path !== undefined) {
    if (typeof o.path !== 'string' || o.path === '') throw new TypeError(`httpServer: path must be a non-empty string, got ${describeValue(o.path)}`)
    if (o.host !== undefined) throw new RangeError('httpServer: a unix socket path takes no host')
    const mode = (o.readableAll ? 0o444 : 0) | (o.writableAll ? 0o222 : 0)
    return { address: o.path.startsWith('/') ? o.path : `unix:${o.path}`, path: o.path, mode, pass }
  }
  let port = o.port ?? 0
  if (typeof port === 'string' && /^\d+$/.test(port)) port = Number(port)
  if (typeof port !== 'number') throw new TypeError(`httpServer: port must be a number, got ${describeValue(o.port)}`)
  if (!Number.isInteger(port) || port < 0 || port > 65535) throw new RangeError(`httpServer: port=${port} is invalid: it must be an integer from 0 to 65535`)
  if (o.host !== undefined && (typeof o.host !== 'string' || o.host === '')) throw new TypeError(`httpServer: host must be a non-empty string, got ${describeValue(o.host)}`)
  const host = o.host?.replace(/^\[(.*)\]$/, '$1')
  const address = host === undefined ? String(port) : host.includes(':') ? `[${host}]:${port}` : `${host}:${port}`
  return { address, pass }
}

/**
 * A lameduck server for a `http`, `https` or `http2` server (Express and Fastify apps included).
 *
 * serve listens, reports ready once listening (the adapter has `explicitReady: true`), and
 * resolves when the server has closed. It binds through lameduck's `listen()`, so that an
 * upgrade hands the socket on: `{ port, host }` (no host: every IPv4 address, `0.0.0.0`) or
 * `{ path }`; `{ fd }` is passed to `server.listen()` as it is; a server that is already
 * listening is adopted (`adopt`). shutdown:
 * - stops accepting at once; connections already queued are still accepted and answered
 *   (`drainListener`);
 * - answers later requests on kept-alive sockets with `Connection: close` (http2: GOAWAY);
 * - closes an idle keep-alive socket only after `idleGrace` ms (never past the deadline);
 * - waits for in-flight requests until the deadline.
 * close destroys what is left. Node's own `server.close()` closes idle sockets at once, which
 * races with clients reusing them.
 */
function httpServer(server, listenOptions, { idleGrace = 1000, drainListener } = {}) {
  if (!server || typeof server.listen !== 'function' || typeof server.on !== 'function') {
    throw new TypeError('httpServer(server, …): server must be an http, https or http2 server')
  }
  milliseconds('idleGrace', idleGrace)
  if (server.listening && listenOptions !== undefined) {
    throw new TypeError('httpServer(server, listenOptions): the server is already listening (it is adopted as it is); leave listenOptions out')
  }
  const plan = listenPlan(listenOptions)
  // Never drain a listener shared with other processes (systemd's or start_server's, one handed
  // on by an upgrade, or one a previous generation handed us while it still runs): the drop
  // filter would stop them accepting too. The core knows where each socket came from (it went
  // through listen() or adopt()), and its answer changes when it should, so it is asked when
  // shutdown comes.
  const drainable = (fd) => (drainListener === undefined ? native.shouldDrain(fd) : !!drainListener)
  // http2 multiplexes streams on one socket: track its sessions (GOAWAY), never its sockets.
  const isHttp2 = /^Http2/.test(server.constructor?.name || '')
  const sockets = new Set() // http/https sockets; each carries its in-flight count
  const sessions = new Set() // http2
  const responses = new Set() // http/https responses not finished yet
  let lameDuck = false

  if (!isHttp2) {
    const tls = typeof server.addContext === 'function' // https: track the TLS sockets requests use
    server.on(tls ? 'secureConnection' : 'connection', (socket) => {
      socket[IN_FLIGHT] = 0
      sockets.add(socket)
      socket.once('close', () => sockets.delete(socket))
    })
  }
  server.on('session', (session) => {
    sessions.add(session)
    session.once('close', () => sessions.delete(session))
    if (lameDuck) session.close()
  })
  server.prependListener('request', (req, res) => {
    if (isHttp2) return
    const socket = req.socket
    socket[IN_FLIGHT] = (socket[IN_FLIGHT] || 0) + 1
    if (lameDuck && !res.headersSent) res.setHeader('Connection', 'close')
    responses.add(res)
    // 'close' follows every response, finished or aborted: one listener is enough.
    res.once('close', () => {
      responses.delete(res)
      socket[IN_FLIGHT]--
    })
  })

  const idle = () => [...sockets].filter((socket) => socket[IN_FLIGHT] === 0)
  // Resolves after `ms`, or at once when `signal` aborts. Each wait removes its abort listener
  // when it settles: shutdown polls every few ms for as long as requests are in flight.
  const wait = (ms, signal) =>
    new Promise((resolve) => {
      if (signal.aborted) return resolve()
      const settle = () => {
        clearTimeout(timer)
        signal.removeEventListener('abort', settle)
        resolve()
      }
      const timer = setTimeout(settle, ms)
      signal.addEventListener('abort', settle, { once: true })
    })

  /** Binds through the core's listen(); returns what server.listen() takes. */
  const bind = () => {
    if (plan.raw) return plan.raw
    const { fd } = listen(plan.address)
    try {
      if (plan.mode) fs.chmodSync(plan.path, (fs.statSync(plan.path).mode & 0o7777) | plan.mode) // readableAll, writableAll
    } catch (err) {
      fs.closeSync(fd)
      throw err
    }
    return { fd, ...plan.pass }
  }

  return {
    server,
    /** serve calls ctx.ready() once the server is listening; the Runner waits for that. */
    explicitReady: true,
    get lameDuck() {
      return lameDuck
    },
    serve(ctx) {
      return new Promise((resolve, reject) => {
        const onError = (err) => reject(err)
        let bound = false // by the core's listen()
        const listening = () => {
          server.removeListener('error', onError)
          const fd = serverFd(server)
          // A socket lameduck did not bind (a server that came listening, { fd }): register it,
          // so that an upgrade hands it on. Harmless for one it knows already.
          if (!bound && fd !== undefined) {
            try {
              native.adopt(fd, null)
            } catch (err) {
              net.Server.prototype.close.call(server)
              return reject(nativeError(err))
            }
          }
          ctx.ready()
        }
        server.once('error', onError)
        server.once('close', () => resolve())
        if (server.listening) return listening()
        let options
        try {
          options = bind()
          bound = !plan.raw
        } catch (err) {
          server.removeListener('error', onError)
          return reject(err)
        }
        server.listen(options, listening)
      })
    },
    async shutdown(ctx) {
      lameDuck = true
      for (const res of responses) if (!res.headersSent) res.setHeader('Connection', 'close') // in flight
      const fd = server._handle && server._handle.fd
      if (typeof fd === 'number' && fd >= 0 && drainable(fd)) {
        native.stopAccepting(fd) // no new connections; queued ones are still accepted
        while (native.hasPendingConnection(fd) && !ctx.signal.aborted) await wait(2, ctx.signal)
      }
      net.Server.prototype.close.call(server) // stop listening, without Node's idle-socket sweep
      for (const session of sessions) session.close() // http2: GOAWAY, then close when streams end
      await wait(Math.min(idleGrace, ctx.remaining() ?? idleGrace), ctx.signal)
      const closeIdle = () => idle().forEach((s) => s.destroy())
      closeIdle()
      while (sockets.size > 0 || sessions.size > 0) {
        if (ctx.signal.aborted) throw new DeadlineExceededError(`${sockets.size + sessions.size} connection(s) still open at the deadline`)
        await wait(5, ctx.signal)
        closeIdle() // a busy socket whose response said Connection: close, now idle
      }
    },
    close() {
      lameDuck = true
      net.Server.prototype.close.call(server)
      for (const session of sessions) session.destroy()
      for (const socket of sockets) socket.destroy()
    },
  }
}

module.exports = { httpServer }
