import type { Executor } from '../driver/types.js';

/**
 * Takes or renews the lease of `role` for `ttlMs` (database time): succeeds when nobody
 * holds it, the lease expired, or `holder` already holds it. One row per role in
 * `queue_leaders` (the table predates the maintenance service; cron and maintenance
 * share it, each under its own role).
 */
export async function leaderAcquire(x: Executor, s: string, role: string, holder: string, ttlMs: number): Promise<boolean> {
  const { rows } = await x.query(
    `INSERT INTO ${s}.queue_leaders AS l (role, holder, expires_at) VALUES ($1, $2, now() + $3 * interval '1 millisecond')
     ON CONFLICT (role) DO UPDATE SET holder = EXCLUDED.holder, expires_at = EXCLUDED.expires_at
      WHERE l.holder = EXCLUDED.holder OR l.expires_at < now()
     RETURNING holder`,
    [role, holder, ttlMs],
  );
  return rows.length === 1;
}

/** Gives the lease of `role` up (only if `holder` holds it): the next candidate takes it at once. */
export async function leaderRelease(x: Executor, s: string, role: string, holder: string): Promise<void> {
  await x.query(`DELETE FROM ${s}.queue_leaders WHERE role = $1 AND holder = $2`, [role, holder]);
}

/** The live holder of `role` (lease not expired), or undefined. */
export async function leaderGet(x: Executor, s: string, role: string): Promise<{ holder: string; expires_at: Date } | undefined> {
  const { rows } = await x.query<{ holder: string; expires_at: Date }>(
    `SELECT holder, expires_at FROM ${s}.queue_leaders WHERE role = $1 AND expires_at >= now()`,
    [role],
  );
  return rows[0];
}

/** One task's row in `maintenance_tasks`. */
export interface TaskRow {
  task: string;
  enabled: boolean;
  interval_ms: number;
  retention_ms: number | null;
  runs: string;
  errors: string;
  last_started_at: Date | null;
  last_finished_at: Date | null;
  last_rows: string | null;
  last_duration_ms: number | null;
  last_error: string | null;
  next_run_at: Date | null;
  holder: string | null;
  /** ms until next_run_at (database time), 0 when due; null when never planned. */
  due_in_ms: number | null;
}

/**
 * Plans a task as the leader sees it: its settings and its next run, `inMs` from now
 * when given, else one interval after its last run (at once when it never ran or is
 * overdue). Returns the delay in ms (database time) until that run.
 */
export async function taskPlan(
  x: Executor,
  s: string,
  t: { task: string; enabled: boolean; intervalMs: number; retentionMs: number | null; holder: string; inMs: number | null },
): Promise<number> {
  const { rows } = await x.query<{ due_in_ms: number }>(
    `INSERT INTO ${s}.maintenance_tasks AS m (task, enabled, interval_ms, retention_ms, holder, next_run_at)
     VALUES ($1, $2, $3, $4, $5, now() + coalesce($6, 0) * interval '1 millisecond')
     ON CONFLICT (task) DO UPDATE SET enabled = EXCLUDED.enabled, interval_ms = EXCLUDED.interval_ms,
            retention_ms = EXCLUDED.retention_ms, holder = EXCLUDED.holder,
            next_run_at = CASE WHEN $6::float8 IS NOT NULL THEN EXCLUDED.next_run_at
                               ELSE greatest(now(), coalesce(m.last_finished_at + $3 * interval '1 millisecond', now())) END
     RETURNING greatest(0, extract(epoch FROM next_run_at - now()) * 1000)::float8 AS due_in_ms`,
    [t.task, t.enabled, t.intervalMs, t.retentionMs, t.holder, t.inMs],
  );
  return Number(rows[0].due_in_ms);
}

/**
 * Records one run of a task (counters, last outcome) and plans the next one `intervalMs`
 * later. When the task has no record yet (no leader ever planned it: a `herald
 * maintenance run` on a fresh database), the record starts with the running process's
 * own settings (`enabled`, `intervalMs`, `retentionMs`); an existing record keeps the
 * settings its leader wrote.
 */
export async function taskRecord(
  x: Executor,
  s: string,
  r: { task: string; holder: string; startedAt: Date; rows: number; durationMs: number; error: string | null; intervalMs: number; enabled: boolean; retentionMs: number | null },
): Promise<void> {
  await x.query(
    `INSERT INTO ${s}.maintenance_tasks AS m (task, enabled, interval_ms, retention_ms, runs, errors, last_started_at, last_finished_at, last_rows, last_duration_ms, last_error, next_run_at, holder)
     VALUES ($1, $8, $7, $9, 1, CASE WHEN $6::text IS NULL THEN 0 ELSE 1 END, $3, now(), $4, $5, $6, now() + $7 * interval '1 millisecond', $2)
     ON CONFLICT (task) DO UPDATE SET runs = m.runs + 1, errors = m.errors + CASE WHEN $6::text IS NULL THEN 0 ELSE 1 END,
            last_started_at = $3, last_finished_at = now(), last_rows = $4, last_duration_ms = $5, last_error = $6,
            next_run_at = now() + $7 * interval '1 millisecond', holder = $2`,
    [r.task, r.holder, r.startedAt, r.rows, r.durationMs, r.error, r.intervalMs, r.enabled, r.retentionMs],
  );
}

/** Every task's row. */
export async function taskList(x: Executor, s: string): Promise<TaskRow[]> {
  const { rows } = await x.query<TaskRow>(
    `SELECT task, enabled, interval_ms, retention_ms, runs::text AS runs, errors::text AS errors, last_started_at, last_finished_at,
            last_rows::text AS last_rows, last_duration_ms, last_error, next_run_at, holder,
            greatest(0, extract(epoch FROM next_run_at - now()) * 1000)::float8 AS due_in_ms
       FROM ${s}.maintenance_tasks ORDER BY task`,
  );
  return rows;
}
