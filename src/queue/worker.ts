import type { Executor } from '../driver/types.js';
import { HeraldError } from '../errors.js';
import { backoffDelay, sleep } from '../internal/backoff.js';
import { withSpan } from '../internal/tracing.js';
import { jobClaimBatch, jobCompleteMany, jobFailMany, jobHeartbeatMany, type ClaimRow, type QueueChannels } from './queries.js';
import { outcomeKind, outcomeOf, type Job, type JobHandler, type ResolvedQueueOptions } from './types.js';

/** What a worker needs from its queue. */
export interface WorkerHost {
  readonly executor: Executor;
  readonly schemaSql: string;
  readonly channels: QueueChannels;
  readonly options: ResolvedQueueOptions;
  emitEvent(event: string, ...args: unknown[]): void;
}

interface Held {
  row: ClaimRow;
  controller: AbortController;
  lost: boolean;
}

interface Finished {
  id: string;
  kind: string;
  stage: string | null;
  fence: number;
  ok: boolean;
  result: string | null;
  error: string | null;
  errorValue?: unknown;
  discard: boolean;
  snoozeMs: number | null;
}

/** Bigint ids as decimal text, compared as numbers. */
function compareIds(a: string, b: string): number {
  return a.length - b.length || (a < b ? -1 : a > b ? 1 : 0);
}

/** Sorts a claimed batch by (priority, id) in place; RETURNING gives no order. */
function inClaimOrder(rows: ClaimRow[]): void {
  for (let i = 1; i < rows.length; i++) {
    const a = rows[i - 1];
    const b = rows[i];
    if (a.priority > b.priority || (a.priority === b.priority && compareIds(a.id, b.id) > 0)) {
      rows.sort((x, y) => x.priority - y.priority || compareIds(x.id, y.id));
      return;
    }
  }
}

/**
 * One `work(kind, handler)` registration: a loop that claims batches of due jobs
 * (up to free slots + prefetch), runs them, and records outcomes in batches.
 *
 * Wake-ups: the queue's one subscription calls {@link wake}; with nothing to claim,
 * the loop waits for a wake-up, a freed slot, or the safety poll.
 */
export class Worker {
  readonly #held = new Map<string, Held>();
  readonly #pending: ClaimRow[] = [];
  #running = 0;
  #finished: Finished[] = [];
  #flushing: Promise<void> | null = null;
  #dirty = true;
  #waiter: (() => void) | null = null;
  #stopping = false;
  #loop: Promise<void> | null = null;
  #heartbeat: NodeJS.Timeout | null = null;
  #idle: (() => void)[] = [];
  readonly #abort = new AbortController();

  constructor(
    readonly host: WorkerHost,
    readonly queue: string,
    readonly kind: string,
    readonly stage: string | null,
    readonly handler: JobHandler<any>,
    readonly concurrency: number,
    readonly prefetch: number,
  ) {}

  /** Jobs running or held (claimed ahead) now. */
  get held(): number {
    return this.#held.size;
  }

  /** Starts the claim loop and the heartbeat. */
  start(): void {
    if (this.#loop) return;
    this.#loop = this.#run();
    this.#heartbeat = setInterval(() => void this.#beat(), this.host.options.heartbeatIntervalMs);
    this.#heartbeat.unref();
  }

  /** Something may be due: claim now. */
  wake(): void {
    this.#dirty = true;
    this.#signal();
  }

  #signal(): void {
    const w = this.#waiter;
    this.#waiter = null;
    w?.();
  }

  async #run(): Promise<void> {
    let failures = 0;
    while (!this.#stopping) {
      const want = this.concurrency + this.prefetch - this.#running - this.#pending.length;
      if (want > 0 && this.#dirty && this.#finished.length < this.host.options.completionBatchSize) {
        this.#dirty = false;
        let rows: ClaimRow[];
        try {
          rows = await withSpan('herald.queue.claim', { 'herald.queue': this.queue, 'herald.kind': this.kind }, () =>
            jobClaimBatch(this.host.executor, this.host.schemaSql, this.host.channels, {
              queue: this.queue,
              kind: this.kind,
              stage: this.stage,
              limit: want,
              leaseMs: this.host.options.leaseMs,
            }),
          );
          failures = 0;
        } catch (err) {
          this.#problem(err);
          this.#dirty = true;
          await sleep(backoffDelay(failures++, 50, 2000), this.#abort.signal);
          continue;
        }
        if (this.#stopping) {
          // Claimed as stop began: hand them straight back.
          for (const row of rows) this.#pending.push(row), this.#hold(row);
          break;
        }
        inClaimOrder(rows);
        for (const row of rows) {
          this.#hold(row);
          this.#pending.push(row);
        }
        this.#startRunnable();
        // A full batch means there may be more: claim again as soon as a slot frees.
        if (rows.length === want) this.#dirty = true;
        continue;
      }
      // Nothing to do until a wake-up, a free slot (handled in #settle), or the poll.
      await new Promise<void>((resolve) => {
        this.#waiter = resolve;
        const t = setTimeout(() => {
          this.#dirty = true;
          this.#signal();
        }, this.host.options.pollIntervalMs);
        t.unref();
        const original = resolve;
        this.#waiter = () => {
          clearTimeout(t);
          original();
        };
      });
    }
  }

  #hold(row: ClaimRow): void {
    this.#held.set(row.id, { row, controller: new AbortController(), lost: false });
  }

  #startRunnable(): void {
    while (this.#running < this.concurrency && this.#pending.length > 0 && !this.#stopping) {
      const row = this.#pending.shift()!;
      const held = this.#held.get(row.id);
      if (!held || held.lost) continue;
      this.#running++;
      void this.#execute(held);
    }
  }

  async #execute(held: Held): Promise<void> {
    const row = held.row;
    const job: Job = {
      id: row.id,
      queue: this.queue,
      kind: this.kind,
      payload: row.payload,
      attempt: row.attempt - row.attempt_base,
      maxAttempts: row.max_attempts,
      stage: this.stage,
      stages: row.stages,
      priority: row.priority,
      createdAt: new Date(row.created_ms),
      signal: held.controller.signal,
      fence: row.attempt,
    };
    const f: Finished = { id: row.id, kind: this.kind, stage: this.stage, fence: row.attempt, ok: true, result: null, error: null, discard: false, snoozeMs: null };
    try {
      const value = await this.handler(job);
      const outcome = outcomeOf(value);
      if (outcome) {
        f.ok = false;
        if (outcomeKind(outcome) === 'snooze') f.snoozeMs = outcome.delayMs ?? 0;
        else {
          f.discard = true;
          f.error = outcome.reason ?? 'discarded';
        }
      } else if (value !== undefined) {
        try {
          f.result = JSON.stringify(value) ?? null;
        } catch {
          f.result = null;
        }
      }
    } catch (err) {
      f.ok = false;
      f.errorValue = err;
      f.error = err instanceof Error ? `${err.name}: ${err.message}` : String(err);
    }
    this.#running--;
    this.#finished.push(f);
    this.#flush();
    this.#dirty = true;
    this.#startRunnable();
    this.#signal();
  }

  /** Records buffered outcomes in batches; one flush at a time, the next takes what piled up meanwhile. */
  #flush(): void {
    if (this.#flushing || this.#finished.length === 0) return;
    this.#flushing = (async () => {
      let failures = 0;
      while (this.#finished.length > 0) {
        const batch = this.#finished.splice(0, this.host.options.completionBatchSize);
        try {
          await this.#record(batch);
          failures = 0;
        } catch (err) {
          // The connection may have died mid-statement: try again. A retry of a batch
          // that did commit matches no row (fenced) and is reported as lease lost.
          this.#finished.unshift(...batch);
          this.#problem(err);
          if (this.#finished.length > 0 && failures > 50 && this.#stopping) break;
          await sleep(backoffDelay(failures++, 50, 2000));
        }
      }
    })().finally(() => {
      this.#flushing = null;
      if (this.#finished.length > 0 && !(this.#stopping && this.#held.size === 0)) this.#flush();
      this.#checkIdle();
      this.#signal();
    });
  }

  async #record(batch: Finished[]): Promise<void> {
    const ok = batch.filter((f) => f.ok);
    const failed = batch.filter((f) => !f.ok);
    const { executor, schemaSql, channels, options } = this.host;
    if (ok.length > 0) {
      const done = new Set(
        await jobCompleteMany(
          executor,
          schemaSql,
          channels,
          ok.map((f) => f.id),
          ok.map((f) => f.fence),
          ok.map((f) => f.result),
        ),
      );
      for (const f of ok) {
        this.#held.delete(f.id);
        if (done.has(f.id)) this.host.emitEvent('job:completed', { id: f.id, kind: f.kind, stage: f.stage });
        else this.host.emitEvent('job:lease:lost', { id: f.id, kind: f.kind, fence: f.fence, during: 'complete' });
      }
    }
    if (failed.length > 0) {
      const rows = await jobFailMany(
        executor,
        schemaSql,
        channels,
        {
          ids: failed.map((f) => f.id),
          attempts: failed.map((f) => f.fence),
          errors: failed.map((f) => f.error),
          discard: failed.map((f) => f.discard),
          snoozeMs: failed.map((f) => f.snoozeMs),
        },
        { baseMs: options.retryBaseDelayMs, maxMs: options.retryMaxDelayMs, jitter: options.retryJitter },
      );
      const states = new Map(rows.map((r) => [r.id, r.state]));
      for (const f of failed) {
        this.#held.delete(f.id);
        const state = states.get(f.id);
        if (!state) this.host.emitEvent('job:lease:lost', { id: f.id, kind: f.kind, fence: f.fence, during: 'fail' });
        else if (f.snoozeMs === null) this.host.emitEvent('job:failed', { id: f.id, kind: f.kind, error: f.errorValue ?? f.error, state });
      }
    }
  }

  /** Renews the leases of the jobs held and not yet finished; a job missing from the answer was lost. */
  async #beat(): Promise<void> {
    const finishing = new Set(this.#finished.map((f) => f.id));
    const held = [...this.#held.values()].filter((h) => !h.lost && !finishing.has(h.row.id));
    if (held.length === 0) return;
    let kept: Set<string>;
    try {
      kept = new Set(
        await jobHeartbeatMany(
          this.host.executor,
          this.host.schemaSql,
          held.map((h) => h.row.id),
          held.map((h) => h.row.attempt),
          this.host.options.leaseMs,
        ),
      );
    } catch (err) {
      this.#problem(err);
      return;
    }
    const finishingNow = new Set(this.#finished.map((f) => f.id));
    for (const h of held) {
      if (kept.has(h.row.id) || finishingNow.has(h.row.id) || this.#held.get(h.row.id) !== h) continue;
      // Lost: rescued after a lease expiry, cancelled, or claimed by another worker.
      h.lost = true;
      h.controller.abort(new HeraldError('LEASE_LOST', `job ${h.row.id} attempt ${h.row.attempt}: lease lost`));
      this.host.emitEvent('job:lease:lost', { id: h.row.id, kind: this.kind, fence: h.row.attempt, during: 'heartbeat' });
      const i = this.#pending.indexOf(h.row);
      if (i >= 0) {
        this.#pending.splice(i, 1);
        this.#held.delete(h.row.id);
      }
    }
  }

  #checkIdle(): void {
    if (this.#running === 0 && this.#finished.length === 0 && !this.#flushing) {
      for (const fn of this.#idle.splice(0)) fn();
    }
  }

  #problem(err: unknown): void {
    this.host.emitEvent('problem', err instanceof Error ? err : new Error(String(err)));
  }

  /**
   * Stops claiming, hands prefetched jobs back, waits for running handlers (up to
   * `timeoutMs`, then aborts their signals and hands them back too), records every
   * outcome, and clears the heartbeat. Idempotent.
   */
  async stop(timeoutMs = 30_000): Promise<void> {
    if (!this.#loop) return;
    if (!this.#stopping) {
      this.#stopping = true;
      this.#abort.abort();
      this.#signal();
    }
    await this.#loop;
    // Prefetched, never started: back to available without counting the attempt.
    for (const row of this.#pending.splice(0)) {
      this.#finished.push({ id: row.id, kind: this.kind, stage: this.stage, fence: row.attempt, ok: false, result: null, error: null, discard: false, snoozeMs: 0 });
    }
    this.#flush();
    const idle = new Promise<void>((resolve) => {
      this.#idle.push(resolve);
      this.#checkIdle();
    });
    let timer: NodeJS.Timeout | undefined;
    const timedOut = await Promise.race([
      idle.then(() => false),
      new Promise<boolean>((resolve) => (timer = setTimeout(() => resolve(true), timeoutMs))),
    ]);
    clearTimeout(timer);
    if (timedOut) {
      for (const h of this.#held.values()) {
        if (h.lost) continue;
        h.controller.abort(new HeraldError('STOPPED', 'worker stopped before the job finished'));
        this.#finished.push({ id: h.row.id, kind: this.kind, stage: this.stage, fence: h.row.attempt, ok: false, result: null, error: null, discard: false, snoozeMs: 0 });
      }
      this.#flush();
      await this.#flushing;
    }
    if (this.#heartbeat) clearInterval(this.#heartbeat);
    this.#heartbeat = null;
  }
}
