/**
 * Remote pages through the native page-server client (plain TCP): the native event loop talks to
 * the page server itself, so a remote fault is fetched and installed without a trip through the JS
 * event loop; JS only queues the background's fetches.
 */
import type { BackgroundChunk, ProcessState } from '../process-state.js';
import type { RemoteTransport, TransportHost } from './remote.js';

export class NativeRemote implements RemoteTransport {
  constructor(private readonly host: TransportHost) {}

  /** Connect the loop's client; throws when the page server cannot be reached. */
  connect(address: string, port: number, timeoutMs: number): void {
    this.host.loop.connectPageServer(address, port, timeoutMs);
  }

  background(st: ProcessState, c: BackgroundChunk, priority: boolean): void {
    if (priority) st.inflightPriority++;
    const reqId = this.host.submit({ st, firstPage: c.firstPage, pages: c.pages, priority });
    this.host.loop.fetch(st.procId, reqId, st.gen, st.pid, c.image, c.pages, c.live);
  }

  fault(): void {
    // Never forwarded: the native client fetches a fault's page itself.
  }

  close(): void {
    // The session ends with the loop (EventLoop.close).
  }
}
