// A Node http server under lameduck, for the installed-package check (tests/dist/check.sh):
// prints `listening on PORT` once ready; SIGTERM must end it with exit status 0.
import http from 'node:http'
import { Runner, httpServer, version } from 'lameduck'

const server = http.createServer((req, res) => res.end(`hello from lameduck ${version}\n`))
const runner = new Runner(httpServer(server, { port: 0, host: '127.0.0.1' }), { period: 5000 })
const done = runner.run()
await runner.ready()
console.log(`listening on ${server.address().port}`)
await done
