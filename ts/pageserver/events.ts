/** What a page server reports: typed events for the library, turned into log lines by the CLI. */

export type SessionEndReason =
  | 'close' // the client sent CLOSE / FORCE_CLOSE: the normal end
  | 'client-disconnected' // EOF or reset with no request pending
  | 'client-disconnected-mid-reply'
  | 'client-stalled' // the client stopped reading a reply for longer than the stall timeout
  | 'malformed-header'
  | 'unknown-command'
  | 'unsupported-command'
  | 'bad-request'
  | 'unknown-pid'
  | 'no-such-pages'
  | 'image-error'
  | 'tls-handshake-failed'
  | 'server-closing';

export type PageServerEvent =
  | { type: 'listening'; address: string; port: number }
  | { type: 'session-started'; session: number; peer: string }
  | {
      type: 'session-ended';
      session: number;
      peer: string;
      reason: SessionEndReason;
      /** Human explanation (names the offending field / address / pid). */
      detail: string;
      /** true for a CLOSE or a clean disconnect. */
      ok: boolean;
      requests: number;
      pagesSent: number;
    }
  | { type: 'closed'; sessions: number };

export type PageServerEventHandler = (e: PageServerEvent) => void;
