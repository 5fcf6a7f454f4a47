import type { Executor } from '../driver/types.js';
import { HeraldError } from '../errors.js';
import { mailboxTakeInsert, type TakeRow } from './queries.js';

/**
 * Longest time a take row's insert may take, waiting for a pool connection included
 * (ms). The consume transaction holds its own connection while it waits for its take
 * row to be sent: if every connection of the pool is held by consume transactions
 * waiting for theirs (more consumers in the process than `poolSize` - 1), none could
 * ever get one. Past this the insert fails (its connection is discarded): a take still
 * waiting for it fails (its transaction rolls back, nothing ran, a `message:problem`
 * event says why) and the consumer backs off.
 */
export const TAKE_ROW_TIMEOUT_MS = 10_000;

/** A take row on its way: see {@link TakeLog.record}. */
export interface TakeRecord {
  /**
   * Resolves once the insert has left the process (written to its connection's socket)
   * or completed: from then on the server runs it even if this process dies. Rejects if
   * the insert failed before that.
   */
  readonly sent: Promise<void>;
  /** Resolves once the take row is committed; rejects if the insert failed (or its outcome is unknown). */
  readonly committed: Promise<void>;
}

interface Pending {
  take: TakeRow;
  sent(): void;
  committed(): void;
  failed(err: unknown): void;
}

/**
 * The take rows of one mailbox's consumers (see `mailboxTakeInsert`). At most one insert
 * statement is in flight per process: take rows that arrive meanwhile (other consumers,
 * other lanes) share the next one, one commit for all. So however many consumers run,
 * their take rows need one pool connection at a time beside the consume transactions.
 */
export class TakeLog {
  readonly #executor: Executor;
  readonly #schemaSql: string;
  #queue: Pending[] = [];
  #running: Promise<void> | undefined;
  /** Insert statements run so far (for tests and diagnostics). */
  statements = 0;

  constructor(executor: Executor, schemaSql: string) {
    this.#executor = executor;
    this.#schemaSql = schemaSql;
  }

  /**
   * Inserts and commits the take row (asynchronously: see `mailboxTakeInsert`). The
   * consumer runs its handlers once `sent` resolves, without waiting for the commit.
   * Both promises are handled here: a caller may leave either unobserved.
   */
  record(take: TakeRow): TakeRecord {
    let sent!: () => void;
    let committed!: () => void;
    let failSent!: (err: unknown) => void;
    let failCommitted!: (err: unknown) => void;
    const record: TakeRecord = {
      sent: new Promise<void>((resolve, reject) => ((sent = resolve), (failSent = reject))),
      committed: new Promise<void>((resolve, reject) => ((committed = resolve), (failCommitted = reject))),
    };
    record.sent.catch(() => {});
    record.committed.catch(() => {});
    this.#queue.push({
      take,
      sent,
      committed: () => (sent(), committed()),
      failed: (err) => (failSent(err), failCommitted(err)),
    });
    this.#running ??= this.#drain();
    return record;
  }

  async #drain(): Promise<void> {
    try {
      while (this.#queue.length > 0) {
        const batch = this.#queue;
        this.#queue = [];
        this.statements++;
        try {
          await mailboxTakeInsert(
            this.#executor,
            this.#schemaSql,
            batch.map((p) => p.take),
            { timeoutMs: TAKE_ROW_TIMEOUT_MS, onSent: () => batch.forEach((p) => p.sent()) },
          ).catch((err: unknown) => {
            if (!(err instanceof HeraldError && err.code === 'TIMEOUT')) throw err;
            throw new HeraldError(
              'TIMEOUT',
              `the take row was not written within ${TAKE_ROW_TIMEOUT_MS} ms (is every pool connection held by consume transactions? the pool needs one more connection than the consumers of this process that take at once)`,
              { cause: err },
            );
          });
          for (const p of batch) p.committed();
        } catch (err) {
          // Refused, timed out or outcome unknown: a take still waiting to send it rolls
          // back (nothing ran); a row that did commit is found abandoned later and counts
          // one attempt (or is dropped, its messages consumed).
          for (const p of batch) p.failed(err);
        }
      }
    } finally {
      this.#running = undefined;
    }
  }
}
