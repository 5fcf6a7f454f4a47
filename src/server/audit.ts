import { TypedEmitter } from '../internal/events.js';

/** One operator action taken through the dashboard's admin API. */
export interface AuditEntry {
  /** Sequence number in this server's life (1, 2, ...). */
  seq: number;
  /** ISO time (server clock). */
  at: string;
  /** Who: the principal id (`key:<name>`, `jwt:<sub>`, `anonymous` in open mode). */
  principal: string;
  /** What: `job.retry`, `job.cancel`, `mailbox.redrive`, `outbox.redrive`, `group.reset`, `panel.<panel>.<action>`... */
  action: string;
  /** On what: job ids, a destination, event ids, `<topic>/<group>`. */
  target: unknown;
  /** `ok` or the error code of a refusal or failure. */
  outcome: string;
  /** What the action returned (counts, ids) or the error message. */
  detail: unknown;
}

/** Events of the audit log (`server.audit.on(...)`). */
export type AuditEvents = {
  /** An admin action ran (or was refused after authorization: a conflict, a bad argument). */
  'dashboard:audit': [entry: AuditEntry];
};

/**
 * The audit log of dashboard actions: every control action (retry, cancel, redrive,
 * reset of a topic group, panel actions) is kept in a ring of the last `size` entries
 * (`GET /api/dashboard/audit`) and emitted as `dashboard:audit`, where an application
 * can forward it to durable storage or its log. In memory: a restart forgets it.
 */
export class AuditLog extends TypedEmitter<AuditEvents> {
  readonly #ring: AuditEntry[] = [];
  #seq = 0;

  /** @param size entries kept (`dashboardAuditSize`) */
  constructor(readonly size: number) {
    super();
  }

  /**
   * Runs `fn` as `principal` doing `action` on `target`, records the outcome (its result,
   * or its error's code and message) and returns the result or rethrows.
   */
  async record<T>(principal: string, action: string, target: unknown, fn: () => Promise<T>): Promise<T> {
    let outcome = 'ok';
    let detail: unknown = null;
    try {
      const result = await fn();
      detail = result ?? null;
      return result;
    } catch (err) {
      outcome = typeof (err as { code?: unknown }).code === 'string' ? (err as { code: string }).code : 'ERROR';
      detail = (err as Error).message;
      throw err;
    } finally {
      const entry: AuditEntry = { seq: ++this.#seq, at: new Date().toISOString(), principal, action, target, outcome, detail };
      this.#ring.push(entry);
      if (this.#ring.length > this.size) this.#ring.shift();
      this.emit('dashboard:audit', entry);
    }
  }

  /** Entries, newest first. */
  entries(): AuditEntry[] {
    return [...this.#ring].reverse();
  }
}
