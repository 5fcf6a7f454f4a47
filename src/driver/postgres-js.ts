import type postgres from 'postgres';
import { loadPeer } from '../internal/peer.js';
import { LISTEN_APPLICATION_NAME, type Driver, type Executor, type ListenSession, type QueryOptions, type QueryResult, type RawNotification } from './types.js';

type Sql = postgres.Sql<Record<string, never>>;

/** The `postgres` package, loaded when a postgres.js driver makes its own instance (an optional peer dependency). */
const postgresLib = (): typeof postgres => loadPeer<typeof postgres>('postgres', 'the postgres.js driver (postgresJsDriver)');

/** Options of {@link postgresJsDriver}. */
export interface PostgresJsDriverOptions {
  /** An existing postgres.js instance; pgherald will not end it. */
  sql?: postgres.Sql<any>;
  /** A connection string for an instance that pgherald creates (and ends). */
  connectionString?: string;
  /** Pool size when pgherald creates the instance. @defaultValue 10 */
  max?: number;
  /** Connection string of the listen session, when it must differ. @defaultValue the pool's */
  listenConnectionString?: string;
  /**
   * Run pgherald's hot statements as prepared statements (see `PgDriverOptions`).
   * @defaultValue the instance's own `prepare` option (postgres.js: true unless turned off)
   */
  preparedStatements?: boolean;
}

/**
 * A driver over postgres.js. The listen session is its own `max: 1` instance outside
 * the pool's lifetimes, so pool recycling never drops a LISTEN.
 */
export function postgresJsDriver(options: PostgresJsDriverOptions): Driver {
  const owned = !options.sql;
  const sql: Sql =
    (options.sql as Sql) ??
    postgresLib()(options.connectionString as string, { max: options.max ?? 10, onnotice: () => {} });
  const listenUrl = options.listenConnectionString ?? options.connectionString;
  const listenOptions = (sql as unknown as { options: Record<string, unknown> }).options;

  return {
    kind: 'postgres',
    executor: postgresJsExecutor(sql, options.preparedStatements ?? listenOptions.prepare !== false),
    async transaction<T>(fn: (tx: Executor) => Promise<T>): Promise<T> {
      return (await sql.begin((tx) => fn(postgresJsExecutor(tx as unknown as Sql)))) as T;
    },
    async openListenSession(opts = {}): Promise<ListenSession> {
      let notify: ((n: RawNotification) => void) | undefined;
      let closeHandler: ((err?: Error) => void) | undefined;
      let closed = false;
      const fireClose = (err?: Error) => {
        if (closed) return;
        closed = true;
        closeHandler?.(err);
      };
      const common = {
        max: 1,
        connect_timeout: Math.max(1, Math.ceil((opts.connectTimeoutMs ?? 5000) / 1000)),
        idle_timeout: 0,
        connection: { application_name: LISTEN_APPLICATION_NAME },
        max_lifetime: 0,
        onnotice: () => {},
        onnotify: (channel: string, payload: string) => notify?.({ channel, payload, processId: 0 }),
        onclose: () => fireClose(new Error('listen connection closed')),
      };
      const session: Sql = listenUrl
        ? postgresLib()(listenUrl, common)
        : postgresLib()({ ...(listenOptions as object), ...common } as postgres.Options<Record<string, never>>);
      try {
        await session.unsafe('SELECT 1');
      } catch (err) {
        closed = true;
        await session.end({ timeout: 0 }).catch(() => {});
        throw err;
      }
      return {
        query: (text, values) => postgresJsExecutor(session).query(text, values),
        onNotification(handler) {
          notify = handler;
        },
        onClose(handler) {
          closeHandler = handler;
        },
        async close() {
          closed = true;
          await session.end({ timeout: 0 }).catch(() => {});
        },
        destroy() {
          fireClose(new Error('listen connection destroyed'));
          void session.end({ timeout: 0 }).catch(() => {});
        },
      };
    },
    async end() {
      if (owned) await sql.end({ timeout: 5 });
    },
  };
}

/**
 * Wraps a postgres.js `sql` or transaction object as an {@link Executor}; with
 * `prepared`, statements marked `prepare` run as prepared statements.
 */
export function postgresJsExecutor(
  sql: { unsafe(text: string, values?: any[], options?: { prepare?: boolean }): PromiseLike<any> },
  prepared = false,
): Executor {
  return {
    async query<R>(text: string, values?: readonly unknown[], opts?: QueryOptions): Promise<QueryResult<R>> {
      const args = (values ?? []) as any[];
      const res = (await (prepared && opts?.prepare ? sql.unsafe(text, args, { prepare: true }) : sql.unsafe(text, args))) as unknown as R[] & {
        count?: number;
      };
      return { rows: Array.from(res), rowCount: res.count ?? res.length };
    },
  };
}
