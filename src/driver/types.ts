/**
 * The seam between pgherald and a Postgres client library. pgherald owns these
 * interfaces; no `pg` or postgres.js type leaks through them. SQL is always written
 * with `$1` placeholders.
 */

/** `application_name` of every listen session, to tell it apart in `pg_stat_activity`. */
export const LISTEN_APPLICATION_NAME = 'pgherald:listen';
/** `application_name` of the session `migrate()` holds its lock on (`pg_stat_activity` tells it from the listen session). */
export const MIGRATE_APPLICATION_NAME = 'pgherald:migrate';

/** Default of the drivers' `connectTimeoutMs` (and of `createHerald`'s). */
export const DEFAULT_CONNECT_TIMEOUT_MS = 10_000;

/**
 * How long closing a listen session (or ending a pool pgherald created) waits for
 * the server's goodbye before it destroys the sockets: a black-holed peer never
 * sends one.
 */
export const DEFAULT_SESSION_CLOSE_TIMEOUT_MS = 1000;

/** Rows and count of one statement. */
export interface QueryResult<R = Record<string, unknown>> {
  rows: R[];
  rowCount: number;
}

/**
 * Anything that runs a parameterised statement: a pool, a client checked out of a
 * pool, or the caller's open transaction. This is what `{ tx }` options accept, so
 * pgherald's writes commit or roll back with the caller's own work.
 */
export interface Executor {
  query<R = Record<string, unknown>>(text: string, values?: readonly unknown[], options?: QueryOptions): Promise<QueryResult<R>>;
}

/** Per-statement hints an {@link Executor} may use or ignore. */
export interface QueryOptions {
  /**
   * A hot statement run again and again with the same text: a driver with prepared
   * statements on runs it as a named prepared statement (parsed and planned once per
   * connection). Executors over a caller's transaction ignore it.
   */
  prepare?: boolean;
  /**
   * A deadline for the statement, waiting for a pool connection included. Past it
   * the statement fails with a `TIMEOUT` `HeraldError`, and a pool driver discards
   * the connection it ran on (released as broken, socket destroyed) so that a dead
   * connection is never handed out again. pgherald sets it on the statements it
   * issues for itself (the notifier's probe, queue-usage samples); executors over a
   * caller's transaction ignore it.
   */
  timeoutMs?: number;
  /**
   * Called once the statement has been written to its connection's socket (handed to
   * the operating system), before its result arrives: from then on the server runs it
   * even if this process dies at once (SIGKILL included; the kernel still delivers
   * what was written). The pool driver of `pg` calls it at that moment; a driver that
   * cannot tell calls it when the statement completes, or never if the statement
   * fails first, so callers wait for the first of the two. Executors over a caller's
   * transaction ignore it.
   */
  onSent?: () => void;
}

/**
 * What callers may pass as `tx`: an {@link Executor}, a `pg` client or pool (they have
 * `query(text, values)`), or a postgres.js `sql` / transaction object (it has `unsafe`).
 */
export type TxLike = Executor | { unsafe(text: string, values?: unknown[]): PromiseLike<unknown> };

/** A notification as the server sent it: a fresh object per notification (the notifier hands it to subscribers as is). */
export interface RawNotification {
  channel: string;
  payload: string;
  processId: number;
}

/**
 * One dedicated session for LISTEN. Deliberately dumb: it reports notifications and
 * its own death, and runs statements; reconnects, backoff and health checks live in
 * the notifier above it.
 */
export interface ListenSession {
  /** Runs a statement on this session (LISTEN, UNLISTEN, health queries). */
  query<R = Record<string, unknown>>(text: string, values?: readonly unknown[]): Promise<QueryResult<R>>;
  /** Called for every notification that reaches this session. Set once, before LISTEN. */
  onNotification(handler: (n: RawNotification) => void): void;
  /** Called once when the session dies (socket error, server shutdown, terminate). */
  onClose(handler: (err?: Error) => void): void;
  /**
   * Closes the session and waits for the socket to be gone; never throws. Past
   * `timeoutMs` (default {@link DEFAULT_SESSION_CLOSE_TIMEOUT_MS}) the socket is destroyed.
   */
  close(options?: { timeoutMs?: number }): Promise<void>;
  /** Destroys the socket at once (used when the health query stalls). */
  destroy(): void;
}

/** Options of {@link Driver.transaction}. */
export interface TransactionOptions {
  /**
   * Let the transaction's executor honour {@link QueryOptions.prepare} (when the
   * driver's prepared statements are on), as the pool executor does. Off by default:
   * a transaction pooler that moved the session turns a prepared statement into an
   * error that aborts the transaction, so only a caller that retries the whole
   * transaction (a consumer loop) should ask for it; after such an error the driver
   * stops preparing, and the retry runs unprepared. @defaultValue false
   */
  prepare?: boolean;
}

/**
 * A driver: an executor over a pool, transactions, and a factory of listen sessions.
 */
export interface Driver {
  /** Which client library is underneath: `pg` or `postgres`. */
  readonly kind: 'pg' | 'postgres';
  /**
   * The most connections the pool opens, when known (the `max` of a `pg` pool or of a
   * postgres.js instance). Parts that hold one connection while they need another (a
   * topic batch and its attempt count) keep the number of such holders below it.
   */
  readonly maxConnections?: number;
  /** The pool as an executor (each statement in its own implicit transaction). */
  readonly executor: Executor;
  /** Runs `fn` in a transaction on one connection; commits if it resolves, rolls back if it throws. */
  transaction<T>(fn: (tx: Executor) => Promise<T>, options?: TransactionOptions): Promise<T>;
  /** Opens a new dedicated session for LISTEN (outside the pool); fails after `connectTimeoutMs`. */
  openListenSession(options?: { connectTimeoutMs?: number; applicationName?: string }): Promise<ListenSession>;
  /**
   * Closes the pool if the driver created it. Past `timeoutMs` (default
   * {@link DEFAULT_SESSION_CLOSE_TIMEOUT_MS}) the sockets still open are destroyed.
   */
  end(options?: { timeoutMs?: number }): Promise<void>;
}
