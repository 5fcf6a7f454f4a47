import type postgres from 'postgres';
import { loadPeer } from '../internal/peer.js';
import { HeraldError } from '../errors.js';
import { deadline, statementTimeout } from './deadline.js';
import { DEFAULT_CONNECT_TIMEOUT_MS, DEFAULT_SESSION_CLOSE_TIMEOUT_MS, LISTEN_APPLICATION_NAME, type Driver, type Executor, type ListenSession, type QueryOptions, type QueryResult, type RawNotification, type TransactionOptions } from './types.js';

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
  /**
   * How long opening a connection may take, for the instance pgherald creates and for
   * the listen session (postgres.js `connect_timeout`). An existing `sql` keeps its own.
   * @defaultValue 10000
   */
  connectTimeoutMs?: number;
}

/**
 * A driver over postgres.js. The listen session is its own `max: 1` instance outside
 * the pool's lifetimes, so pool recycling never drops a LISTEN.
 */
export function postgresJsDriver(options: PostgresJsDriverOptions): Driver {
  const owned = !options.sql;
  const connectTimeoutMs = options.connectTimeoutMs ?? DEFAULT_CONNECT_TIMEOUT_MS;
  const sql: Sql =
    (options.sql as Sql) ??
    postgresLib()(options.connectionString as string, { max: options.max ?? 10, onnotice: () => {}, connect_timeout: connectTimeoutMs / 1000 });
  const listenUrl = options.listenConnectionString ?? options.connectionString;
  const listenOptions = (sql as unknown as { options: Record<string, unknown> }).options;
  const prepared = options.preparedStatements ?? listenOptions.prepare !== false;

  const sqlMax = Number(listenOptions.max);
  return {
    kind: 'postgres',
    maxConnections: Number.isInteger(sqlMax) && sqlMax > 0 ? sqlMax : undefined,
    executor: withDeadlines(sql, postgresJsExecutor(sql, prepared), Number(listenOptions.connect_timeout) * 1000 || connectTimeoutMs),
    async transaction<T>(fn: (tx: Executor) => Promise<T>, txOptions?: TransactionOptions): Promise<T> {
      return (await sql.begin((tx) => fn(postgresJsExecutor(tx as unknown as Sql, prepared && txOptions?.prepare === true)))) as T;
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
        connect_timeout: (opts.connectTimeoutMs ?? connectTimeoutMs) / 1000,
        idle_timeout: 0,
        connection: { application_name: opts.applicationName ?? LISTEN_APPLICATION_NAME },
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
        if ((err as { code?: string }).code === 'CONNECT_TIMEOUT') {
          throw new HeraldError('TIMEOUT', `could not open the listen connection within ${opts.connectTimeoutMs ?? connectTimeoutMs} ms (connectTimeoutMs): the address accepted no session`, { cause: err });
        }
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
    async end(endOpts = {}) {
      // postgres.js destroys what is still open after `timeout` seconds.
      if (owned) await sql.end({ timeout: (endOpts.timeoutMs ?? DEFAULT_SESSION_CLOSE_TIMEOUT_MS) / 1000 });
    },
  };
}

/**
 * Statements with a `timeoutMs` run on a reserved connection. Past the deadline the
 * caller gets a `TIMEOUT` error at once and that connection is never given back to
 * the pool (postgres.js cannot destroy one connection of its pool): a black-holed
 * connection is not handed out again; its keep-alive (postgres.js `keep_alive`) ends
 * it in the end.
 */
function withDeadlines(sql: Sql, plain: Executor, connectTimeoutMs: number): Executor {
  const reserve = (sql as unknown as { reserve?: () => Promise<Sql & { release(): void }> }).reserve;
  return {
    async query<R>(text: string, values?: readonly unknown[], opts?: QueryOptions): Promise<QueryResult<R>> {
      try {
        const res = await timed<R>(text, values, opts);
        // postgres.js does not say when a statement left the process: its completion is the
        // first moment this driver knows (QueryOptions.onSent).
        opts?.onSent?.();
        return res;
      } catch (err) {
        if ((err as { code?: string }).code !== 'CONNECT_TIMEOUT') throw err;
        throw new HeraldError('TIMEOUT', `could not connect to PostgreSQL within ${connectTimeoutMs} ms (connect_timeout): the address accepted no session`, {
          cause: err,
        });
      }
    },
  };
  async function timed<R>(text: string, values: readonly unknown[] | undefined, opts: QueryOptions | undefined): Promise<QueryResult<R>> {
    const ms = opts?.timeoutMs;
    if (ms === undefined || !Number.isFinite(ms)) return plain.query<R>(text, values, opts);
    if (!reserve) return deadline(plain.query<R>(text, values), ms, () => statementTimeout('a statement', ms));
    const started = Date.now();
    const reserving = reserve.call(sql);
    let conn: Sql & { release(): void };
    try {
      conn = await deadline(reserving, ms, () => statementTimeout('acquiring a pool connection', ms));
    } catch (err) {
      reserving.then((c) => c.release(), () => {});
      throw err;
    }
    const running = postgresJsExecutor(conn).query<R>(text, values);
    try {
      const res = await deadline(running, ms - (Date.now() - started), () => statementTimeout('a statement', ms));
      conn.release();
      return res;
    } catch (err) {
      running.catch(() => {});
      if (!(err instanceof HeraldError && err.code === 'TIMEOUT')) conn.release();
      throw err;
    }
  }
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
