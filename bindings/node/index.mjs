// ESM entry: the same objects as the CommonJS entry (index.js), whose named exports Node
// detects from its `module.exports = { … }`.
export * from './index.js'
export { default } from './index.js'
