/** A grouped statement running longer than this no longer holds the next group back (ms). */
export const STALL_MS = 50;
/** At most this many such statements at once; beyond, the next group waits. */
export const MAX_DETACHED = 8;

/** One caller's items, and how to answer it. */
interface Request<E, R> {
  items: readonly E[];
  resolve(results: R[]): void;
  reject(err: unknown): void;
}

/**
 * True when the server rejected the statement with an error of its own (it carries a
 * SQLSTATE) that is not a lost connection (`08*`) or a shutdown/termination (`57P*`):
 * such a statement ended before its commit, so nothing of it is in the database.
 * Otherwise the outcome is unknown.
 */
export function failedBeforeCommit(err: unknown): boolean {
  const code = (err as { code?: unknown } | null)?.code;
  if (typeof code !== 'string' || !/^[0-9A-Z]{5}$/.test(code)) return false;
  return !code.startsWith('08') && !code.startsWith('57P');
}

/**
 * Group commit for the writes pgherald commits itself, one statement in flight per
 * writer: the outbox's `add`/`addMany` without `tx`, and topic publishes without `tx`.
 * Calls made while a statement runs wait, and the next statement writes all of them (in
 * arrival order, each caller's items in its own order) with one commit, one WAL flush
 * and at most one wake-up instead of one of each per call.
 *
 * Why: a commit waits for its WAL flush, and a commit that NOTIFYs holds Postgres's
 * global notify lock through that flush (DESIGN trap 4). One transaction per call
 * therefore costs every concurrent caller a flush of its own (measured for the outbox:
 * about 350 adds/s with 16 connections, bench/soak-messaging.ts).
 *
 * What each caller keeps:
 * - its own results (ids), in its own order;
 * - atomicity of its own request (a batch call is never split);
 * - its own failure: when a statement carrying several callers fails with an error that
 *   ends it before commit (any SQLSTATE but connection loss `08*` and shutdown `57P*`),
 *   nothing committed, so each request runs again alone, side by side, outside the
 *   group; only the bad one fails. When the connection is lost, the outcome is unknown
 *   and every caller of the statement gets the error. A lock timeout (`55P03`, from a
 *   grouped statement given a short `lock_timeout` so it does not wait on one caller's
 *   lock for everyone) runs even a single request again alone, without the timeout.
 *
 * A statement starts after one microtask: calls made in the same synchronous run share
 * it; after that, the next statement starts as soon as the previous one answered, or
 * once it has run {@link STALL_MS} (a statement stuck on a lost
 * connection or a stalled server must not hold every other write of the process; at
 * most {@link MAX_DETACHED} such statements at once, it answers its own callers when it
 * ends). A caller that waits for its call before the next keeps its own order. At most
 * `maxItems` items go in one statement (a single larger request still goes, alone).
 */
export class GroupCommit<E, R = string> {
  readonly #grouped: (items: E[]) => Promise<R[]>;
  readonly #alone: (items: readonly E[]) => Promise<R[]>;
  readonly #maxItems: number;
  #queue: Request<E, R>[] = [];
  #running: Promise<void> | undefined;
  /** Statements that ran past STALL_MS and no longer hold the next group back. */
  readonly #detached = new Set<Promise<void>>();
  /** Grouped statements run so far (diagnostics). */
  statements = 0;

  /**
   * @param grouped writes the items of one group in one statement and commits; returns one result per item, in order
   * @param alone writes one request's items as a statement of its own (no lock timeout)
   * @param maxItems most items in one grouped statement
   */
  constructor(grouped: (items: E[]) => Promise<R[]>, alone: (items: readonly E[]) => Promise<R[]>, maxItems: number) {
    this.#grouped = grouped;
    this.#alone = alone;
    this.#maxItems = maxItems;
  }

  /** Writes `items` (with whatever else is waiting); resolves with their results, in order. */
  submit(items: readonly E[]): Promise<R[]> {
    return new Promise<R[]>((resolve, reject) => {
      this.#queue.push({ items, resolve, reject });
      this.#running ??= Promise.resolve().then(() => this.#drain());
    });
  }

  /** Resolves once nothing is queued or running. */
  async idle(): Promise<void> {
    while (this.#running || this.#detached.size > 0) await Promise.all([this.#running, ...this.#detached]);
  }

  async #drain(): Promise<void> {
    try {
      while (this.#queue.length > 0) {
        let n = 0;
        let take = 0;
        while (take < this.#queue.length && (take === 0 || n + this.#queue[take].items.length <= this.#maxItems)) n += this.#queue[take++].items.length;
        const batch = this.#queue.splice(0, take);
        const statement = this.#run(batch);
        // Still running after STALL_MS: it goes on by itself (detached) and the next
        // group (now, or whenever a call comes) starts, unless MAX_DETACHED already do.
        let timer: NodeJS.Timeout | undefined;
        const stalled = await Promise.race([
          statement.then(() => false),
          new Promise<boolean>((resolve) => (timer = setTimeout(() => resolve(true), STALL_MS))),
        ]);
        clearTimeout(timer);
        if (!stalled) continue;
        if (this.#detached.size < MAX_DETACHED) {
          this.#detached.add(statement);
          void statement.finally(() => this.#detached.delete(statement));
        } else await statement;
      }
    } finally {
      this.#running = undefined;
    }
  }

  async #run(batch: Request<E, R>[]): Promise<void> {
    this.statements++;
    let results: R[];
    try {
      results = await this.#grouped(batch.length === 1 ? [...batch[0].items] : batch.flatMap((r) => r.items));
    } catch (err) {
      const lockTimeout = (err as { code?: unknown })?.code === '55P03';
      if (!failedBeforeCommit(err) || (batch.length === 1 && !lockTimeout)) {
        for (const r of batch) r.reject(err);
        return;
      }
      // Nothing committed: each request alone, side by side, without holding the group.
      for (const r of batch) this.#alone(r.items).then(r.resolve, r.reject);
      return;
    }
    let at = 0;
    for (const r of batch) {
      r.resolve(results.slice(at, at + r.items.length));
      at += r.items.length;
    }
  }
}
