/** The daemon's event listeners, and why one that throws cannot stop the daemon. */
import type { DaemonEvent } from './events.js';

export class Emitter {
  private readonly listeners = new Set<(e: DaemonEvent) => void>();
  /** Set while a listener's error is reported: a listener that throws on that warning too must not loop. */
  private listenerErrorDepth = 0;

  on(listener: (e: DaemonEvent) => void): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  /**
   * Listeners are the embedder's code: one that throws must not stop the daemon half-way (close()
   * killing the first owed process, then the exception escaping before the next is killed and its
   * uffd closes on zeros). Its error becomes a warning to the other listeners.
   */
  emit(e: DaemonEvent): void {
    for (const l of this.listeners) {
      try {
        l(e);
      } catch (err) {
        if (this.listenerErrorDepth > 0) continue;
        this.listenerErrorDepth++;
        try {
          this.emit({ type: 'warning', message: `an event listener threw on '${e.type}' (ignored): ${(err as Error)?.message ?? err}` });
        } finally {
          this.listenerErrorDepth--;
        }
      }
    }
  }
}
