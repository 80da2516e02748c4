/// <reference types="node" />
// Types for lameduck (Node): the public surface. The implementation is index.js, which re-exports
// lib/{errors,options,runner,listen,http}.js and the framework helpers lib/{fastify,koa,express,nest}.js
// (also `lameduck/fastify` …, typed by lib/*.d.ts from here), over the Rust core (its native half: native.d.ts).

import type { IncomingMessage, Server as HttpServer, ServerResponse } from 'node:http'
import type { Server as NetServer } from 'node:net'

/** A runner's lifecycle state; the same names in C, Python and Node. */
export type State =
  | 'NOT_STARTED'
  | 'STARTING'
  | 'SERVING'
  | 'READY'
  /** Still fully serving, as in READY, while an upgrade's new process starts. */
  | 'UPGRADING'
  /** Lame-duck after a hand-over: shutdown runs, the new process serves the same sockets (healthy). */
  | 'HANDING_OVER'
  | 'DRAINING'
  | 'SHUTTING_DOWN'
  | 'CLOSING'
  | 'STOPPED'
  | 'FAILED'

/** What serve and shutdown receive. */
export interface Context {
  /** The deadline as a `Date.now()`-style timestamp in ms, or null before lame-duck. */
  readonly deadline: number | null
  /** Milliseconds left until the deadline; null before lame-duck; 0 once done. */
  remaining(): number | null
  /** True once the deadline passed or a repeated signal forced the close. */
  readonly done: boolean
  /**
   * Aborts at the deadline (or when close is forced) with a `DeadlineExceededError` (named
   * 'TimeoutError'), never before `done` reads true; a run that ends first aborts it with an
   * AbortError (a `DOMException`). Hand it to fetch, timers and streams.
   */
  readonly signal: AbortSignal
  /** Reports that serve is listening (see `explicitReady`). */
  ready(): void
  /** The run's connection gate (the same object as `runner.gate`). */
  readonly gate: Gate
  /**
   * The name of the trigger signal that started lame-duck ('SIGTERM', 'SIGINT', …), what
   * frameworks' shutdown hooks take (Nest's `onApplicationShutdown(signal)`). Null before, and
   * when `stop()`, the `signal` option, an upgrade's hand-over or the uncaught-error policy started it.
   */
  readonly triggerSignal: SignalName | null
}

/** Where the connection gate stands: admitting, lame-duck (only connections already queued), or closed. */
export type GatePhase = 'open' | 'draining' | 'closed'

/** The connection gate's counts (`runner.connectionStats()`, `gate.stats()`). */
export interface ConnectionStats {
  /** The limit; null when unlimited. */
  limit: number | null
  /** Connections admitted and not yet released. */
  admitted: number
  /** `acquire()` calls waiting, and connections an adapter accepted in a race and holds until a slot frees. Clients in the kernel backlog are not counted. */
  waiting: number
  /** Connections admitted since the runner was made. */
  total: number
  /** The most connections admitted at once. */
  peak: number
  phase: GatePhase
  /** Requests in flight now, when the server counts them (httpServer with http or https: responses begun and not finished). */
  requests?: number
}

/** One admitted connection's slot. */
export class Permit {
  private constructor()
  /** Gives the slot back: true the first time, false afterwards (idempotent). A permit dropped without release() is released when garbage-collected. */
  release(): boolean
  readonly released: boolean
}

export interface AcquireOptions {
  /** Aborting it rejects the wait with `signal.reason`. */
  signal?: AbortSignal
  /** Ms to wait; then the promise rejects with a LameDuckError coded 'LD_TIMEOUT'. Default: no limit. */
  timeout?: number
  /**
   * The connection is already accepted or waiting in the accept queue: lame-duck still admits it
   * (within the limit) until close. Default false: a new connection, refused once lame-duck began.
   */
  queued?: boolean
}

/**
 * The run's connection gate (nserv's run-time connection limit): take a permit per connection
 * before accepting it, release it when the connection closes. Lame-duck's shutdown phase lasts
 * until every permit is back (bounded by the deadline). Everything is per connection and on the
 * JS thread: waiting `acquire()` calls are woken by the releases and limit changes made here and
 * by lame-duck itself, never by polling, and never block the event loop.
 */
export class Gate {
  private constructor()
  /** The limit; null when unlimited. */
  readonly limit: number | null
  /** Free slots now; null when unlimited. */
  readonly free: number | null
  readonly phase: GatePhase
  /** Sets the limit (0, null or undefined: unlimited); returns the free slots before the change (null: it was unlimited). */
  setLimit(limit: number | null | undefined): number | null
  /** A permit if a slot is free now, else null. Throws GateClosedError once lame-duck began (with `queued`, once close was called). */
  tryAcquire(options?: { queued?: boolean }): Permit | null
  /** Resolves to a permit once a slot is free (in call order); rejects with GateClosedError when lame-duck begins. */
  acquire(options?: AcquireOptions): Promise<Permit>
  stats(): ConnectionStats
}

/**
 * A server: each hook may be sync or return a Promise; they are called on the JS thread.
 * - serve: serve until shutdown or close makes it settle.
 * - shutdown: stop accepting, finish in-flight work before `ctx.deadline`; throw a
 *   `DeadlineExceededError` (or any error named 'TimeoutError') when out of time.
 * - close: close everything now.
 */
export interface Server {
  serve(ctx: Context): unknown
  shutdown(ctx: Context): unknown
  close(): unknown
  /**
   * True when serve calls `ctx.ready()` itself once it accepts connections: the run is then
   * ready only after that call, as with the `explicitReady` option (which, when given, wins).
   * The http adapter sets it.
   */
  readonly explicitReady?: boolean
}

/** Anything with console-like methods. */
export interface Logger {
  info(message: string): void
  warn?(message: string): void
  error?(message: string): void
  debug?(message: string): void
}

export type SignalName = NodeJS.Signals

export interface Options {
  /** Lame-duck period in ms: shutdown's deadline is trigger (+ drainDelay) + period. Default 3000. */
  period?: number
  /**
   * Trigger signals (names or numbers). Default ['SIGINT', 'SIGTERM']; [] means only stop() or `signal`.
   * In a worker thread it must be []: Node delivers signals to the main thread only, so run()
   * rejects with SignalSetupError otherwise.
   */
  signals?: Array<SignalName | number>
  /** Ms between the trigger and shutdown, serving while the state is DRAINING (not ready). Default 0. */
  drainDelay?: number
  /** Ms to wait for close (and the other hooks after it) before giving up on them. Default 5000. */
  closeTimeout?: number
  /**
   * Console-like logger (default `console`); `false` disables logging. Lines go to `console`
   * prefixed with `lameduck: `, and to a logger of your own as the core's text, as in C and Python.
   */
  logger?: Logger | false
  /** 'force' (default): a second signal closes now, a third kills; 'ignore'; 'exit': a second signal kills. */
  repeatSignal?: 'force' | 'ignore' | 'exit'
  /** Aborting it starts lame-duck, exactly like a trigger signal. */
  signal?: AbortSignal
  /** Ready only once serve calls `ctx.ready()`. Default: the server's own `explicitReady` (true for httpServer), else false. */
  explicitReady?: boolean
  /** Called on every state transition. */
  onStateChange?: (from: State, to: State) => void
  /**
   * Signals that start a zero-downtime upgrade (see Runner.upgrade). Default ['SIGHUP'] ([] in a
   * worker thread, where giving any makes run() reject with SignalSetupError); [] turns them off.
   */
  upgradeSignals?: Array<SignalName | number>
  /** Ms the new process has to report ready before it is terminated and the upgrade fails. Default 60000. */
  upgradeTimeout?: number
  /** The argv an upgrade starts (argv[0]: a path, or a name looked up in PATH). Default: this process's command line. */
  upgradeCommand?: string[]
  /** A file holding the current generation's pid: written atomically once ready, removed by the last generation. */
  pidFile?: string
  /**
   * In a process started by an upgrade: ms, once the run is ready, for `listen()` (or `adopt()`)
   * calls to take every listener the previous generation handed over. Only then is readiness
   * reported to it; after this the upgrade fails, naming the listeners nobody took. Default 10000.
   */
  listenTimeout?: number
  /**
   * Ms the old process keeps serving beside a new one that reported ready before it hands over
   * and enters lame-duck; a new process that exits within it is a failed upgrade. 0 to 60000.
   * Default 1000.
   */
  upgradeConfirm?: number
  /**
   * Upgrade even though this process has no listener known to lameduck (a worker without
   * sockets). Default false: such an upgrade is refused with UpgradeFailedError, since a server
   * that binds its own port would start a successor that cannot bind it.
   */
  upgradeWithoutListeners?: boolean
  /**
   * The connection gate's initial limit: at most this many connections are admitted at once;
   * the others wait in the kernel backlog (httpServer stops accepting while the gate is full).
   * 0, null or undefined (the default): unlimited. An integer up to 2147483647; change it while
   * running with `runner.maxConnections = n`.
   */
  maxConnections?: number | null
  /**
   * What an exception nothing caught (`uncaughtException`) or a promise rejection nothing handled
   * (`unhandledRejection`) does while the run is in progress:
   * - 'default' (the default): Node's own handling, untouched (the process ends at once);
   * - 'lame-duck': the error is logged (at error level, with its stack), lame-duck starts as for
   *   `stop()`, so that the requests in flight finish, and once the run is over the process exits
   *   with code 1 (`process.exit(1)`, on the turn of the event loop after the run's promise settled).
   */
  onUncaughtError?: 'lame-duck' | 'default'
  /**
   * Where the built-in health listener answers /ready, /live and /health ('127.0.0.1:8081',
   * ':8081', a unix socket path; port 0 picks one, see `runner.healthAddress`). Served by the
   * core on its own thread, whatever the event loop is doing; taken like `listen()`, so an
   * upgrade hands it on. Default: none.
   */
  health?: string | null
  /**
   * The adaptive drain, in milliseconds: with a `drainDelay`, the drain ends early once no new
   * connection was admitted for this long (and, when readiness probes are answered here, after
   * one answered "not ready"). Must be shorter than `drainDelay`; 0 (the default) turns it off.
   */
  drainQuiet?: number
}

/** One health answer: what /ready, /live or /health says now. */
export interface HealthReport {
  status: number
  contentType: string
  body: string
}

/** Every failed run rejects with a LameDuckError; a hook's own error is its `cause`. */
export class LameDuckError extends Error {
  /** `code` defaults to 'LD_ERROR'; the run's own errors carry 'LD_' + the core's error kind. */
  constructor(message?: string, options?: { code?: string; abandoned?: boolean; cause?: unknown })
  /** 'LD_EXPIRED', 'LD_FAILED', 'LD_SHUTDOWN_FAILED', 'LD_FORCED', 'LD_CANCELED', 'LD_BUSY', … */
  readonly code: string
  /** True when a hook did not settle within the close timeout and was left running. */
  readonly abandoned: boolean
  /** Go's Expired: the period ran out (or was forced short) and close was called. */
  readonly expired: boolean
  /** Go's Failed: serve threw or rejected. */
  readonly failed: boolean
  /** A repeated signal cut the period short. */
  readonly forced: boolean
}
export class ExpiredError extends LameDuckError {}
export class ForcedError extends ExpiredError {}
export class FailedError extends LameDuckError {}
export class ShutdownError extends LameDuckError {}
export class CanceledError extends LameDuckError {}
/**
 * run() in a worker thread with trigger signals (or upgradeSignals given): Node delivers signals
 * to the main thread only. Pass `signals: []` and call stop() when the main thread says so.
 * Its code is 'LD_SIGNAL_SETUP'.
 */
export class SignalSetupError extends LameDuckError {}
export class BusyError extends LameDuckError {}
/** An upgrade's new process could not start, exited, or was not ready in time; it was terminated and this process goes on serving. */
export class UpgradeFailedError extends LameDuckError {}
/** The runner is not serving: there is nothing to upgrade. */
export class NotRunningError extends LameDuckError {}
/** The connection gate admits no new connection: lame-duck has begun (code 'LD_GATE_CLOSED'). */
export class GateClosedError extends LameDuckError {}
/** Thrown by a shutdown hook that ran out of time (its name is 'TimeoutError'). */
export class DeadlineExceededError extends Error {
  constructor(message?: string)
}

/** What `run()` and `runner.run()` return: the run's promise, with the Runner doing the run. */
export interface RunPromise<R extends Runner | null = Runner> extends Promise<void> {
  /**
   * The Runner: `ready()`, `stop()`, `state`, `upgrade()`, `connectionStats()`… From the
   * function `run()` (and the framework helpers' `run…()`), null only when the Runner could not be
   * made (bad options or server): the promise then rejects with that TypeError or RangeError.
   */
  readonly runner: R
}

/** Runs one server once under lame-duck coordination. Invalid options throw TypeError/RangeError. */
export class Runner {
  constructor(server: Server, options?: Options)
  readonly state: State
  /** Runs until the server stopped; rejects with a LameDuckError subclass otherwise. Its `runner` is this runner. */
  run(): RunPromise<Runner>
  /** The name of the trigger signal that started lame-duck (see `Context.triggerSignal`), or null. */
  readonly triggerSignal: SignalName | null
  /** Resolves once ready; rejects if the run ends without becoming ready. */
  ready(): Promise<void>
  /** Starts lame-duck like a trigger signal; before run() it makes run() reject with CanceledError. */
  stop(): void
  /**
   * Upgrades with zero downtime and resolves to the new process's pid: the program is started
   * again with every listener from listen() or adopt(), and once it reports ready (and
   * `upgradeConfirm` has passed) this run lame-ducks. Rejects with UpgradeFailedError (also when
   * refused: no listener known to lameduck, or a start_server worker), BusyError,
   * NotRunningError or CanceledError.
   */
  upgrade(): Promise<number>
  /** The run's connection gate (also `ctx.gate`). */
  readonly gate: Gate
  /**
   * The connection limit (null: unlimited). Assigning sets it at any time, as setMaxConnections
   * does: raising admits waiting connections at once; lowering closes none, and nothing new is
   * admitted until fewer than the new limit are open.
   */
  get maxConnections(): number | null
  set maxConnections(limit: number | null | undefined)
  /** Sets the limit (0, null or undefined: unlimited); returns the free slots before the change (null: it was unlimited). Throws TypeError/RangeError for an invalid value. */
  setMaxConnections(limit: number | null | undefined): number | null
  /** The gate's counts, with `requests` when the server counts them. */
  connectionStats(): ConnectionStats
  /** The health answer for a request path ('/ready', '/live', '/health'; 404 for any other). Never blocks. */
  health(path?: string): HealthReport
  /** Where the built-in health listener listens, while it does; else null. */
  readonly healthAddress: string | null
}

/**
 * A listening socket for `address` (`PORT`, `HOST:PORT`, `[V6]:PORT` or a unix socket path):
 * inherited from systemd (LISTEN_FDS) or Server::Starter (SERVER_STARTER_PORT) when this process
 * was given one, fresh otherwise. Pass it to `server.listen()`.
 */
export function listen(address: string, name?: string): { fd: number }

/**
 * Registers a listening socket bound by other means (its descriptor, or a net/http/https/http2
 * server that is listening), so that an upgrade hands it on like one from `listen()`. The socket
 * stays yours. Throws TypeError for a wrong type, RangeError when it is not a listening socket
 * (or the server is not listening) or `name` is invalid.
 */
export function adopt(target: number | NetServer, name?: string): void

/** True when the listening socket `fd` is shared with other processes (inherited, or handed on by an upgrade). */
export function isShared(fd: number): boolean

/**
 * Runs `server` under lame-duck coordination (Go's lameduck.Run). The promise's `runner` is the
 * Runner (null when the options or the server are invalid: the promise rejects with a TypeError or
 * RangeError, it never throws).
 */
export function run(server: Server, options?: Options): RunPromise<Runner | null>

/**
 * The Runner whose run is in progress (the most recently started one, if several are), or null:
 * for code without a reference to it, say a request handler deep in a framework.
 */
export function currentRunner(): Runner | null

/**
 * Where httpServer listens. `{ port, host }` and `{ path }` are bound through lameduck's
 * `listen()` (`HOST:PORT`, `[V6]:PORT`, or `PORT`, every IPv4 address, without a host), so an
 * upgrade hands the socket on; `{ fd }` and `{ handle }` go to `server.listen()` as they are and
 * the socket is adopted. A number is a port; a string a port or a unix socket path.
 */
export type HttpListenOptions =
  | number
  | string
  | {
      port?: number | string
      host?: string
      path?: string
      backlog?: number
      exclusive?: boolean
      readableAll?: boolean
      writableAll?: boolean
      signal?: AbortSignal
    }
  | { fd: number; backlog?: number; exclusive?: boolean; signal?: AbortSignal }
  | { handle: object; backlog?: number; exclusive?: boolean; signal?: AbortSignal }

export interface HttpServerAdapterOptions {
  /** Ms an idle keep-alive socket may stay open once lame-duck began (never past the deadline). Default 1000. */
  idleGrace?: number
  /** Accept what is queued, then stop the listener at once (new connections are refused at once)
   * before closing it, so the close resets nobody. Default: on, unless the listener is shared
   * (inherited, handed on by an upgrade, or LISTEN_FDS / SERVER_STARTER_PORT set). */
  drainListener?: boolean
}

/** The adapter returned by httpServer: a Server, plus its state. */
export interface HttpServerAdapter<S extends NetServer> extends Server {
  readonly server: S
  /** Always true: serve reports ready once the server is listening. */
  readonly explicitReady: true
  /** True once shutdown began (responses carry Connection: close). */
  readonly lameDuck: boolean
  /** Requests in flight now (http, https); undefined for http2. Counted on demand, not per request. */
  inFlightRequests(): number | undefined
  serve(ctx: Context): Promise<void>
  shutdown(ctx: Context): Promise<void>
  close(): void
}

/**
 * A lameduck server for an http, https or http2 server (Express and Fastify apps included). It
 * listens with `listenOptions` (default: a free port on every IPv4 address); a server that is
 * already listening is adopted as it is (leave `listenOptions` out).
 */
export function httpServer<S extends NetServer>(
  server: S,
  listenOptions?: HttpListenOptions,
  adapterOptions?: HttpServerAdapterOptions,
): HttpServerAdapter<S>

export const version: string

/**
 * A handler answering /ready, /live and /health (the same answers as the built-in `health`
 * listener) for node:http, Express and Connect: `app.get(['/ready', '/live', '/health'],
 * healthHandler(runner))`, or `app.use(healthHandler(runner))` (other paths go to `next()`).
 * Without a runner, each request asks `currentRunner()` (503 while no run is in progress).
 */
export function healthHandler(runner?: Runner): (req: import('node:http').IncomingMessage, res: import('node:http').ServerResponse, next?: () => unknown) => unknown
/** Koa middleware answering /ready, /live and /health; other paths go to `next()`. */
export function koaHealth(runner?: Runner): (ctx: any, next: () => Promise<unknown>) => Promise<unknown>
/** A Fastify route handler answering /ready, /live and /health: `app.get('/ready', fastifyHealth(runner))`. */
export function fastifyHealth(runner?: Runner): (request: any, reply: any) => Promise<string>
/**
 * A framework helper's server: the httpServer adapter around the framework's HTTP server, with
 * the framework's own start (Fastify's `ready()`, Nest's `init()`) before it listens and its own
 * shutdown hooks (Fastify's `close()`, Nest's `close(signal)`) run once after the drain: the
 * listener closed and every request in flight finished (at the deadline: after close destroyed
 * what was left).
 */
export interface FrameworkServer<A, S extends NetServer = NetServer> extends HttpServerAdapter<S> {
  /** The framework's app, as given. */
  readonly app: A
}

/** What `fastifyServer` needs of a Fastify instance (a `FastifyInstance` is one). */
export interface FastifyApp {
  readonly server: NetServer
  ready(): PromiseLike<unknown>
  close(): PromiseLike<unknown>
}

/**
 * A lameduck server for a Fastify app, in place of `app.listen()` (an app that already listens is
 * adopted: leave `listenOptions` out). serve awaits `app.ready()`, then listens through httpServer;
 * once the drain is over, `app.close()` runs Fastify's preClose and onClose hooks, exactly once
 * (its own server close then has nothing left to cut). Throws TypeError for what is not a Fastify
 * instance, and what httpServer throws for bad listen or adapter options.
 */
export function fastifyServer<A extends FastifyApp>(app: A, listenOptions?: HttpListenOptions, adapterOptions?: HttpServerAdapterOptions): FrameworkServer<A, A['server']>
/** `run(fastifyServer(app, listenOptions, adapterOptions), options)`; a bad app or option rejects (then `runner` is null). */
export function runFastify(app: FastifyApp, listenOptions?: HttpListenOptions, options?: Options, adapterOptions?: HttpServerAdapterOptions): RunPromise<Runner | null>

/** What `koaServer` needs of a Koa application. */
export interface KoaApp {
  callback(): (req: IncomingMessage, res: ServerResponse) => unknown
}

/** A lameduck server for a Koa app: `http.createServer(app.callback())` through httpServer. Koa has no shutdown hooks. */
export function koaServer<A extends KoaApp>(app: A, listenOptions?: HttpListenOptions, adapterOptions?: HttpServerAdapterOptions): FrameworkServer<A, HttpServer>
/** `run(koaServer(app, listenOptions, adapterOptions), options)`; a bad app or option rejects (then `runner` is null). */
export function runKoa(app: KoaApp, listenOptions?: HttpListenOptions, options?: Options, adapterOptions?: HttpServerAdapterOptions): RunPromise<Runner | null>

/** An Express application, or any request listener. */
export type ExpressApp = (req: IncomingMessage, res: ServerResponse) => unknown

/** A lameduck server for an Express app: `http.createServer(app)` through httpServer. Express has no shutdown hooks. */
export function expressServer<A extends ExpressApp>(app: A, listenOptions?: HttpListenOptions, adapterOptions?: HttpServerAdapterOptions): FrameworkServer<A, HttpServer>
/** `run(expressServer(app, listenOptions, adapterOptions), options)`; a bad app or option rejects (then `runner` is null). */
export function runExpress(app: ExpressApp, listenOptions?: HttpListenOptions, options?: Options, adapterOptions?: HttpServerAdapterOptions): RunPromise<Runner | null>

/** What `nestServer` needs of a Nest application (an `INestApplication` is one). */
export interface NestApp {
  init(): PromiseLike<unknown>
  close(signal?: string): PromiseLike<unknown>
  getHttpServer(): any
}

/**
 * A lameduck server for a Nest application made by `NestFactory.create()`, in place of
 * `app.listen()` and `app.enableShutdownHooks()` (which must not be called: Nest would take the
 * signals itself; nestServer throws a TypeError when it finds Nest 12's listeners). serve awaits
 * `app.init()`, then listens on `app.getHttpServer()` through httpServer; once the drain is over,
 * `app.close(signal)` runs onModuleDestroy(), beforeApplicationShutdown(signal) and
 * onApplicationShutdown(signal) in Nest's order, exactly once, `signal` being the trigger signal's
 * name (`Context.triggerSignal`; undefined when stop() or the uncaught-error policy started it).
 */
export function nestServer<A extends NestApp>(app: A, listenOptions?: HttpListenOptions, adapterOptions?: HttpServerAdapterOptions): FrameworkServer<A>
/** `run(nestServer(app, listenOptions, adapterOptions), options)`; a bad app or option rejects (then `runner` is null). */
export function runNest(app: NestApp, listenOptions?: HttpListenOptions, options?: Options, adapterOptions?: HttpServerAdapterOptions): RunPromise<Runner | null>
