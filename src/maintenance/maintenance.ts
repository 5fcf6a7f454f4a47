import type { Executor } from '../driver/types.js';
import { InvalidArgumentError } from '../errors.js';
import { describeError } from '../internal/describe-error.js';
import { TypedEmitter } from '../internal/events.js';
import { Leadership, holderName } from './leadership.js';
import { leaderGet, taskList, taskPlan, taskRecord } from './queries.js';
import {
  MAINTENANCE_TASKS,
  type MaintenanceEvents,
  type MaintenanceStatus,
  type MaintenanceTask,
  type MaintenanceTaskMetrics,
  type ResolvedMaintenanceOptions,
  type ResolvedTaskOptions,
} from './types.js';

/** The body of a task: does one run with the task's settings and returns the rows it changed. */
export type MaintenanceRunner = (settings: ResolvedTaskOptions, batchSize: number) => Promise<number>;

/** The role of the maintenance leader in the leadership table. */
export const MAINTENANCE_ROLE = 'maintenance';

/**
 * The one maintenance service of a Herald (`herald.maintenance`): every periodic task
 * of every part (rescue of expired job leases, retention of jobs, mailbox messages,
 * outbox events, dead letters and topics), run by one process of the fleet, the
 * leader elected through the database ({@link Leadership}, role `maintenance`).
 *
 * Every process that uses any part starts it (see `MaintenanceOptions.enabled`); each
 * renews or contends for the lease every `leaderTtlMs / 3`. The leader plans each
 * enabled task from its last run recorded in `maintenance_tasks` (so a new leader
 * does not run a task again that its predecessor just ran), holds one timer per task,
 * runs the tasks one at a time, and records each run (rows, duration, error) in the
 * table, which `status()` reads. When the leader dies its lease runs out and another
 * process takes over; when it stops it resigns. Tasks are idempotent batched
 * statements (SKIP LOCKED where rows are locked), so two processes that both believe
 * they lead for a moment do no harm. See src/maintenance/README.md.
 */
export class Maintenance extends TypedEmitter<MaintenanceEvents> {
  readonly options: ResolvedMaintenanceOptions;
  /** This process's name in the leadership table and in `status()`. */
  readonly holder = holderName();
  readonly #x: Executor;
  readonly #s: string;
  readonly #runners: Record<MaintenanceTask, MaintenanceRunner>;
  readonly #leadership: Leadership;
  readonly #taskTimers = new Map<MaintenanceTask, NodeJS.Timeout>();
  readonly #metrics = new Map<MaintenanceTask, MaintenanceTaskMetrics>();
  #renewTimer: NodeJS.Timeout | undefined;
  #renewing: Promise<void> | undefined;
  #planning: Promise<void> | undefined;
  /** Task runs, one at a time (at most one connection of the pool for maintenance). */
  #chain: Promise<unknown> = Promise.resolve();
  #started = false;
  #stopped = false;

  /** @internal `createHerald` builds it; `runners` are the tasks' bodies. */
  constructor(executor: Executor, schemaSql: string, runners: Record<MaintenanceTask, MaintenanceRunner>, options: ResolvedMaintenanceOptions) {
    super();
    this.options = options;
    this.#x = executor;
    this.#s = schemaSql;
    this.#runners = runners;
    for (const t of MAINTENANCE_TASKS) this.#metrics.set(t, { runs: 0, rows: 0, errors: 0, durationMs: 0 });
    this.#leadership = new Leadership(executor, schemaSql, MAINTENANCE_ROLE, this.holder, options.leaderTtlMs, (leader) => this.#leaderChanged(leader));
  }

  /** Whether the service runs in this process (it started and did not stop). */
  get started(): boolean {
    return this.#started && !this.#stopped;
  }

  /** Whether this process leads (runs the tasks) as of its last renewal. */
  get isLeader(): boolean {
    return this.#leadership.isLeader;
  }

  /**
   * Starts the service in this process: it stands for election now and renews every
   * `leaderTtlMs / 3`. Every part calls it on first use; idempotent; does nothing when
   * `enabled` is false or after `stop()`.
   */
  start(): void {
    if (this.#started || this.#stopped || !this.options.enabled) return;
    this.#started = true;
    this.#renewIn(0);
  }

  #renewIn(ms: number): void {
    if (this.#stopped) return;
    this.#renewTimer = setTimeout(() => {
      this.#renewing = this.#leadership
        .renew()
        .then(() => undefined)
        .catch((err) => this.emit('maintenance:error', { task: 'leadership', error: asError(err) }))
        .finally(() => {
          this.#renewing = undefined;
          this.#renewIn(Math.max(1, Math.floor(this.options.leaderTtlMs / 3)));
        });
    }, ms);
    this.#renewTimer.unref();
  }

  #leaderChanged(leader: boolean): void {
    this.emit('maintenance:leader', { leader, holder: this.holder });
    if (!leader) {
      this.#clearTaskTimers();
      return;
    }
    this.#planning = this.#plan()
      .catch((err) => this.emit('maintenance:error', { task: 'leadership', error: asError(err) }))
      .finally(() => (this.#planning = undefined));
  }

  /** As the new leader: records each task's settings and arms its timer at its next run (one interval after the last one). */
  async #plan(): Promise<void> {
    for (const task of MAINTENANCE_TASKS) {
      const t = this.options.tasks[task];
      const delay = await taskPlan(this.#x, this.#s, { task, enabled: active(t), intervalMs: t.intervalMs, retentionMs: t.retentionMs, holder: this.holder, inMs: active(t) ? null : 0 });
      if (active(t)) this.#arm(task, delay);
    }
  }

  #arm(task: MaintenanceTask, delayMs: number): void {
    clearTimeout(this.#taskTimers.get(task));
    if (this.#stopped || !this.#leadership.isLeader) return;
    const timer = setTimeout(() => {
      this.#taskTimers.delete(task);
      this.#chain = this.#chain.then(async () => {
        if (this.#stopped || !this.#leadership.isLeader) return;
        await this.#execute(task).catch(() => {});
        this.#arm(task, this.options.tasks[task].intervalMs);
      });
    }, Math.max(0, delayMs));
    timer.unref();
    this.#taskTimers.set(task, timer);
  }

  #clearTaskTimers(): void {
    for (const t of this.#taskTimers.values()) clearTimeout(t);
    this.#taskTimers.clear();
  }

  /**
   * Runs `task` once now in this process, whether it leads or not (an operator's
   * `herald maintenance run`, a test), with this process's settings; records the run
   * like a scheduled one. Returns the rows it changed; throws what the task threw.
   */
  async run(task: MaintenanceTask): Promise<number> {
    if (!MAINTENANCE_TASKS.includes(task)) throw new InvalidArgumentError('task', task, MAINTENANCE_TASKS.join(', '));
    const result = this.#chain.then(() => this.#execute(task));
    this.#chain = result.catch(() => {});
    return result;
  }

  async #execute(task: MaintenanceTask): Promise<number> {
    const settings = this.options.tasks[task];
    const startedAt = new Date();
    const t0 = performance.now();
    let rows = 0;
    let error: Error | null = null;
    try {
      rows = await this.#runners[task](settings, this.options.batchSize);
    } catch (err) {
      error = asError(err);
    }
    const durationMs = performance.now() - t0;
    const m = this.#metrics.get(task)!;
    m.runs++;
    m.rows += rows;
    m.durationMs += durationMs;
    if (error) m.errors++;
    try {
      await taskRecord(this.#x, this.#s, { task, holder: this.holder, startedAt, rows, durationMs, error: error && describeError(error), intervalMs: settings.intervalMs, enabled: active(settings), retentionMs: settings.retentionMs });
    } catch (err) {
      // The run happened; only its record is missing (database unreachable).
      if (!error) this.emit('maintenance:error', { task, error: asError(err) });
    }
    if (error) {
      this.emit('maintenance:error', { task, error });
      throw error;
    }
    this.emit('maintenance:run', { task, rows, durationMs });
    return rows;
  }

  /**
   * Every task with its last run, rows, next run and the leader, read from the database:
   * the fleet's view, the same from any process (`herald maintenance status`).
   */
  async status(): Promise<MaintenanceStatus> {
    const [leader, rows] = await Promise.all([leaderGet(this.#x, this.#s, MAINTENANCE_ROLE), taskList(this.#x, this.#s)]);
    const byTask = new Map(rows.map((r) => [r.task, r]));
    return {
      leader: leader ? { holder: leader.holder, expiresAt: new Date(leader.expires_at) } : null,
      self: { holder: this.holder, started: this.started, leader: this.isLeader },
      tasks: MAINTENANCE_TASKS.map((task) => {
        const r = byTask.get(task);
        const local = this.options.tasks[task];
        return {
          task,
          enabled: r ? r.enabled : active(local),
          intervalMs: r ? Number(r.interval_ms) : local.intervalMs,
          retentionMs: r ? (r.retention_ms === null ? null : Number(r.retention_ms)) : local.retentionMs,
          runs: r ? Number(r.runs) : 0,
          errors: r ? Number(r.errors) : 0,
          lastRunAt: r?.last_started_at ? new Date(r.last_started_at) : null,
          lastRows: r?.last_rows == null ? null : Number(r.last_rows),
          lastDurationMs: r?.last_duration_ms == null ? null : Number(r.last_duration_ms),
          lastError: r?.last_error ?? null,
          nextRunAt: leader && r?.enabled && r.next_run_at ? new Date(r.next_run_at) : null,
          ranBy: r?.holder ?? null,
        };
      }),
    };
  }

  /** Counters of the runs this process made, per task (what /metrics exports). */
  metrics(): Record<MaintenanceTask, MaintenanceTaskMetrics> {
    return Object.fromEntries([...this.#metrics].map(([k, v]) => [k, { ...v }])) as Record<MaintenanceTask, MaintenanceTaskMetrics>;
  }

  /**
   * Stops the service: no new run starts, the run in flight finishes, and a leader
   * resigns so another process takes over at its next renewal. Leaves no timer.
   * Idempotent; the service does not start again.
   */
  async stop(): Promise<void> {
    if (this.#stopped) return;
    this.#stopped = true;
    clearTimeout(this.#renewTimer);
    this.#clearTaskTimers();
    await this.#renewing;
    await this.#planning;
    await this.#chain.catch(() => {});
    this.#clearTaskTimers();
    await this.#leadership.resign().catch(() => {});
  }
}

/** Whether the leader runs the task. */
function active(t: ResolvedTaskOptions): boolean {
  return t.enabled;
}

function asError(err: unknown): Error {
  return err instanceof Error ? err : new Error(describeError(err));
}
