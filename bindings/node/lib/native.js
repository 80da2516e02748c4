'use strict'
/**
 * The native half (src/lib.rs, typed in native.d.ts), loaded once for every module of lib/.
 * `napi build --platform` names the addon after the platform, e.g. lameduck.linux-x64-gnu.node,
 * and puts it in the package's root.
 */
const fs = require('node:fs')
const path = require('node:path')

const root = path.join(__dirname, '..')

function loadNative() {
  const candidates = fs.readdirSync(root).filter((f) => /^lameduck\..+\.node$/.test(f))
  const preferred = candidates.filter((f) => f.includes(`${process.platform}-${process.arch}`))
  const errors = []
  for (const file of [...preferred, ...candidates]) {
    try {
      return require(path.join(root, file))
    } catch (err) {
      errors.push(`${file}: ${err.message}`)
    }
  }
  throw new Error(
    `lameduck: the native addon is not built (run \`npm install\` or \`npm run build\` in ${root})` +
      (errors.length ? `: ${errors.join('; ')}` : ''),
  )
}

/** @type {typeof import('../native')} */
module.exports = loadNative()
