// Types for `lameduck/koa` (lib/koa.js): the same as lameduck's own exports of these names (index.d.ts).
export { koaServer, runKoa, KoaApp, FrameworkServer, RunPromise } from '../index.js'
