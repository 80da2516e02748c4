// A node:http server under lame-duck, in TypeScript (checked with tsc --strict in the tests).
// Try: curl 'http://127.0.0.1:3000/sleep' and press Ctrl-C while it runs; kill -HUP upgrades.
import * as http from 'node:http'
import { run, httpServer, ExpiredError, type Context } from 'lameduck'

const server = http.createServer((req, res) => {
  const delay = req.url === '/sleep' ? 5000 : 0
  const timer = setTimeout(() => res.end(`hello from lameduck (pid ${process.pid})\n`), delay)
  res.once('close', () => clearTimeout(timer))
})

async function main(): Promise<number> {
  // httpServer binds through lameduck's listen(): an upgrade (SIGHUP) hands the socket to the
  // next generation, which gets it back from the same call.
  const adapter = httpServer(server, { port: Number(process.env.PORT ?? 3000), host: '127.0.0.1' })
  try {
    await run(adapter, { period: 5000, drainDelay: 0, onStateChange: (from, to) => console.log(`${from} -> ${to}`) })
    return 0
  } catch (err) {
    if (err instanceof ExpiredError) console.error(`in-flight requests were cut short: ${err.message}`)
    else throw err
    return 1
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
