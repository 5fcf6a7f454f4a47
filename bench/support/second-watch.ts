/**
 * What else happened in each second of a soak, to read its worst seconds against: the
 * longest event-loop delay and GC pause of this process, the server's WAL fsyncs
 * (`pg_stat_io`, Postgres 18+; time needs `track_wal_io_timing`), checkpoints, and the
 * autovacuum workers running in the database (plus any event the soak adds itself,
 * e.g. a retention run). Shared by bench/soak.ts and bench/soak-messaging.ts.
 */
import { monitorEventLoopDelay, PerformanceObserver } from 'node:perf_hooks';
import type pg from 'pg';

export interface SecondWatchSample {
  /** Longest event-loop delay of the second (ms). */
  loopMaxMs: number;
  /** Longest GC pause of the second (ms). */
  gcMaxMs: number;
  /** WAL fsync time of the second (ms; null before Postgres 18). */
  walSyncMs: number | null;
  /** WAL fsyncs of the second (null before Postgres 18). */
  walSyncs: number | null;
  /** Checkpoints that ended, autovacuum workers seen, and the soak's own events. */
  events: string[];
}

export class SecondWatch {
  readonly #monitor: pg.Client;
  readonly #db: string;
  readonly #loop = monitorEventLoopDelay({ resolution: 5 });
  readonly #gc: PerformanceObserver;
  #gcMax = 0;
  #events: string[] = [];
  #checkpointSql = '';
  #walSql: string | undefined;
  #lastCheckpoints = 0;
  #lastWal: { ms: number; n: number } | undefined;

  private constructor(monitor: pg.Client, db: string) {
    this.#monitor = monitor;
    this.#db = db;
    this.#gc = new PerformanceObserver((list) => {
      for (const e of list.getEntries()) this.#gcMax = Math.max(this.#gcMax, e.duration);
    });
  }

  /** Starts watching the database `db` through `monitor` (a connected client of its own). */
  static async start(monitor: pg.Client, db: string): Promise<SecondWatch> {
    const w = new SecondWatch(monitor, db);
    const version = Number((await monitor.query<{ v: string }>(`SELECT current_setting('server_version_num') AS v`)).rows[0].v);
    w.#checkpointSql = version >= 170000
      ? `SELECT (num_timed + num_requested)::int AS n FROM pg_stat_checkpointer`
      : `SELECT (checkpoints_timed + checkpoints_req)::int AS n FROM pg_stat_bgwriter`;
    w.#walSql = version >= 180000
      ? `SELECT coalesce(sum(fsync_time), 0)::float8 AS ms, coalesce(sum(fsyncs), 0)::float8 AS n FROM pg_stat_io WHERE object = 'wal'`
      : undefined;
    w.#lastCheckpoints = (await monitor.query<{ n: number }>(w.#checkpointSql)).rows[0].n;
    w.#lastWal = await w.#wal();
    w.#loop.enable();
    w.#gc.observe({ entryTypes: ['gc'] });
    return w;
  }

  /** Adds an event to the current second. */
  event(text: string): void {
    this.#events.push(text);
  }

  /** The second since the last sample (or the start), then starts the next one. */
  async sample(): Promise<SecondWatchSample> {
    const checkpoints = (await this.#monitor.query<{ n: number }>(this.#checkpointSql)).rows[0].n;
    if (checkpoints > this.#lastCheckpoints) this.#events.push('checkpoint');
    this.#lastCheckpoints = checkpoints;
    const wal = await this.#wal();
    const vacuums = await this.#monitor.query<{ q: string }>(`SELECT query AS q FROM pg_stat_activity WHERE datname = $1 AND backend_type = 'autovacuum worker'`, [this.#db]);
    for (const v of vacuums.rows) this.#events.push(v.q.replace(/^autovacuum:\s*/, 'autovacuum ').slice(0, 80));
    const s: SecondWatchSample = {
      loopMaxMs: this.#loop.max / 1e6,
      gcMaxMs: this.#gcMax,
      walSyncMs: wal && this.#lastWal ? wal.ms - this.#lastWal.ms : null,
      walSyncs: wal && this.#lastWal ? wal.n - this.#lastWal.n : null,
      events: this.#events,
    };
    this.#lastWal = wal;
    this.#loop.reset();
    this.#gcMax = 0;
    this.#events = [];
    return s;
  }

  stop(): void {
    this.#loop.disable();
    this.#gc.disconnect();
  }

  async #wal(): Promise<{ ms: number; n: number } | undefined> {
    return this.#walSql ? (await this.#monitor.query<{ ms: number; n: number }>(this.#walSql)).rows[0] : undefined;
  }
}
