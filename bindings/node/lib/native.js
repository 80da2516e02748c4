'use strict'
/**
 * The native half (src/lib.rs, typed in native.d.ts), loaded once for every module of lib/.
 *
 * Prebuilt addons come the napi-rs way: one npm package per platform
 * (`lameduck-linux-x64-gnu`), an optional dependency of this package, so npm installs only the
 * one that fits. A source checkout may instead hold its own build in the package root
 * (`lameduck.linux-x64-gnu.node`, from `npm run build` or the install script), which wins.
 */
const fs = require('node:fs')
const path = require('node:path')

const root = path.join(__dirname, '..')

const { PREBUILT, platformName } = require('./platform')

function loadNative() {
  const platform = platformName()
  const errors = []
  const local = path.join(root, `lameduck.${platform}.node`)
  if (fs.existsSync(local)) {
    try {
      return require(local)
    } catch (err) {
      errors.push(`${local}: ${err.message}`)
    }
  }
  const pkg = `lameduck-${platform}`
  try {
    return require(pkg)
  } catch (err) {
    if (err.code !== 'MODULE_NOT_FOUND' || !String(err.message).includes(pkg)) errors.push(`${pkg}: ${err.message}`)
  }
  const why = PREBUILT.includes(platform)
    ? `its prebuilt package ${pkg} is not installed (npm leaves optional dependencies out with --omit=optional or --no-optional; install it, or reinstall without that flag)`
    : `there is no prebuilt package for ${platform} (prebuilt: ${PREBUILT.join(', ')}); lameduck supports Linux only, and other Linux machines build it from a source checkout with Rust: npm install ./bindings/node`
  throw new Error(`lameduck: no native addon for ${platform}: ${why}${errors.length ? `. Tried: ${errors.join('; ')}` : ''}`)
}

/** @type {typeof import('../native')} */
module.exports = loadNative()
