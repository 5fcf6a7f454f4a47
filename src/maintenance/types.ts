import { InvalidOptionError } from '../errors.js';
import { boolean, positiveNumber, resolveOptions, type OptionCheck } from '../internal/options.js';

/**
 * The periodic tasks of the maintenance service, in the order `status()` lists them:
 * - `queueRescue`: jobs whose lease expired (their worker died) become available again, or dead;
 * - `queueRetention`: finished jobs (completed, dead, cancelled) older than `retentionMs` are deleted, and settled batches and emptied workflows as old;
 * - `completedJobRetention`: completed jobs older than its (shorter) `retentionMs` are deleted, so a busy queue's table stops growing within minutes;
 * - `mailboxRetention`: consumed messages older than `retentionMs` are deleted;
 * - `outboxRetention`: published outbox events older than `retentionMs` are deleted;
 * - `deadLetterRetention`: dead mailbox messages and dead outbox events older than `retentionMs` are deleted (off by default: dead letters are kept);
 * - `topicRetention`: each topic's own retention (`retentionMs`/`retentionBytes` of the topic) drops old segments.
 */
export const MAINTENANCE_TASKS = ['queueRescue', 'queueRetention', 'completedJobRetention', 'mailboxRetention', 'outboxRetention', 'deadLetterRetention', 'topicRetention'] as const;

/** A task's name. */
export type MaintenanceTask = (typeof MAINTENANCE_TASKS)[number];

/** Options of one task. */
export interface MaintenanceTaskOptions {
  /** Whether the leader runs the task. @defaultValue true */
  enabled?: boolean;
  /** Time from the end of one run to the start of the next (ms). Defaults per task in {@link MAINTENANCE_DEFAULTS}. */
  intervalMs?: number;
  /**
   * Retention tasks only: rows older than this (ms, database time) are deleted (0: every
   * finished row at each run). To keep rows, disable the task. Defaults per task in
   * {@link MAINTENANCE_DEFAULTS}.
   */
  retentionMs?: number;
}

/**
 * Options of the maintenance service (`createHerald({ maintenance: { ... } })`). Every
 * one has a default ({@link MAINTENANCE_DEFAULTS}); per task, options given here win
 * over the older per-part options (`queue.rescueIntervalMs`, `queue.retentionMs`,
 * `queue.retentionIntervalMs`, `mailbox.retentionMs`, `mailbox.retentionIntervalMs`,
 * `mailbox.deadRetentionMs`, `topics.maintenanceIntervalMs`), which still set the
 * defaults of their task.
 */
export interface MaintenanceOptions {
  /**
   * Whether this process takes part: it starts (stands for election and, once leader,
   * runs the tasks) the first time any part is used — a send, an enqueue, a consumer,
   * a relay, a topic publish or consumer, a server. `false`: never (the CLI's short
   * commands); `status()` and `run()` still work. @defaultValue true
   */
  enabled?: boolean;
  /** Leadership lease (database time); renewed every third of it. A dead leader is replaced within about this long. @defaultValue 10000 */
  leaderTtlMs?: number;
  /** Rows deleted per statement by the retention tasks (mailbox, outbox, dead letters). @defaultValue 5000 */
  batchSize?: number;
  /** @defaultValue { enabled: true, intervalMs: 5000 } (intervalMs: `queue.rescueIntervalMs` when given) */
  queueRescue?: MaintenanceTaskOptions;
  /** @defaultValue { enabled: true, intervalMs: 60000, retentionMs: 86400000 } (`queue.retentionIntervalMs`, `queue.retentionMs` when given; `queue.retentionMs: 0` disables it) */
  queueRetention?: MaintenanceTaskOptions;
  /** @defaultValue { enabled: true, intervalMs: 10000, retentionMs: 300000 (5 min) } (`queue.completedRetentionMs` when given; 0 there disables it, leaving completed jobs to `queueRetention`) */
  completedJobRetention?: MaintenanceTaskOptions;
  /** @defaultValue { enabled: true, intervalMs: 60000, retentionMs: 86400000 } (`mailbox.retentionIntervalMs`, `mailbox.retentionMs` when given; `mailbox.retentionIntervalMs: 0` disables it) */
  mailboxRetention?: MaintenanceTaskOptions;
  /** @defaultValue { enabled: true, intervalMs: 60000, retentionMs: 604800000 (7 days) } */
  outboxRetention?: MaintenanceTaskOptions;
  /** @defaultValue { enabled: false (dead letters are kept until redriven), intervalMs: 3600000, retentionMs: 2592000000 (30 days) } (`mailbox.deadRetentionMs` > 0, when given, enables it with that retention) */
  deadLetterRetention?: MaintenanceTaskOptions;
  /** @defaultValue { enabled: true, intervalMs: 60000 } (`topics.maintenanceIntervalMs` when given) */
  topicRetention?: MaintenanceTaskOptions;
}

/** One task's resolved settings; `retentionMs` is null for tasks without one. */
export interface ResolvedTaskOptions {
  enabled: boolean;
  intervalMs: number;
  retentionMs: number | null;
}

/** Resolved options of the service. */
export interface ResolvedMaintenanceOptions {
  enabled: boolean;
  leaderTtlMs: number;
  batchSize: number;
  tasks: Record<MaintenanceTask, ResolvedTaskOptions>;
}

/** Defaults of {@link MaintenanceOptions}. */
export const MAINTENANCE_DEFAULTS: Readonly<ResolvedMaintenanceOptions> = Object.freeze({
  enabled: true,
  leaderTtlMs: 10_000,
  batchSize: 5000,
  tasks: Object.freeze({
    queueRescue: { enabled: true, intervalMs: 5000, retentionMs: null },
    queueRetention: { enabled: true, intervalMs: 60_000, retentionMs: 86_400_000 },
    completedJobRetention: { enabled: true, intervalMs: 10_000, retentionMs: 300_000 },
    mailboxRetention: { enabled: true, intervalMs: 60_000, retentionMs: 86_400_000 },
    outboxRetention: { enabled: true, intervalMs: 60_000, retentionMs: 604_800_000 },
    deadLetterRetention: { enabled: false, intervalMs: 3_600_000, retentionMs: 2_592_000_000 },
    topicRetention: { enabled: true, intervalMs: 60_000, retentionMs: null },
  }),
});

const finiteNonNegative: OptionCheck = (v) => (typeof v === 'number' && Number.isFinite(v) && v >= 0 ? undefined : 'a finite number >= 0');
const positiveInt: OptionCheck = (v) => (typeof v === 'number' && Number.isInteger(v) && v >= 1 && v <= 1_000_000 ? undefined : 'an integer from 1 to 1000000');

/**
 * Fills in defaults and validates, naming the option (`maintenance.outboxRetention.retentionMs`).
 * `fallbacks`: per task, the older per-part options the user gave (they win over the
 * defaults, lose to `options`).
 */
export function resolveMaintenanceOptions(options: MaintenanceOptions = {}, fallbacks: Partial<Record<MaintenanceTask, MaintenanceTaskOptions>> = {}): ResolvedMaintenanceOptions {
  if (options === null || typeof options !== 'object') throw new InvalidOptionError('maintenance', options, 'an object');
  const top = resolveOptions({ enabled: true, leaderTtlMs: MAINTENANCE_DEFAULTS.leaderTtlMs, batchSize: MAINTENANCE_DEFAULTS.batchSize }, options, {
    enabled: boolean,
    leaderTtlMs: positiveNumber,
    batchSize: positiveInt,
  }, 'maintenance.');
  const tasks = {} as Record<MaintenanceTask, ResolvedTaskOptions>;
  for (const name of MAINTENANCE_TASKS) {
    const d = MAINTENANCE_DEFAULTS.tasks[name];
    const given = options[name];
    if (given !== undefined && (given === null || typeof given !== 'object')) throw new InvalidOptionError(`maintenance.${name}`, given, 'an object { enabled?, intervalMs?, retentionMs? }');
    const merged = { ...d, ...dropUndefined(fallbacks[name]), ...dropUndefined(given) };
    const checks: Record<string, OptionCheck> = { enabled: boolean, intervalMs: positiveNumber };
    if (d.retentionMs !== null) checks.retentionMs = finiteNonNegative;
    else if (merged.retentionMs !== null) throw new InvalidOptionError(`maintenance.${name}.retentionMs`, merged.retentionMs, 'nothing: this task has no retention of its own');
    tasks[name] = resolveOptions(d, merged, checks, `maintenance.${name}.`) as ResolvedTaskOptions;
  }
  return { ...top, tasks };
}

function dropUndefined<T extends object>(o: T | undefined): Partial<T> {
  if (!o) return {};
  return Object.fromEntries(Object.entries(o).filter(([, v]) => v !== undefined)) as Partial<T>;
}

/** One task as `herald.maintenance.status()` reports it. */
export interface MaintenanceTaskStatus {
  task: MaintenanceTask;
  /** The leader's settings as it planned the task (this process's when no leader planned it yet). */
  enabled: boolean;
  intervalMs: number;
  retentionMs: number | null;
  /** Runs and failed runs over the life of the fleet. */
  runs: number;
  errors: number;
  /** Start of the last run, or null when it never ran. */
  lastRunAt: Date | null;
  /** Rows the last run changed (deleted, rescued, segments dropped). */
  lastRows: number | null;
  lastDurationMs: number | null;
  /** Error of the last run, or null when it succeeded. */
  lastError: string | null;
  /** When the leader runs it next; null when no live leader planned it. */
  nextRunAt: Date | null;
  /** The process that planned or last ran the task. */
  ranBy: string | null;
}

/** What `herald.maintenance.status()` reports, read from the database (the whole fleet's view). */
export interface MaintenanceStatus {
  /** The live leader, or null (none elected, or its lease ran out). */
  leader: { holder: string; expiresAt: Date } | null;
  /** This process: its holder name, whether the service runs here and whether it leads. */
  self: { holder: string; started: boolean; leader: boolean };
  tasks: MaintenanceTaskStatus[];
}

/** Counters of the runs made by this process (the server's /metrics). */
export interface MaintenanceTaskMetrics {
  runs: number;
  rows: number;
  errors: number;
  durationMs: number;
}

/** Events of the maintenance service (`herald.maintenance.on(name, fn)`). */
export type MaintenanceEvents = {
  /** A task ran in this process (this process leads, or `run()` was called). */
  'maintenance:run': [info: { task: MaintenanceTask; rows: number; durationMs: number }];
  /** A task failed (it runs again after its interval), or leadership could not be renewed (`task: 'leadership'`). */
  'maintenance:error': [info: { task: MaintenanceTask | 'leadership'; error: Error }];
  /** This process became (`leader: true`) or stopped being the maintenance leader. */
  'maintenance:leader': [info: { leader: boolean; holder: string }];
};
