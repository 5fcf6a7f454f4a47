import type { Executor } from '../driver/types.js';

/** How often a {@link HorizonWatch} looks, and so how long a transaction must be open to count (ms). */
export const HORIZON_LOOK_MS = 1000;

/**
 * Tells whether a transaction has been open somewhere in the cluster for about a second
 * or more: while one is, the index entries of rows deleted or updated since it began
 * can be neither removed nor marked dead, and a scan from the start of an index walks
 * them all. A part whose scans can avoid that at some cost (the outbox relay's key
 * floors) pays that cost only while this says so.
 *
 * How: every transaction holds a lock on its own virtual transaction id until it ends,
 * and `pg_locks` shows these to every role (`pg_stat_activity` hides other roles'
 * transaction start and xmin). A look at most every {@link HORIZON_LOOK_MS}, when asked
 * ({@link refresh}): a virtual transaction id present at the previous look and still
 * present now belongs to a transaction open for at least the time between the looks.
 * It counts every open transaction, including one idle between statements that holds
 * no snapshot (which does not hold vacuum back): at worst the cost is paid for nothing
 * while it lasts. Prepared (two-phase) transactions and replication slots, which hold
 * vacuum back too, hold no such lock and are not seen.
 */
export class HorizonWatch {
  readonly #executor: Executor;
  readonly #intervalMs: number;
  #previous: Set<string> | undefined;
  #lookedAt = -Infinity;
  #held = false;
  #looking: Promise<void> | undefined;

  constructor(executor: Executor, intervalMs = HORIZON_LOOK_MS) {
    this.#executor = executor;
    this.#intervalMs = intervalMs;
  }

  /** What the last look found. */
  get held(): boolean {
    return this.#held;
  }

  /**
   * Looks again if the last look is at least the interval old (one statement on the
   * pool; concurrent callers share it), and returns {@link held}. A look that fails
   * leaves the last answer (the caller's own statements will report the failure).
   */
  async refresh(): Promise<boolean> {
    if (performance.now() - this.#lookedAt < this.#intervalMs) return this.#held;
    this.#looking ??= this.#look().finally(() => (this.#looking = undefined));
    await this.#looking;
    return this.#held;
  }

  async #look(): Promise<void> {
    this.#lookedAt = performance.now();
    let now: Set<string>;
    try {
      const { rows } = await this.#executor.query<{ v: string[] }>(
        `SELECT coalesce(array_agg(virtualxid), '{}') AS v FROM pg_locks WHERE locktype = 'virtualxid' AND granted AND pid <> pg_backend_pid()`,
      );
      now = new Set(rows[0]?.v ?? []);
    } catch {
      return;
    }
    const before = this.#previous;
    this.#held = before !== undefined && [...now].some((v) => before.has(v));
    this.#previous = now;
  }
}
