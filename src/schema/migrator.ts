import { readdirSync, readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import type { Driver, Executor } from '../driver/types.js';
import { HeraldError } from '../errors.js';
import { schemaIdent } from '../internal/ident.js';

/** One numbered migration. */
export interface Migration {
  version: number;
  name: string;
  sql: string;
}

/** Where the numbered `.sql` files live, from `src/schema/` and from `dist/schema/` alike. */
const SQL_DIR = fileURLToPath(new URL('../../src/schema/sql/', import.meta.url));

let cached: Migration[] | undefined;

/** All migrations shipped with this version, in order. Files are named `NNN_name.sql`. */
export function migrations(): Migration[] {
  if (cached) return cached;
  cached = readdirSync(SQL_DIR)
    .filter((f) => /^\d{3}_[a-z0-9_]+\.sql$/.test(f))
    .sort()
    .map((f) => ({ version: Number(f.slice(0, 3)), name: f.slice(4, -4), sql: readFileSync(SQL_DIR + f, 'utf8') }));
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

/**
 * Applies every pending migration in one transaction, under a transaction-level
 * advisory lock keyed by the schema name: many processes may call it at once; one
 * applies, the others wait and then find nothing to do.
 *
 * @returns the versions this call applied
 */
export async function migrate(driver: Driver, schema = 'herald'): Promise<number[]> {
  const q = schemaIdent(schema);
  try {
    return await driver.transaction(async (tx) => {
      await tx.query('SELECT pg_advisory_xact_lock(hashtextextended($1, 0))', [LOCK_NAMESPACE + schema]);
      await tx.query(`CREATE SCHEMA IF NOT EXISTS ${q}`);
      await tx.query(
        `CREATE TABLE IF NOT EXISTS ${q}.migrations (version int PRIMARY KEY, name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())`,
      );
      const applied = new Set((await tx.query<{ version: number }>(`SELECT version FROM ${q}.migrations`)).rows.map((r) => r.version));
      const done: number[] = [];
      for (const m of migrations()) {
        if (applied.has(m.version)) continue;
        await tx.query(migrationSql(m, schema));
        await tx.query(`INSERT INTO ${q}.migrations (version, name) VALUES ($1, $2)`, [m.version, m.name]);
        done.push(m.version);
      }
      return done;
    });
  } catch (err) {
    if (err instanceof HeraldError) throw err;
    throw new HeraldError('MIGRATION', `migration of schema ${schema} failed: ${(err as Error).message}`, { cause: err });
  }
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
  for (const m of migrations()) {
    parts.push(
      `-- ${String(m.version).padStart(3, '0')} ${m.name}`,
      `DO $herald$ BEGIN IF NOT EXISTS (SELECT 1 FROM ${q}.migrations WHERE version = ${m.version}) THEN`,
      `EXECUTE ${dollarQuote(migrationSql(m, schema))};`,
      `INSERT INTO ${q}.migrations (version, name) VALUES (${m.version}, '${m.name}');`,
      'END IF; END $herald$;',
    );
  }
  parts.push('COMMIT;');
  return parts.join('\n') + '\n';
}

function dollarQuote(text: string): string {
  let tag = 'm';
  while (text.includes(`$${tag}$`)) tag += 'm';
  return `$${tag}$${text}$${tag}$`;
}
