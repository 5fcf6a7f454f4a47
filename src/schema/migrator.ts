import { MIGRATE_APPLICATION_NAME, type Driver, type Executor, type ListenSession } from '../driver/types.js';
import { HeraldError, InvalidOptionError } from '../errors.js';
import { sleep } from '../internal/backoff.js';
import { schemaIdent } from '../internal/ident.js';
import { MIGRATION_FILES } from './migrations.gen.js';

/** One numbered migration. */
export interface Migration {
  version: number;
  name: string;
  /** Statements run in the migration's transaction (the part of the file before the marker). */
  sql: string;
  /**
   * Statements run one by one outside any transaction after `sql` commits: the part of
   * the file after a line `-- herald:outside-transaction`, split at `;` ending a line.
   * This is where indexes on tables that may be large are built `CONCURRENTLY`, so an
   * upgrade never blocks writes for the length of an index build.
   */
  outside: string[];
}

const OUTSIDE_MARKER = /^-- herald:outside-transaction[ \t]*$/m;

let cached: Migration[] | undefined;

/**
 * All migrations shipped with this version, in order. They are the numbered
 * `src/schema/sql/NNN_name.sql` files, compiled into a module at build time
 * (`scripts/build-migrations.mjs`): nothing is read from disk at run time.
 */
export function migrations(): Migration[] {
  if (cached) return cached;
  cached = MIGRATION_FILES.map((f) => {
    const m = OUTSIDE_MARKER.exec(f.sql);
    const inside = m ? f.sql.slice(0, m.index) : f.sql;
    const outside = m
      ? f.sql
          .slice(m.index + m[0].length)
          .split(/;[ \t]*$/m)
          .map((st) => st.replace(/^\s*(--[^\n]*\n\s*)*/, '').trim())
          .filter((st) => st.length > 0)
      : [];
    // A part made of comments only is no statement at all.
    const sql = inside.replace(/--[^\n]*/g, '').trim() ? inside : '';
    return { version: f.version, name: f.name, sql, outside };
  });
  return cached;
}

/** The SQL of one migration for `schema` (the schema name is validated and quoted). */
export function migrationSql(m: Migration, schema: string): string {
  return m.sql.replaceAll(':schema', schemaIdent(schema));
}

/** Status of one migration in a database. */
export interface MigrationStatus {
  version: number;
  name: string;
  appliedAt: Date | null;
}

const LOCK_NAMESPACE = 'pgherald.migrate:';
// A second lock, held by a dedicated session for the whole run (statements outside a
// transaction included); the transaction-level lock above stays, so a process of an
// older version, which takes only that one, still waits for us.
const SESSION_LOCK_NAMESPACE = 'pgherald.migrate.session:';

/** Options of {@link migrate}. */
export interface MigrateOptions {
  /** Apply migrations up to this version only (tests of upgrades, staged rollouts). @defaultValue every shipped migration */
  to?: number;
  /**
   * Longest wait for a table lock a migration's DDL needs (`lock_timeout` of its
   * transaction). A DDL that waits for a lock makes every later writer of that table
   * wait behind it, so it gives up after this long, rolls back and tries again
   * (backoff 100 ms doubling to 2 s): writers are never held longer than this by a
   * waiting migration, even while a long transaction holds the table. @defaultValue 1000
   */
  lockTimeoutMs?: number;
  /** Tries per migration before failing with `MIGRATION` (lock waits that timed out). @defaultValue 60 */
  lockRetries?: number;
}

/** SQLSTATE of a lock wait that `lock_timeout` ended. */
const LOCK_NOT_AVAILABLE = '55P03';

/**
 * Applies every pending migration, each in its own transaction, under advisory locks
 * keyed by the schema name: many processes may call it at once; one applies, the
 * others wait and then find nothing to do. Statements a migration runs outside a
 * transaction (indexes built `CONCURRENTLY`) run after its transaction commits, and
 * the migration is recorded only when they all succeeded; an index left invalid by an
 * interrupted build is dropped and built again by the next run. The lock session is a
 * dedicated connection (the listen connection string's), since a session lock needs
 * a session even when the pool goes through a transaction pooler.
 *
 * @returns the versions this call applied
 */
export async function migrate(driver: Driver, schema = 'herald', options: MigrateOptions = {}): Promise<number[]> {
  const q = schemaIdent(schema);
  const to = options.to ?? Infinity;
  const lockTimeoutMs = options.lockTimeoutMs ?? 1000;
  const lockRetries = options.lockRetries ?? 60;
  if (!Number.isInteger(lockTimeoutMs) || lockTimeoutMs < 1) throw new InvalidOptionError('lockTimeoutMs', lockTimeoutMs, 'a positive integer number of ms');
  if (!Number.isInteger(lockRetries) || lockRetries < 1) throw new InvalidOptionError('lockRetries', lockRetries, 'a positive integer');
  let session: ListenSession | undefined;
  try {
    session = await driver.openListenSession({ applicationName: MIGRATE_APPLICATION_NAME });
    const s = session;
    // Polled, not waited on: a backend blocked in pg_advisory_lock() holds a snapshot,
    // and CREATE INDEX CONCURRENTLY (run by the holder) waits for every older snapshot
    // to end, which would be a deadlock.
    for (let delay = 20; ; delay = Math.min(delay * 2, 500)) {
      const got = await s.query<{ ok: boolean }>('SELECT pg_try_advisory_lock(hashtextextended($1, 0)) AS ok', [SESSION_LOCK_NAMESPACE + schema]);
      if (got.rows[0]?.ok) break;
      await sleep(delay);
    }
    const done: number[] = [];
    for (const m of migrations()) {
      if (m.version > to) break;
      // Its own transaction, under the transaction-level lock; re-checked there.
      const attempt = () => driver.transaction(async (tx) => {
        await tx.query('SELECT pg_advisory_xact_lock(hashtextextended($1, 0))', [LOCK_NAMESPACE + schema]);
        // Set after the advisory lock (waiting for another migrator is not a table lock wait).
        await tx.query(`SELECT set_config('lock_timeout', $1, true)`, [`${lockTimeoutMs}ms`]);
        await tx.query(`CREATE SCHEMA IF NOT EXISTS ${q}`);
        await tx.query(
          `CREATE TABLE IF NOT EXISTS ${q}.migrations (version int PRIMARY KEY, name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())`,
        );
        const applied = await tx.query(`SELECT 1 FROM ${q}.migrations WHERE version = $1`, [m.version]);
        if (applied.rows.length > 0) return false;
        if (m.sql.trim()) await tx.query(migrationSql(m, schema));
        if (m.outside.length === 0) await tx.query(`INSERT INTO ${q}.migrations (version, name) VALUES ($1, $2)`, [m.version, m.name]);
        return true;
      });
      let pending = false;
      for (let tries = 1, delay = 100; ; tries++, delay = Math.min(delay * 2, 2000)) {
        try {
          pending = await attempt();
          break;
        } catch (err) {
          if ((err as { code?: string }).code !== LOCK_NOT_AVAILABLE) throw err;
          if (tries >= lockRetries) {
            throw new HeraldError('MIGRATION', `migration ${m.version} (${m.name}) of schema ${schema} could not take its table locks within ${lockTimeoutMs} ms in ${tries} tries: a long transaction holds a table it changes (see pg_locks)`, { cause: err });
          }
          await sleep(delay);
        }
      }
      if (!pending) continue;
      if (m.outside.length > 0) {
        await dropInvalidIndexes(s, schema);
        for (const st of m.outside) await s.query(st.replaceAll(':schema', q));
        await s.query(`INSERT INTO ${q}.migrations (version, name) VALUES ($1, $2) ON CONFLICT (version) DO NOTHING`, [m.version, m.name]);
      }
      done.push(m.version);
    }
    await s.query('SELECT pg_advisory_unlock(hashtextextended($1, 0))', [SESSION_LOCK_NAMESPACE + schema]);
    return done;
  } catch (err) {
    if (err instanceof HeraldError) throw err;
    throw new HeraldError('MIGRATION', `migration of schema ${schema} failed: ${(err as Error).message}`, { cause: err });
  } finally {
    await session?.close();
  }
}

/**
 * Drops the invalid indexes of `schema`: what a `CREATE INDEX CONCURRENTLY` that was
 * interrupted (crash, cancel, terminated backend) leaves behind, which `IF NOT EXISTS`
 * would otherwise take for done. Only called under the session lock, so no build of
 * ours is in progress.
 */
async function dropInvalidIndexes(session: ListenSession, schema: string): Promise<void> {
  const { rows } = await session.query<{ name: string }>(
    `SELECT c.relname AS name FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid JOIN pg_namespace n ON n.oid = c.relnamespace
      WHERE n.nspname = $1 AND NOT i.indisvalid`,
    [schema],
  );
  for (const r of rows) await session.query(`DROP INDEX CONCURRENTLY IF EXISTS ${schemaIdent(schema)}.${schemaIdent(r.name)}`);
}

/** Every shipped migration with the time it was applied (null when pending). */
export async function migrationStatus(executor: Executor, schema = 'herald'): Promise<MigrationStatus[]> {
  const q = schemaIdent(schema);
  const exists = await executor.query<{ t: string | null }>('SELECT to_regclass($1) AS t', [`${q}.migrations`]);
  const applied = new Map<number, Date>();
  if (exists.rows[0]?.t) {
    const { rows } = await executor.query<{ version: number; applied_at: Date }>(`SELECT version, applied_at FROM ${q}.migrations`);
    for (const r of rows) applied.set(r.version, new Date(r.applied_at));
  }
  return migrations().map((m) => ({ version: m.version, name: m.name, appliedAt: applied.get(m.version) ?? null }));
}

/**
 * The whole schema as one SQL script, for teams that run their own migration tool.
 * It creates the schema and records each version, so `migrate()` later finds nothing to do.
 * Index builds that must not block writes come after the `COMMIT`, below the line
 * {@link OUTSIDE_SCRIPT_MARKER}, as separate statements that must run outside a
 * transaction (`psql -f` does; a driver sends them one at a time). Idempotent.
 */
export function migrationScript(schema = 'herald'): string {
  const q = schemaIdent(schema);
  const parts = [
    `-- pgherald schema ${schema}`,
    'BEGIN;',
    `SELECT pg_advisory_xact_lock(hashtextextended('${LOCK_NAMESPACE}${schema}', 0));`,
    `CREATE SCHEMA IF NOT EXISTS ${q};`,
    `CREATE TABLE IF NOT EXISTS ${q}.migrations (version int PRIMARY KEY, name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now());`,
  ];
  const later: string[] = [];
  for (const m of migrations()) {
    const record = `INSERT INTO ${q}.migrations (version, name) VALUES (${m.version}, '${m.name}') ON CONFLICT (version) DO NOTHING;`;
    parts.push(
      `-- ${String(m.version).padStart(3, '0')} ${m.name}`,
      `DO $herald$ BEGIN IF NOT EXISTS (SELECT 1 FROM ${q}.migrations WHERE version = ${m.version}) THEN`,
      `EXECUTE ${dollarQuote(migrationSql(m, schema) || 'SELECT 1')};`,
      m.outside.length === 0 ? record : '',
      'END IF; END $herald$;',
    );
    if (m.outside.length > 0) later.push(`-- ${String(m.version).padStart(3, '0')} ${m.name}`, ...m.outside.map((st) => st.replaceAll(':schema', q) + ';'), record);
  }
  parts.push('COMMIT;');
  if (later.length > 0) parts.push(OUTSIDE_SCRIPT_MARKER, ...later);
  return parts.join('\n') + '\n';
}

/** The line of {@link migrationScript} after which statements run outside a transaction, one at a time. */
export const OUTSIDE_SCRIPT_MARKER = '-- herald: the statements below run outside a transaction, one at a time';

function dollarQuote(text: string): string {
  let tag = 'm';
  while (text.includes(`$${tag}$`)) tag += 'm';
  return `$${tag}$${text}$${tag}$`;
}
