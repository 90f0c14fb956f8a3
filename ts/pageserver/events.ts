/** What a page server reports: typed events for the library, turned into log lines by the CLI. */

export type SessionEndReason =
  | 'close' // the client sent CLOSE / FORCE_CLOSE: the normal end
  | 'client-disconnected' // EOF or reset with no request pending
  | 'client-disconnected-mid-reply'
  | 'client-stalled' // the client stopped reading a reply for longer than the stall timeout
  | 'client-idle' // no request for the idle timeout, and none in progress
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
  | {
      /** A connection closed at accept, before anything it sent was read (no session is counted). */
      type: 'refused';
      peer: string;
      reason: RefusalReason;
      /** Names the rule: the --allow list, or the cap and its value. */
      detail: string;
    }
  /** Something the operator should hear about that is no one session's business (accept() failing, an open listener). */
  | { type: 'warning'; message: string }
  | { type: 'closed'; sessions: number };

export type RefusalReason =
  | 'not-allowed' // the peer is in none of the --allow networks
  | 'too-many-connections' // --max-connections are open
  | 'too-many-from-peer'; // --max-per-peer are open from this source IP

export type PageServerEventHandler = (e: PageServerEvent) => void;
