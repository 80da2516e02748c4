// ESM entry: the same objects as the CommonJS entry (index.js).
import lameduck from './index.js'

export const {
  run,
  listen,
  Runner,
  Context,
  httpServer,
  LameDuckError,
  ExpiredError,
  ForcedError,
  FailedError,
  ShutdownError,
  CanceledError,
  BusyError,
  DeadlineExceededError,
  version,
} = lameduck
export default lameduck
