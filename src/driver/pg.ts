import { createHash } from 'node:crypto';
import type pg from 'pg';
import { loadPeer } from '../internal/peer.js';
import { TooManyConnectionsError, HeraldError } from '../errors.js';
import { deadline, statementTimeout } from './deadline.js';
import { DEFAULT_CONNECT_TIMEOUT_MS, DEFAULT_SESSION_CLOSE_TIMEOUT_MS, LISTEN_APPLICATION_NAME, type Driver, type Executor, type ListenSession, type QueryOptions, type QueryResult, type RawNotification, type TransactionOptions } from './types.js';

/** The `pg` package, loaded when a `pg` driver is first made (an optional peer dependency). */
const pgLib = (): typeof pg => loadPeer<typeof pg>('pg', 'the pg driver (pgDriver, createHerald({ connectionString }))');

/** Options of {@link pgDriver}. */
export interface PgDriverOptions {
  /** An existing `pg.Pool`; pgherald will not end it. */
  pool?: pg.Pool;
  /** A connection string for a pool that pgherald creates (and ends). */
  connectionString?: string;
  /** Pool size when pgherald creates the pool. @defaultValue 10 */
  max?: number;
  /**
   * Connection string of the listen session, when it must differ from the pool's
   * (for example the pool goes through PgBouncer in transaction mode, while LISTEN
   * needs a direct or session-pooled connection). @defaultValue the pool's
   */
  listenConnectionString?: string;
  /** Called with errors of idle pool clients (a dying server); they never crash the process. */
  onPoolError?: (err: Error) => void;
  /**
   * Run pgherald's hot statements (claims, completions, plain enqueues) as named
   * prepared statements on the pool's connections. Turn off behind a pooler in
   * transaction mode without prepared-statement support (PgBouncer before 1.21, or
   * `max_prepared_statements = 0`); if the server reports a missing or duplicate
   * prepared statement, the driver turns them off by itself and runs the statement
   * unprepared. @defaultValue true
   */
  preparedStatements?: boolean;
  /**
   * How long opening a connection may take (TCP connect, TLS, startup,
   * authentication), for the pool pgherald creates and for the listen session. A
   * server that accepts and never answers fails with a `TIMEOUT` `HeraldError`
   * instead of hanging. An existing `pool` keeps its own settings.
   * @defaultValue 10000
   */
  connectTimeoutMs?: number;
}

/** Distinct statement texts prepared at most; beyond it, statements run unprepared. */
const MAX_PREPARED = 500;

/**
 * Uses of a prepared statement (over the pool) at which it gets a new name, so that each
 * connection prepares and plans it again. Postgres keeps a prepared statement's generic
 * plan until the statistics of its tables change (an ANALYZE), and a plan made while a
 * table was nearly empty reads it sequentially: on a fresh database taking 5,000 jobs a
 * second, the queue's completion-and-claim statement got such a plan in its first
 * second and kept it until autovacuum's first ANALYZE of `jobs` (up to a minute): 60-260
 * ms a claim, job starts delayed up to a second. Planned again at these uses, a plan
 * follows the table's growth; a connection keeps at most six versions of a statement.
 */
export const REPLAN_AT = new Set([16, 256, 4096, 65_536, 1_048_576]);

// A named statement that the server does not have (26000) or already has under that
// name (42P05): a transaction pooler moved us to another server connection. Both are
// reported before the statement runs, so running it again unprepared is safe.
const POOLER_PREPARE_ERRORS = new Set(['26000', '42P05']);

const EMPTY = Buffer.alloc(0);

/**
 * A driver over node-postgres (`pg`). Every pool and client it owns handles its
 * `error` event: when Postgres restarts, unhandled client errors kill Node.
 *
 * @example
 * const driver = pgDriver({ connectionString: process.env.DATABASE_URL });
 */
export function pgDriver(options: PgDriverOptions): Driver {
  const owned = !options.pool;
  const connectTimeoutMs = options.connectTimeoutMs ?? DEFAULT_CONNECT_TIMEOUT_MS;
  // The timeout goes on each client, not on the pool: pg-pool's own
  // connectionTimeoutMillis would also bound the wait for a free client, which is not
  // a network wait (a busy pool is not a dead server).
  const pool =
    options.pool ??
    new (pgLib().Pool)({ connectionString: options.connectionString, max: options.max ?? 10, Client: timedClient(connectTimeoutMs) as never });
  const onPoolError = options.onPoolError ?? (() => {});
  pool.on('error', onPoolError);
  // pg-pool removes its idle 'error' listener when it hands a client out, and the
  // caller adds its own only on the next turn: an ErrorResponse parsed from the same
  // socket chunk (57P01 in a server restart) would then be an unhandled 'error' that
  // kills the process (DESIGN.md trap 11). A listener for the client's whole life
  // closes that gap; the error itself still reaches the query or the pool's listener.
  pool.on('connect', (client) => client.on('error', () => {}));
  const listenConfig: pg.ClientConfig = options.listenConnectionString
    ? { connectionString: options.listenConnectionString }
    : (pool as unknown as { options: pg.ClientConfig }).options;

  let prepare = options.preparedStatements ?? true;
  const names = new Map<string, { base: string; name: string; uses: number }>();
  const nameOf = (text: string): string | undefined => {
    let e = names.get(text);
    if (e === undefined) {
      if (names.size >= MAX_PREPARED) return undefined;
      const base = `herald_${createHash('sha256').update(text).digest('hex').slice(0, 24)}`;
      e = { base, name: base, uses: 0 };
      names.set(text, e);
    }
    // A new name at some uses: each connection then prepares (and plans) it again.
    if (REPLAN_AT.has(++e.uses)) e.name = `${e.base}_${e.uses}`;
    return e.name;
  };
  /**
   * A statement on a connection checked out for it alone: with a deadline (acquiring a
   * connection included; past it, the connection is released as broken and its socket
   * destroyed, so a connection black-holed while idle in the pool is discarded, never
   * waited on again), and/or with `onSent` (the socket is needed to tell when the
   * statement left the process).
   */
  const timedQuery = async <R>(text: string, values: readonly unknown[] | undefined, opts: QueryOptions): Promise<QueryResult<R>> => {
    const timeoutMs = opts.timeoutMs !== undefined && Number.isFinite(opts.timeoutMs) ? opts.timeoutMs : Infinity;
    const started = Date.now();
    const acquiring = pool.connect();
    let client: pg.PoolClient;
    try {
      client = await deadline(acquiring, timeoutMs, () => statementTimeout('acquiring a pool connection', timeoutMs));
    } catch (err) {
      acquiring.then((c) => c.release(), () => {});
      throw err;
    }
    const name = prepare && opts.prepare ? nameOf(text) : undefined;
    const running = client.query(name === undefined ? { text, values: values as unknown[] } : { name, text, values: values as unknown[] });
    // pg wrote the statement synchronously unless the socket's buffer was full: an empty
    // write's callback runs once everything queued before it reached the kernel.
    if (opts.onSent) (client as unknown as { connection: { stream: NodeJS.WritableStream } }).connection.stream.write(EMPTY, () => opts.onSent!());
    try {
      const res = await deadline(running, timeoutMs - (Date.now() - started), () => statementTimeout('a statement', timeoutMs));
      client.release();
      return { rows: res.rows as R[], rowCount: res.rowCount ?? 0 };
    } catch (err) {
      running.catch(() => {});
      client.release(err as Error);
      if (err instanceof HeraldError && err.code === 'TIMEOUT') destroyStream(client);
      if (name !== undefined && POOLER_PREPARE_ERRORS.has((err as { code?: string }).code ?? '')) {
        prepare = false;
        return timedQuery<R>(text, values, { ...opts, timeoutMs: timeoutMs - (Date.now() - started) });
      }
      throw err;
    }
  };

  const executor: Executor = {
    async query<R>(text: string, values?: readonly unknown[], opts?: QueryOptions): Promise<QueryResult<R>> {
      if ((opts?.timeoutMs !== undefined && Number.isFinite(opts.timeoutMs)) || opts?.onSent) return timedQuery<R>(text, values, opts);
      const name = prepare && opts?.prepare ? nameOf(text) : undefined;
      if (name !== undefined) {
        try {
          const res = await pool.query({ name, text, values: values as unknown[] });
          return { rows: res.rows as R[], rowCount: res.rowCount ?? 0 };
        } catch (err) {
          if (!POOLER_PREPARE_ERRORS.has((err as { code?: string }).code ?? '')) throw err;
          prepare = false;
        }
      }
      const res = await pool.query(text, values as unknown[]);
      return { rows: res.rows as R[], rowCount: res.rowCount ?? 0 };
    },
  };

  /**
   * A transaction's executor that runs statements marked `prepare` as named prepared
   * statements (see {@link TransactionOptions.prepare}). A pooler error aborts the
   * transaction, so it is not retried here: the driver stops preparing and the caller's
   * retry of the transaction runs unprepared.
   */
  /**
   * A transaction's executor. The transaction begins with its first statement: `BEGIN`
   * goes out in the same message batch as that statement (one round trip instead of
   * two) when the statement runs in the extended protocol (it has parameters, or is
   * prepared and already parsed on this connection); the batch's single Sync means the
   * statement is skipped if `BEGIN` fails, so it never runs outside the transaction.
   * Otherwise `BEGIN` is sent on its own first. Statements marked `prepare` run as named
   * prepared statements when `preparing` (see {@link TransactionOptions.prepare}); a
   * pooler error aborts the transaction, so it is not retried here: the driver stops
   * preparing, and the caller's retry of the transaction runs unprepared.
   */
  const transactionExecutor = (client: pg.PoolClient, preparing: boolean) => {
    // Settles when the transaction has begun (or failed to): statements issued while the
    // first one is in flight wait for it, so none can run outside the transaction.
    let begun: Promise<void> | undefined;
    const run = async <R>(text: string, values: readonly unknown[] | undefined, opts: QueryOptions | undefined, first: boolean): Promise<QueryResult<R>> => {
      const name = preparing && prepare && opts?.prepare ? nameOf(text) : undefined;
      const parsed = name === undefined || (client as unknown as PgConnectionHolder).connection.parsedStatements?.[name] !== undefined;
      const carry = first && parsed && ((values !== undefined && values.length > 0) || name !== undefined) && beginThenQuery() !== undefined;
      const config = { text, values: values as unknown[], ...(name === undefined ? {} : { name }) };
      let query: pg.Query | (pg.QueryConfig & { name?: string });
      if (carry) query = new (beginThenQuery()!)(config);
      else {
        if (first) {
          try {
            await client.query('BEGIN');
          } catch (err) {
            beginFailed = true;
            throw err;
          }
        }
        query = config;
      }
      try {
        const res = carry
          ? await new Promise<pg.QueryResult | pg.QueryResult[]>((resolve, reject) => {
              // A query object gets no promise from pg: its callback settles this one.
              (query as unknown as { callback: (err: Error | null, res: pg.QueryResult) => void }).callback = (err, r) => (err ? reject(err) : resolve(r));
              client.query(query as pg.Query);
            })
          : await client.query(query as pg.QueryConfig);
        return lastResult<R>(res);
      } catch (err) {
        if (name !== undefined && POOLER_PREPARE_ERRORS.has((err as { code?: string }).code ?? '')) prepare = false;
        throw err;
      } finally {
        if (carry && !(query as BeginThen).began) beginFailed = true;
      }
    };
    let beginFailed = false;
    const executor: Executor = {
      query<R>(text: string, values?: readonly unknown[], opts?: QueryOptions): Promise<QueryResult<R>> {
        if (begun === undefined) {
          const running = run<R>(text, values, opts, true);
          begun = running.then(() => {}, () => {});
          return running;
        }
        return begun.then(() => {
          if (beginFailed) throw notBegun();
          return run<R>(text, values, opts, false);
        });
      },
    };
    return {
      executor,
      /** Whether a statement was sent (so the transaction must be committed or rolled back). */
      started: () => begun !== undefined,
      /** Whether BEGIN failed (the transaction never began). */
      failed: () => beginFailed,
      settled: () => begun ?? Promise.resolve(),
    };
  };

  const poolMax = Number((pool as unknown as { options?: { max?: unknown } }).options?.max);
  return {
    kind: 'pg',
    maxConnections: Number.isInteger(poolMax) && poolMax > 0 ? poolMax : undefined,
    executor,
    async transaction<T>(fn: (tx: Executor) => Promise<T>, txOptions?: TransactionOptions): Promise<T> {
      const client = await pool.connect();
      let broken: Error | undefined;
      // A checked-out client has no pool 'error' listener: a server that dies while the
      // transaction runs (between two queries) would emit an unhandled 'error' and kill
      // the process (DESIGN.md trap 11). Keep it, and destroy the client on release.
      const onError = (err: Error) => {
        broken ??= err;
        onPoolError(err);
      };
      client.on('error', onError);
      const tx = transactionExecutor(client, txOptions?.prepare ?? false);
      try {
        const result = await fn(tx.executor);
        await tx.settled();
        if (tx.failed()) throw notBegun();
        if (tx.started()) await client.query('COMMIT');
        return result;
      } catch (err) {
        try {
          await tx.settled();
          if (tx.started()) await client.query('ROLLBACK');
        } catch (rollbackErr) {
          broken = rollbackErr as Error;
        }
        throw err;
      } finally {
        client.off('error', onError);
        client.release(broken);
      }
    },
    async openListenSession(opts = {}): Promise<ListenSession> {
      const Client = timedClient(opts.connectTimeoutMs ?? connectTimeoutMs);
      const client: pg.Client = new Client({
        ...listenConfig,
        keepAlive: true,
        // Named so operators (and tests) can tell the listen session apart in pg_stat_activity.
        application_name: opts.applicationName ?? LISTEN_APPLICATION_NAME,
      });
      let closeHandler: ((err?: Error) => void) | undefined;
      let closed = false;
      const fireClose = (err?: Error) => {
        if (closed) return;
        closed = true;
        closeHandler?.(err);
      };
      client.on('error', (err) => fireClose(err));
      client.on('end', () => fireClose());
      try {
        await client.connect();
      } catch (err) {
        closed = true;
        client.removeAllListeners('end');
        await client.end().catch(() => {});
        throw err;
      }
      const destroy = () => destroyStream(client);
      return {
        query: (text, values) => pgClientExecutor(client).query(text, values),
        onNotification(handler: (n: RawNotification) => void) {
          client.on('notification', (m) =>
            handler({ channel: m.channel, payload: m.payload ?? '', processId: m.processId }),
          );
        },
        onClose(handler) {
          closeHandler = handler;
        },
        async close(closeOpts = {}) {
          closed = true;
          // end() waits for the server's goodbye; a black-holed socket never sends one.
          const ended = client.end().catch(() => {});
          const timer = setTimeout(destroy, closeOpts.timeoutMs ?? DEFAULT_SESSION_CLOSE_TIMEOUT_MS);
          await ended;
          clearTimeout(timer);
        },
        destroy,
      };
    },
    async end(endOpts = {}) {
      if (!owned) return;
      // pool.end() waits for every client's socket to close; a black-holed one never
      // does. Past the deadline, destroy what is left.
      const ms = endOpts.timeoutMs ?? DEFAULT_SESSION_CLOSE_TIMEOUT_MS;
      await deadline(pool.end(), ms, () => new HeraldError('TIMEOUT', 'pool end')).catch(() => {
        for (const c of (pool as unknown as { _clients?: pg.Client[] })._clients ?? []) destroyStream(c);
      });
    },
  };
}

/** A statement of a transaction whose BEGIN failed (reported with its first statement). */
const notBegun = () => new HeraldError('CONNECTION', 'the transaction did not begin: its BEGIN failed (reported with its first statement)');

interface PgConnectionHolder {
  connection: { parsedStatements?: Record<string, string> };
}

/** A `pg` query sent right behind a `BEGIN`, in the same batch (one Sync). */
interface BeginThen extends pg.Query {
  /** Set once the server reported `BEGIN` complete. */
  began: boolean;
}

let beginThenClass: (new (config: pg.QueryConfig) => BeginThen) | null | undefined;

/**
 * The class of {@link BeginThen} queries, made on first use (pg is an optional peer): a
 * `pg` Query in the extended protocol whose message batch starts with Bind and Execute
 * of an unnamed `BEGIN` (parsed in the same batch). Its result then holds two results,
 * `BEGIN`'s first. If `BEGIN` fails, Postgres skips the rest of the batch. It builds on
 * pg's Query internals (`prepare`, `handleCommandComplete`, the connection's
 * `parse`/`bind`/`execute`, as in pg 8): undefined when the installed pg lacks them, and
 * transactions then send `BEGIN` on its own.
 */
function beginThenQuery(): (new (config: pg.QueryConfig) => BeginThen) | undefined {
  if (beginThenClass !== undefined) return beginThenClass ?? undefined;
  const Query = (pgLib() as unknown as { Query?: new (config: unknown) => pg.Query }).Query;
  const proto = Query?.prototype as { prepare?: unknown; handleCommandComplete?: unknown } | undefined;
  if (!Query || typeof proto?.prepare !== 'function' || typeof proto?.handleCommandComplete !== 'function') {
    beginThenClass = null;
    return undefined;
  }
  type Conn = { parse(q: { text: string }): void; bind(c: { statement: string; values: unknown[] }): void; execute(c: { portal: string }): void };
  class BeginThenQuery extends (Query as unknown as new (config: unknown) => {
    prepare(connection: Conn): void;
    handleCommandComplete(msg: unknown, connection: Conn): void;
  }) {
    began = false;
    constructor(config: pg.QueryConfig) {
      super({ ...config, queryMode: 'extended' });
    }
    override prepare(connection: Conn): void {
      connection.parse({ text: 'BEGIN' });
      connection.bind({ statement: '', values: [] });
      connection.execute({ portal: '' });
      super.prepare(connection);
    }
    override handleCommandComplete(msg: unknown, connection: Conn): void {
      this.began = true;
      super.handleCommandComplete(msg, connection);
    }
  }
  beginThenClass = BeginThenQuery as unknown as new (config: pg.QueryConfig) => BeginThen;
  return beginThenClass;
}

/** The rows of a `pg` result; of the last one when there are several (a multi-statement query, or BEGIN ahead). */
function lastResult<R>(res: pg.QueryResult | pg.QueryResult[]): QueryResult<R> {
  const r = Array.isArray(res) ? (res[res.length - 1] ?? ({ rows: [], rowCount: 0 } as unknown as pg.QueryResult)) : res;
  return { rows: (r.rows ?? []) as R[], rowCount: r.rowCount ?? 0 };
}

/** Destroys a `pg` client's socket at once (no goodbye: a black-holed peer never answers one). */
function destroyStream(client: pg.ClientBase): void {
  (client as unknown as { connection?: { stream?: { destroy(): void } } }).connection?.stream?.destroy();
}

/**
 * A `pg.Client` class whose connect fails after `connectTimeoutMs` with a `TIMEOUT`
 * `HeraldError` that says what happened (pg's own message is "timeout expired").
 */
function timedClient(connectTimeoutMs: number): typeof pg.Client {
  return class TimedClient extends pgLib().Client {
    constructor(config: pg.ClientConfig) {
      super({ ...config, connectionTimeoutMillis: connectTimeoutMs });
    }
    override connect(callback?: any): any {
      const where = describeTarget(this as unknown as { host?: string; port?: number });
      if (callback) return super.connect((err: Error, ...rest: unknown[]) => callback(err && connectError(err, where, connectTimeoutMs), ...rest));
      return super.connect().catch((err: Error) => {
        throw connectError(err, where, connectTimeoutMs);
      });
    }
  } as unknown as typeof pg.Client;
}

function describeTarget(c: { host?: string; port?: number }): string {
  return c.host ? `${c.host}:${c.port ?? 5432}` : 'the server';
}

function connectError(err: Error, where: string, ms: number): Error {
  // The server refused the session: every slot is taken (53300, too_many_connections).
  if ((err as { code?: string })?.code === '53300') return new TooManyConnectionsError(where, err);
  if (err?.message !== 'timeout expired' && !/connection timeout/i.test(err?.message ?? '')) return err;
  return new HeraldError(
    'TIMEOUT',
    `could not connect to PostgreSQL at ${where} within ${ms} ms (connectTimeoutMs): the address accepted no session`,
    { cause: err },
  );
}

/** Wraps a `pg` client (or pool) as an {@link Executor}. */
export function pgClientExecutor(client: { query: pg.Pool['query'] } | pg.ClientBase): Executor {
  return {
    async query<R>(text: string, values?: readonly unknown[]): Promise<QueryResult<R>> {
      // A multi-statement simple query returns one result per statement: the last counts.
      return lastResult<R>((await (client as pg.ClientBase).query(text, values as unknown[])) as unknown as pg.QueryResult | pg.QueryResult[]);
    },
  };
}
