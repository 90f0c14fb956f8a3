/**
 * The page server on the native engine (crates/uffd-native/src/pageserver): one native thread serves
 * every connection, plain TCP or TLS, straight out of the mmapped pages files, so a fault's GET never
 * waits for Node's event loop.
 */
import { Catalog } from './catalog.js';
import { NativePageServer, type CatalogRun, type NativePageServerEvent, type TlsFiles } from '../native/index.js';
import type { PageServerEvent } from './events.js';
import type { PageServer } from './handle.js';

export interface NativeEngineOptions {
  imagesDir: string;
  host: string;
  port: number;
  sessions?: number;
  stallTimeoutMs: number;
  maxReplyPages: number;
  maxConnections: number;
  maxPerPeer: number;
  idleTimeoutMs: number;
  /** `ADDR/LEN` networks (checked natively: a bad one is an `EOPTION` error naming it). */
  allow: string[];
  tls?: TlsFiles;
  emit: (e: PageServerEvent) => void;
}

/** The native catalog: per pid, its sorted runs, and the file of each imageId. */
async function nativeCatalog(imagesDir: string): Promise<{ pids: { pid: number; runs: CatalogRun[] }[]; files: string[] }> {
  const cat = await Catalog.open(imagesDir);
  const files: string[] = [];
  const ids = new Map<string, number>();
  const idOf = (f: string) => {
    let id = ids.get(f);
    if (id === undefined) {
      id = files.push(f) - 1;
      ids.set(f, id);
    }
    return id;
  };
  const pids = cat.pids.map((pid) => {
    return { pid, runs: cat.runs(pid).map((r) => ({ start: r.start, end: r.end, imageId: idOf(r.file), fileOffset: r.offset })) };
  });
  return { pids, files };
}

export async function startNativeEngine(o: NativeEngineOptions): Promise<PageServer> {
  const { pids, files } = await nativeCatalog(o.imagesDir);
  let ended = 0;
  let active = 0;
  let resolveDone!: () => void;
  const done = new Promise<void>((r) => (resolveDone = r));
  let stopped = false;
  let srv: NativePageServer | undefined;

  const onEvents = (batch: NativePageServerEvent[]) => {
    for (const e of batch) {
      if (e.type === 'session-started') {
        active++;
        o.emit(e);
      } else if (e.type === 'session-ended') {
        active--;
        ended++;
        o.emit(e);
      } else if (e.type === 'refused') {
        o.emit(e);
      } else if (e.type === 'warning') {
        o.emit(e);
      } else if (!stopped) {
        stopped = true;
        // The thread has exited: join it and release the callback (so Node can exit), outside this callback.
        setImmediate(() => srv?.close());
        o.emit({ type: 'closed', sessions: ended });
        resolveDone();
      }
    }
  };
  srv = NativePageServer.start(
    {
      address: o.host, port: o.port, stallTimeoutMs: o.stallTimeoutMs, maxReplyPages: o.maxReplyPages, sessions: o.sessions,
      maxConnections: o.maxConnections, maxPerPeer: o.maxPerPeer, idleTimeoutMs: o.idleTimeoutMs, allow: o.allow,
      ...(o.tls && { tls: o.tls }),
    },
    pids,
    files,
    onEvents,
  );
  o.emit({ type: 'listening', address: srv.address, port: srv.port });
  const s = srv;
  return {
    address: s.address,
    port: s.port,
    get sessions() {
      return ended;
    },
    get active() {
      return active;
    },
    done,
    async close() {
      // Delivers every session's 'server-closing' end and the stop synchronously.
      s.close();
      await done;
    },
  };
}
