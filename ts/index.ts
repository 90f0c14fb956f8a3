/**
 * lazy-pages: the library entry point for orchestrators.
 *
 * - `startLazyPagesDaemon()` — the drop-in for `criu lazy-pages`, with typed events and `done`.
 * - `startPageServer()` — the source side of a post-copy migration, for any number of restores.
 * - `Checkpoint.open()` / `writeSyntheticCheckpoint()` — read (or write) CRIU checkpoint images.
 * Errors a user can act on are `UserError`s with a `.code` and a one-line message.
 */
export { UserError } from './errors.js';
export { startLazyPagesDaemon, SOCKET_NAME, type DaemonOptions, type LazyPagesDaemon } from './daemon/daemon.js';
export type { DaemonEvent, DaemonSummary, ProcessReport } from './daemon/events.js';
export {
  startPageServer,
  type PageServer,
  type PageServerOptions,
  type PageServerEvent,
  type PageServerEventHandler,
  type RefusalReason,
  type SessionEndReason,
  type TlsFiles,
} from './pageserver/index.js';
export {
  Checkpoint,
  ImageError,
  writeSyntheticCheckpoint,
  PAGE_SIZE,
  type DataLocation,
  type CheckpointOptions,
  type PageRange,
  type ProcessImage,
  type ShmemInfo,
  type SynthOptions,
  type TaskState,
  type Vma,
} from './images/index.js';
export { nativeVersion, NativeError } from './native/index.js';
