/**
 * How a session puts its replies on the socket: plain TCP and TLS need different framing.
 *
 * Plain TCP: a reply's header and first data go out in one writev (a 1-page fault reply is one
 * segment), and the socket's own buffer gives backpressure ('drain').
 *
 * TLS: CRIU's lazy-pages daemon cannot read a reply whose pieces share a TLS record. It waits on
 * epoll for its page-server socket to become readable and then makes ONE gnutls_record_recv per
 * wake-up (criu/page-xfer.c, page_server_async_read → page_server_read with MSG_DONTWAIT): first
 * for exactly the 32-byte header, on a later wake-up for the data. GnuTLS pulls whole records off
 * the socket and keeps what the caller did not ask for in its own buffer, which epoll cannot see.
 * A record holding header + data therefore leaves the data stranded there: the socket never becomes
 * readable again and CRIU waits forever. So every header and every piece of data must be a TLS
 * record (or records) of its own, never shared with the next reply either.
 *
 * Node turns one `socket.write(buf)` into one SSL_write of exactly `buf` (records of ≤ 16 KiB, all
 * from `buf`). Writes queued while a write is in flight are handed on one by one if there is a
 * single one, but two or more are merged into one SSL_write (Writable's clearBuffer calls _writev,
 * and TLSWrap::DoWrite copies the buffers into one). So the TLS writer keeps at most one write in
 * flight and one queued behind it: a reply's header and first data go out back to back, and the
 * next write starts only when the queued one has completed.
 */
import type { Socket } from 'node:net';

export interface ReplyWriter {
  /**
   * Writes `bufs` in order. Resolves when more may be written; rejects (through `wait`) when the
   * client stops reading or goes away.
   */
  write(bufs: Buffer[]): Promise<void>;
}

/** Waits until `arm` calls its callback; `arm` returns a cleanup. Owned by the session (stall timer, hang-up). */
export type Waiter = (what: string, arm: (done: (err?: Error | null) => void) => () => void) => Promise<void>;

/** Plain TCP: writev header + data, wait for 'drain' only when the socket's buffer is full. */
export function streamWriter(socket: Socket, wait: Waiter): ReplyWriter {
  return {
    async write(bufs) {
      let ok = true;
      if (bufs.length === 1) ok = socket.write(bufs[0]!);
      else {
        socket.cork();
        for (const b of bufs) ok = socket.write(b);
        socket.uncork();
      }
      if (!ok) {
        await wait('drain', (done) => {
          const onDrain = () => done();
          socket.on('drain', onDrain);
          return () => socket.off('drain', onDrain);
        });
      }
    },
  };
}

/** TLS: one buffer = one SSL_write; never two writes queued behind one in flight (see the module comment). */
export function recordWriter(socket: Socket, wait: Waiter): ReplyWriter {
  return {
    async write(bufs) {
      for (let i = 0; i < bufs.length; i += 2) {
        const [first, second] = [bufs[i]!, bufs[i + 1]];
        await wait('write', (done) => {
          let live = true;
          const cb = (err?: Error | null) => live && done(err);
          if (second) {
            socket.write(first);
            socket.write(second, cb);
          } else socket.write(first, cb);
          return () => {
            live = false;
          };
        });
      }
    },
  };
}
