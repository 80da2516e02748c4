// Type-checked by test/frameworks.test.js (tsc --strict): the framework helpers' types against
// Fastify's and Nest's own (a FastifyInstance and an INestApplication fit without casts), Koa and
// Express through their shapes (neither ships types), and run()'s `runner`.
import * as http from 'node:http'
import Fastify from 'fastify'
import { NestFactory } from '@nestjs/core'
import { run, currentRunner, httpServer, Runner, type RunPromise, type SignalName } from 'lameduck'
import { fastifyServer, runFastify } from 'lameduck/fastify'
import { koaServer, runKoa, type KoaApp } from 'lameduck/koa'
import { expressServer, runExpress } from 'lameduck/express'
import { nestServer, runNest } from 'lameduck/nest'

async function main(): Promise<void> {
  const fastify = Fastify()
  const server = fastifyServer(fastify, { port: 0, host: '127.0.0.1' }, { idleGrace: 500 })
  const address: http.Server = server.server
  console.log(address.listening, server.app === fastify, server.lameDuck, server.inFlightRequests())
  const running: RunPromise<Runner | null> = runFastify(fastify, 0, { period: 1000, onUncaughtError: 'lame-duck' })
  running.runner?.stop()
  await running

  const koa: KoaApp = { callback: () => (req: http.IncomingMessage, res: http.ServerResponse) => res.end() }
  const k = koaServer(koa, '0')
  await runKoa(koa, { path: '/tmp/x.sock' }, { signals: [] }).catch(() => undefined)
  const express = (req: http.IncomingMessage, res: http.ServerResponse): void => void res.end()
  const e = expressServer(express)
  await runExpress(express, undefined, { onUncaughtError: 'default' })

  const nest = await NestFactory.create(class AppModule {})
  const n = nestServer(nest, { port: 0 })
  await runNest(nest, 0, { period: 5000 })

  const r: Runner = run(httpServer(http.createServer()), { signals: [] }).runner!
  const again: RunPromise<Runner> = r.run()
  const signal: SignalName | null = r.triggerSignal
  const current: Runner | null = currentRunner()
  console.log(k.app === koa, e.app === express, n.app === nest, again.runner === r, signal, current)
  await run({ serve: (ctx) => console.log(ctx.triggerSignal), shutdown: () => {}, close: () => {} })
}

void main
