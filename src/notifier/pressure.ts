/**
 * Wake-ups under notification-queue pressure (DESIGN.md trap 5).
 *
 * Postgres keeps every notification in one cluster-wide queue until the slowest
 * listening session has read it. A session that ran LISTEN and then sits in a long
 * transaction reads nothing (notifications are only delivered between transactions),
 * so the queue fills behind it: 8 GB by default, `max_notify_queue_pages` on
 * PostgreSQL 17 and later. When it is full, every transaction that queued a
 * notification fails at commit with SQLSTATE 54000 — and with it every write that
 * carried a wake-up.
 *
 * A wake-up must never cost the write it announces. This module holds the one
 * "wake-ups on" state of a process (one per notifier): every part asks it whether to
 * attach `pg_notify` to a write (the parts' SQL takes a NULL channel for "no wake-up",
 * see {@link wakeSql}). Wake-ups pause when a sample of `pg_notification_queue_usage()`
 * reaches the high-water mark or a statement fails with 54000, and resume by
 * themselves once a sample is at or below the low-water mark. Meanwhile consumers find
 * new work by their safety polls.
 *
 * Retrying a statement that failed with 54000 is safe: Postgres queues a transaction's
 * notifications in its pre-commit step and raises the error there, before the commit
 * record, so nothing of that transaction is in the database.
 */
import type { Executor, QueryOptions, QueryResult } from '../driver/types.js';
import { NotifyQueueFullError } from '../errors.js';

/**
 * True for Postgres' "too many notifications in the NOTIFY queue" (SQLSTATE 54000; the
 * message is checked too because 54000 also covers other program limits) and for our
 * own {@link NotifyQueueFullError}.
 */
export function isNotifyQueueFull(err: unknown): boolean {
  if (err instanceof NotifyQueueFullError) return true;
  const e = err as { code?: unknown; message?: unknown } | null;
  return e?.code === '54000' && /NOTIFY/i.test(String(e?.message ?? ''));
}

/**
 * A `pg_notify(channel, payload)` that does nothing when `channel` (an SQL expression,
 * usually a `$n` parameter) is NULL: the parts pass NULL while wake-ups are paused, so
 * the statement text, and its prepared plan, stay the same.
 */
export function wakeSql(channel: string, payload: string): string {
  return `CASE WHEN ${channel}::text IS NOT NULL THEN pg_notify(${channel}::text, ${payload}) END`;
}

/** A backend that may hold the notification queue's tail (see {@link queueTailHolders}). */
export interface QueueTailHolder {
  pid: number;
  applicationName: string;
  user: string | null;
  database: string | null;
  clientAddr: string | null;
  /** `pg_stat_activity.state`, e.g. `idle in transaction`. */
  state: string | null;
  /** Start of its open transaction (null: none, see `reason`). */
  xactStart: Date | null;
  /** Last state change. */
  stateChange: Date | null;
  /** `backend_xmin` as text, or null. */
  backendXmin: string | null;
  waitEvent: string | null;
  /** Its current or last statement (first 200 characters). */
  query: string | null;
  /**
   * Why it is a candidate: `idle in transaction` (it reads no notification until the
   * transaction ends), `in transaction` (a long-running statement), or `not reading`
   * (idle, but blocked writing to a client that does not read its socket).
   */
  reason: 'idle in transaction' | 'in transaction' | 'not reading';
}

/**
 * The backends that may hold the notification queue's tail, best candidate first.
 *
 * Postgres shows no view of which backends LISTEN, so this names what can hold the
 * tail: a listening backend reads its notifications only between transactions, so a
 * listener in a transaction — above all one idle in it — holds the tail since its
 * transaction began; an idle one blocked on `ClientWrite` holds it too. Candidates are
 * ordered idle-in-transaction first, then oldest transaction (or state change) first.
 * A backend still starting (its state `starting`, or none yet) shows a transaction
 * but runs no statement of a client, so it is left out. The listen sessions of
 * pgherald (`application_name` `pgherald:listen`) are never in a transaction. Seeing
 * other users' statements needs `pg_read_all_stats`.
 */
export async function queueTailHolders(executor: Executor, limit = 5): Promise<QueueTailHolder[]> {
  const { rows } = await executor.query<{
    pid: number;
    application_name: string;
    usename: string | null;
    datname: string | null;
    client_addr: string | null;
    state: string | null;
    xact_start: Date | null;
    state_change: Date | null;
    backend_xmin: string | null;
    wait_event: string | null;
    query: string | null;
  }>(
    `SELECT pid, application_name, usename::text AS usename, datname::text AS datname, client_addr::text AS client_addr,
            state, xact_start, state_change, backend_xmin::text AS backend_xmin, wait_event, left(query, 200) AS query
       FROM pg_stat_activity
      WHERE pid <> pg_backend_pid() AND backend_type = 'client backend'
        AND state IS NOT NULL AND state <> 'starting'
        AND (xact_start IS NOT NULL OR wait_event = 'ClientWrite')
      ORDER BY (state LIKE 'idle in transaction%') DESC, coalesce(xact_start, state_change) ASC NULLS LAST, pid
      LIMIT $1`,
    [limit],
  );
  return rows.map((r) => ({
    pid: Number(r.pid),
    applicationName: r.application_name,
    user: r.usename,
    database: r.datname,
    clientAddr: r.client_addr,
    state: r.state,
    xactStart: r.xact_start,
    stateChange: r.state_change,
    backendXmin: r.backend_xmin,
    waitEvent: r.wait_event,
    query: r.query,
    reason: r.state?.startsWith('idle in transaction') ? 'idle in transaction' : r.xact_start ? 'in transaction' : 'not reading',
  }));
}

/** Argument of the notifier's `queueFull` event. */
export interface QueueFullInfo {
  /** `usage`: a sample reached `queueUsageHighWater`; `error`: a statement failed with 54000. */
  reason: 'usage' | 'error';
  /** `pg_notification_queue_usage()` when the episode began (null when it could not be sampled). */
  usage: number | null;
  /** The backends that may hold the queue's tail, best candidate first (see {@link queueTailHolders}). */
  holders: QueueTailHolder[];
  /** The server's error, for reason `error`. */
  error?: Error;
}

/** Argument of the notifier's `queueResumed` event. */
export interface QueueResumedInfo {
  /** The sample at or below `queueUsageLowWater` that ended the episode. */
  usage: number;
  /** How long wake-ups were paused. */
  pausedMs: number;
}

/** What {@link NotifyPressure} needs from its notifier. */
export interface PressureHost {
  /** Samples `pg_notification_queue_usage()` (and feeds the sample back through `observe`). */
  sample(): Promise<number>;
  /** The executor for the tail-holder lookup. */
  executor: Executor;
  highWater: number;
  lowWater: number;
  /** Sampling interval of a process that writes while its notifier does not sample (ms; 0: none). */
  intervalMs: number;
  /** Sampling interval while paused (ms). */
  pausedIntervalMs: number;
  /** Whether the notifier is started (it then samples every `intervalMs` itself). */
  started(): boolean;
  full(info: QueueFullInfo): void;
  resumed(info: QueueResumedInfo): void;
}

/**
 * The "wake-ups on" state of one process. Reach it as `herald.notifier.pressure`;
 * the parts read {@link wakeups} before each write and run the writes they commit
 * themselves through {@link run}.
 */
export class NotifyPressure {
  readonly #host: PressureHost;
  #paused = false;
  #since = 0;
  #episodes = 0;
  #timer: NodeJS.Timeout | undefined;
  /** A write asked for the state: sample even if the notifier does not (a process that only writes). */
  #watching = false;
  /** The current episode's announcement (queueFull), so that queueResumed never precedes it. */
  #announced: Promise<void> = Promise.resolve();
  #holders: QueueTailHolder[] = [];

  constructor(host: PressureHost) {
    this.#host = host;
  }

  /**
   * False while wake-ups are paused: writes then carry no `pg_notify`. The first read
   * starts sampling the usage every `queueUsageIntervalMs` in a process whose notifier
   * is not started (one that only writes), so it pauses at the high-water mark too.
   */
  get wakeups(): boolean {
    if (!this.#watching) {
      this.#watching = true;
      this.#schedule();
    }
    return !this.#paused;
  }

  /** True while wake-ups are paused (read without side effects, for observers). */
  get paused(): boolean {
    return this.#paused;
  }

  /** When the current pause began, or null. */
  get pausedSince(): Date | null {
    return this.#paused ? new Date(this.#since) : null;
  }

  /** Pauses so far in this process. */
  get episodes(): number {
    return this.#episodes;
  }

  /** The tail holders named when the current (or last) pause began. */
  get holders(): readonly QueueTailHolder[] {
    return this.#holders;
  }

  /** Feeds a usage sample: pauses at the high-water mark, resumes at the low-water mark. */
  observe(usage: number): void {
    if (!this.#paused && usage >= this.#host.highWater) this.#pause('usage', usage);
    else if (this.#paused && usage <= this.#host.lowWater) this.#resume(usage);
  }

  /** Pauses wake-ups when `err` is a full notification queue; returns whether it was. */
  noteError(err: unknown): boolean {
    if (!isNotifyQueueFull(err)) return false;
    if (!this.#paused) this.#pause('error', null, err instanceof Error ? err : new Error(String(err)));
    return true;
  }

  /**
   * Runs a write that pgherald commits itself (no caller's transaction), with a wake-up
   * while wake-ups are on. If its commit fails because the notification queue is full,
   * wake-ups pause and the write runs once more without one (nothing of the failed
   * attempt committed). `attempt(wake)` must attach its wake-up only when `wake` is true.
   */
  async run<T>(attempt: (wake: boolean) => Promise<T>): Promise<T> {
    const wake = this.wakeups;
    try {
      return await attempt(wake);
    } catch (err) {
      if (!this.noteError(err) || !wake) throw err;
      return attempt(false);
    }
  }

  /** An executor that pauses wake-ups when one of its statements meets a full queue (the error still reaches the caller). */
  watch(executor: Executor): Executor {
    return {
      query: async <R>(text: string, values?: readonly unknown[], options?: QueryOptions): Promise<QueryResult<R>> => {
        try {
          return await executor.query<R>(text, values, options);
        } catch (err) {
          this.noteError(err);
          throw err;
        }
      },
    };
  }

  /** Forgets the state and stops sampling (the notifier stopped). */
  stop(): void {
    clearTimeout(this.#timer);
    this.#timer = undefined;
    this.#paused = false;
    this.#watching = false;
  }

  #pause(reason: 'usage' | 'error', usage: number | null, error?: Error): void {
    this.#paused = true;
    this.#since = Date.now();
    this.#episodes++;
    this.#announced = (async () => {
      let u = usage;
      if (u === null) u = await this.#host.sample().catch(() => null);
      const holders = await queueTailHolders(this.#host.executor).catch(() => []);
      this.#holders = holders;
      this.#host.full({ reason, usage: u, holders, ...(error ? { error } : {}) });
    })();
    clearTimeout(this.#timer);
    this.#timer = undefined;
    this.#schedule();
  }

  #resume(usage: number): void {
    this.#paused = false;
    const pausedMs = Date.now() - this.#since;
    void this.#announced.then(() => this.#host.resumed({ usage, pausedMs }));
  }

  /**
   * Samples on a timer while paused (until the queue has drained, whether or not the
   * notifier samples too), and in a process that writes while its notifier does not
   * sample. A failed sample while not paused stops that (the next write starts it again),
   * so a closed pool leaves no timer behind.
   */
  #schedule(): void {
    if (this.#timer) return;
    const idle = this.#watching && this.#host.intervalMs > 0 && !this.#host.started();
    if (!this.#paused && !idle) return;
    this.#timer = setTimeout(() => {
      this.#timer = undefined;
      void this.#host.sample().then(
        () => this.#schedule(),
        () => {
          if (!this.#paused) this.#watching = false;
          this.#schedule();
        },
      );
    }, this.#paused ? this.#host.pausedIntervalMs : this.#host.intervalMs);
    this.#timer.unref();
  }
}
