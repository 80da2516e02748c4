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

/** When each http/https socket was admitted (Date.now()): a connection gets its idle grace from then. */
const ADMITTED = Symbol('lameduck.admitted')

/**
 * Admission through the connection gate, for one listening net.Server: while the gate is full
 * the server does not call accept(2), so new clients complete the handshake and wait in the
 * kernel backlog, none refused or reset; when a slot frees it accepts again.
 *
 * Node cannot pause a listening handle: libuv has no uv_listen_stop, and Node's handle calls
 * accept(2) for every connection the moment the socket is readable (pauseOnConnect, or holding
 * the handle in `onconnection`, still accepts: the client leaves the backlog, holds one of our
 * descriptors, and the kernel stops queueing for us). So a pause closes Node's handle, but never
 * the socket: the adapter keeps the listening socket open under a number of its own (`base`: the
 * one lameduck's listen() gave, or a copy), and Node's handle always works on a copy (dup) of it.
 * While paused, server._handle is a fresh handle opened on another copy, not listening (libuv
 * watches a descriptor only once uv_listen is called), so server.address(), server.listening and
 * server.close() go on working and no 'listening' event is emitted again; resuming is that
 * handle's listen(backlog). The kernel goes on completing handshakes into the socket's queue the
 * whole time (the backlog passed to listen(), 511 by default as in Node).
 *
 * Admission itself happens in the handle's onconnection, before Node makes a Socket: one
 * tryAcquire (queued: the connection is already accepted) per connection, and a pause as soon
 * as the gate is full. Only a race can find the gate full after an accept (another server on the
 * same gate took the last slot, or the limit was lowered): that connection is held, not read and
 * not answered, and counted as waiting, until a slot frees. Held connections are never counted
 * as admitted, so the limit holds for what is served.
 */
class GatedListener {
  #server
  #gate
  #base
  #ownBase
  #backlog
  #HandleClass
  #symbols
  #netOnConnection
  #paused = false
  #closed = false
  #cannotPause = false // a pause failed once (a handle that cannot be reopened): it accepts on
  #pendingPermit = null
  #held = [] // [listeningHandle, clientHandle] accepted while full (races only)
  #unwatch
  #onconnection

  /** `base`: the descriptor kept open under our own number (null: the server's handle owns it; copied at the first pause). */
  constructor(server, gate, base, backlog) {
    const handle = server._handle
    this.#server = server
    this.#gate = gate
    this.#base = base
    this.#ownBase = base !== null
    this.#backlog = backlog
    this.#HandleClass = handle.constructor
    this.#symbols = Object.getOwnPropertySymbols(handle).map((sym) => [sym, handle[sym]]) // owner_symbol: the server
    this.#netOnConnection = handle.onconnection
    const self = this
    this.#onconnection = function (err, clientHandle) {
      self.#admit(this, err, clientHandle)
    }
    handle.onconnection = this.#onconnection
    server.prependListener('connection', (socket) => {
      const permit = this.#pendingPermit
      if (permit === null) return // a socket emitted by hand: not gated
      this.#pendingPermit = null
      socket.once('close', () => permit.release())
    })
    this.#unwatch = gate.watch(this)
    if (gate.free === 0) this.#pause()
  }

  /** The descriptor that stays open while paused (for the drain and for closing). */
  get fd() {
    return this.#base ?? serverFd(this.#server)
  }

  /** Connections accepted and waiting for a slot (see the class comment). */
  held() {
    return this.#held.length
  }

  #admit(listeningHandle, err, clientHandle) {
    if (err) return this.#netOnConnection.call(listeningHandle, err, clientHandle)
    let permit
    try {
      permit = this.#gate.tryAcquire({ queued: true })
    } catch {
      clientHandle.close() // close was called: the run cuts what is left
      return
    }
    if (permit === null) {
      this.#held.push([listeningHandle, clientHandle])
      this.#pause()
      return
    }
    this.#hand(listeningHandle, clientHandle, permit)
    if (this.#gate.free === 0) this.#pause()
  }

  #hand(listeningHandle, clientHandle, permit) {
    this.#pendingPermit = permit
    this.#netOnConnection.call(listeningHandle, null, clientHandle)
    if (this.#pendingPermit !== null) {
      // Node dropped it (server.maxConnections) or nobody took it: give the slot back.
      this.#pendingPermit = null
      permit.release()
    }
  }

  /** The gate changed (a release, a new limit, lame-duck): admit held connections, then pause or resume. */
  onChange() {
    while (this.#held.length > 0) {
      let permit
      try {
        permit = this.#gate.tryAcquire({ queued: true })
      } catch {
        for (const [, clientHandle] of this.#held.splice(0)) clientHandle.close()
        break
      }
      if (permit === null) break
      const [listeningHandle, clientHandle] = this.#held.shift()
      this.#hand(listeningHandle, clientHandle, permit)
    }
    if (this.#closed) {
      if (this.#held.length === 0) this.#unwatch()
      return
    }
    if (this.#held.length > 0 || this.#gate.free === 0) this.#pause()
    else this.#resume()
  }

  #pause() {
    const server = this.#server
    const current = server._handle
    if (this.#paused || this.#closed || this.#cannotPause || !current) return
    try {
      if (this.#base === null) {
        // A handle lameduck did not open (an adopted server, { handle }): keep the socket under a
        // number of our own before closing the handle, and tell the registry (upgrades) about it.
        this.#base = native.dupFd(current.fd)
        this.#ownBase = true
        native.adopt(this.#base, null)
      }
      const fresh = new this.#HandleClass(1) // TCPConstants.SERVER / PipeConstants.SERVER
      const copy = native.dupFd(this.#base)
      const err = fresh.open(copy)
      if (err) {
        fs.closeSync(copy)
        throw new Error(`could not open a handle on the listening socket (uv error ${err})`)
      }
      for (const [sym, value] of this.#symbols) fresh[sym] = value
      fresh.onconnection = this.#onconnection
      server._handle = fresh
      current.close() // stops accepting; the socket stays open through #base
      this.#paused = true
    } catch (err) {
      this.#cannotPause = true
      process.emitWarning(`lameduck: could not pause accepting at the connection limit (${err.message}); connections above it are accepted and held until a slot frees`)
    }
  }

  #resume() {
    if (!this.#paused || this.#closed || !this.#server._handle) return
    const err = this.#server._handle.listen(this.#backlog)
    if (err) {
      process.emitWarning(`lameduck: could not resume accepting (uv error ${err})`)
      return
    }
    this.#paused = false
  }

  /**
   * The server stopped listening: no more pauses or resumes; held connections are still admitted
   * as slots free (they were accepted). `queued`: client handles for the connections taken from
   * the queue when the listener was shut, admitted (or held) here like accepted ones, through
   * `listeningHandle` (the server's last).
   */
  stopListening(listeningHandle = null, queued = []) {
    this.#closed = true
    this.#closeBase()
    for (const clientHandle of queued) this.#admit(listeningHandle, null, clientHandle)
    if (this.#held.length === 0) this.#unwatch()
  }

  /** close(): held connections are cut too. */
  destroy() {
    this.#closed = true
    for (const [, clientHandle] of this.#held.splice(0)) clientHandle.close()
    this.#closeBase()
    this.#unwatch()
  }

  #closeBase() {
    if (this.#ownBase && this.#base !== null) {
      try {
        fs.closeSync(this.#base)
      } catch {}
    }
    this.#base = null
    this.#ownBase = false
  }
}

/**
 * Client handles for connections accepted outside Node (the core's shut), of the listening
 * handle's kind (TCP or Pipe), as Node's own accept makes them. A descriptor that cannot be
 * opened is closed.
 */
function clientHandles(listeningHandle, fds) {
  const handles = []
  for (const fd of fds) {
    const handle = new listeningHandle.constructor(0) // TCPConstants.SOCKET / PipeConstants.SOCKET
    if (handle.open(fd) === 0) {
      handles.push(handle)
    } else {
      handle.close()
      fs.closeSync(fd)
    }
  }
  return handles
}

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
 * listening is adopted (`adopt`).
 *
 * Connections are admitted through the run's connection gate (`maxConnections`,
 * `runner.maxConnections = n`): while it is full the server does not accept, so new clients wait
 * in the kernel backlog (see GatedListener), and each admitted connection holds its permit until
 * it closes. Nothing of the adapter runs per request before lame-duck. shutdown:
 * - stops the listener at once: connections already queued are still accepted and answered
 *   (within the limit, as slots free), and new ones are refused at once, none left waiting a
 *   second for a dropped SYN's retransmission (`drainListener`; see the core's
 *   src/listener/drain.rs);
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
  // Nothing here runs per request until lame-duck: connections are counted (and admitted
  // through the gate) once each, and requests in flight are read from Node's own state when
  // asked (inFlightRequests, idle).
  const sockets = new Set() // http/https sockets
  const sessions = new Set() // http2
  let lameDuck = false
  let gated = null // the GatedListener, once listening
  let base = null // the listening socket under our own number (see GatedListener)
  const backlog = plan.pass?.backlog ?? plan.raw?.backlog ?? 511
  // Node's own list of HTTP connections (http, https), which knows whether a request is being
  // received on each: read only at shutdown, to find the idle ones.
  const connectionsSymbol = Object.getOwnPropertySymbols(server).find((sym) => sym.description === 'http.server.connections')

  if (!isHttp2) {
    const tls = typeof server.addContext === 'function' // https: track the TLS sockets requests use
    server.on(tls ? 'secureConnection' : 'connection', (socket) => {
      socket[ADMITTED] = Date.now()
      sockets.add(socket)
      socket.once('close', () => sockets.delete(socket))
    })
  }
  server.on('session', (session) => {
    sessions.add(session)
    session.once('close', () => sessions.delete(session))
    if (lameDuck) session.close()
  })
  // Added when lame-duck begins, never before: a request listener costs every request.
  const closeAfterResponse = (req, res) => {
    if (!res.headersSent) res.setHeader('Connection', 'close')
  }

  /** The response being written on `socket`, if one is and has not finished. */
  const busy = (socket) => {
    const res = socket._httpMessage
    return !!res && !res.finished
  }
  /**
   * The sockets with no request in progress: no response being written, and nothing of a request
   * received (it never sent one, or Node's parser is between requests).
   */
  const idleSockets = () => {
    const list = connectionsSymbol && server[connectionsSymbol]
    const parserIdle = list ? new Set(list.idle().map((parser) => parser.socket)) : null
    return [...sockets].filter((s) => !busy(s) && (s.bytesRead === 0 || parserIdle === null || parserIdle.has(s)))
  }
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

  const closeBase = () => {
    if (base !== null) {
      try {
        fs.closeSync(base)
      } catch {}
      base = null
    }
  }

  /**
   * Binds through the core's listen(); returns what server.listen() takes. Node gets a copy of
   * the descriptor: the adapter keeps the socket open under its own number (`base`), so that a
   * pause at the connection limit can close Node's handle without closing the socket.
   */
  const bind = () => {
    if (plan.raw) {
      if (plan.raw.fd === undefined) return plan.raw // { handle }: copied at the first pause
      base = plan.raw.fd
      return { ...plan.raw, fd: native.dupFd(base) }
    }
    const { fd } = listen(plan.address)
    try {
      if (plan.mode) fs.chmodSync(plan.path, (fs.statSync(plan.path).mode & 0o7777) | plan.mode) // readableAll, writableAll
      base = fd
      return { fd: native.dupFd(fd), ...plan.pass }
    } catch (err) {
      fs.closeSync(fd)
      base = null
      throw err
    }
  }

  /**
   * Stops listening (Node's handle, then our own descriptor): the accept queue is gone after this.
   * `queued`: client handles for the connections the core's shut took from the queue, handed to
   * the server as Node's accept would (through the gate when there is one).
   */
  const stopListening = (queued = []) => {
    const listening = server._handle
    net.Server.prototype.close.call(server) // without Node's idle-socket sweep
    if (gated) gated.stopListening(listening, queued)
    else for (const clientHandle of queued) listening.onconnection(null, clientHandle)
    closeBase()
  }

  return {
    server,
    /** serve calls ctx.ready() once the server is listening; the Runner waits for that. */
    explicitReady: true,
    get lameDuck() {
      return lameDuck
    },
    /** Requests in flight now (http, https: responses begun and not finished); undefined for http2. Read on demand. */
    inFlightRequests() {
      if (isHttp2) return undefined
      let n = 0
      for (const socket of sockets) if (busy(socket)) n++
      return n
    },
    serve(ctx) {
      return new Promise((resolve, reject) => {
        const onError = (err) => {
          closeBase()
          reject(err)
        }
        let bound = false // by the core's listen()
        const listening = () => {
          server.removeListener('error', onError)
          const fd = base ?? serverFd(server)
          // A socket lameduck did not bind (a server that came listening, { fd }): register it,
          // so that an upgrade hands it on. Harmless for one it knows already.
          if (!bound && fd !== undefined) {
            try {
              native.adopt(fd, null)
            } catch (err) {
              net.Server.prototype.close.call(server)
              closeBase()
              return reject(nativeError(err))
            }
          }
          if (ctx.gate && server._handle && typeof server._handle.onconnection === 'function') {
            gated = new GatedListener(server, ctx.gate, base, backlog)
            base = null // the GatedListener closes it
          }
          ctx.ready()
        }
        server.once('error', onError)
        server.once('close', () => {
          if (gated) gated.stopListening()
          closeBase()
          resolve()
        })
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
      const began = Date.now()
      if (!isHttp2) {
        server.prependListener('request', closeAfterResponse)
        for (const socket of sockets) if (socket._httpMessage && !socket._httpMessage.headersSent) socket._httpMessage.setHeader('Connection', 'close') // in flight
      }
      // Each connection may stay idle for the grace, counted from lame-duck or from its
      // admission (one queued at the limit is admitted later), never past the deadline.
      const grace = Math.min(idleGrace, ctx.remaining() ?? idleGrace)
      const closeIdle = () => {
        const now = Date.now()
        for (const s of idleSockets()) if (now >= Math.max(began, s[ADMITTED] ?? began) + grace) s.destroy()
      }
      const fd = gated ? gated.fd : serverFd(server)
      // New connections are refused at once from here on; the ones still queued are accepted
      // (synchronously: Node accepts nothing meanwhile) and handed to the server, within the
      // limit as slots free, instead of being reset by the close.
      const queued = typeof fd === 'number' && fd >= 0 && drainable(fd) ? clientHandles(server._handle, native.shut(fd)) : []
      stopListening(queued)
      for (const session of sessions) session.close() // http2: GOAWAY, then close when streams end
      const held = () => (gated ? gated.held() : 0)
      for (;;) {
        closeIdle() // a busy socket whose response said Connection: close, now idle; idle ones after their grace
        if (sockets.size === 0 && sessions.size === 0 && held() === 0) break
        if (ctx.signal.aborted) throw new DeadlineExceededError(`${sockets.size + sessions.size + held()} connection(s) still open at the deadline`)
        await wait(5, ctx.signal)
      }
    },
    close() {
      lameDuck = true
      if (gated) gated.destroy()
      stopListening()
      for (const session of sessions) session.destroy()
      for (const socket of sockets) socket.destroy()
    },
  }
}

module.exports = { httpServer }
