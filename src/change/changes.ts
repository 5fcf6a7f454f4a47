import { createHash } from 'node:crypto';
import type { Driver, Executor } from '../driver/types.js';
import { HeraldError, InvalidOptionError } from '../errors.js';
import { quoteIdent, schemaIdent } from '../internal/ident.js';
import type { ListenOptions, Notifier } from '../notifier/notifier.js';
import type { Subscription } from '../notifier/subscription.js';
import { MAX_CHANNEL_BYTES } from '../notifier/validate.js';
import {
  changeDeleteTable,
  changeExistingColumns,
  changeFindTable,
  changeListTables,
  changePrimaryKey,
  changeTriggerArgs,
  changeUpsertTable,
  type ChangeTableRow,
} from './queries.js';

/** One announcement: one per statement that changed at least one row of a tracked table. */
export interface RowChange {
  /** `schema.table` (raw names). */
  table: string;
  op: 'INSERT' | 'UPDATE' | 'DELETE';
  /** Rows the statement changed. */
  count: number;
  /**
   * The identifying columns of each changed row (`{ id: 42 }`; new values for
   * INSERT/UPDATE, old for DELETE), or null when `many`.
   */
  keys: Record<string, unknown>[] | null;
  /** More rows than `maxKeys` (or keys too long for a notification): refetch what you need. */
  many: boolean;
}

/** Options of {@link Changes.track}. */
export interface TrackOptions {
  /** Columns that identify a row in announcements. @defaultValue the primary key */
  columns?: string[];
  /** Up to this many rows per statement are listed in `keys`; more become `many: true`. @defaultValue 20 */
  maxKeys?: number;
  /** Also write one outbox event per changed row (type `herald.change`), so changes are durable. @defaultValue false */
  toOutbox?: boolean;
}

/** A tracked table. */
export interface TrackedTable {
  table: string;
  columns: string[];
  channel: string;
  maxKeys: number;
  toOutbox: boolean;
  createdAt: Date;
}

/** Defaults of {@link TrackOptions}. */
export const CHANGES_DEFAULTS = { maxKeys: 20, toOutbox: false } as const;

const OPS = ['INSERT', 'UPDATE', 'DELETE'] as const;

/** Splits `schema.table` or `table` (schema `public`) into raw names. */
export function parseTableName(table: string): { schema: string; name: string; qualified: string } {
  if (typeof table !== 'string') throw new InvalidOptionError('table', table, 'a table name: schema.table or table');
  const dot = table.indexOf('.');
  const schema = dot === -1 ? 'public' : table.slice(0, dot);
  const name = dot === -1 ? table : table.slice(dot + 1);
  for (const part of [schema, name]) {
    if (part.length === 0 || part.includes('\0') || Buffer.byteLength(part) > 63) {
      throw new InvalidOptionError('table', table, 'a table name: schema.table or table, each part 1 to 63 bytes');
    }
  }
  return { schema, name, qualified: `${schema}.${name}` };
}

/** Parses the payload of a change notification. */
export function parseChange(payload: string): RowChange {
  const p = JSON.parse(payload) as { table: string; op: RowChange['op']; count: number; keys?: Record<string, unknown>[]; many?: boolean };
  return { table: p.table, op: p.op, count: Number(p.count), keys: p.keys ?? null, many: p.many === true };
}

/**
 * Row-change announcements: `track` installs statement-level triggers on a table that
 * NOTIFY `table`, `op`, the row count and the identifying columns (never the row);
 * `listen` subscribes to them. Reach it as `herald.changes`.
 *
 * @example
 * await herald.changes.track('public.orders');
 * const sub = herald.changes.listen('public.orders', (c) => console.log(c.op, c.keys));
 * await sub.established;
 */
export class Changes {
  readonly #driver: Driver;
  readonly #notifier: Notifier;
  readonly #schema: string;
  readonly #s: string;

  /** @internal Use `herald.changes`. */
  constructor(driver: Driver, notifier: Notifier, schema: string) {
    this.#driver = driver;
    this.#notifier = notifier;
    this.#schema = schema;
    this.#s = schemaIdent(schema);
  }

  /**
   * The NOTIFY channel of a table: `<schema>.changes:<table schema>.<table>`, or, when
   * that exceeds 63 bytes, `<schema>.changes:#` and a hash of the table name.
   */
  channelFor(table: string): string {
    const { qualified } = parseTableName(table);
    const plain = `${this.#schema}.changes:${qualified}`;
    if (Buffer.byteLength(plain) <= MAX_CHANNEL_BYTES) return plain;
    return `${this.#schema}.changes:#${createHash('sha256').update(qualified).digest('hex').slice(0, 32)}`;
  }

  /**
   * Installs (or re-installs with new options) the change triggers on `table`
   * (`schema.table` or `table` for `public`, raw names, case-sensitive). Needs the
   * right to create triggers on it (owner).
   */
  async track(table: string, options: TrackOptions = {}): Promise<TrackedTable> {
    const t = parseTableName(table);
    const maxKeys = options.maxKeys ?? CHANGES_DEFAULTS.maxKeys;
    const toOutbox = options.toOutbox ?? CHANGES_DEFAULTS.toOutbox;
    if (!Number.isInteger(maxKeys) || maxKeys < 0 || maxKeys > 1000) throw new InvalidOptionError('maxKeys', maxKeys, 'an integer from 0 to 1000');
    if (typeof toOutbox !== 'boolean') throw new InvalidOptionError('toOutbox', toOutbox, 'a boolean');
    if (options.columns !== undefined && (!Array.isArray(options.columns) || options.columns.length === 0 || options.columns.some((c) => typeof c !== 'string' || c.length === 0))) {
      throw new InvalidOptionError('columns', options.columns, 'a non-empty array of column names');
    }
    const channel = this.channelFor(table);
    const row = await this.#driver.transaction(async (tx) => {
      const rel = await changeFindTable(tx, t.schema, t.name);
      if (!rel) throw new HeraldError('NOT_FOUND', `table ${t.qualified} does not exist`);
      if (rel.relkind !== 'r' && rel.relkind !== 'p') throw new HeraldError('INVALID_ARGUMENT', `${t.qualified} is not a table`);
      let columns = options.columns ? [...new Set(options.columns)] : await changePrimaryKey(tx, rel.oid);
      if (columns.length === 0) throw new HeraldError('INVALID_ARGUMENT', `table ${t.qualified} has no primary key: give the columns that identify a row`);
      const existing = await changeExistingColumns(tx, rel.oid, columns);
      const missing = columns.filter((c) => !existing.has(c));
      if (missing.length) throw new HeraldError('INVALID_ARGUMENT', `table ${t.qualified} has no column ${missing.map((c) => JSON.stringify(c)).join(', ')}`);
      columns = columns.filter((c) => existing.has(c));
      const args = await changeTriggerArgs(tx, [channel, String(maxKeys), toOutbox ? 't' : 'f', ...columns]);
      await this.#dropTriggers(tx, t);
      const target = `${quoteIdent(t.schema)}.${quoteIdent(t.name)}`;
      const fn = `${this.#s}.change_announce(${args})`;
      for (const op of OPS) {
        const referencing = op === 'INSERT' ? 'NEW TABLE AS herald_new' : op === 'DELETE' ? 'OLD TABLE AS herald_old' : 'OLD TABLE AS herald_old NEW TABLE AS herald_new';
        // Statement level with a transition table: one announcement per statement.
        // (A trigger with transition tables may name only one event, hence three.)
        await tx.query(`CREATE TRIGGER ${this.#triggerName(op)} AFTER ${op} ON ${target} REFERENCING ${referencing} FOR EACH STATEMENT EXECUTE FUNCTION ${fn}`);
      }
      return changeUpsertTable(tx, this.#s, { tableName: t.qualified, oid: rel.oid, columns, channel, maxKeys, toOutbox });
    });
    return toTracked(row);
  }

  /** Removes the triggers from `table` and forgets it; returns whether it was tracked. */
  async untrack(table: string): Promise<boolean> {
    const t = parseTableName(table);
    return this.#driver.transaction(async (tx) => {
      const rel = await changeFindTable(tx, t.schema, t.name);
      if (rel) await this.#dropTriggers(tx, t);
      return changeDeleteTable(tx, this.#s, t.qualified);
    });
  }

  /** Every tracked table. */
  async list(): Promise<TrackedTable[]> {
    return (await changeListTables(this.#driver.executor, this.#s)).map(toTracked);
  }

  /**
   * Subscribes to the changes of `table` on the process's one listen connection. The
   * handler gets one {@link RowChange} per statement. Announcements are wake-ups: one
   * sent while the connection is down is lost; use `onListen` to refetch, or
   * `toOutbox` for durable changes.
   */
  listen(table: string, handler: (change: RowChange) => unknown, options?: ListenOptions): Subscription {
    return this.#notifier.listen(this.channelFor(table), (n) => handler(parseChange(n.payload)), options);
  }

  #triggerName(op: (typeof OPS)[number]): string {
    return quoteIdent(`${this.#schema}_changes_${op.toLowerCase()}`);
  }

  async #dropTriggers(tx: Executor, t: { schema: string; name: string }): Promise<void> {
    const target = `${quoteIdent(t.schema)}.${quoteIdent(t.name)}`;
    for (const op of OPS) await tx.query(`DROP TRIGGER IF EXISTS ${this.#triggerName(op)} ON ${target}`);
  }
}

function toTracked(r: ChangeTableRow): TrackedTable {
  return { table: r.table_name, columns: r.columns, channel: r.channel, maxKeys: r.max_keys, toOutbox: r.to_outbox, createdAt: new Date(r.created_at) };
}
