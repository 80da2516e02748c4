// A node:http server under lame-duck, in TypeScript (checked with tsc --strict in the tests).
// Try: curl 'http://127.0.0.1:3000/sleep' and press Ctrl-C while it runs; kill -HUP upgrades.
// --max-connections N admits at most N connections at once (the others wait in the kernel
// backlog); kill -USR1 / -USR2 raise / lower that limit by one while it runs.
import * as http from 'node:http'
import { Runner, httpServer, ExpiredError, type Context } from 'lameduck'

const server = http.createServer((req, res) => {
  const delay = req.url === '/sleep' ? 5000 : 0
  const timer = setTimeout(() => res.end(`hello from lameduck (pid ${process.pid})\n`), delay)
  res.once('close', () => clearTimeout(timer))
})

async function main(): Promise<number> {
  // httpServer binds through lameduck's listen(): an upgrade (SIGHUP) hands the socket to the
  // next generation, which gets it back from the same call.
  const adapter = httpServer(server, { port: Number(process.env.PORT ?? 3000), host: '127.0.0.1' })
  const flag = process.argv.indexOf('--max-connections')
  const maxConnections = flag < 0 ? undefined : Number(process.argv[flag + 1])
  const runner = new Runner(adapter, { period: 5000, drainDelay: 0, maxConnections, onStateChange: (from, to) => console.log(`${from} -> ${to}`) })
  // A listener on SIGUSR1 replaces Node's default of starting the inspector.
  const step = (by: number) => (): void => {
    const limit = runner.maxConnections
    if (limit === null) return void console.log('max connections: unlimited (start with --max-connections N to change it)')
    runner.maxConnections = Math.max(1, limit + by)
    console.log(`max connections: ${runner.maxConnections} (${runner.connectionStats().admitted} open)`)
  }
  const raise = step(+1)
  const lower = step(-1)
  process.on('SIGUSR1', raise)
  process.on('SIGUSR2', lower)
  try {
    await runner.run()
    return 0
  } catch (err) {
    if (err instanceof ExpiredError) console.error(`in-flight requests were cut short: ${err.message}`)
    else throw err
    return 1
  } finally {
    process.removeListener('SIGUSR1', raise)
    process.removeListener('SIGUSR2', lower)
  }
}

// A hand-written server works the same way: serve, shutdown and close.
export const custom = {
  serve: (ctx: Context): Promise<void> => new Promise((resolve) => ctx.signal.addEventListener('abort', () => resolve())),
  shutdown: async (ctx: Context): Promise<void> => {
    console.log(`shutting down, ${ctx.remaining() ?? 0} ms left`)
  },
  close: (): void => undefined,
}

main().then((code) => {
  process.exitCode = code
})
