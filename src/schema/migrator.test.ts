import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { after, before, describe, it } from 'node:test';
import pg from 'pg';
import { pgDriver } from '../driver/pg.js';
import { freshDatabase, type TestDatabase } from '../../test/support/db.js';
import { migrate, migrations, migrationScript, migrationStatus, OUTSIDE_SCRIPT_MARKER } from './migrator.js';

let db: TestDatabase;
before(async () => {
  db = await freshDatabase({ migrated: false });
});
after(async () => db.drop());

/** Runs migrate() in a separate Node process, as a real deployment of many replicas would. */
function migrateInChild(url: string, schema: string): Promise<number[]> {
  const code = `
    import { pgDriver } from './src/driver/pg.ts';
    import { migrate } from './src/schema/migrator.ts';
    const d = pgDriver({ connectionString: process.argv[1], max: 1 });
    const applied = await migrate(d, process.argv[2]);
    await d.end();
    process.stdout.write(JSON.stringify(applied));`;
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', code, url, schema], { stdio: ['ignore', 'pipe', 'inherit'] });
    let out = '';
    child.stdout.on('data', (c) => (out += c));
    child.on('exit', (c) => (c === 0 ? resolve(JSON.parse(out)) : reject(new Error(`migrate child exited ${c}`))));
  });
}

describe('migrations', () => {
  it('are numbered .sql files in order', () => {
    const versions = migrations().map((m) => m.version);
    assert.deepEqual(versions, [...versions].sort((a, b) => a - b));
    assert.equal(versions[0], 1);
    assert.equal(new Set(versions).size, versions.length);
  });

  it('apply exactly once when six processes migrate the same schema at once', async () => {
    const results = await Promise.all(Array.from({ length: 6 }, () => migrateInChild(db.url, 'herald')));
    const all = migrations().map((m) => m.version);
    const appliedBy = results.filter((r) => r.length > 0);
    assert.equal(appliedBy.length, 1, 'one process applied them');
    assert.deepEqual(appliedBy[0], all);
    const driver = pgDriver({ connectionString: db.url, max: 1 });
    try {
      const status = await migrationStatus(driver.executor, 'herald');
      assert.ok(status.every((m) => m.appliedAt instanceof Date));
      assert.deepEqual(await migrate(driver, 'herald'), []);
    } finally {
      await driver.end();
    }
  });

  it('use a configurable schema, and report pending ones', async () => {
    const driver = pgDriver({ connectionString: db.url, max: 1 });
    try {
      const pending = await migrationStatus(driver.executor, 'Other_Schema');
      assert.ok(pending.every((m) => m.appliedAt === null));
      assert.deepEqual(await migrate(driver, 'Other_Schema'), migrations().map((m) => m.version));
      const { rows } = await driver.executor.query<{ n: number }>(
        `SELECT count(*)::int AS n FROM information_schema.tables WHERE table_schema = 'Other_Schema' AND table_name = 'migrations'`,
      );
      assert.equal(rows[0].n, 1);
    } finally {
      await driver.end();
    }
  });

  it('print an idempotent SQL script that a migration tool can run, after which migrate() has nothing to do', async () => {
    const script = migrationScript('scripted');
    const client = new pg.Client({ connectionString: db.url });
    await client.connect();
    try {
      // The transactional part in one go; what follows the marker one statement at a time.
      const [inTx, outside = ''] = script.split(OUTSIDE_SCRIPT_MARKER);
      for (let i = 0; i < 2; i++) {
        // twice: idempotent
        await client.query(inTx);
        for (const st of outside.split(/;\n/).filter((x) => x.replace(/--[^\n]*/g, '').trim())) await client.query(st);
      }
    } finally {
      await client.end();
    }
    const driver = pgDriver({ connectionString: db.url, max: 1 });
    try {
      assert.deepEqual(await migrate(driver, 'scripted'), []);
    } finally {
      await driver.end();
    }
  });
});
