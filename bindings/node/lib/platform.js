'use strict'
/** Which prebuilt addon fits this machine, in napi-rs's platform naming. */

/** The platforms a prebuilt package exists for (keep in step with package.json's optionalDependencies). */
const PREBUILT = ['linux-x64-gnu']

/** This machine's platform: `linux-x64-gnu`, `linux-arm64-musl`, `darwin-arm64`, … */
function platformName() {
  if (process.platform !== 'linux') return `${process.platform}-${process.arch}`
  // glibcVersionRuntime is present exactly when Node runs on glibc.
  const glibc = process.report?.getReport?.().header?.glibcVersionRuntime
  return `linux-${process.arch}-${glibc ? 'gnu' : 'musl'}`
}

module.exports = { PREBUILT, platformName }
