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

/**
 * The take rows of one mailbox's consumers (see `mailboxTakeInsert`): one statement per
 * take row, issued the moment the take asks for it.
 *
 * Why not share statements (as an earlier version did, one in flight per process): a
 * consume transaction holds its connection while it waits for its take row to be
 * sent, so the take row must never queue behind connections that consume transactions
 * take. A take row's statement asks the pool for its connection synchronously, right
 * after its take statement returned, and the next take of the consumer (its lanes take
 * one after the other) asks for its own connection only after that: the pool serves
 * waiting requests in order, so the take row is served before the next transaction
 * can hold a connection, and at most one consume transaction of a consumer waits for
 * an unserved take row at a time. A statement shared with take rows that arrived while
 * the previous one ran asked for its connection only once that one ended, after
 * transactions begun meanwhile; with every connection then held by transactions
 * waiting for their rows, each take stalled until `TAKE_ROW_TIMEOUT_MS`.
 */
export class TakeLog {
  readonly #executor: Executor;
  readonly #schemaSql: string;
  /** Insert statements run so far (for tests and diagnostics). */
  statements = 0;

  constructor(executor: Executor, schemaSql: string) {
    this.#executor = executor;
    this.#schemaSql = schemaSql;
  }

  /**
   * Inserts and commits the take row (asynchronously: see `mailboxTakeInsert`). The
   * consumer runs its handlers once `sent` resolves, without waiting for the commit.
   * Both promises are handled here: a caller may leave either unobserved. `drop`: tokens
   * of committed takes whose rows the same statement deletes.
   */
  record(take: TakeRow, drop: readonly string[] = []): TakeRecord {
    let sent!: () => void;
    const leftProcess = new Promise<void>((resolve) => (sent = resolve));
    this.statements++;
    const committed = mailboxTakeInsert(this.#executor, this.#schemaSql, take, drop, { timeoutMs: TAKE_ROW_TIMEOUT_MS, onSent: () => sent() }).catch((err: unknown) => {
      if (!(err instanceof HeraldError && err.code === 'TIMEOUT')) throw err;
      throw new HeraldError(
        'TIMEOUT',
        `the take row was not written within ${TAKE_ROW_TIMEOUT_MS} ms (is every pool connection held by consume transactions? the pool needs one more connection than the consumers of this process that take at once)`,
        { cause: err },
      );
    });
    // Sent: once the statement left the process, or once it ended (a driver that cannot
    // tell); a statement that failed before it was sent fails `sent` too.
    const record: TakeRecord = {
      sent: Promise.race([leftProcess, committed]),
      committed,
    };
    record.sent.catch(() => {});
    record.committed.catch(() => {});
    return record;
  }
}
