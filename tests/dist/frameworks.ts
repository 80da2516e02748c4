// Type-checked by tests/dist/check.sh (tsc --strict) in a project that installed the npm tarballs
// and no framework: the subpath exports lameduck/fastify, koa, express and nest resolve to their
// types, and each helper takes an app of the shape it needs (structural: the frameworks are the
// caller's, never lameduck's dependencies).
import * as http from 'node:http'
import { currentRunner, type Runner, type RunPromise } from 'lameduck'
import { fastifyServer, runFastify } from 'lameduck/fastify'
import { koaServer, runKoa } from 'lameduck/koa'
import { expressServer, runExpress } from 'lameduck/express'
import { nestServer, runNest } from 'lameduck/nest'

const listener = (req: http.IncomingMessage, res: http.ServerResponse): void => void res.end('ok\n')
const fastify = { server: http.createServer(listener), ready: async () => undefined, close: async () => undefined }
const koa = { callback: () => listener }
const nest = { init: async () => undefined, close: async (signal?: string) => void signal, getHttpServer: () => http.createServer(listener) }

const servers = [fastifyServer(fastify, { port: 0 }), koaServer(koa, 0), expressServer(listener, '0', { idleGrace: 100 }), nestServer(nest)]
const runs: Array<RunPromise<Runner | null>> = [
  runFastify(fastify, 0, { signals: [], onUncaughtError: 'lame-duck' }),
  runKoa(koa, 0, { signals: [] }),
  runExpress(listener, 0, { signals: [] }),
  runNest(nest, 0, { signals: [], onUncaughtError: 'default' }),
]
const current: Runner | null = currentRunner()
console.log(servers.map((s) => s.app !== undefined && s.server instanceof http.Server), current)
for (const run of runs) run.runner?.stop()
