/**
 * Remote pages through the native page-server client (plain TCP or TLS): the native event loop talks
 * to the page server itself, so a remote fault is fetched and installed without a trip through the JS
 * event loop; JS only queues the background's fetches.
 */
import type { TlsFiles } from '../../native/index.js';
import type { BackgroundChunk, ProcessState } from '../process-state.js';
import type { RemoteTransport, TransportHost } from './remote.js';

export class NativeRemote implements RemoteTransport {
  constructor(private readonly host: TransportHost) {}

  /** Connect the loop's client (TLS with `tls`); throws when the page server cannot be reached or a TLS file is bad. */
  connect(address: string, port: number, timeoutMs: number, tls?: TlsFiles): void {
    this.host.loop.connectPageServer(address, port, timeoutMs, tls);
  }

  background(st: ProcessState, c: BackgroundChunk, priority: boolean): void {
    if (priority) st.inflightPriority++;
    const reqId = this.host.submit({ st, firstPage: c.firstPage, pages: c.pages, priority });
    this.host.loop.fetch(st.procId, reqId, st.gen, st.pid, c.image, c.pages, c.live);
  }

  close(): void {
    // The session ends with the loop (EventLoop.close).
  }
}
