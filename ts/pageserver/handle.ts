/**
 * A running page server. Apart from server.ts, which starts it, so that the engine (native-engine.ts)
 * can return one without importing the module that starts it.
 */
export interface PageServer {
  address: string;
  port: number;
  /** Sessions that have ended so far. */
  readonly sessions: number;
  /** Sessions in progress. */
  readonly active: number;
  /** Resolves once the server has stopped (close(), or the --sessions limit reached and drained). */
  done: Promise<void>;
  close(): Promise<void>;
}
