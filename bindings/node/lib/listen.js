'use strict'
/**
 * Listening sockets (Python's lameduck/_listen.py): the core's listen() for inherited or fresh
 * sockets, adopt() for ones bound by other means, isShared() for either.
 */
const native = require('./native')
const { describeValue, nativeError } = require('./errors')

/**
 * A listening socket for `address` (`PORT`, `HOST:PORT`, `[V6]:PORT` or a unix socket path),
 * as `{ fd }`, which `server.listen()` accepts. It is the socket this process inherited for that
 * address when there is one: systemd socket activation (LISTEN_FDS with LISTEN_PID equal to this
 * process, matched by `name` or by address), then Server::Starter's SERVER_STARTER_PORT.
 * Otherwise it is a fresh one (SO_REUSEADDR, close-on-exec, backlog SOMAXCONN). The variables
 * are read once, on first use, and left in the environment. Throws a TypeError for a non-string, a RangeError
 * naming the value for a bad address or a malformed variable, and an Error when binding fails.
 */
function listen(address, name) {
  if (typeof address !== 'string') throw new TypeError(`address must be a string, got ${describeValue(address)}`)
  if (name !== undefined && typeof name !== 'string') throw new TypeError(`name must be a string, got ${describeValue(name)}`)
  try {
    return { fd: native.listen(address, name ?? null) }
  } catch (err) {
    throw nativeError(err)
  }
}

/** The descriptor of a listening net.Server (http, https, http2 included), or undefined. */
function serverFd(server) {
  const fd = server?._handle?.fd
  return typeof fd === 'number' && fd >= 0 ? fd : undefined
}

/**
 * Registers a listening socket bound by other means, so that an upgrade hands it on exactly like
 * one from `listen()`: `target` is its descriptor, or a `net.Server` (http, https, http2) that is
 * listening. The socket stays the caller's; adopting it again is harmless. Throws a TypeError for
 * a wrong type, a RangeError for a descriptor that is not a listening socket (or a server that
 * is not listening) or a bad `name`.
 */
function adopt(target, name) {
  let fd = target
  if (target !== null && typeof target === 'object' && typeof target.listen === 'function') {
    if (!target.listening) throw new RangeError('adopt(server): the server is not listening')
    fd = serverFd(target)
    if (fd === undefined) throw new RangeError('adopt(server): the server has no file descriptor')
  } else if (typeof fd !== 'number' || !Number.isInteger(fd)) {
    throw new TypeError(`adopt: expected a file descriptor or a listening net.Server, got ${describeValue(target)}`)
  }
  if (name !== undefined && typeof name !== 'string') throw new TypeError(`name must be a string, got ${describeValue(name)}`)
  try {
    native.adopt(fd, name ?? null)
  } catch (err) {
    throw nativeError(err)
  }
}

/** True when the listening socket `fd` is shared with other processes (inherited, or handed on by an upgrade). */
function isShared(fd) {
  if (typeof fd !== 'number') throw new TypeError(`fd must be a number, got ${describeValue(fd)}`)
  return native.isShared(fd)
}

module.exports = { listen, adopt, isShared, serverFd }
