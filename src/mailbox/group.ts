import { performance } from 'node:perf_hooks';
import { failedBeforeCommit, MAX_DETACHED, STALL_MS } from '../internal/group-commit.js';
import type { MessageInsert } from './queries.js';

/** `lock_timeout` of a statement that carries several callers' sends (ms). */
export const GROUP_LOCK_TIMEOUT_MS = 50;

/** One caller's rows, and how to answer it. */
interface Request {
  rows: readonly MessageInsert[];
  bytes: number;
  resolve(created: boolean[]): void;
  reject(err: unknown): void;
}

/** Limits of one grouped statement. */
export interface SendGroupLimits {
  /** Most messages in one statement (a single larger request still goes, alone). */
  maxMessages: number;
  /** Most payload bytes in one statement (a single larger request still goes, alone). */
  maxBytes: number;
}

/**
 * Group commit for the sends pgherald commits itself (no `tx`). Each process keeps at
 * most one such statement in flight: the requests that arrive meanwhile (from concurrent
 * `send`/`sendMany` calls) wait, and the next statement inserts all of them in one
 * `INSERT ... unnest` with one commit and one NOTIFY per distinct destination, carried
 * in that same statement (see `mailboxSendBatch`).
 *
 * Why: a commit waits for a WAL flush, and a notifying commit holds Postgres's global
 * notify lock through that flush (DESIGN trap 4). One statement per process at a time
 * means the NOTIFY rides in the insert's own commit without queueing this process's
 * other senders behind the lock, and N concurrent sends cost one commit, one flush and
 * one NOTIFY instead of N of each (plus N wake-up statements).
 *
 * What each caller keeps:
 * - its own `created` answers: the statement's `RETURNING` lists the ids it created;
 *   walking the requests in arrival order, the first occurrence of an id gets `true`
 *   (so two concurrent sends of one id in one group: one `true`, one `false`, as if
 *   they had been two statements);
 * - its own failure: when the server rejects the grouped statement with an error that
 *   ends it before commit (any SQLSTATE but connection loss `08*` and shutdown `57P*`),
 *   nothing of it committed, so each request is retried alone and only the bad one
 *   fails. When the connection is lost, the outcome is unknown for the whole group:
 *   every caller gets the error and may retry with the same ids (idempotent);
 * - a request is never split: `sendMany` still writes its batch in one statement.
 *
 * Row locks: a send of an id that a transaction still open elsewhere is inserting waits
 * for that transaction (idempotency). So that it does not hold the other callers of its
 * group, a statement of several callers gives up after {@link GROUP_LOCK_TIMEOUT_MS}
 * (`lock_timeout`, SQLSTATE 55P03) and the calls are retried one statement each, side
 * by side: only the one whose id is locked keeps waiting. And a statement still running
 * after {@link STALL_MS} stops holding the next group back: that one starts, and the
 * stalled one answers its callers when it ends.
 *
 * A statement starts on the next turn of the event loop (`setImmediate`), so calls made
 * in the same turn — for example every caller just released by the previous statement
 * sending again — share it; except that when the previous statement was a lone caller's
 * and nothing else waits, the next one starts after a single microtask (calls made in
 * the same synchronous run still join; a sequential sender's sends then cost one round
 * trip each and no extra turn of the event loop).
 */
export class SendGroup {
  readonly #run: (rows: MessageInsert[], shared: boolean) => Promise<Set<string>>;
  readonly #limits: SendGroupLimits;
  #queue: Request[] = [];
  #running: Promise<void> | undefined;
  /** Statements that ran past STALL_MS and no longer hold the next group back. */
  readonly #detached = new Set<Promise<void>>();
  /** The last statement carried one caller's request and nobody waited: the next may start at once. */
  #lone = true;
  /** Arms the stall timer of the statement running now (set while one runs). */
  #armStall: (() => void) | undefined;
  /** Statements run so far (for tests and diagnostics). */
  statements = 0;

  /**
   * `run` inserts rows in one statement (and commits), returning the ids it created;
   * `shared` says the rows are several callers': the statement must then not wait long
   * on a row lock (see `mailboxSendBatch`'s `lockTimeoutMs`).
   */
  constructor(run: (rows: MessageInsert[], shared: boolean) => Promise<Set<string>>, limits: SendGroupLimits) {
    this.#run = run;
    this.#limits = limits;
  }

  /** Inserts `rows` (with whatever else is waiting); resolves with `created` per row, in order. */
  submit(rows: readonly MessageInsert[]): Promise<boolean[]> {
    return new Promise((resolve, reject) => {
      let bytes = 0;
      for (const r of rows) bytes += Buffer.byteLength(r.payload);
      this.#queue.push({ rows, bytes, resolve, reject });
      if (this.#running) this.#armStall?.();
      else this.#running = this.#flush(this.#lone);
    });
  }

  /** Resolves when no statement is running or waiting. */
  async idle(): Promise<void> {
    while (this.#running || this.#detached.size > 0) await Promise.all([this.#running, ...this.#detached]);
  }

  /**
   * Runs groups until the queue is empty. The first group starts after one microtask
   * when the previous statement was a lone caller's (a sequential sender pays no extra
   * turn of the event loop, and the calls made in the same synchronous run still join);
   * otherwise, and for every following group, it starts on the next turn of the event
   * loop, so the calls of this turn (every caller just released by the previous
   * statement sending again) join it.
   */
  async #flush(immediate: boolean): Promise<void> {
    try {
      for (let first = true; ; first = false) {
        // After a lone statement, one microtask is enough for the calls of this same
        // synchronous run (a Promise.all of sends) to join; otherwise wait for the turn.
        if (first && immediate) await Promise.resolve();
        else await new Promise<void>((resolve) => setImmediate(resolve));
        if (this.#queue.length === 0) return;
        const group = this.#take();
        const statement = this.#runGroup(group);
        // A statement that waits on a row lock (its id is being inserted by a transaction
        // still open elsewhere) must not hold every other send of this process: once
        // somebody waits, past STALL_MS from its start the next group goes ahead and this
        // one finishes on its own. No timer while nobody waits (the lone sender's case).
        const started = performance.now();
        let timer: NodeJS.Timeout | undefined;
        let stall!: () => void;
        const stalledSignal = new Promise<boolean>((resolve) => (stall = () => resolve(true)));
        this.#armStall = () => {
          timer ??= setTimeout(stall, Math.max(0, STALL_MS - (performance.now() - started)));
        };
        if (this.#queue.length > 0) this.#armStall();
        const stalled = await Promise.race([statement.then(() => false), stalledSignal]);
        this.#armStall = undefined;
        clearTimeout(timer);
        this.#lone = group.length === 1 && this.#queue.length === 0;
        if (stalled && this.#detached.size < MAX_DETACHED) {
          this.#detached.add(statement);
          void statement.finally(() => this.#detached.delete(statement));
        } else if (stalled) {
          await statement;
        }
        // Nobody waiting: stop here, so that the next call (a lone sender's next send)
        // finds no statement running and may start at once.
        if (this.#queue.length === 0) return;
      }
    } finally {
      this.#running = undefined;
    }
  }

  /** The next group: requests in arrival order, within the limits (at least one). */
  #take(): Request[] {
    let n = 0;
    let messages = 0;
    let bytes = 0;
    for (const r of this.#queue) {
      if (n > 0 && (messages + r.rows.length > this.#limits.maxMessages || bytes + r.bytes > this.#limits.maxBytes)) break;
      n++;
      messages += r.rows.length;
      bytes += r.bytes;
    }
    return this.#queue.splice(0, n);
  }

  async #runGroup(group: Request[]): Promise<void> {
    let created: Set<string>;
    try {
      this.statements++;
      created = await this.#run(group.length === 1 ? [...group[0].rows] : group.flatMap((r) => r.rows), group.length > 1);
    } catch (err) {
      if (group.length === 1 || !failedBeforeCommit(err)) {
        for (const r of group) r.reject(err);
        return;
      }
      // Nothing of the group committed: each request alone (at once, side by side), so
      // one bad request — or one waiting on a lock — does not sink or hold the others.
      await Promise.all(group.map((r) => this.#runGroup([r])));
      return;
    }
    for (const r of group) r.resolve(r.rows.map((row) => created.delete(row.id)));
  }
}
