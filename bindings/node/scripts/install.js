'use strict'
/**
 * npm's install hook. From the npm registry (or a packed tarball) it does nothing: the addon
 * comes prebuilt in the optional `lameduck-<platform>` package. In a source checkout
 * (`npm install ./bindings/node` from a clone, where Cargo.toml sits beside this package), when
 * no addon is there yet, it builds one from source with cargo, so that works with Rust alone:
 * @napi-rs/cli is a devDependency, which npm does not install for a dependency.
 */
const { spawnSync } = require('node:child_process')
const fs = require('node:fs')
const path = require('node:path')

const root = path.join(__dirname, '..')

function hasAddon() {
  try {
    require('../lib/native')
    return true
  } catch {
    return false
  }
}

if (!fs.existsSync(path.join(root, 'Cargo.toml')) || hasAddon()) process.exit(0)

console.error('lameduck: no prebuilt addon for this platform here; building it from source with cargo (Rust)')
const cargo = spawnSync('cargo', ['build', '--release', '--message-format=json-render-diagnostics'], {
  cwd: root,
  stdio: ['ignore', 'pipe', 'inherit'],
  encoding: 'utf8',
  maxBuffer: 64 * 1024 * 1024,
})
if (cargo.error || cargo.status !== 0) {
  console.error(`lameduck: cargo build failed (${cargo.error ? cargo.error.message : `exit ${cargo.status}`}); Rust is needed to build from source: https://rustup.rs`)
  process.exit(1)
}
// cargo reports each artifact as a JSON line; ours is the cdylib of lameduck-node.
const artifact = cargo.stdout
  .split('\n')
  .filter((line) => line.startsWith('{'))
  .map((line) => JSON.parse(line))
  .find((m) => m.reason === 'compiler-artifact' && m.target?.name === 'lameduck_node' && m.target.kind.includes('cdylib'))
const library = artifact?.filenames.find((f) => f.endsWith('.so'))
if (!library) {
  console.error('lameduck: cargo build did not report the addon (liblameduck_node.so)')
  process.exit(1)
}
const { platformName } = require('../lib/platform')
fs.copyFileSync(library, path.join(root, `lameduck.${platformName()}.node`))
