import type { Executor } from '../driver/types.js';

/** What `herald doctor` and `/metrics` read about the server itself. */
export interface ServerHealth {
  /** `pg_is_in_recovery()`: a standby (or a server still replaying WAL after a crash). */
  inRecovery: boolean;
  connections: {
    /** Client backends connected now (every database, every role). */
    used: number;
    /** `max_connections`. */
    max: number;
    /** Slots only superusers (`superuser_reserved_connections`) or roles with pg_use_reserved_connections (`reserved_connections`, PG 16+) may take. */
    reserved: number;
    /** Slots left for ordinary roles: max - reserved - used (may be negative while superusers use reserved slots). */
    free: number;
  };
}

/**
 * One cheap statement (no table is read) about the server: recovery mode and
 * connection headroom. When `free` reaches 0, new connections of ordinary roles fail
 * with SQLSTATE 53300 (too_many_connections).
 */
export async function serverHealth(executor: Executor, timeoutMs?: number): Promise<ServerHealth> {
  const { rows } = await executor.query<{ in_recovery: boolean; used: number; max: number; reserved: number }>(
    `SELECT pg_is_in_recovery() AS in_recovery,
            (SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend')::int AS used,
            current_setting('max_connections')::int AS max,
            (current_setting('superuser_reserved_connections')::int
              + coalesce(nullif(current_setting('reserved_connections', true), '')::int, 0)) AS reserved`,
    [],
    timeoutMs === undefined ? undefined : { timeoutMs },
  );
  const r = rows[0];
  return { inRecovery: r.in_recovery, connections: { used: r.used, max: r.max, reserved: r.reserved, free: r.max - r.reserved - r.used } };
}
