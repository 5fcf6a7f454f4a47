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
    const migrator = pgDriver({ connectionString: db.url, max: 2 });
    let stop = false;
    let writes = 0;
    let worst = 0;
    const blockedSamples: string[] = [];
    try {
      // Four writers insert and update jobs for as long as the upgrade runs.
      const writing = Array.from({ length: 4 }, async (_, w) => {
        while (!stop) {
          const t = performance.now();
          // Each writer updates its own row: writers never wait on one another, only DDL could make them wait.
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
          const r = await adminQuery<{ pid: number; query: string; blockers: number[] }>(
            `SELECT pid, query, pg_blocking_pids(pid) AS blockers FROM pg_stat_activity
              WHERE datname = $1 AND application_name = 'upgrade-writer' AND wait_event_type = 'Lock'`,
            [db.name],
          );
          for (const b of r) blockedSamples.push(`${b.pid} blocked by ${b.blockers.join(',')}: ${b.query}`);
          await new Promise((res) => setImmediate(res));
        }
      })();
      const startWrites = writes;
      const applied = await migrate(migrator, 'herald');
      const during = writes - startWrites;
      stop = true;
      await Promise.all([...writing, sampling]);
      assert.deepEqual(applied, migrations().filter((m) => m.version > 7).map((m) => m.version));
      assert.deepEqual(blockedSamples, [], 'no writer ever waited on a lock during the upgrade');
      assert.ok(during > 0, 'writes went on during the upgrade');
      console.log(`# upgrade over ${rows} jobs: ${during} writes during it, slowest write ${worst.toFixed(0)} ms`);
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
