/** `lock_timeout` of a grouped statement that takes key locks (ms). */
export const ADD_GROUP_LOCK_TIMEOUT_MS = 50;
/** Most events in one grouped statement (a single larger request still goes, alone). */
export const ADD_GROUP_MAX_EVENTS = 1000;

/** One caller's events, and how to answer it. */
interface Request<E> {
  events: readonly E[];
  resolve(ids: string[]): void;
  reject(err: unknown): void;
}

/** SQLSTATEs after which the outcome of a statement is unknown (the connection went away). */
const outcomeUnknown = (err: unknown) => {
  const code = (err as { code?: unknown })?.code;
  return typeof code !== 'string' || code.startsWith('08') || code.startsWith('57P');
};

/**
 * Group commit for the outbox events pgherald commits itself (`add`/`addMany` without
 * `tx`). Each process keeps at most one such statement in flight; the calls made
 * meanwhile wait and the next statement inserts all of them (in arrival order, each
 * caller's events in its own order) with one commit and one NOTIFY.
 *
 * Why: every insert fires the table's wake-up trigger, and a notifying commit holds
 * Postgres's global notify lock through its WAL flush (DESIGN trap 4). One transaction
 * per `add` therefore serialises every producer of the cluster on one flush per event
 * (measured: about 350 adds/s with 16 connections where the mailbox's grouped sends
 * reached 4,000–7,000/s, bench/soak-messaging.ts).
 *
 * What each caller keeps:
 * - its own ids, in its own order;
 * - atomicity of its own request (an `addMany` is never split);
 * - its own failure: when a statement carrying several callers fails with an error that
 *   ends it before commit (any SQLSTATE but connection loss `08*` and shutdown `57P*`),
 *   nothing committed, so each request runs again alone, side by side, outside the
 *   group; only the bad one fails. When the connection is lost, the outcome is unknown
 *   and every caller of the statement gets the error;
 * - no waiting on other producers' key locks beyond {@link ADD_GROUP_LOCK_TIMEOUT_MS}: a
 *   grouped statement that must wait longer for a key's lock (another transaction is
 *   adding to that key) gives up and its requests run alone, so that only the callers
 *   of that key keep waiting (`lock_timeout`, SQLSTATE 55P03).
 *
 * A statement starts after one microtask: calls made in the same synchronous run share
 * it; after that, the next statement starts as soon as the previous one answered.
 */
export class AddGroup<E> {
  readonly #grouped: (events: E[]) => Promise<string[]>;
  readonly #alone: (events: readonly E[]) => Promise<string[]>;
  #queue: Request<E>[] = [];
  #running: Promise<void> | undefined;
  /** Grouped statements run so far (diagnostics). */
  statements = 0;

  /**
   * @param grouped inserts the events of one group (with the lock timeout), returns their ids in order
   * @param alone inserts one request's events as a statement of its own (no lock timeout)
   */
  constructor(grouped: (events: E[]) => Promise<string[]>, alone: (events: readonly E[]) => Promise<string[]>) {
    this.#grouped = grouped;
    this.#alone = alone;
  }

  submit(events: readonly E[]): Promise<string[]> {
    return new Promise<string[]>((resolve, reject) => {
      this.#queue.push({ events, resolve, reject });
      this.#running ??= Promise.resolve().then(() => this.#drain());
    });
  }

  /** Resolves once nothing is queued or running. */
  async idle(): Promise<void> {
    while (this.#running) await this.#running;
  }

  async #drain(): Promise<void> {
    try {
      while (this.#queue.length > 0) {
        let n = 0;
        let take = 0;
        while (take < this.#queue.length && (take === 0 || n + this.#queue[take].events.length <= ADD_GROUP_MAX_EVENTS)) n += this.#queue[take++].events.length;
        const batch = this.#queue.splice(0, take);
        await this.#run(batch);
      }
    } finally {
      this.#running = undefined;
    }
  }

  async #run(batch: Request<E>[]): Promise<void> {
    this.statements++;
    let ids: string[];
    try {
      ids = await this.#grouped(batch.flatMap((r) => r.events));
    } catch (err) {
      const lockTimeout = (err as { code?: unknown })?.code === '55P03';
      if (outcomeUnknown(err) || (batch.length === 1 && !lockTimeout)) {
        for (const r of batch) r.reject(err);
        return;
      }
      // Nothing committed: each request alone, side by side, without holding the group.
      for (const r of batch) this.#alone(r.events).then(r.resolve, r.reject);
      return;
    }
    let at = 0;
    for (const r of batch) {
      r.resolve(ids.slice(at, at + r.events.length));
      at += r.events.length;
    }
  }
}
