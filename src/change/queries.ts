/** SQL of row-change tracking. Identifiers enter SQL only through `quoteIdent`/`schemaIdent` or `format('%I')`. */
import type { Executor } from '../driver/types.js';

/** A row of `change_tables`. */
export interface ChangeTableRow {
  table_name: string;
  columns: string[];
  channel: string;
  max_keys: number;
  to_outbox: boolean;
  created_at: Date;
}

/** The oid and kind of a table named by its raw (unquoted) schema and name. */
export async function changeFindTable(ex: Executor, schema: string, name: string): Promise<{ oid: number; relkind: string } | undefined> {
  const { rows } = await ex.query<{ oid: number; relkind: string }>(
    `SELECT c.oid::int8 AS oid, c.relkind::text AS relkind
       FROM pg_class AS c JOIN pg_namespace AS n ON n.oid = c.relnamespace
      WHERE n.nspname = $1 AND c.relname = $2`,
    [schema, name],
  );
  return rows[0] ? { oid: Number(rows[0].oid), relkind: rows[0].relkind } : undefined;
}

/** Primary-key columns of a table, in key order. */
export async function changePrimaryKey(ex: Executor, oid: number): Promise<string[]> {
  const { rows } = await ex.query<{ attname: string }>(
    `SELECT a.attname::text AS attname
       FROM pg_index AS i
       JOIN pg_attribute AS a ON a.attrelid = i.indrelid AND a.attnum = ANY (i.indkey)
      WHERE i.indrelid = $1::oid AND i.indisprimary
      ORDER BY array_position(i.indkey::int2[], a.attnum)`,
    [oid],
  );
  return rows.map((r) => r.attname);
}

/** Which of `columns` exist on the table. */
export async function changeExistingColumns(ex: Executor, oid: number, columns: string[]): Promise<Set<string>> {
  const { rows } = await ex.query<{ attname: string }>(
    `SELECT attname::text AS attname FROM pg_attribute
      WHERE attrelid = $1::oid AND attnum > 0 AND NOT attisdropped AND attname = ANY ($2::text[])`,
    [oid, columns],
  );
  return new Set(rows.map((r) => r.attname));
}

/** The trigger arguments as SQL literals, quoted by Postgres itself (`quote_literal`). */
export async function changeTriggerArgs(ex: Executor, args: string[]): Promise<string> {
  const { rows } = await ex.query<{ args: string }>(
    `SELECT string_agg(quote_literal(a), ', ' ORDER BY o) AS args FROM unnest($1::text[]) WITH ORDINALITY AS x(a, o)`,
    [args],
  );
  return rows[0].args;
}

/** Records (or updates) a tracked table. */
export async function changeUpsertTable(
  ex: Executor,
  s: string,
  t: { tableName: string; oid: number; columns: string[]; channel: string; maxKeys: number; toOutbox: boolean },
): Promise<ChangeTableRow> {
  const { rows } = await ex.query<ChangeTableRow>(
    `INSERT INTO ${s}.change_tables (table_name, relid, columns, channel, max_keys, to_outbox)
     VALUES ($1, $2::oid, $3::text[], $4, $5, $6)
     ON CONFLICT (table_name) DO UPDATE
       SET relid = excluded.relid, columns = excluded.columns, channel = excluded.channel,
           max_keys = excluded.max_keys, to_outbox = excluded.to_outbox
     RETURNING table_name, columns, channel, max_keys, to_outbox, created_at`,
    [t.tableName, t.oid, t.columns, t.channel, t.maxKeys, t.toOutbox],
  );
  return rows[0];
}

/** Forgets a tracked table; returns whether it was tracked. */
export async function changeDeleteTable(ex: Executor, s: string, tableName: string): Promise<boolean> {
  const { rowCount } = await ex.query(`DELETE FROM ${s}.change_tables WHERE table_name = $1`, [tableName]);
  return rowCount > 0;
}

/** Every tracked table. */
export async function changeListTables(ex: Executor, s: string): Promise<ChangeTableRow[]> {
  const { rows } = await ex.query<ChangeTableRow>(
    `SELECT table_name, columns, channel, max_keys, to_outbox, created_at FROM ${s}.change_tables ORDER BY table_name`,
  );
  return rows;
}
