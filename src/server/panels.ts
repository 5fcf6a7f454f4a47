import { jobSummary, type JobInfo, type JobState } from '../queue/types.js';
import { HttpError } from './http.js';
import type { HeraldServer } from './server.js';

/** Sizes and thresholds of the built-in dashboard panels. */
export interface DashboardPanelOptions {
  /** Rows of the `jobs` panel (newest jobs). @defaultValue 50 */
  jobsLimit?: number;
  /** Newest jobs the `pipelines` panel looks through for pipeline jobs (`stages`). @defaultValue 500 */
  pipelineScanLimit?: number;
  /** A waiting or running job is `stuck` once it has sat in its current stage this long (database time). @defaultValue 300000 (5 minutes) */
  stuckThresholdMs?: number;
  /** Rows of each dead-letter panel (mailbox, outbox) and of the stuck panel. @defaultValue 50 */
  deadLimit?: number;
  /**
   * Pages of the jobs and mailbox tables sampled to estimate their finished rows
   * (completed jobs, consumed messages) in the `queues` and `mailboxes` panels; a
   * table no larger is counted exactly. @defaultValue 500
   */
  estimateSamplePages?: number;
}

/** Defaults of {@link DashboardPanelOptions}. */
export const DASHBOARD_PANEL_DEFAULTS: Required<DashboardPanelOptions> = {
  jobsLimit: 50,
  pipelineScanLimit: 500,
  stuckThresholdMs: 300_000,
  deadLimit: 50,
  estimateSamplePages: 500,
};

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;

const STATE_COLUMNS = ['waiting', 'scheduled', 'available', 'running', 'completed', 'dead', 'cancelled'] as const;

/** A job id from an action's `args` (the row the operator clicked). */
function jobId(args: Record<string, unknown>): string {
  const id = args.id;
  if (typeof id !== 'string' || !/^\d{1,19}$/.test(id)) throw new HttpError(400, 'INVALID_ARGUMENT', 'args.id must be a job id (a string of digits)');
  return id;
}

function text(args: Record<string, unknown>, key: string): string {
  const v = args[key];
  if (typeof v !== 'string' || v === '') throw new HttpError(400, 'INVALID_ARGUMENT', `args.${key} must be a non-empty string`);
  return v;
}

function jobRow(j: JobInfo): Record<string, unknown> {
  return { ...jobSummary(j), createdAt: j.createdAt };
}

const waiting = (r: Record<string, unknown>) => r.state === 'available' || r.state === 'running';
const finishedBadly = (r: Record<string, unknown>) => r.state === 'dead' || r.state === 'cancelled';

/**
 * Registers the dashboard panels of the queue, mailbox and outbox, each read through
 * the part's own library API on every refresh (`/api/dashboard`), with admin actions
 * (the dashboard's routes require `admin` on `dashboard`):
 * - `queues`: `queue.stats({ estimate: true })` as one row per queue and kind, a column per state, `paused`
 *   (the pauses holding the row: `queue`, `kind`, `queue+kind`, `all`; '' when none); actions
 *   `pause` (that queue and kind) and `resume` (lifts every pause holding the row);
 * - `jobs`: `queue.list({ limit: jobsLimit })`; actions `retry` (dead, cancelled) and `cancel` (available, running);
 * - `pipelines`: pipeline jobs (`stages`) among the newest `pipelineScanLimit` jobs, with their stage progress;
 * - `stuck`: `queue.stuck({ thresholdMs: stuckThresholdMs })`; action `cancel`;
 * - `mailboxes`: `mailbox.stats({ estimate: true })`; action `redrive` (all dead letters of a destination);
 * - `mailbox-dead`: `mailbox.deadLetters(to)` of each destination with dead letters; action `redrive` (one message);
 * - `outbox`: `outbox.stats({ estimate: true })`; panel action `redrive-all`;
 * - `outbox-dead`: `outbox.dead()`; action `redrive` (one event);
 * - `topic-dead`: `topics.deadLetters(topic)` of every topic; action `redrive` (one dead letter back to its group).
 * Counts never scan finished history: they read partial indexes, and the bulk (completed
 * jobs, consumed messages, published events) is estimated (a sample of pages, or
 * `pg_class.reltuples`); a row with an estimate says so (`estimated: true`).
 */
export function registerDashboardPanels(server: HeraldServer, options: DashboardPanelOptions = {}): void {
  const o = { ...DASHBOARD_PANEL_DEFAULTS, ...options };
  const { queue, mailbox, outbox, topics } = server.herald;
  const dash = server.dashboard;

  const retry = {
    label: 'Retry',
    appliesTo: finishedBadly,
    run: async (args: Record<string, unknown>) => {
      const id = jobId(args);
      const retried = await queue.retry(id);
      if (retried.length === 0) throw new HttpError(409, 'CONFLICT', `job ${id} is not dead or cancelled`);
      return { retried };
    },
  };
  const cancel = {
    label: 'Cancel',
    appliesTo: waiting,
    run: async (args: Record<string, unknown>) => {
      const id = jobId(args);
      const cancelled = await queue.cancel(id);
      if (cancelled.length === 0) throw new HttpError(409, 'CONFLICT', `job ${id} is not waiting or running`);
      return { cancelled };
    },
  };

  // A row's pauses: those covering its queue and kind (null in a pause = every).
  const covering = async (row: Record<string, unknown>) =>
    (await queue.paused()).filter((p) => (p.queue === null || p.queue === row.queue) && (p.kind === null || p.kind === row.kind));
  const queueName = (args: Record<string, unknown>, key: 'queue' | 'kind') => {
    if (typeof args[key] !== 'string') throw new HttpError(400, 'INVALID_ARGUMENT', `args.${key} must be a string`);
    return args[key] as string;
  };

  dash.addPanel({
    id: 'queues',
    title: 'Queues and jobs by state',
    load: async () => {
      const rows = new Map<string, Record<string, unknown>>();
      const pauses = await queue.paused();
      for (const s of await queue.stats({ estimate: true, samplePages: o.estimateSamplePages })) {
        const key = `${s.queue}\u0000${s.kind}`;
        let row = rows.get(key);
        if (!row) {
          const by = pauses.filter((p) => (p.queue === null || p.queue === s.queue) && (p.kind === null || p.kind === s.kind));
          // paused: which pauses hold the row ('queue', 'kind', 'queue+kind', 'all'), '' when none.
          const paused = by.map((p) => (p.queue === null ? (p.kind === null ? 'all' : 'kind') : p.kind === null ? 'queue' : 'queue+kind')).join(' ');
          row = { queue: s.queue, kind: s.kind, paused, ...Object.fromEntries(STATE_COLUMNS.map((c) => [c, 0])), estimated: false };
          rows.set(key, row);
        }
        row[s.state] = Number(row[s.state] ?? 0) + s.count;
        if (s.estimated) row.estimated = true;
      }
      return [...rows.values()];
    },
    actions: {
      pause: {
        label: 'Pause',
        appliesTo: (r) => !r.paused,
        run: async (args) => {
          const p = await queue.pause({ queue: queueName(args, 'queue'), kind: queueName(args, 'kind') });
          return { paused: p };
        },
      },
      resume: {
        label: 'Resume',
        appliesTo: (r) => Boolean(r.paused),
        run: async (args) => {
          const row = { queue: queueName(args, 'queue'), kind: queueName(args, 'kind') };
          const by = await covering(row);
          if (by.length === 0) throw new HttpError(409, 'CONFLICT', `${row.queue}/${row.kind} is not paused`);
          for (const p of by) await queue.resume({ queue: p.queue ?? undefined, kind: p.kind ?? undefined });
          return { resumed: by };
        },
      },
    },
  });

  dash.addPanel({
    id: 'jobs',
    title: 'Jobs (newest)',
    load: async () => (await queue.list({ limit: o.jobsLimit })).map(jobRow),
    actions: { retry, cancel },
  });

  dash.addPanel({
    id: 'pipelines',
    title: 'Pipelines and their stages',
    load: async () =>
      (await queue.list({ limit: o.pipelineScanLimit }))
        .filter((j) => j.stages && j.stages.length > 0)
        .slice(0, o.jobsLimit)
        .map((j) => {
          const stages = j.stages as string[];
          const at = j.stage === null ? stages.length : stages.indexOf(j.stage) + 1;
          return {
            id: j.id,
            kind: j.kind,
            stages: stages.map((s) => (s === j.stage ? `[${s}]` : s)).join(' → '),
            progress: `${at}/${stages.length}`,
            stage: j.stage,
            state: j.state,
            attempt: j.attempt,
            lastError: j.lastError,
          };
        }),
    actions: { retry, cancel },
  });

  dash.addPanel({
    id: 'stuck',
    title: `Stuck jobs (in their stage over ${Math.round(o.stuckThresholdMs / 1000)} s)`,
    load: async () => (await queue.stuck({ thresholdMs: o.stuckThresholdMs, limit: o.deadLimit })).map((j) => ({ ...jobRow(j), stuckMs: j.stuckMs })),
    actions: { cancel },
  });

  dash.addPanel({
    id: 'mailboxes',
    title: 'Mailboxes',
    load: () => mailbox.stats({ estimate: true, samplePages: o.estimateSamplePages }),
    actions: {
      redrive: {
        label: 'Redrive dead',
        appliesTo: (r) => Number(r.dead) > 0,
        run: async (args) => ({ redriven: await mailbox.redrive(text(args, 'to')) }),
      },
    },
  });

  dash.addPanel({
    id: 'mailbox-dead',
    title: 'Mailbox dead letters',
    load: async () => {
      const rows: Record<string, unknown>[] = [];
      for (const d of await mailbox.stats({ estimate: true, samplePages: o.estimateSamplePages })) {
        if (d.dead === 0 || rows.length >= o.deadLimit) continue;
        for (const m of await mailbox.deadLetters(d.to, { limit: o.deadLimit - rows.length })) {
          rows.push({ id: m.id, to: m.to, topic: m.topic, attempts: m.attempts, lastError: m.lastError, deadAt: m.deadAt });
        }
      }
      return rows;
    },
    actions: {
      redrive: {
        label: 'Redrive',
        run: async (args) => {
          const redriven = await mailbox.redrive(text(args, 'to'), { ids: [text(args, 'id')] });
          if (redriven === 0) throw new HttpError(409, 'CONFLICT', `message ${String(args.id)} is not dead`);
          return { redriven };
        },
      },
    },
  });

  dash.addPanel({
    id: 'outbox',
    title: 'Outbox backlog',
    load: () => outbox.stats({ estimate: true }),
    actions: { 'redrive-all': { label: 'Redrive all dead letters', scope: 'panel', run: async () => ({ redriven: await outbox.redrive({}) }) } },
  });

  dash.addPanel({
    id: 'outbox-dead',
    title: 'Outbox dead letters',
    load: async () =>
      (await outbox.dead({ limit: o.deadLimit })).map((e) => ({ id: e.id, type: e.type, key: e.key, attempts: e.attempts, lastError: e.lastError, deadAt: e.deadAt })),
    actions: {
      redrive: {
        label: 'Redrive',
        run: async (args) => {
          const id = text(args, 'id');
          if (!UUID.test(id)) throw new HttpError(400, 'INVALID_ARGUMENT', 'args.id must be an outbox event id (a UUID)');
          const redriven = await outbox.redrive({ ids: [id] });
          if (redriven === 0) throw new HttpError(409, 'CONFLICT', `event ${String(args.id)} is not dead`);
          return { redriven };
        },
      },
    },
  });

  dash.addPanel({
    id: 'topic-dead',
    title: 'Topic dead letters',
    load: async () => {
      const rows: Record<string, unknown>[] = [];
      for (const t of await topics.list()) {
        if (rows.length >= o.deadLimit) break;
        for (const d of await topics.deadLetters(t, { limit: o.deadLimit - rows.length })) {
          rows.push({ topic: t, group: d.group, position: d.position, key: d.key, attempts: d.attempts, lastError: d.lastError, deadAt: d.deadAt, redriving: d.redriving });
        }
      }
      return rows;
    },
    actions: {
      redrive: {
        label: 'Redrive',
        appliesTo: (r) => r.redriving === false,
        run: async (args) => {
          const redriven = await topics.redrive(text(args, 'topic'), text(args, 'group'), { positions: [text(args, 'position')] });
          if (redriven === 0) throw new HttpError(409, 'CONFLICT', `position ${String(args.position)} is not a dead letter of that group`);
          return { redriven };
        },
      },
    },
  });
}

/** For tests and docs: the state columns of the `queues` panel. */
export const QUEUE_STATE_COLUMNS: readonly (JobState | 'scheduled')[] = STATE_COLUMNS;
