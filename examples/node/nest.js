// NestJS under lameduck: node examples/node/nest.js (PORT, default 3000; Nest 12 needs Node 20.19
// or newer, whose require() loads its ES modules). Plain JavaScript, so Nest's decorators are
// applied as functions; in TypeScript they are the usual @Module(), @Controller(), @Get().
// Try: curl 'http://127.0.0.1:3000/slow?ms=5000' and press Ctrl-C while it runs: the request
// finishes, then onModuleDestroy, beforeApplicationShutdown('SIGINT') and
// onApplicationShutdown('SIGINT') run, once each. /stats shows the run's state and counts;
// /crash throws where nothing catches it (lame-duck, then exit code 1). Do not call
// app.enableShutdownHooks(): lameduck takes the signals and runs the hooks itself.
'use strict'
require('reflect-metadata')
const { Controller, Get, Injectable, Module, Query } = require('@nestjs/common')
const { NestFactory } = require('@nestjs/core')
const { runNest } = require('lameduck/nest')
const { currentRunner } = require('lameduck')

// The run's state and connection counts (requests in flight included): currentRunner() finds the
// Runner, so a handler needs no variable holding it.
function stats() {
  const runner = currentRunner()
  return `${JSON.stringify({ state: runner.state, ...runner.connectionStats() })}\n`
}

class AppController {
  hello() {
    return `hello from nest (pid ${process.pid})\n`
  }
  async slow(msParam) {
    const ms = Number(msParam ?? 1000) // @Query('ms'), applied below
    await new Promise((resolve) => setTimeout(resolve, ms))
    return `slept ${ms} ms\n`
  }
  stats() {
    return stats()
  }
  crash() {
    setImmediate(() => {
      throw new Error('boom from /crash')
    })
    return 'crashing\n'
  }
}
Controller()(AppController)
const route = (decorator, name) => decorator(AppController.prototype, name, Object.getOwnPropertyDescriptor(AppController.prototype, name))
route(Get('/'), 'hello')
route(Get('slow'), 'slow')
Query('ms')(AppController.prototype, 'slow', 0)
route(Get('stats'), 'stats')
route(Get('crash'), 'crash')

// Nest's lifecycle hooks, run inside lameduck's shutdown once the requests in flight finished.
class Lifecycle {
  onModuleDestroy() {
    console.log(`nest: onModuleDestroy (connections open: ${currentRunner().connectionStats().admitted})`)
  }
  beforeApplicationShutdown(signal) {
    console.log(`nest: beforeApplicationShutdown ${signal}`)
  }
  onApplicationShutdown(signal) {
    console.log(`nest: onApplicationShutdown ${signal}`)
  }
}
Injectable()(Lifecycle)

class AppModule {}
Module({ controllers: [AppController], providers: [Lifecycle] })(AppModule)

async function main() {
  const app = await NestFactory.create(AppModule, { logger: ['error', 'warn'] })
  const running = runNest(app, { port: Number(process.env.PORT ?? 3000), host: '127.0.0.1' }, { period: 10000, onUncaughtError: 'lame-duck' })
  running.runner.ready().then(
    () => {
      // lameduck's listener is the only one: Nest installed none of its own.
      console.log(`listening on http://127.0.0.1:${app.getHttpServer().address().port} (pid ${process.pid}; SIGTERM listeners: ${process.listenerCount('SIGTERM')})`)
    },
    () => {}, // the run ended first: its own promise says why
  )
  await running
  console.log('stopped')
}

main().catch((err) => {
  console.error(`${err.name}: ${err.message}`)
  process.exitCode = 1
})
