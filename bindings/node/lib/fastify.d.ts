// Types for `lameduck/fastify` (lib/fastify.js): the same as lameduck's own exports of these names (index.d.ts).
export { fastifyServer, runFastify, FastifyApp, FrameworkServer, RunPromise } from '../index.js'
