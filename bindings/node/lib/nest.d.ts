// Types for `lameduck/nest` (lib/nest.js): the same as lameduck's own exports of these names (index.d.ts).
export { nestServer, runNest, NestApp, FrameworkServer, RunPromise } from '../index.js'
