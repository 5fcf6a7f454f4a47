import type { TxLike } from '../driver/types.js';
import { InvalidOptionError } from '../errors.js';
import { MAX_DURATION_MS } from '../internal/validate.js';
import { boolean, numberBetween, positiveInteger, resolveOptions, type OptionCheck } from '../internal/options.js';

/** A job's state. `available` includes jobs scheduled for later (`runAt` in the future). */
/** `waiting`: a workflow job whose dependencies have not all completed (not claimable). */
export type JobState = 'waiting' | 'available' | 'running' | 'completed' | 'dead' | 'cancelled';

/** Options of `herald.queue` (every one has a default in {@link QUEUE_DEFAULTS}). */
export interface QueueOptions {
  /** Lease a claim takes; a job whose lease runs out is rescued. @defaultValue 30000 */
  leaseMs?: number;
  /** Heartbeat interval renewing the leases of running jobs. @defaultValue leaseMs / 3 */
  heartbeatIntervalMs?: number;
  /** Safety poll when no wake-up arrives (scheduled jobs, lost notifications). @defaultValue 1000 */
  pollIntervalMs?: number;
  /** Interval of the maintenance task `queueRescue` (expired leases; run by the elected maintenance leader). `maintenance.queueRescue.intervalMs` wins. @defaultValue 5000 */
  rescueIntervalMs?: number;
  /** Retry backoff: first delay ceiling. @defaultValue 1000 */
  retryBaseDelayMs?: number;
  /** Retry backoff cap. @defaultValue 3600000 (1 h) */
  retryMaxDelayMs?: number;
  /** Share of each delay taken off at random (0 = none, 1 = full jitter). @defaultValue 0.5 */
  retryJitter?: number;
  /** Default `maxAttempts` of a job. @defaultValue 25 */
  maxAttempts?: number;
  /**
   * Whether a completed job stays in the table (state `completed`, with its result,
   * until retention deletes it). `false` deletes it in the completing statement: the
   * fastest way to run many short jobs, but `get(id)` then finds nothing once a job
   * completed. Dead and cancelled jobs are always kept. @defaultValue true
   */
  keepCompleted?: boolean;
  /**
   * Finished jobs kept this long before the maintenance task `queueRetention` deletes
   * them; 0 keeps them forever (disables the task). `maintenance.queueRetention` wins.
   * @defaultValue 86400000 (24 h)
   */
  retentionMs?: number;
  /**
   * Completed jobs (only: dead and cancelled ones follow `retentionMs`) kept this long
   * before the maintenance task `completedJobRetention` deletes them; 0 disables that
   * task (completed jobs then follow `retentionMs`). `maintenance.completedJobRetention` wins.
   * @defaultValue 300000 (5 min)
   */
  completedRetentionMs?: number;
  /** Interval of the maintenance task `queueRetention`. `maintenance.queueRetention.intervalMs` wins. @defaultValue 60000 */
  retentionIntervalMs?: number;
  /** Rows deleted per retention statement. @defaultValue 5000 */
  retentionBatchSize?: number;
  /** Leadership lease for cron scheduling. @defaultValue 10000 */
  leaderTtlMs?: number;
  /** Completions buffered before a flush is forced (they are flushed at once when no flush is running). @defaultValue 500 */
  completionBatchSize?: number;
}

/** The queue's defaults. */
export const QUEUE_DEFAULTS = {
  leaseMs: 30_000,
  pollIntervalMs: 1000,
  rescueIntervalMs: 5000,
  retryBaseDelayMs: 1000,
  retryMaxDelayMs: 3_600_000,
  retryJitter: 0.5,
  maxAttempts: 25,
  retentionMs: 86_400_000,
  completedRetentionMs: 300_000,
  retentionIntervalMs: 60_000,
  retentionBatchSize: 5000,
  leaderTtlMs: 10_000,
  completionBatchSize: 500,
  keepCompleted: true,
} as const;

/** Resolved queue options. */
export type ResolvedQueueOptions = Required<QueueOptions>;

/** Fills in defaults and validates, naming the option and value on error. */
export function resolveQueueOptions(o: QueueOptions = {}): ResolvedQueueOptions {
  const defaults = { ...QUEUE_DEFAULTS, heartbeatIntervalMs: undefined as number | undefined };
  const r = resolveOptions(defaults, o, {
    leaseMs: finitePositive,
    pollIntervalMs: finitePositive,
    rescueIntervalMs: finitePositive,
    retryBaseDelayMs: finiteNonNegative,
    retryMaxDelayMs: finiteNonNegative,
    retryJitter: numberBetween(0, 1),
    maxAttempts: finitePositive,
    retentionMs: finiteNonNegative,
    completedRetentionMs: finiteNonNegative,
    retentionIntervalMs: finitePositive,
    retentionBatchSize: positiveInteger(),
    leaderTtlMs: finitePositive,
    completionBatchSize: positiveInteger(),
    keepCompleted: boolean,
  }) as ResolvedQueueOptions;
  if (r.heartbeatIntervalMs === undefined) r.heartbeatIntervalMs = Math.max(10, Math.floor(r.leaseMs / 3));
  const expected = finitePositive(r.heartbeatIntervalMs);
  if (expected) throw new InvalidOptionError('heartbeatIntervalMs', r.heartbeatIntervalMs, expected);
  if (!Number.isInteger(r.maxAttempts) || r.maxAttempts > 10_000) throw new InvalidOptionError('maxAttempts', r.maxAttempts, 'an integer from 1 to 10000');
  if (r.heartbeatIntervalMs >= r.leaseMs) throw new InvalidOptionError('heartbeatIntervalMs', r.heartbeatIntervalMs, `less than leaseMs (${r.leaseMs})`);
  return r;
}

const finitePositive: OptionCheck = (v) => (typeof v === 'number' && Number.isFinite(v) && v > 0 ? undefined : 'a finite number > 0');
const finiteNonNegative: OptionCheck = (v) => (typeof v === 'number' && Number.isFinite(v) && v >= 0 ? undefined : 'a finite number >= 0');

/** Options of `enqueue` / `enqueueMany` items. */
export interface EnqueueOptions {
  /** Insert in the caller's transaction: the job exists only if it commits. */
  tx?: TxLike;
  /** Queue name (at most 100 bytes). @defaultValue 'default' */
  queue?: string;
  /** Lower runs first (smallint). @defaultValue 0 */
  priority?: number;
  /** Not before this time. @defaultValue now (database time) */
  runAt?: Date;
  /** Not before now() + delayMs (database time); ignored when `runAt` is given. @defaultValue 0 */
  delayMs?: number;
  /** Attempts (per stage) before the job goes to `dead`. @defaultValue the queue's `maxAttempts` (25) */
  maxAttempts?: number;
  /** While a job with this key is available or running, another enqueue with it inserts nothing and returns the existing job's id. */
  uniqueKey?: string;
  /** Pipeline stages in order: the job runs at each stage by that stage's workers. */
  stages?: string[];
  /** Announce every transition on the events channel and keep a history. @defaultValue true for pipelines, false otherwise */
  announce?: boolean;
  /**
   * Handler timeout of this job in ms (1 to 2^31 - 1), overriding the worker's `timeoutMs`:
   * past it the handler's `signal` aborts and the attempt fails (retried per the retry policy).
   * @defaultValue the worker's `timeoutMs` (none)
   */
  timeoutMs?: number;
}

/** One item of `enqueueMany`. */
export interface EnqueueItem extends Omit<EnqueueOptions, 'tx'> {
  kind: string;
  payload?: unknown;
}

/** What `enqueue` returns. */
export interface EnqueueResult {
  /** The job's id (the existing job's id when a unique key was held). */
  id: string;
  /** False when a waiting or running job already held the unique key. */
  inserted: boolean;
}

/** A job as its handler sees it. */
export interface Job<P = unknown> {
  id: string;
  queue: string;
  kind: string;
  payload: P;
  /** Attempt at this stage, from 1. */
  attempt: number;
  maxAttempts: number;
  /** Current pipeline stage, or null for a plain job. */
  stage: string | null;
  stages: string[] | null;
  priority: number;
  createdAt: Date;
  /** Aborted when the lease is lost, the job is cancelled, or the worker stops with `abandon`. */
  signal: AbortSignal;
  /** The fence token: the job's lifetime claim count. Finishing or heartbeating needs it. */
  readonly fence: number;
}

/** A handler's result: any value (stored as the job's `result` when JSON-serialisable), or an outcome from {@link snooze}/{@link discard}. */
export type JobHandler<P = unknown> = (job: Job<P>) => unknown;

const OUTCOME = Symbol('pgherald.job.outcome');

/** A handler outcome other than success or failure. */
export interface JobOutcome {
  readonly [OUTCOME]: 'snooze' | 'discard';
  readonly delayMs?: number;
  readonly reason?: string;
}

/** Return from a handler to run the job again after `delayMs` without counting the attempt. */
export function snooze(delayMs: number): JobOutcome {
  // Up to 10 years, like every duration that reaches SQL (an interval Postgres can hold).
  if (typeof delayMs !== 'number' || !Number.isFinite(delayMs) || delayMs < 0 || delayMs > MAX_DURATION_MS) {
    throw new InvalidOptionError('delayMs', delayMs, `a number of milliseconds from 0 to ${MAX_DURATION_MS} (10 years)`);
  }
  return { [OUTCOME]: 'snooze', delayMs };
}

/** Return from a handler to send the job to `dead` at once, with `reason` as its last error. */
export function discard(reason = 'discarded'): JobOutcome {
  return { [OUTCOME]: 'discard', reason };
}

/** The outcome kind of a handler's return value, if it is one. */
export function outcomeOf(v: unknown): JobOutcome | undefined {
  return v !== null && typeof v === 'object' && OUTCOME in v ? (v as JobOutcome) : undefined;
}

/** Kind of {@link JobOutcome}. */
export function outcomeKind(o: JobOutcome): 'snooze' | 'discard' {
  return o[OUTCOME];
}

/** Options of `work`. */
export interface WorkOptions {
  /** Queue to take jobs from. @defaultValue 'default' */
  queue?: string;
  /** Pipeline stage this worker handles (null: plain jobs of the kind). @defaultValue null */
  stage?: string;
  /** Jobs run at once. @defaultValue 10 */
  concurrency?: number;
  /**
   * Extra jobs claimed ahead and held (leased) locally, so a finished slot refills without
   * a round trip. `'auto'`: none while the queue has no backlog; after a claim that came
   * back full, about 100 ms of this worker's recent completions (at most 100 per
   * `concurrency` slot, at most 1000); none while a pause or limit applies (jobs held
   * ahead are then handed back). @defaultValue 'auto'
   */
  prefetch?: number | 'auto';
  /**
   * Handler timeout in ms (1 to 2^31 - 1) for jobs without their own `timeoutMs`: past it
   * the handler's `signal` aborts (reason a `HeraldError` with code `TIMEOUT`) and the
   * attempt is recorded as failed at once (retried per the retry policy, or dead); the
   * slot stays taken until the handler returns. Independent of the lease. @defaultValue none
   */
  timeoutMs?: number;
}

/** What `pause`/`resume` act on: omitted `queue` = every queue, omitted `kind` = every kind. */
export interface QueueTarget {
  queue?: string;
  kind?: string;
}

/** A pause as `paused()` lists it (null = every queue / every kind). */
export interface QueuePause {
  queue: string | null;
  kind: string | null;
  /** Database time the pause began. */
  pausedAt: Date;
}

/** A fleet-wide limit of a queue, or of one kind in it (`setLimit`). */
export interface QueueLimitOptions {
  /** @defaultValue 'default' */
  queue?: string;
  /** Only this kind (its limit replaces the queue's for its jobs). @defaultValue every kind of the queue */
  kind?: string;
  /** At most this many jobs running at once across all processes (per partition key with `partitionBy`). Integer 1 to 1000000. */
  concurrency?: number;
  /**
   * A payload field (`'customerId'`) or path (`['customer', 'id']`): each of its values
   * (as text; a missing field counts as one value) gets its own concurrency and rate limit.
   */
  partitionBy?: string | string[];
  /** At most `count` job starts per `periodMs` (a token bucket: bursts up to `count`). */
  rate?: { count: number; periodMs: number };
}

/** A limit as `limits()` lists it. */
export interface QueueLimit {
  queue: string;
  kind: string | null;
  concurrency: number | null;
  partitionBy: string[] | null;
  rate: { count: number; periodMs: number } | null;
  updatedAt: Date;
}

/** A batch as `queue.batch(id)` returns it. */
export interface BatchInfo {
  id: string;
  total: number;
  completed: number;
  dead: number;
  cancelled: number;
  /** Null until settled: `completed` (every member completed) or `dead` (a member dead or cancelled first). */
  outcome: 'completed' | 'dead' | null;
  /** The callback job, enqueued once when the batch settled. */
  callbackJobId: string | null;
  createdAt: Date;
  settledAt: Date | null;
}

/** One job of `enqueueWorkflow`: an ordinary job (no `uniqueKey`, `stages` or `announce`) with a key and its dependencies. */
export interface WorkflowJob extends Omit<EnqueueItem, 'uniqueKey' | 'stages' | 'announce'> {
  /** Names the job within the workflow (at most 100 bytes, unique in it). */
  key: string;
  /** Keys of jobs of the same call that must complete before this one becomes available. */
  dependsOn?: string[];
}

/** What to do with the waiting dependents of a job that goes dead or is cancelled. */
export type WorkflowFailurePolicy = 'cancel' | 'hold';

/** A workflow as `queue.workflow(id)` returns it. */
export interface WorkflowInfo {
  id: string;
  name: string | null;
  onFailure: WorkflowFailurePolicy;
  total: number;
  /** Members per state (jobs deleted since, by `keepCompleted: false` or retention, are not counted). */
  counts: Record<JobState, number>;
  /**
   * `running`: a member is available or running, or waiting with nothing dead or cancelled;
   * `completed`: every member completed; `failed`: a member is dead or cancelled and none is
   * left waiting, available or running; `held` (policy hold): a member is dead or cancelled,
   * none available or running, some waiting for it (a retry of it resumes the workflow).
   */
  state: 'running' | 'completed' | 'failed' | 'held';
  jobs: { key: string; id: string; kind: string; state: JobState; dependsOn: string[]; result: unknown }[];
  createdAt: Date;
}

/** A transition of a workflow member as `queue.watchWorkflow` reports it. */
export interface WorkflowTransition {
  workflowId: string;
  /** The job. */
  id: string;
  state: JobState;
}

/** A completed dependency as `queue.dependencyResults(jobId)` returns it. */
export interface DependencyResult {
  id: string;
  /** Its key in the workflow. */
  key: string | null;
  kind: string;
  result: unknown;
}

/** A job transition as announced on the events channel. */
export interface JobTransition {
  id: string;
  kind: string;
  stage: string | null;
  state: JobState;
  attempt: number;
}

/** A job as `get`/`list` return it. */
export interface JobInfo {
  id: string;
  queue: string;
  kind: string;
  payload: unknown;
  state: JobState;
  priority: number;
  runAt: Date;
  /** Attempts at the current stage. */
  attempt: number;
  maxAttempts: number;
  leaseExpiresAt: Date | null;
  uniqueKey: string | null;
  /** The job's own handler timeout (null: the worker's `timeoutMs`). */
  timeoutMs: number | null;
  stages: string[] | null;
  stage: string | null;
  lastError: string | null;
  /** The failed attempts (the last 20): number, when it failed, how long it ran (from its claim to its failure, or to the rescue of its expired lease; absent on entries written before 0.x), and the error text. */
  errors: { attempt: number; at: string; durationMs?: number; error: string }[];
  /** Transitions with their database timestamps (announced jobs only). */
  history: { stage: string | null; state: JobState; at: string }[] | null;
  result: unknown;
  createdAt: Date;
  attemptedAt: Date | null;
  stageEnteredAt: Date;
  finishedAt: Date | null;
}

/** One queue in {@link Queue.activity}: its backlog now and its work since `since`. */
export interface QueueActivity {
  queue: string;
  /** Waiting and due. */
  available: number;
  /** Waiting for a later `runAt`. */
  scheduled: number;
  running: number;
  /** Finished as completed since `since`. */
  completed: number;
  /** Went dead since `since`. */
  dead: number;
  /** Attempts started since `since` (still running, or finished since). */
  started: number;
  /** Average `attemptedAt - runAt` of those attempts (ms), null when none started. */
  latencyAvgMs: number | null;
  /** Largest `attemptedAt - runAt` of those attempts (ms), null when none started. */
  latencyMaxMs: number | null;
}

/** Events of the queue (`herald.queue.on(name, fn)`). */
export type QueueEvents = {
  /** A job's handler finished and its completion was recorded. */
  'job:completed': [info: { id: string; kind: string; stage: string | null }];
  /** A handler threw; the job was retried or went dead. */
  'job:failed': [info: { id: string; kind: string; error: unknown; state: string }];
  /** A worker's completion, failure or heartbeat was rejected: its lease was lost (rescued, cancelled or claimed again). */
  'job:leaseLost': [info: { id: string; kind: string; fence: number; during: 'complete' | 'fail' | 'heartbeat' }];
  /** `rescue()` (the maintenance task `queueRescue`) made jobs with expired leases available again (or dead). */
  'job:rescued': [info: { rescued: number; dead: number }];
  /** `prune()` (the maintenance task `queueRetention`) deleted finished jobs. */
  'job:retentionSwept': [info: { deleted: number }];
  /** This process became or stopped being the cron leader. */
  'job:cronLeader': [info: { leader: boolean }];
  /** A cron tick was enqueued by this process. */
  'job:cronEnqueued': [info: { name: string; tick: Date; id: string }];
  /** A background failure (claim, flush, heartbeat, cron); the queue keeps going. Maintenance failures are `maintenance:error`. */
  'job:problem': [err: Error];
}

/** The short view of a job that the CLI (`herald jobs list`) and the dashboard show. */
export function jobSummary(j: JobInfo) {
  return {
    id: j.id,
    queue: j.queue,
    kind: j.kind,
    stage: j.stage,
    state: j.state,
    attempt: j.attempt,
    maxAttempts: j.maxAttempts,
    runAt: j.runAt,
    lastError: j.lastError,
  };
}
