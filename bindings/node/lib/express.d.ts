// Types for `lameduck/express` (lib/express.js): the same as lameduck's own exports of these names (index.d.ts).
export { expressServer, runExpress, ExpressApp, FrameworkServer, RunPromise } from '../index.js'
