'use strict'
// `npm install ./bindings/node` into a fresh project builds the addon from source; then
// require() and import both work, and the TypeScript example compiles with tsc --strict.
const { test } = require('node:test')
const assert = require('node:assert/strict')
const { execFileSync } = require('node:child_process')
const fs = require('node:fs')
const os = require('node:os')
const path = require('node:path')

const pkg = path.resolve(__dirname, '..')
const repo = path.resolve(pkg, '..', '..')

test('npm install into a project, require, import, tsc --strict', { timeout: 600000 }, () => {
  const project = fs.mkdtempSync(path.join(os.tmpdir(), 'lameduck-npm-'))
  try {
    const run = (cmd, args, opts = {}) => execFileSync(cmd, args, { cwd: project, encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'], ...opts })
    run('npm', ['init', '-y'])
    run('npm', ['install', '--no-audit', '--no-fund', pkg])
    const cjs = run(process.execPath, ['-e', "const l = require('lameduck'); console.log(typeof l.run, typeof l.Runner, l.version)"])
    assert.equal(cjs.trim(), 'function function 0.1.0')
    const esm = run(process.execPath, ['--input-type=module', '-e', "import { run, httpServer, LameDuckError } from 'lameduck'; console.log(typeof run, typeof httpServer, new LameDuckError('x') instanceof Error)"])
    assert.equal(esm.trim(), 'function function true')

    fs.copyFileSync(path.join(repo, 'examples', 'node', 'server.ts'), path.join(project, 'server.ts'))
    const tsc = path.join(pkg, 'node_modules', 'typescript', 'bin', 'tsc')
    const typeRoots = path.join(pkg, 'node_modules', '@types')
    run(process.execPath, [tsc, '--strict', '--noEmit', '--module', 'nodenext', '--moduleResolution', 'nodenext', '--target', 'es2022', '--typeRoots', typeRoots, '--types', 'node', 'server.ts'])
  } finally {
    fs.rmSync(project, { recursive: true, force: true })
  }
})
