// Checks the installed npm packages (tests/dist/check.sh): CommonJS require, and a real run of
// smoke_server.mjs ended by SIGTERM (exit 0, lame-duck's log lines).
const assert = require('node:assert/strict')
const { spawn } = require('node:child_process')
const path = require('node:path')
const lameduck = require('lameduck')

const expected = process.argv[2]
assert.equal(lameduck.version, expected)
assert.ok(new lameduck.ExpiredError('x') instanceof lameduck.LameDuckError)
assert.ok(new lameduck.LameDuckError('x') instanceof Error)

const child = spawn(process.execPath, [path.join(__dirname, 'smoke_server.mjs')], { stdio: ['ignore', 'pipe', 'pipe'] })
let out = ''
let err = ''
let asked = false
child.stderr.on('data', (d) => (err += d))
const killer = setTimeout(() => child.kill('SIGKILL'), 60000)
child.stdout.on('data', async (d) => {
  out += d
  const m = out.match(/listening on (\d+)/)
  if (!m || asked) return
  asked = true
  const body = await (await fetch(`http://127.0.0.1:${m[1]}/`)).text()
  assert.equal(body, `hello from lameduck ${expected}\n`)
  child.kill('SIGTERM')
})
child.on('exit', (code, signal) => {
  clearTimeout(killer)
  assert.equal(code, 0, `exit ${code} ${signal}: ${err}`)
  // The default logger is console: lameduck's lines go to stdout.
  assert.match(out, /lameduck: Received signal \[terminated\]; entering lame-duck mode for 5s/)
  assert.match(out, /lameduck: Server stopped/)
  console.log(`node ${process.version}: lameduck ${lameduck.version} ok`)
})
