/**
 * Where lazy pages come from when a page server has them: the native page-server client (plain TCP
 * or TLS, native-remote.ts). The pump and the event dispatch know only this interface.
 */
import type { EventLoop } from '../../native/index.js';
import type { BackgroundChunk, ProcessState } from '../process-state.js';
import type { Request } from '../requests.js';

/** What the daemon lends a transport: the loop, request bookkeeping, its error guard, its pump. */
export interface TransportHost {
  readonly loop: EventLoop;
  /** Record a request to the native core; its `done` event settles it (see Requests). */
  submit(req: Request): number;
  /** Run a handler; an unexpected error fails the restore instead of escaping. */
  guard(fn: () => void): void;
  /** Queue more background requests (after a transport's own completion). */
  pump(): void;
}

export interface RemoteTransport {
  /**
   * A background chunk of a remote range, already marked in flight and counted in
   * `st.inflightRequests`. A `priority` chunk (the working set's) that is submitted as a priority
   * request is counted in `st.inflightPriority` here too, since its completion uncounts it.
   */
  background(st: ProcessState, chunk: BackgroundChunk, priority: boolean): void;
  /** The daemon is shutting down: end the session (best effort). */
  close(): void;
}

/** Makes the transport once the daemon's host exists (the daemon makes its loop first). */
export type RemoteTransportFactory = (host: TransportHost) => RemoteTransport;
