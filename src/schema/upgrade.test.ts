/**
 * Upgrades of a database that holds data: migrations come from the compiled module,
 * indexes on big tables are built CONCURRENTLY (writes go on), and an interrupted
 * build is repaired by the next run.
 */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { after, before, describe, it } from 'node:test';
import { pgDriver } from '../driver/pg.js';
import { adminQuery, freshDatabase, type TestDatabase } from '../../test/support/db.js';
import { scaled } from '../../test/support/scale.js';
import { migrate, migrations, migrationStatus } from './migrator.js';

const run = promisify(execFile);
const root = new URL('../..', import.meta.url).pathname;

let db: TestDatabase;
before(async () => {
  db = await freshDatabase({ migrated: false });
});
after(async () => db.drop());

/** Versions of the migrations whose statements run outside a transaction. */
const online = migrations().filter((m) => m.outside.length > 0).map((m) => m.version);

describe('schema upgrades', () => {
  it('the compiled migrations module matches the .sql files', async () => {
    const out = await run(process.execPath, ['scripts/build-migrations.mjs', '--check'], { cwd: root }).catch((e) => e);
    assert.equal(out.code ?? 0, 0, `${out.stderr ?? ''}`);
    assert.ok(online.includes(8), 'migration 008 builds its index outside a transaction');
  });

  it('an upgrade over a large jobs table never blocks the writers', async () => {
    const rows = scaled(1_000_000, 50_000);
    const setup = pgDriver({ connectionString: db.url, max: 1 });
    await migrate(setup, 'herald', { to: 7 });
    await setup.executor.query(
      `INSERT INTO herald.jobs (kind, payload, state, lease_expires_at)
       SELECT 'bulk', jsonb_build_object('i', g), CASE WHEN g % 10 = 0 THEN 'running' ELSE 'completed' END,
              CASE WHEN g % 10 = 0 THEN now() + interval '1 hour' END
         FROM generate_series(1, $1) g`,
      [rows],
    );
    await setup.executor.query('ANALYZE herald.jobs');
    await setup.end();

    const url = new URL(db.url);
    url.searchParams.set('application_name', 'upgrade-writer');
    const writers = pgDriver({ connectionString: url.toString(), max: 4 });
    const murl = new URL(db.url);
    murl.searchParams.set('application_name', 'upgrade-migrator');
    const migrator = pgDriver({ connectionString: murl.toString(), max: 2 });
    let stop = false;
    let writes = 0;
    let worst = 0;
    const blockedSamples: string[] = [];
    let waitsOnDdl = 0;
    let writerWaits = 0;
    try {
      // Four writers insert and update jobs for as long as the upgrade runs.
      const writing = Array.from({ length: 4 }, async (_, w) => {
        while (!stop) {
          const t = performance.now();
          // Each writer updates its own row: writers wait on one another only for the
          // table's extension lock (below); otherwise only DDL could make them wait.
          const ins = await writers.executor.query<{ id: string }>(
            `INSERT INTO herald.jobs (kind, payload) VALUES ('w', jsonb_build_object('w', $1::int)) RETURNING id`,
            [w],
          );
          await writers.executor.query(`UPDATE herald.jobs SET attempt = attempt + 1 WHERE id = $1`, [ins.rows[0].id]);
          worst = Math.max(worst, performance.now() - t);
          writes++;
        }
      });
      // A sampler: a writer waiting on a lock is what a blocking DDL would cause.
      const sampling = (async () => {
        while (!stop) {
          // A writer may wait a moment for a DDL of the upgrade (bounded by lockTimeoutMs);
          // it must never wait on anything else (an index build that blocks writes).
          const r = await adminQuery<{ pid: number; query: string; wait: string; blockers: string[] }>(
            `SELECT a.pid, a.query, a.wait_event AS wait,
                    array(SELECT b.application_name || ':' || left(b.query, 60) FROM pg_stat_activity b WHERE b.pid = ANY (pg_blocking_pids(a.pid))) AS blockers
               FROM pg_stat_activity a
              WHERE a.datname = $1 AND a.application_name = 'upgrade-writer' AND a.wait_event_type = 'Lock'`,
            [db.name],
          );
          for (const b of r) {
            if (b.blockers.every((x) => x.startsWith('upgrade-migrator:') && !/CONCURRENTLY/i.test(x))) waitsOnDdl++;
            // Writers among themselves (the relation extension lock of four inserters into
            // one table, 'extend'): not the upgrade.
            else if (b.blockers.length > 0 && b.blockers.every((x) => x.startsWith('upgrade-writer:'))) writerWaits++;
            else blockedSamples.push(`${b.pid} blocked by ${b.blockers.join(' | ')} (${b.wait}): ${b.query}`);
          }
          await new Promise((res) => setImmediate(res));
        }
      })();
      const startWrites = writes;
      const applied = await migrate(migrator, 'herald');
      const during = writes - startWrites;
      stop = true;
      await Promise.all([...writing, sampling]);
      assert.deepEqual(applied, migrations().filter((m) => m.version > 7).map((m) => m.version));
      assert.deepEqual(blockedSamples, [], 'no writer waited on anything but a short DDL of the upgrade');
      assert.ok(during > 0, 'writes went on during the upgrade');
      console.log(`# upgrade over ${rows} jobs: ${during} writes during it, slowest write ${worst.toFixed(0)} ms, ${waitsOnDdl} samples of a writer waiting on a DDL, ${writerWaits} on another writer`);
      const idx = await migrator.executor.query<{ valid: boolean }>(
        `SELECT i.indisvalid AS valid FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid WHERE c.relname = 'jobs_lease_expiry_idx'`,
      );
      assert.deepEqual(idx.rows, [{ valid: true }]);
      const old = await migrator.executor.query(`SELECT 1 FROM pg_class WHERE relname = 'jobs_lease_idx'`);
      assert.equal(old.rows.length, 0);
    } finally {
      stop = true;
      await writers.end();
      await migrator.end();
    }
  });

  it('a migration whose DDL waits behind a long transaction gives up after lockTimeoutMs and retries: writers go on meanwhile', async () => {
    const other = await freshDatabase({ migrated: false });
    const driver = pgDriver({ connectionString: other.url, max: 3 });
    const holder = pgDriver({ connectionString: other.url, max: 1 });
    const writer = pgDriver({ connectionString: other.url, max: 1 });
    let release!: () => void;
    const released = new Promise<void>((r) => (release = r));
    let holding: Promise<unknown> | undefined;
    try {
      const target = migrations().find((m) => /ALTER TABLE :schema\.jobs ADD COLUMN/i.test(m.sql));
      assert.ok(target, 'a migration alters the jobs table');
      await migrate(driver, 'herald', { to: target.version - 1 });
      // A long transaction that wrote to jobs holds its ROW EXCLUSIVE lock until it ends.
      let holds!: () => void;
      const held = new Promise<void>((r) => (holds = r));
      holding = holder.transaction(async (tx) => {
        await tx.query(`INSERT INTO herald.jobs (kind) VALUES ('long')`);
        holds();
        await released;
      });
      await held;
      const upgrading = migrate(driver, 'herald', { lockTimeoutMs: 100, lockRetries: 1_000 });
      // The ALTER TABLE cannot get its lock; a writer must not queue behind it for good.
      // Each insert below would hang until the long transaction ends if the DDL waited
      // without a lock_timeout; here each returns (at worst after one lockTimeoutMs).
      for (let i = 0; i < 20; i++) await writer.executor.query(`INSERT INTO herald.jobs (kind) VALUES ('writer')`);
      const status = await migrationStatus(writer.executor);
      assert.ok(status.some((m) => m.version === target.version && m.appliedAt === null), 'the migration is still waiting for its lock');
      release();
      await holding;
      const applied = await upgrading;
      assert.ok(applied.includes(target.version));
      const count = await writer.executor.query<{ n: number }>(`SELECT count(*)::int AS n FROM herald.jobs WHERE kind = 'writer'`);
      assert.equal(count.rows[0].n, 20);
    } finally {
      release();
      await holding?.catch(() => {});
      await Promise.all([driver.end(), holder.end(), writer.end()]);
      await other.drop();
    }
  });

  it('an index build that was interrupted is dropped and built again by the next run', async () => {
    const other = await freshDatabase({ migrated: false });
    const driver = pgDriver({ connectionString: other.url, max: 2 });
    try {
      await migrate(driver, 'herald', { to: 7 });
      await driver.executor.query(`INSERT INTO herald.jobs (kind) SELECT 'dup' FROM generate_series(1, 10)`);
      // A concurrent build that fails leaves an INVALID index under the name 008 wants.
      await assert.rejects(driver.executor.query(`CREATE UNIQUE INDEX CONCURRENTLY jobs_lease_expiry_idx ON herald.jobs (kind)`));
      const before = await driver.executor.query<{ valid: boolean }>(
        `SELECT i.indisvalid AS valid FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid WHERE c.relname = 'jobs_lease_expiry_idx'`,
      );
      assert.deepEqual(before.rows, [{ valid: false }]);
      await migrate(driver, 'herald');
      const after = await driver.executor.query<{ valid: boolean; def: string }>(
        `SELECT i.indisvalid AS valid, pg_get_indexdef(i.indexrelid) AS def FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid WHERE c.relname = 'jobs_lease_expiry_idx'`,
      );
      assert.equal(after.rows.length, 1);
      assert.equal(after.rows[0].valid, true);
      assert.match(after.rows[0].def, /\(lease_expires_at\) WHERE \(lease_expires_at IS NOT NULL\)/);
      assert.ok((await migrationStatus(driver.executor)).every((m) => m.appliedAt !== null));
    } finally {
      await driver.end();
      await other.drop();
    }
  });
});
