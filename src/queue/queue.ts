import type { Driver, Executor, TxLike } from '../driver/types.js';
import { toExecutor } from '../driver/index.js';
import { HeraldError, InvalidArgumentError, InvalidOptionError, InvalidPayloadError } from '../errors.js';
import { TypedEmitter } from '../internal/events.js';
import { STATS_SAMPLE_PAGES } from '../internal/options.js';
import { schemaIdent } from '../internal/ident.js';
import { withSpan } from '../internal/tracing.js';
import { assertBigintId, assertDate, assertDuration, assertInt, assertText, jsonHasLoneSurrogate, jsonHasNul } from '../internal/validate.js';
import type { Notifier } from '../notifier/notifier.js';
import type { Subscription } from '../notifier/subscription.js';
import { Leadership, holderName } from '../maintenance/leadership.js';
import { CronSchedule } from './cron.js';
import * as q from './queries.js';
import {
  resolveQueueOptions,
  type EnqueueItem,
  type EnqueueOptions,
  type EnqueueResult,
  type JobHandler,
  type JobInfo,
  type JobState,
  type JobTransition,
  type QueueActivity,
  type QueueEvents,
  type QueueOptions,
  type QueueLimit,
  type QueueLimitOptions,
  type QueuePause,
  type QueueTarget,
  type BatchInfo,
  type DependencyResult,
  type WorkflowFailurePolicy,
  type WorkflowInfo,
  type WorkflowJob,
  type WorkflowTransition,
  type ResolvedQueueOptions,
  type WorkOptions,
} from './types.js';
import { Worker } from './worker.js';

/** Longest job kind, queue, stage or cron name (UTF-8 bytes). */
export const NAME_MAX_BYTES = 100;
/** Longest unique key (UTF-8 bytes): it is a btree index key. */
export const UNIQUE_KEY_MAX_BYTES = 1000;
/** Largest `maxAttempts` of a job. */
export const MAX_ATTEMPTS_LIMIT = 10_000;
/** Longest handler timeout (`timeoutMs` of a job or worker): 2^31 - 1 ms (about 24.8 days, the longest timer Node keeps). */
export const TIMEOUT_MAX_MS = 2_147_483_647;
/** Largest `concurrency` and `rate.count` of a limit. */
export const LIMIT_MAX = 1_000_000;
/** Most jobs in one workflow. */
export const WORKFLOW_MAX_JOBS = 10_000;
/** Largest `limit` of a listing (`list`, `stuck`). */
export const LIST_LIMIT_MAX = 10_000;
/**
 * Pages of `retentionBatchSize` workflows a `prune()` examines for deletion, from where
 * the previous call stopped (docs/queue.md, "Retention").
 */
export const WORKFLOW_PAGES_PER_PRUNE = 10;

/**
 * A rescue sweep reads only leases that ended at most this long before the last complete
 * sweep of this process began (database time): the lease index keeps an entry for every
 * job claimed since the last vacuum, with the lease it had, and while any transaction in
 * the cluster is open none can be removed, so a sweep from the start would read them all.
 * A lease written by a statement that took longer than the lease plus this margin could
 * end before that point unseen: the full sweep below finds it.
 */
export const RESCUE_MARGIN_MS = 10_000;

/**
 * A sweep from the start at least this often (and the first of a process). It also
 * bounds what a failover to a server whose clock is behind the old one's by more than a
 * lease plus the margin could hide below the floor (leases are written in database time).
 */
export const RESCUE_FULL_SWEEP_MS = 300_000;
const STATES: JobState[] = ['waiting', 'available', 'running', 'completed', 'dead', 'cancelled'];

function assertName(argument: string, v: unknown): string {
  return assertText(argument, v, NAME_MAX_BYTES);
}

interface CronEntry {
  name: string;
  schedule: CronSchedule;
  kind: string;
  payload: unknown;
  options: Omit<EnqueueOptions, 'tx'>;
}

/** A cron registration as `schedule` returns it. */
export interface CronHandle {
  readonly name: string;
  /** Unregisters the schedule in this process. */
  remove(): void;
}

/**
 * The job queue (`herald.queue`): enqueue in the caller's transaction, workers that
 * claim batches under a lease, retries, pipelines, rescue, retention, cron and live
 * transitions. The database is the only authority on a job's state; NOTIFY only
 * wakes workers and watchers. See `src/queue/README.md` for the state model.
 */
/** The channels of a statement while wake-ups are paused: it notifies nothing. */
const NO_CHANNELS: q.QueueChannels = { wake: null, events: null, slots: null };

export class Queue extends TypedEmitter<QueueEvents> {
  readonly options: ResolvedQueueOptions;
  readonly schemaSql: string;
  /**
   * The channel names: wake-ups (payload: the queue name), transitions of announced jobs,
   * and slot wake-ups (payload: the queue name; a completion freed a limit slot).
   */
  readonly channelNames: { readonly wake: string; readonly events: string; readonly slots: string };
  readonly #workers = new Set<Worker>();
  readonly #crons = new Map<string, CronEntry>();
  readonly #cron: Leadership;
  readonly #active: () => void;
  #sub: Subscription | null = null;
  /** Where the next prune() looks for emptied workflows (an id; '0': from the first). */
  #workflowCursor = '0';
  /** Where the next rescue sweep starts (epoch µs, database time; null: from the start), and when the last full one began. */
  #rescueFromUs: string | null = null;
  #rescueFullAt = -Infinity;
  #slotSub: Subscription | null = null;
  #cronTimer: NodeJS.Timeout | undefined;
  #started = false;
  #stopped = false;

  /** @param active called on every enqueue, `work` and `schedule`: starts the maintenance service (`createHerald` passes it). */
  constructor(readonly driver: Driver, readonly notifier: Notifier, readonly schema: string, options: QueueOptions = {}, active: () => void = () => {}) {
    super();
    this.options = resolveQueueOptions(options);
    this.schemaSql = schemaIdent(schema);
    this.channelNames = { wake: `${schema}.jobs.wake`, events: `${schema}.jobs.events`, slots: `${schema}.jobs.slots` };
    this.#executor = notifier.pressure.watch(driver.executor);
    this.#active = active;
    // Cron leadership: the one election mechanism (src/maintenance/leadership.ts), role `cron`.
    this.#cron = new Leadership(this.#executor, this.schemaSql, 'cron', holderName(), this.options.leaderTtlMs, (leader) => this.emit('job:cronLeader', { leader }));
  }

  readonly #executor: Executor;

  /**
   * The channels the next statement notifies: the names, or nulls while wake-ups are
   * paused (a nearly full notification queue, see `notifier.pressure`).
   */
  get channels(): q.QueueChannels {
    return this.notifier.wakeups ? this.channelNames : NO_CHANNELS;
  }

  /** The pool executor (a statement that meets a full notification queue pauses wake-ups). */
  get executor(): Executor {
    return this.#executor;
  }

  /**
   * Runs a write with the channels to notify: in the caller's transaction as things
   * stand; on the pool through `pressure.run`, which runs it again without wake-ups if
   * its commit met a full notification queue (nothing of it committed).
   */
  #write<T>(tx: TxLike | undefined, fn: (x: Executor, ch: q.QueueChannels) => Promise<T>): Promise<T> {
    if (tx) return fn(toExecutor(tx), this.channels);
    return this.notifier.pressure.run((wake) => fn(this.driver.executor, wake ? this.channelNames : NO_CHANNELS));
  }

  /**
   * Runs `fn` in a transaction whose statements read by plain index scans, not bitmap
   * or sequential scans: for the statements that walk the lease index
   * (`lease_expires_at IS NOT NULL`, which they only ever read a part of). Every finished
   * job leaves a dead entry there (its lease, in the past) until vacuum; a plain scan
   * marks each one dead the first time it passes it (kill bits) and skips it from then
   * on, where a bitmap scan visits the heap of every one of them at every run (a rescue
   * sweep took 0.1-0.6 s and evicted dirty pages at 5,000 jobs/s), and a sequential scan
   * (the planner's choice once bitmap scans are off) reads the whole table. Pinned
   * whatever the statistics of the moment or the database's planner settings.
   */
  #plainIndexScans<T>(fn: (tx: Executor) => Promise<T>): Promise<T> {
    return this.driver.transaction(async (tx) => {
      // One statement (either driver, either protocol); local to the transaction.
      await tx.query(`SELECT set_config('enable_indexscan', 'on', true), set_config('enable_bitmapscan', 'off', true), set_config('enable_seqscan', 'off', true)`);
      return fn(tx);
    });
  }

  /** Whether this process currently leads cron scheduling. */
  get isLeader(): boolean {
    return this.#cron.isLeader;
  }

  /** @internal used by workers */
  emitEvent<K extends keyof QueueEvents & string>(event: K, ...args: QueueEvents[K]): void {
    (this.emit as (e: string, ...a: unknown[]) => void).call(this, event, ...args);
  }

  /**
   * Enqueues one job; with `{ tx }` inside the caller's transaction (the job exists,
   * and workers are woken, only if it commits).
   *
   * @example
   * await herald.queue.enqueue('email', { to: 'a@b.c' }, { delayMs: 60_000, maxAttempts: 5 });
   */
  async enqueue(kind: string, payload?: unknown, options: EnqueueOptions = {}): Promise<EnqueueResult> {
    const { tx, ...rest } = options;
    const [r] = await this.enqueueMany([{ ...rest, kind, payload }], { tx });
    return r;
  }

  /** Enqueues a batch in one statement; results in the order of `items`. */
  async enqueueMany(items: readonly EnqueueItem[], options: { tx?: TxLike } = {}): Promise<EnqueueResult[]> {
    if (!Array.isArray(items)) throw new InvalidArgumentError('items', items, 'an array of jobs');
    if (items.length === 0) return [];
    return this.#insert(this.#batchOf(items), options.tx);
  }

  /**
   * Enqueues `items` as one batch, in one transaction (the caller's with `tx`): when every
   * member has completed, or as soon as one is dead or cancelled, the callback job
   * `callback.kind` is enqueued exactly once, in the transaction of the member's transition,
   * with payload `{ batchId, outcome: 'completed' | 'dead', total, completed, dead, cancelled,
   * payload: callback.payload }`. Members may not have a `uniqueKey`.
   *
   * @example
   * const { batchId } = await herald.queue.enqueueBatch(files.map((f) => ({ kind: 'resize', payload: f })), { callback: { kind: 'album-ready', payload: { album: 7 } } });
   */
  async enqueueBatch(
    items: readonly EnqueueItem[],
    options: { callback: { kind: string; payload?: unknown; queue?: string; maxAttempts?: number }; tx?: TxLike },
  ): Promise<{ batchId: string; jobs: EnqueueResult[] }> {
    if (!Array.isArray(items) || items.length === 0) throw new InvalidArgumentError('items', items, 'a non-empty array of jobs');
    const cb = options?.callback;
    if (cb === null || typeof cb !== 'object') throw new InvalidArgumentError('callback', cb, 'an object { kind, payload?, queue?, maxAttempts? }');
    const b = this.#batchOf(items);
    if (b.uniqueKey.some((k) => k !== null)) throw new InvalidArgumentError('uniqueKey', b.uniqueKey.find((k) => k !== null), 'no unique key on a batch member');
    const callback = this.#batchOf([{ kind: cb.kind, payload: cb.payload, queue: cb.queue, maxAttempts: cb.maxAttempts }]);
    const run = async (tx: TxLike) => {
      const x = toExecutor(tx);
      const batchId = await q.batchInsert(x, this.schemaSql, {
        total: items.length,
        queue: callback.queue[0],
        kind: callback.kind[0],
        payload: callback.payload[0],
        maxAttempts: callback.maxAttempts[0],
      });
      // Through jobInsertMany (not the plain path): it carries the batch id.
      b.batchId = batchId;
      const rows = await q.jobInsertMany(x, this.schemaSql, this.channels, b);
      return { batchId, jobs: rows.map((r) => ({ id: r.id, inserted: true })) };
    };
    return options.tx ? run(options.tx) : this.driver.transaction(run);
  }

  /** A batch's counters and, once settled, its outcome and callback job; undefined if there is none. */
  async batch(id: string): Promise<BatchInfo | undefined> {
    const r = await q.batchGet(this.executor, this.schemaSql, assertBigintId('batch id', id));
    if (!r) return undefined;
    return {
      id: r.id,
      total: r.total,
      completed: r.completed,
      dead: r.dead,
      cancelled: r.cancelled,
      outcome: r.outcome,
      callbackJobId: r.callback_job_id,
      createdAt: r.created_at,
      settledAt: r.settled_at,
    };
  }

  /**
   * Enqueues a workflow: jobs with `dependsOn` edges (keys of the same call; no cycles), in
   * one transaction (the caller's with `tx`). A job without dependencies is available at
   * once; the others wait until every dependency has completed, and are released exactly
   * once. A dependency that goes dead or is cancelled cancels its waiting dependents,
   * transitively (`onFailure: 'cancel'`, the default), or leaves them waiting (`'hold'`:
   * a retry of it that completes releases them). Members may not have a `uniqueKey`,
   * `stages` or `announce`. Returns the workflow id and each key's job id.
   *
   * @example
   * const wf = await herald.queue.enqueueWorkflow({ jobs: [{ key: 'a', kind: 'fetch' }, { key: 'b', kind: 'parse', dependsOn: ['a'] }] });
   */
  async enqueueWorkflow(
    workflow: { name?: string; onFailure?: WorkflowFailurePolicy; jobs: readonly WorkflowJob[] },
    options: { tx?: TxLike } = {},
  ): Promise<{ id: string; jobs: Record<string, string> }> {
    if (workflow === null || typeof workflow !== 'object') throw new InvalidArgumentError('workflow', workflow, 'an object { name?, onFailure?, jobs }');
    const jobs = workflow.jobs;
    if (!Array.isArray(jobs) || jobs.length === 0 || jobs.length > WORKFLOW_MAX_JOBS) {
      throw new InvalidArgumentError('jobs', jobs, `a non-empty array of at most ${WORKFLOW_MAX_JOBS} jobs`);
    }
    const name = workflow.name === undefined ? null : assertName('name', workflow.name);
    const onFailure = workflow.onFailure ?? 'cancel';
    if (onFailure !== 'cancel' && onFailure !== 'hold') throw new InvalidArgumentError('onFailure', onFailure, "'cancel' or 'hold'");
    const index = new Map<string, number>();
    jobs.forEach((j, i) => {
      if (j === null || typeof j !== 'object') throw new InvalidArgumentError('job', j, 'an object { key, kind, dependsOn?, ...options }');
      const key = assertName('key', j.key);
      if (index.has(key)) throw new InvalidArgumentError('key', key, 'keys unique within the workflow');
      for (const k of ['uniqueKey', 'stages', 'announce'] as const) {
        if ((j as Record<string, unknown>)[k] !== undefined) throw new InvalidArgumentError(k, (j as Record<string, unknown>)[k], `no ${k} on a workflow job`);
      }
      index.set(key, i);
    });
    const deps = jobs.map((j) => {
      const on = j.dependsOn ?? [];
      if (!Array.isArray(on)) throw new InvalidArgumentError('dependsOn', on, 'an array of keys of the same workflow');
      const out = new Set<number>();
      for (const k of on) {
        const at = typeof k === 'string' ? index.get(k) : undefined;
        if (at === undefined) throw new InvalidArgumentError('dependsOn', k, `a key of the same workflow (job ${JSON.stringify(j.key)})`);
        if (at === index.get(j.key)) throw new InvalidArgumentError('dependsOn', k, 'another job than itself');
        out.add(at);
      }
      return [...out];
    });
    // Kahn's algorithm: whatever is left when no job without pending dependencies remains lies on a cycle.
    const pending = deps.map((d) => d.length);
    const dependents: number[][] = jobs.map(() => []);
    deps.forEach((d, i) => d.forEach((j) => dependents[j].push(i)));
    const ready = pending.flatMap((n, i) => (n === 0 ? [i] : []));
    let seen = 0;
    while (ready.length) {
      const i = ready.pop()!;
      seen++;
      for (const k of dependents[i]) if (--pending[k] === 0) ready.push(k);
    }
    if (seen < jobs.length) {
      const cycle = jobs.filter((_, i) => pending[i] > 0).map((j) => j.key);
      throw new InvalidArgumentError('dependsOn', cycle.slice(0, 10), 'edges without a cycle (these jobs lie on or after one)');
    }
    const b = this.#batchOf(jobs.map(({ key: _k, dependsOn: _d, ...rest }) => rest));
    const keys = jobs.map((j) => j.key);
    const run = (x: Executor, ch: q.QueueChannels) => q.workflowInsert(x, this.schemaSql, ch, { name, onFailure, keys, deps }, b);
    const r = options.tx
      ? await run(toExecutor(options.tx), this.channels)
      : await this.driver.transaction((tx) => run(toExecutor(tx), this.channels));
    return { id: r.id, jobs: Object.fromEntries(keys.map((k, i) => [k, r.jobIds[i]])) };
  }

  /** A workflow: its policy, its members' states and results, counts per state and an overall state; undefined if there is none. */
  async workflow(id: string): Promise<WorkflowInfo | undefined> {
    const r = await q.workflowGet(this.executor, this.schemaSql, assertBigintId('workflow id', id));
    if (!r) return undefined;
    const counts = Object.fromEntries(STATES.map((st) => [st, 0])) as Record<JobState, number>;
    for (const j of r.jobs) counts[j.state as JobState]++;
    const failed = counts.dead + counts.cancelled > 0;
    const active = counts.available + counts.running > 0;
    // Members deleted on completion (keepCompleted: false) are missing: they completed.
    const state: WorkflowInfo['state'] =
      failed ? (active ? 'running' : counts.waiting > 0 ? 'held' : 'failed') : !active && counts.waiting === 0 ? 'completed' : 'running';
    return {
      id: r.w.id,
      name: r.w.name,
      onFailure: r.w.on_failure,
      total: r.w.total,
      counts,
      state,
      jobs: r.jobs.map((j) => ({ key: j.key, id: j.id, kind: j.kind, state: j.state as JobState, dependsOn: j.depends_on, result: j.result })),
      createdAt: r.w.created_at,
    };
  }

  /**
   * The results of a job's completed dependencies (a handler calls it with `job.id`), in
   * id order. Dependencies deleted on completion (`keepCompleted: false`) or by retention are absent.
   */
  async dependencyResults(jobId: string): Promise<DependencyResult[]> {
    return q.jobDependencyResults(this.executor, this.schemaSql, assertId(jobId));
  }

  #batchOf(items: readonly EnqueueItem[]): q.JobInsertBatch {
    this.#active();
    const b: q.JobInsertBatch = { queue: [], kind: [], payload: [], priority: [], runAt: [], delayMs: [], maxAttempts: [], uniqueKey: [], stages: [], announce: [], timeoutMs: [] };
    for (const it of items) {
      if (it === null || typeof it !== 'object') throw new InvalidArgumentError('job', it, 'an object { kind, payload?, ...options }');
      b.kind.push(assertName('kind', it.kind));
      b.queue.push(assertName('queue', it.queue ?? 'default'));
      let payload: string | undefined;
      try {
        payload = JSON.stringify(it.payload === undefined ? {} : it.payload);
      } catch (err) {
        throw new InvalidPayloadError(`payload cannot be serialised as JSON: ${(err as Error).message}`, { cause: err });
      }
      if (payload === undefined) throw new InvalidPayloadError('payload must be JSON-serialisable');
      // Postgres jsonb cannot hold NUL (\u0000); say so before the database does.
      if (jsonHasNul(payload)) throw new InvalidPayloadError('payload must not contain a NUL character (\\u0000)');
      if (jsonHasLoneSurrogate(payload)) throw new InvalidPayloadError('payload must not contain a lone surrogate (half of a UTF-16 pair), which Postgres cannot store');
      b.payload.push(payload);
      const priority = it.priority ?? 0;
      b.priority.push(assertInt('priority', priority, -32768, 32767));
      b.runAt.push(it.runAt === undefined ? null : assertDate('runAt', it.runAt));
      b.delayMs.push(it.delayMs === undefined ? null : assertDuration('delayMs', it.delayMs));
      b.maxAttempts.push(assertInt('maxAttempts', it.maxAttempts ?? this.options.maxAttempts, 1, MAX_ATTEMPTS_LIMIT));
      b.uniqueKey.push(it.uniqueKey === undefined ? null : assertText('uniqueKey', it.uniqueKey, UNIQUE_KEY_MAX_BYTES));
      b.timeoutMs.push(it.timeoutMs === undefined ? null : assertInt('timeoutMs', it.timeoutMs, 1, TIMEOUT_MAX_MS));
      if (it.announce !== undefined && typeof it.announce !== 'boolean') throw new InvalidArgumentError('announce', it.announce, 'a boolean');
      if (it.stages !== undefined) {
        if (!Array.isArray(it.stages) || it.stages.length === 0 || it.stages.length > 100 || new Set(it.stages).size !== it.stages.length) {
          throw new InvalidArgumentError('stages', it.stages, 'a non-empty array of at most 100 distinct stage names');
        }
        it.stages.forEach((st: unknown) => assertName('stages', st));
      }
      b.stages.push(it.stages ? JSON.stringify(it.stages) : null);
      b.announce.push(it.announce ?? it.stages !== undefined);
    }
    return b;
  }

  #insert(b: q.JobInsertBatch, tx: TxLike | undefined): Promise<EnqueueResult[]> {
    const options = { tx };
    const items = b.kind;
    const plain = b.uniqueKey.every((k) => k === null) && b.stages.every((st) => st === null) && b.announce.every((a) => !a);
    return withSpan('herald.queue.enqueue', { 'herald.jobs': items.length }, async () => {
      if (plain) {
        const insert = items.length > 1 && q.isUniform(b) ? q.jobInsertUniform : q.jobInsertPlain;
        return (await this.#write(options.tx, (x, ch) => insert(x, this.schemaSql, ch, b))).map((id) => ({ id, inserted: true }));
      }
      const rows = await this.#write(options.tx, (x, ch) => q.jobInsertMany(x, this.schemaSql, ch, b));
      const x = options.tx ? toExecutor(options.tx) : this.executor;
      const out: (EnqueueResult | null)[] = rows.map((r) => (r.inserted ? { id: r.id, inserted: true } : null));
      // A job skipped for its unique key gets the holder's id. The holder may finish between
      // the insert and the look (a finished job holds no key): then the key is free, and
      // that job is inserted again, until every job has an id.
      for (let round = 1; ; round++) {
        const missing = out.flatMap((r, i) => (r === null ? [i] : []));
        if (missing.length === 0) break;
        const existing = await q.jobFindByUniqueKeys(x, this.schemaSql, missing.map((i) => b.uniqueKey[i]!));
        const again = missing.filter((i) => {
          const id = existing.get(b.uniqueKey[i]!);
          if (id !== undefined) out[i] = { id, inserted: false };
          return id === undefined;
        });
        if (again.length === 0) break;
        if (round >= UNIQUE_KEY_ROUNDS) throw new HeraldError('CONFLICT', `the unique key ${JSON.stringify(b.uniqueKey[again[0]])} changed hands ${UNIQUE_KEY_ROUNDS} times during one enqueue; try again`);
        const retried = await this.#write(options.tx, (x2, ch) => q.jobInsertMany(x2, this.schemaSql, ch, pick(b, again)));
        retried.forEach((r, k) => {
          if (r.inserted) out[again[k]] = { id: r.id, inserted: true };
        });
      }
      return out as EnqueueResult[];
    });
  }

  /**
   * Runs `handler` for jobs of `kind` (at `stage`, for pipelines) in `queue`, up to
   * `concurrency` at once. Returns the worker; `worker.stop()` (or `queue.stop()`)
   * finishes running jobs and hands back the ones claimed ahead.
   */
  work<P = unknown>(kind: string, handler: JobHandler<P>, options: WorkOptions = {}): Worker {
    if (this.#stopped) throw new HeraldError('STOPPED', 'the queue was stopped');
    assertName('kind', kind);
    if (typeof handler !== 'function') throw new InvalidOptionError('handler', handler, 'a function');
    const queue = assertName('queue', options.queue ?? 'default');
    const stage = options.stage === undefined ? null : assertName('stage', options.stage);
    const concurrency = options.concurrency ?? 10;
    if (!Number.isInteger(concurrency) || concurrency < 1 || concurrency > 10_000) throw new InvalidOptionError('concurrency', concurrency, 'an integer from 1 to 10000');
    const prefetch = options.prefetch ?? 'auto';
    if (prefetch !== 'auto' && (!Number.isInteger(prefetch) || prefetch < 0 || prefetch > 100_000)) {
      throw new InvalidOptionError('prefetch', prefetch, "'auto' or an integer from 0 to 100000");
    }
    const timeoutMs = options.timeoutMs === undefined ? null : options.timeoutMs;
    if (timeoutMs !== null && (!Number.isInteger(timeoutMs) || timeoutMs < 1 || timeoutMs > TIMEOUT_MAX_MS)) {
      throw new InvalidOptionError('timeoutMs', timeoutMs, `an integer from 1 to ${TIMEOUT_MAX_MS}`);
    }
    const worker = new Worker(this, queue, kind, stage, handler as JobHandler, concurrency, prefetch, timeoutMs);
    this.#workers.add(worker);
    this.start();
    worker.start();
    return worker;
  }

  /**
   * Enqueues `kind` once per tick of `cron` (5 fields, or 6 with seconds; see
   * {@link CronSchedule}) across all processes: the process holding leadership (elected
   * through the database) enqueues, and each tick is recorded so it is enqueued once
   * even across a change of leader. Missed ticks are not back-filled beyond the latest
   * one within `leaderTtlMs`. `options.tz` (an IANA time zone, default `UTC`) is the zone
   * the expression's wall-clock times are read in, daylight-saving changes included;
   * the other options are the enqueued job's.
   *
   * @example
   * herald.queue.schedule('report', '0 9 * * MON-FRI', 'daily-report', {}, { tz: 'Europe/Berlin' });
   */
  schedule(name: string, cron: string, kind: string, payload?: unknown, options: Omit<EnqueueOptions, 'tx'> & { tz?: string } = {}): CronHandle {
    assertName('name', name);
    assertName('kind', kind);
    const { tz, ...jobOptions } = options;
    const schedule = new CronSchedule(cron, tz ?? 'UTC');
    // The job's payload and options checked now, as an enqueue would (not at every tick).
    this.#batchOf([{ ...jobOptions, kind, payload }]);
    this.#crons.set(name, { name, schedule, kind, payload, options: jobOptions });
    this.start();
    return { name, remove: () => void this.#crons.delete(name) };
  }

  /**
   * Starts the background parts (wake-up subscription, cron) and the maintenance
   * service, which rescues expired leases and deletes old finished jobs
   * (`herald.maintenance`). Idempotent; `work` and `schedule` call it.
   */
  start(): void {
    if (this.#started || this.#stopped) return;
    this.#started = true;
    this.#active();
    this.#sub = this.notifier.listen(this.channelNames.wake, (n) => {
      // '' (no queue has that name): every queue, as a resume of everything sends.
      const { queue, key } = q.wakePayload(n.payload);
      for (const w of this.#workers) if (w.queue === queue || queue === '') w.wake(key);
    }, {
      // LISTEN is live (first time or after a reconnect): catch up by claiming now.
      onListen: () => {
        for (const w of this.#workers) w.wake();
      },
    });
    this.#sub.established.catch((err) => this.emit('job:problem', err));
    // A limit slot freed: claim again, keeping the claim cursor (no new job came). A slot
    // wake-up lost with the listen connection is covered by onListen above and the poll.
    this.#slotSub = this.notifier.listen(this.channelNames.slots, (n) => {
      for (const w of this.#workers) if (w.queue === n.payload) w.slotFreed();
    });
    this.#slotSub.established.catch((err) => this.emit('job:problem', err));
    let running = false;
    this.#cronTimer = setInterval(() => {
      if (running) return;
      running = true;
      this.#cronTick()
        .catch((err) => this.emit('job:problem', err))
        .finally(() => (running = false));
    }, Math.min(1000, Math.floor(this.options.leaderTtlMs / 3)));
    this.#cronTimer.unref();
  }

  /**
   * Runs one rescue sweep now: jobs whose lease expired become available (or dead).
   * Returns how many. The maintenance task `queueRescue` calls it.
   */
  async rescue(): Promise<number> {
    let total = 0;
    let dead = 0;
    // From shortly before the last complete sweep (see RESCUE_MARGIN_MS), or everything.
    const full = this.#rescueFromUs === null || performance.now() - this.#rescueFullAt >= RESCUE_FULL_SWEEP_MS;
    if (full) this.#rescueFullAt = performance.now();
    const from = full ? null : this.#rescueFromUs;
    let began: string | null = null;
    for (;;) {
      const r = await this.notifier.pressure.run((wake) =>
        this.#plainIndexScans((tx) => q.jobRescueExpired(tx, this.schemaSql, wake ? this.channelNames : NO_CHANNELS, 1000, from)),
      );
      began ??= r.nowUs;
      total += r.rows.length;
      dead += r.rows.filter((row) => row.state === 'dead').length;
      if (r.rows.length < 1000) break;
    }
    this.#rescueFromUs = (BigInt(began) - BigInt(RESCUE_MARGIN_MS) * 1000n).toString();
    if (total > 0) this.emit('job:rescued', { rescued: total - dead, dead });
    return total;
  }

  /**
   * Deletes finished jobs older than `olderThanMs` (default `retentionMs`), in batches
   * of `retentionBatchSize`, except members of a workflow a job still waits on (they go
   * once their dependents finish). Without `states` (every finished state), also
   * deletes the batches settled and the emptied workflows older than that. Returns how
   * many jobs. The maintenance tasks `queueRetention` (every state) and
   * `completedJobRetention` (`states: ['completed']`) call it.
   */
  async prune(options: { olderThanMs?: number; states?: ('completed' | 'dead' | 'cancelled')[] } = {}): Promise<number> {
    const olderThan = assertDuration('olderThanMs', options.olderThanMs ?? this.options.retentionMs);
    const states = options.states ?? ['completed', 'dead', 'cancelled'];
    // Finished states only: a running or waiting job is never deleted by retention.
    if (!Array.isArray(states) || states.length === 0 || states.some((st) => st !== 'completed' && st !== 'dead' && st !== 'cancelled')) {
      throw new InvalidArgumentError('states', states, "a non-empty array of 'completed', 'dead' and 'cancelled'");
    }
    const batch = this.options.retentionBatchSize;
    let total = 0;
    for (;;) {
      const n = await q.jobDeleteFinished(this.executor, this.schemaSql, olderThan, states, batch);
      total += n;
      if (n < batch) break;
    }
    if (options.states === undefined) {
      // Workflows a page at a time from where the last call stopped, at most
      // WORKFLOW_PAGES_PER_PRUNE pages a call: long-lived workflows (members still
      // there) are not all probed again at every run.
      for (let page = 0; page < WORKFLOW_PAGES_PER_PRUNE; page++) {
        const r = await q.jobDeleteGroups(this.executor, this.schemaSql, olderThan, batch, this.#workflowCursor);
        this.#workflowCursor = r.scanned < batch || r.last === null ? '0' : r.last;
        if (r.scanned < batch && r.batches < batch) break;
      }
      // Token buckets of rate limits that refilled (or whose limit is gone): rows that
      // would read exactly as missing ones.
      for (;;) {
        if ((await q.jobRateBucketsPrune(this.executor, this.schemaSql, batch)) < batch) break;
      }
    }
    if (total > 0) this.emit('job:retentionSwept', { deleted: total });
    return total;
  }

  async #cronTick(): Promise<void> {
    if (this.#crons.size === 0) {
      await this.#cron.resign();
      return;
    }
    if (!(await this.#cron.renew())) return;
    const now = await q.dbNow(this.executor);
    for (const c of this.#crons.values()) {
      const tick = c.schedule.latestTick(now, new Date(now.getTime() - this.options.leaderTtlMs));
      if (!tick) continue;
      const id = await this.driver.transaction(async (tx) => {
        if (!(await q.cronClaimTick(tx, this.schemaSql, c.name, tick))) return null;
        const [r] = await this.enqueueMany([{ ...c.options, kind: c.kind, payload: c.payload }], { tx });
        return r.id;
      });
      if (id) this.emit('job:cronEnqueued', { name: c.name, tick, id });
    }
  }


  /**
   * Pauses a queue, one kind, one kind of one queue, or everything (`{}`), for every
   * process: running jobs finish; no claim that starts after this returns takes a job of
   * the target (a claim statement already running may still take some). Kept in the
   * database (`queue_controls`): survives restarts. Pausing twice keeps the first time.
   *
   * @example
   * await herald.queue.pause({ queue: 'emails' });
   */
  async pause(target: QueueTarget = {}): Promise<QueuePause> {
    const [queue, kind] = this.#target(target);
    const row = await q.controlPause(this.executor, this.schemaSql, queue, kind);
    return { queue: row.queue || null, kind: row.kind || null, pausedAt: row.paused_at! };
  }

  /**
   * Lifts the pause of exactly `target` (the same `queue`/`kind` as given to `pause`) and
   * wakes the workers it concerns. Returns whether there was such a pause. Other pauses
   * that cover the same jobs (the whole queue, everything) stay.
   */
  async resume(target: QueueTarget = {}): Promise<boolean> {
    const [queue, kind] = this.#target(target);
    return this.#write(undefined, (x, ch) => q.controlResume(x, this.schemaSql, ch, queue, kind));
  }

  /** The pauses in force (null = every queue / kind). */
  async paused(): Promise<QueuePause[]> {
    return (await q.controlList(this.executor, this.schemaSql))
      .filter((r) => r.paused_at !== null)
      .map((r) => ({ queue: r.queue || null, kind: r.kind || null, pausedAt: r.paused_at! }));
  }

  /**
   * Sets the fleet-wide limit of a queue or of one kind in it, replacing the one it had:
   * at most `concurrency` jobs running at once and/or at most `rate.count` starts per
   * `rate.periodMs`, per value of `partitionBy` when given. Enforced when jobs are
   * claimed, in every process; see docs/queue.md for the exact guarantee.
   *
   * @example
   * await herald.queue.setLimit({ queue: 'sync', concurrency: 3, partitionBy: 'customerId' });
   */
  async setLimit(options: QueueLimitOptions): Promise<void> {
    if (options === null || typeof options !== 'object') throw new InvalidArgumentError('limit', options, 'an object { queue?, kind?, concurrency?, partitionBy?, rate? }');
    const queue = assertName('queue', options.queue ?? 'default');
    const kind = options.kind === undefined ? '' : assertName('kind', options.kind);
    const concurrency = options.concurrency === undefined ? null : assertInt('concurrency', options.concurrency, 1, LIMIT_MAX);
    let partitionBy: string[] | null = null;
    if (options.partitionBy !== undefined) {
      const path = typeof options.partitionBy === 'string' ? [options.partitionBy] : options.partitionBy;
      if (!Array.isArray(path) || path.length === 0 || path.length > 10) throw new InvalidArgumentError('partitionBy', options.partitionBy, 'a field name or a path of 1 to 10 names');
      partitionBy = path.map((n) => assertName('partitionBy', n));
    }
    let rate: { count: number; periodMs: number } | null = null;
    if (options.rate !== undefined) {
      if (options.rate === null || typeof options.rate !== 'object') throw new InvalidArgumentError('rate', options.rate, 'an object { count, periodMs }');
      rate = { count: assertInt('rate.count', options.rate.count, 1, LIMIT_MAX), periodMs: assertDuration('rate.periodMs', options.rate.periodMs) };
      if (rate.periodMs <= 0) throw new InvalidArgumentError('rate.periodMs', rate.periodMs, 'a duration > 0');
    }
    if (concurrency === null && rate === null) throw new InvalidArgumentError('limit', options, 'concurrency and/or rate');
    await this.#write(undefined, (x, ch) =>
      q.controlSetLimit(x, this.schemaSql, ch, queue, kind, { concurrency, partitionBy, rateCount: rate?.count ?? null, ratePeriodMs: rate?.periodMs ?? null }),
    );
  }

  /** Removes the limit of a queue (or of one kind in it); returns whether there was one. Wakes its workers. */
  async removeLimit(target: { queue?: string; kind?: string } = {}): Promise<boolean> {
    const queue = assertName('queue', target.queue ?? 'default');
    const kind = target.kind === undefined ? '' : assertName('kind', target.kind);
    return this.#write(undefined, (x, ch) => q.controlSetLimit(x, this.schemaSql, ch, queue, kind, null));
  }

  /** The limits in force. */
  async limits(): Promise<QueueLimit[]> {
    return (await q.controlList(this.executor, this.schemaSql))
      .filter((r) => r.concurrency !== null || r.rate_count !== null)
      .map((r) => ({
        queue: r.queue,
        kind: r.kind || null,
        concurrency: r.concurrency,
        partitionBy: r.partition_by,
        rate: r.rate_count === null ? null : { count: r.rate_count, periodMs: Number(r.rate_period_ms) },
        updatedAt: r.updated_at,
      }));
  }

  #target(target: QueueTarget): [string, string] {
    if (target === null || typeof target !== 'object') throw new InvalidArgumentError('target', target, 'an object { queue?, kind? }');
    return [target.queue === undefined ? '' : assertName('queue', target.queue), target.kind === undefined ? '' : assertName('kind', target.kind)];
  }

  /** One job, or undefined. */
  async get(id: string): Promise<JobInfo | undefined> {
    const row = await q.jobGet(this.executor, this.schemaSql, assertId(id));
    return row && toInfo(row);
  }

  /**
   * Jobs, newest first, filtered by queue, kind, state, stage, unique key and creation
   * time (`createdAfter` inclusive, `createdBefore` exclusive). `limit` defaults to 100;
   * page with `beforeId` (the last id of the previous page).
   */
  async list(
    filter: { queue?: string; kind?: string; state?: JobState; stage?: string; uniqueKey?: string; createdAfter?: Date; createdBefore?: Date; limit?: number; beforeId?: string } = {},
  ): Promise<JobInfo[]> {
    if (filter.state !== undefined && !STATES.includes(filter.state)) throw new InvalidArgumentError('state', filter.state, STATES.join(', '));
    for (const k of ['queue', 'kind', 'stage'] as const) if (filter[k] !== undefined) assertName(k, filter[k]);
    if (filter.uniqueKey !== undefined) assertText('uniqueKey', filter.uniqueKey, UNIQUE_KEY_MAX_BYTES);
    for (const k of ['createdAfter', 'createdBefore'] as const) if (filter[k] !== undefined) assertDate(k, filter[k]);
    const rows = await q.jobList(this.executor, this.schemaSql, {
      queue: filter.queue ?? null,
      kind: filter.kind ?? null,
      state: filter.state ?? null,
      stage: filter.stage ?? null,
      limit: assertInt('limit', filter.limit ?? 100, 1, LIST_LIMIT_MAX),
      beforeId: filter.beforeId !== undefined ? assertId(filter.beforeId) : null,
      uniqueKey: filter.uniqueKey ?? null,
      createdAfter: filter.createdAfter ?? null,
      createdBefore: filter.createdBefore ?? null,
    });
    return rows.map(toInfo);
  }

  /**
   * Per queue: the backlog now (`available`: due and waiting, `scheduled`: waiting for
   * a later `runAt`, `running`) and, in the window after `since` (database time) up to
   * `until`, the jobs that `completed` or went `dead`, how many `started`, and their
   * due-to-start latency (`attemptedAt - runAt`, average and maximum, ms; null when none
   * started). `at` is the database time of the read; `until` is `at` minus `lagMs`
   * (default 0): pass it as the next `since`. Finish and start times are the start times
   * of the transactions that wrote them, so a window that ends now misses the work of
   * transactions still open; with a lag longer than those transactions, consecutive
   * windows count every job once. Reads only the partial indexes of waiting, running and
   * finished jobs (the dashboard samples it every few seconds).
   */
  async activity(since: Date, options: { lagMs?: number } = {}): Promise<{ at: Date; until: Date; queues: QueueActivity[] }> {
    assertDate('since', since);
    const lagMs = assertInt('lagMs', options.lagMs ?? 0, 0, 86_400_000);
    const { at, until, rows } = await this.#plainIndexScans((tx) => q.jobActivity(tx, this.schemaSql, since, lagMs));
    return {
      at,
      until,
      queues: rows.map((r) => ({
        queue: r.queue,
        available: r.available,
        scheduled: r.scheduled,
        running: r.running,
        completed: r.completed,
        dead: r.dead,
        started: r.started,
        latencyAvgMs: r.latency_avg_ms === null ? null : Math.max(0, Number(r.latency_avg_ms)),
        latencyMaxMs: r.latency_max_ms === null ? null : Math.max(0, Number(r.latency_max_ms)),
      })),
    };
  }

  /**
   * Counts per queue, kind and state (`scheduled`: available but not due yet): exact,
   * a scan of the whole table. With `estimate`, no scan of finished history: waiting,
   * scheduled, running, dead and cancelled jobs are counted exactly from their indexes,
   * completed ones estimated from a sample of at most `samplePages` pages of the table
   * (default 500, `STATS_SAMPLE_PAGES`; exact when the table is no larger), and each row says whether it is
   * `estimated`. The dashboard reads the estimate.
   */
  stats(options: { estimate?: boolean; samplePages?: number } = {}): Promise<{ queue: string; kind: string; state: JobState | 'scheduled'; count: number; estimated?: boolean }[]> {
    if (!options.estimate) return q.jobStats(this.executor, this.schemaSql) as never;
    const pages = assertInt('samplePages', options.samplePages ?? STATS_SAMPLE_PAGES, 1, 1_000_000_000);
    return q.jobStatsEstimated(this.executor, this.schemaSql, pages) as never;
  }

  /**
   * Stuck jobs, longest stuck first: due but not claimed for more than `thresholdMs`
   * (since they entered their stage or became due, whichever is later), or running in
   * their stage for more than `thresholdMs` (database time). Jobs scheduled in the future
   * are not stuck. Reads the claim and lease indexes: its cost follows the backlog.
   */
  async stuck(options: { thresholdMs: number; limit?: number }): Promise<(JobInfo & { stuckMs: number })[]> {
    const t = options?.thresholdMs;
    assertDuration('thresholdMs', t);
    const rows = await q.jobListStuck(this.executor, this.schemaSql, t, assertInt('limit', options.limit ?? 100, 1, LIST_LIMIT_MAX));
    return rows.map((r) => ({ ...toInfo(r), stuckMs: Number(r.stuck_ms) }));
  }

  /** Cancels waiting or running jobs; returns the ids that were cancelled. A running job's handler sees its `signal` abort at the next heartbeat. */
  async cancel(ids: string | string[], options: { tx?: TxLike } = {}): Promise<string[]> {
    const list = (Array.isArray(ids) ? ids : [ids]).map(assertId);
    return this.#write(options.tx, (x, ch) => q.jobCancelMany(x, this.schemaSql, ch, list));
  }

  /**
   * Makes dead or cancelled jobs (and completed ones with `includeCompleted`) available
   * again now, with a fresh budget of attempts. Returns the ids retried. Throws
   * CONFLICT when another job holds the same unique key.
   */
  async retry(ids: string | string[], options: { includeCompleted?: boolean; tx?: TxLike } = {}): Promise<string[]> {
    const list = (Array.isArray(ids) ? ids : [ids]).map(assertId);
    const states = options.includeCompleted ? ['dead', 'cancelled', 'completed'] : ['dead', 'cancelled'];
    try {
      return await this.#write(options.tx, (x, ch) => q.jobRetryMany(x, this.schemaSql, ch, list, states));
    } catch (err) {
      if ((err as { code?: string }).code === '23505') throw new HeraldError('CONFLICT', 'another waiting or running job holds the unique key', { cause: err });
      throw err;
    }
  }

  /**
   * Live job transitions (jobs enqueued with `announce`, which pipelines are by
   * default): `handler` gets `{ id, kind, stage, state, attempt }` for each. NOTIFY
   * is a wake-up: transitions made while the listen connection is down are not
   * replayed; `onListen` is the moment to re-read what you show.
   */
  watch(handler: (t: JobTransition) => void, options: { onListen?: () => void } = {}): Subscription {
    return this.notifier.listen(
      this.channelNames.events,
      (n) => {
        let t: JobTransition;
        try {
          t = JSON.parse(n.payload) as JobTransition;
        } catch {
          return;
        }
        handler(t);
      },
      { onListen: options.onListen },
    );
  }

  /**
   * Live transitions of the members of workflow `id`: `handler` gets `{ workflowId, id,
   * state }` for each (a member deleted on completion with `keepCompleted: false` as
   * `completed`), in commit order; read `workflow(id)` for the whole picture. NOTIFY is a
   * wake-up: transitions made while the listen connection is down are not replayed;
   * `onListen` (after the first LISTEN and every reconnection) is the moment to re-read.
   */
  watchWorkflow(id: string, handler: (t: WorkflowTransition) => void, options: { onListen?: () => void } = {}): Subscription {
    const wid = BigInt(assertBigintId('workflow id', id)).toString();
    if (typeof handler !== 'function') throw new InvalidArgumentError('handler', handler, 'a function');
    return this.notifier.listen(
      `${this.schema}.workflows.events`,
      (n) => {
        let t: WorkflowTransition;
        try {
          t = JSON.parse(n.payload) as WorkflowTransition;
        } catch {
          return;
        }
        if (t.workflowId === wid) handler(t);
      },
      { onListen: options.onListen },
    );
  }

  /**
   * Stops every worker (running jobs finish, up to `timeoutMs`; jobs claimed ahead are
   * handed back), cron (leadership is released) and the wake-up subscription.
   * Idempotent. (Rescue and retention belong to `herald.maintenance`.)
   */
  async stop(options: { timeoutMs?: number } = {}): Promise<void> {
    if (this.#stopped) return;
    this.#stopped = true;
    clearInterval(this.#cronTimer);
    this.#cronTimer = undefined;
    await Promise.all([...this.#workers].map((w) => w.stop(options.timeoutMs)));
    this.#workers.clear();
    await this.#cron.resign().catch(() => {});
    await this.#sub?.close();
    this.#sub = null;
    await this.#slotSub?.close();
    this.#slotSub = null;
  }
}

/** A job id: a decimal string from 0 to 2^63 - 1 (`INVALID_ARGUMENT` otherwise). */
/** How many times one enqueue inserts a job again whose unique key's holder finished meanwhile. */
const UNIQUE_KEY_ROUNDS = 10;

/** The jobs at `indexes` of a batch, as a batch of their own. */
function pick(b: q.JobInsertBatch, indexes: readonly number[]): q.JobInsertBatch {
  const out = { ...b } as Record<string, unknown>;
  for (const [k, v] of Object.entries(b)) if (Array.isArray(v)) out[k] = indexes.map((i) => v[i]);
  return out as unknown as q.JobInsertBatch;
}

function assertId(id: string): string {
  return assertBigintId('job id', id);
}

function toInfo(r: q.JobRow): JobInfo {
  return {
    id: r.id,
    queue: r.queue,
    kind: r.kind,
    payload: r.payload,
    state: r.state as JobState,
    priority: r.priority,
    runAt: r.run_at,
    attempt: r.attempt - r.attempt_base,
    maxAttempts: r.max_attempts,
    leaseExpiresAt: r.lease_expires_at,
    uniqueKey: r.unique_key,
    timeoutMs: r.timeout_ms,
    stages: r.stages,
    stage: r.stage,
    lastError: r.last_error,
    errors: r.errors as JobInfo['errors'],
    history: r.history as JobInfo['history'],
    result: r.result,
    createdAt: r.created_at,
    attemptedAt: r.attempted_at,
    stageEnteredAt: r.stage_entered_at,
    finishedAt: r.finished_at,
  };
}
