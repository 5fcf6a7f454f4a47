import { deadline } from '../driver/deadline.js';
import type { Executor } from '../driver/types.js';
import { HeraldError } from '../errors.js';
import { mailboxTakeInsert, type TakeRow } from './queries.js';

/**
 * Longest wait for a take row's insert, waiting for a pool connection included (ms).
 * The consume transaction holds its own connection while it waits: if every
 * connection of the pool is held by consume transactions waiting for their take rows
 * (more consumers in the process than `poolSize` - 1), none could ever get one. Past
 * this the take fails (its transaction rolls back, nothing ran, a `message:problem`
 * event says why) and the consumer backs off. The insert itself may still run later:
 * its rows then count one attempt of messages whose handlers never ran.
 */
export const TAKE_ROW_TIMEOUT_MS = 10_000;

interface Pending {
  take: TakeRow;
  resolve(): void;
  reject(err: unknown): void;
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

  /** Inserts and commits the take row; resolves once it is committed. */
  record(take: TakeRow): Promise<void> {
    return new Promise<void>((resolve, reject) => {
      this.#queue.push({ take, resolve, reject });
      this.#running ??= this.#drain();
    });
  }

  async #drain(): Promise<void> {
    try {
      while (this.#queue.length > 0) {
        const batch = this.#queue;
        this.#queue = [];
        this.statements++;
        try {
          await deadline(
            mailboxTakeInsert(this.#executor, this.#schemaSql, batch.map((p) => p.take)),
            TAKE_ROW_TIMEOUT_MS,
            () =>
              new HeraldError(
                'TIMEOUT',
                `the take row was not written within ${TAKE_ROW_TIMEOUT_MS} ms (is every pool connection held by consume transactions? the pool needs one more connection than the consumers of this process that take at once)`,
              ),
          );
          for (const p of batch) p.resolve();
        } catch (err) {
          // Outcome unknown or refused: each consume transaction rolls back (nothing ran);
          // a row that did commit is found abandoned later and counts one attempt.
          for (const p of batch) p.reject(err);
        }
      }
    } finally {
      this.#running = undefined;
    }
  }
}
