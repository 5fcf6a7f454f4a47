/**
 * A primary with a streaming standby, for failover tests: both from the system's
 * PostgreSQL binaries (`pg_config --bindir`, the Debian PG 15 packages here), the
 * standby made by `pg_basebackup -R` and synchronous (`synchronous_standby_names = '*'` on the primary, once it streams),
 * so a commit made with `synchronous_commit = remote_apply` is applied on the standby
 * before it returns.
 */
import { execFileSync, spawnSync } from 'node:child_process';
import { chmodSync, chownSync, mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import pg from 'pg';
import { PostgresCluster, postgresOsUser } from '../../src/embedded/cluster.js';
import { pgDriver } from '../../src/driver/pg.js';
import { migrate } from '../../src/schema/migrator.js';
import { waitFor } from './wait.js';

export interface ReplicaPair {
  primary: PostgresCluster;
  standby: PostgresCluster;
  /** Promotes the standby (pg_promote, waiting for it) once the primary is gone. */
  promote(): Promise<void>;
  dispose(): Promise<void>;
}

export function systemBinDir(): string {
  return execFileSync('pg_config', ['--bindir'], { encoding: 'utf8' }).trim();
}

const SETTINGS = { fsync: 'off', wal_level: 'replica', max_wal_senders: 5, hot_standby: 'on', max_connections: 100 } as const;

export async function replicaPair(): Promise<ReplicaPair> {
  const binDir = systemBinDir();
  const tmp = mkdtempSync(join(tmpdir(), 'pgherald-replica-'));
  chmodSync(tmp, 0o755);
  const primary = await PostgresCluster.start({ dataDir: join(tmp, 'primary'), binDir, settings: { ...SETTINGS } });
  let standby: PostgresCluster | undefined;
  try {
    const driver = pgDriver({ connectionString: primary.url(), max: 1 });
    await migrate(driver);
    // Every session of the database waits for the standby to apply its commits.
    await driver.executor.query(`ALTER DATABASE postgres SET synchronous_commit = 'remote_apply'`);
    await driver.end();
    const standbyDir = join(tmp, 'standby');
    const user = postgresOsUser();
    mkdirSync(standbyDir, { mode: 0o700 });
    if (user) chownSync(standbyDir, user.uid, user.gid);
    const res = spawnSync(join(binDir, 'pg_basebackup'), ['-D', standbyDir, '-h', '127.0.0.1', '-p', String(primary.port), '-U', 'postgres', '-R', '-X', 'stream', '--no-sync', '--checkpoint=fast'], {
      uid: user?.uid,
      gid: user?.gid,
      encoding: 'utf8',
    });
    if (res.status !== 0) throw new Error(`pg_basebackup failed: ${res.stderr || res.error?.message}`);
    standby = await PostgresCluster.start({ dataDir: standbyDir, binDir, settings: { ...SETTINGS }, onLog: process.env.HERALD_TEST_PG_LOG ? (c) => void process.stderr.write(c) : undefined });
    // Wait until the standby streams.
    const c = new pg.Client({ connectionString: primary.url() });
    await c.connect();
    try {
      await waitFor(
        async () => (await c.query(`SELECT count(*)::int AS n FROM pg_stat_replication WHERE state = 'streaming'`)).rows[0].n > 0,
        { timeoutMs: 60_000, intervalMs: 100, what: 'the standby to stream' },
      );
      // Synchronous only now (a commit waits for a synchronous standby, and there was
      // none before), and on the primary only (after promotion nobody waits).
      await c.query(`ALTER SYSTEM SET synchronous_standby_names = '*'`);
      await c.query('SELECT pg_reload_conf()');
      await waitFor(async () => (await c.query(`SELECT count(*)::int AS n FROM pg_stat_replication WHERE sync_state = 'sync'`)).rows[0].n > 0, {
        timeoutMs: 60_000,
        intervalMs: 100,
        what: 'the standby to be synchronous',
      });
    } finally {
      await c.end();
    }
  } catch (err) {
    await standby?.stop();
    await primary.stop();
    rmSync(tmp, { recursive: true, force: true });
    throw err;
  }
  const s = standby;
  return {
    primary,
    standby: s,
    async promote() {
      const c = new pg.Client({ connectionString: s.url() });
      await c.connect();
      try {
        await c.query('SELECT pg_promote(true, 60)');
      } finally {
        await c.end();
      }
    },
    async dispose() {
      await s.stop();
      await primary.stop();
      rmSync(tmp, { recursive: true, force: true });
    },
  };
}
