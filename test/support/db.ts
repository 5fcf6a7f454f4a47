/**
 * Databases for tests: every test file gets a fresh database cloned from the migrated
 * template that `test/run.ts` prepared, on the run's one cluster.
 */
import { randomBytes } from 'node:crypto';
import pg from 'pg';
import { privateCluster } from './cluster.js';

export const TEMPLATE_DB = 'herald_template';

/** The run's admin connection string (set by test/run.ts). */
export function adminUrl(): string {
  const url = process.env.HERALD_TEST_ADMIN_URL ?? process.env.DATABASE_URL;
  if (!url) throw new Error('run tests with `npm test` (it starts Postgres), or set DATABASE_URL');
  return url;
}

/** Connection string of `database` on the run's server. */
export function databaseUrl(database: string, base = adminUrl()): string {
  const url = new URL(base);
  url.pathname = '/' + database;
  return url.toString();
}

/** Runs one statement as the admin user. */
export async function adminQuery<R = Record<string, unknown>>(text: string, values: unknown[] = [], url = adminUrl()): Promise<R[]> {
  const client = new pg.Client({ connectionString: url });
  client.on('error', () => {});
  await client.connect();
  try {
    return (await client.query(text, values)).rows as R[];
  } finally {
    await client.end().catch(() => {});
  }
}

export interface TestDatabase {
  name: string;
  url: string;
  drop(): Promise<void>;
}

/**
 * A new database for one test file. `migrated: false` gives an empty database
 * (cloned from template0) for tests of the migrator itself. `isolated: true` gives
 * the file a whole cluster of its own (its `postgres` database): for parts whose
 * behaviour depends on cluster-wide state, such as the topics' visibility horizon,
 * which other files' open transactions hold back.
 */
export async function freshDatabase(options: { migrated?: boolean; base?: string; isolated?: boolean } = {}): Promise<TestDatabase> {
  if (options.isolated) {
    const pc = await privateCluster({ migrated: options.migrated });
    return { name: 'postgres', url: pc.url, drop: () => pc.dispose() };
  }
  const base = options.base ?? adminUrl();
  const name = 't_' + randomBytes(6).toString('hex');
  const template = options.migrated === false ? 'template0' : TEMPLATE_DB;
  await adminQuery(`CREATE DATABASE ${name} TEMPLATE ${template}`, [], base);
  return {
    name,
    url: databaseUrl(name, base),
    async drop() {
      await adminQuery(`DROP DATABASE IF EXISTS ${name} WITH (FORCE)`, [], base).catch(() => {});
    },
  };
}

/** pg_terminate_backend on every session of `database` matching the filter; returns how many. */
export async function terminateBackends(
  database: string,
  filter: { applicationName?: string; query?: string; pid?: number } = {},
  url = adminUrl(),
): Promise<number> {
  const rows = await adminQuery<{ n: number }>(
    `SELECT count(pg_terminate_backend(pid))::int AS n FROM pg_stat_activity
      WHERE datname = $1 AND pid <> pg_backend_pid()
        AND ($2::text IS NULL OR application_name = $2)
        AND ($3::text IS NULL OR query LIKE $3)
        AND ($4::int IS NULL OR pid = $4)`,
    [database, filter.applicationName ?? null, filter.query ?? null, filter.pid ?? null],
    url,
  );
  return rows[0]?.n ?? 0;
}

/**
 * A client of a new database `name` on the server of `url` (another database of the same
 * cluster: for cluster-wide facts such as a transaction held open elsewhere).
 */
export async function otherDatabaseClient(url: string, name = 'other_app'): Promise<pg.Client> {
  await adminQuery(`CREATE DATABASE ${name}`, [], url);
  const other = new URL(url);
  other.pathname = '/' + name;
  const c = new pg.Client({ connectionString: other.toString() });
  c.on('error', () => {});
  await c.connect();
  return c;
}

/**
 * A write transaction held open in another database of the same cluster (`name`), as a
 * stuck neighbour would hold one: its xid holds back cleanup everywhere. `release()`
 * rolls it back and closes the session; call it in `finally`.
 */
export async function heldWriteTransaction(url: string, name?: string): Promise<{ client: pg.Client; release(): Promise<void> }> {
  const client = await otherDatabaseClient(url, name);
  const release = async () => {
    await client.query('ROLLBACK').catch(() => {});
    await client.end().catch(() => {});
  };
  try {
    await client.query('CREATE TABLE w (v int)');
    await client.query('BEGIN');
    await client.query('INSERT INTO w VALUES (1)');
  } catch (err) {
    await release();
    throw err;
  }
  return { client, release };
}
