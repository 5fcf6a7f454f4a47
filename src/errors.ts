/**
 * Errors thrown by pgherald. Every error has a stable `code` string that callers
 * can switch on; a Postgres error that caused it is kept in the native `cause`
 * (with its SQLSTATE in `cause.code`).
 */

/** Stable error codes. New codes may be added; existing ones never change meaning. */
export type HeraldErrorCode =
  | 'INVALID_CHANNEL'
  | 'INVALID_PAYLOAD'
  | 'PAYLOAD_TOO_LARGE'
  | 'INVALID_OPTION'
  | 'INVALID_ARGUMENT'
  | 'NOT_STARTED'
  | 'STOPPED'
  | 'LISTEN_NOT_SESSION'
  | 'TIMEOUT'
  | 'CONNECTION'
  | 'MIGRATION'
  | 'NOT_FOUND'
  | 'CONFLICT'
  | 'LEASE_LOST'
  | 'RETENTION'
  | 'MISSING_DEPENDENCY'
  | 'NOTIFY_QUEUE_FULL'
  | 'IN_RECOVERY'
  | 'TOO_MANY_CONNECTIONS';

/** Base class of every error pgherald throws on purpose. */
export class HeraldError extends Error {
  readonly code: HeraldErrorCode;
  constructor(code: HeraldErrorCode, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'HeraldError';
    this.code = code;
  }
}

/** A channel name that Postgres would reject, fold or truncate (empty, NUL, over 63 bytes). */
export class InvalidChannelError extends HeraldError {
  constructor(message: string) {
    super('INVALID_CHANNEL', message);
    this.name = 'InvalidChannelError';
  }
}

/** A NOTIFY payload of 8000 bytes or more (Postgres' limit), or one that is not text. */
export class PayloadTooLargeError extends HeraldError {
  readonly bytes: number;
  readonly limit: number;
  constructor(bytes: number, limit: number, what = 'payload') {
    super('PAYLOAD_TOO_LARGE', `${what} is ${bytes} bytes; the limit is ${limit - 1} bytes (UTF-8)`);
    this.name = 'PayloadTooLargeError';
    this.bytes = bytes;
    this.limit = limit;
  }
}

/** An option with a value outside its domain; the message names the option and the value. */
export class InvalidOptionError extends HeraldError {
  readonly option: string;
  constructor(option: string, value: unknown, expected: string) {
    super('INVALID_OPTION', `option ${option}: expected ${expected}, got ${describe(value)}`);
    this.name = 'InvalidOptionError';
    this.option = option;
  }
}

/**
 * An argument of a call (a job's `maxAttempts`, a job id, a name, a limit) outside its
 * documented range, of the wrong type, or holding a NUL character; the message names
 * the argument and the value. Code `INVALID_ARGUMENT`.
 */
export class InvalidArgumentError extends HeraldError {
  readonly argument: string;
  constructor(argument: string, value: unknown, expected: string) {
    super('INVALID_ARGUMENT', `${argument}: expected ${expected}, got ${describe(value)}`);
    this.name = 'InvalidArgumentError';
    this.argument = argument;
  }
}

/** A payload pgherald cannot store as given (not JSON-serialisable, or text with a NUL). Code `INVALID_PAYLOAD`. */
export class InvalidPayloadError extends HeraldError {
  constructor(message: string, options?: { cause?: unknown }) {
    super('INVALID_PAYLOAD', message, options);
    this.name = 'InvalidPayloadError';
  }
}

/** LISTEN does not stick on this connection (a transaction-mode pooler such as PgBouncer sits in front). */
export class ListenNotSessionError extends HeraldError {
  constructor(message: string) {
    super('LISTEN_NOT_SESSION', message);
    this.name = 'ListenNotSessionError';
  }
}

/**
 * Postgres could not queue a notification: its notification queue is full (SQLSTATE
 * 54000 "too many notifications in the NOTIFY queue"), because some session that ran
 * LISTEN sits in a long transaction and holds the queue's tail. The server's error is
 * in `cause`. Thrown by a plain `notify`/`notifyMany`, and by `herald.transaction()`
 * when its commit failed for that reason (nothing of it committed; retry it: the notifier
 * has stopped attaching wake-ups to pgherald's writes, see `queueFull`).
 */
export class NotifyQueueFullError extends HeraldError {
  constructor(message: string, options?: { cause?: unknown }) {
    super('NOTIFY_QUEUE_FULL', message, options);
    this.name = 'NotifyQueueFullError';
  }
}

/**
 * The server is a standby (in recovery, `pg_is_in_recovery()`): it takes no writes and
 * delivers no notifications of the primary (NOTIFY is not replicated). The notifier
 * treats such a server as not ready and keeps reconnecting until its address leads to
 * a primary (after a failover, once the address moved).
 */
export class ServerInRecoveryError extends HeraldError {
  constructor(message = 'the server is in recovery (a standby): LISTEN needs the primary; reconnecting until the address leads to one') {
    super('IN_RECOVERY', message);
    this.name = 'ServerInRecoveryError';
  }
}

/**
 * The server refused a new connection because every slot of `max_connections` is taken
 * (SQLSTATE 53300, kept in `cause`). Transient: pgherald's loops back off and retry, and
 * recover once connections free up; a call of yours that needed a new connection fails
 * with it.
 */
export class TooManyConnectionsError extends HeraldError {
  constructor(where: string, cause: unknown) {
    super('TOO_MANY_CONNECTIONS', `PostgreSQL at ${where} refused the connection: max_connections reached (53300); pgherald retries with backoff`, { cause });
    this.name = 'TooManyConnectionsError';
  }
}

function describe(value: unknown): string {
  if (typeof value === 'string') return JSON.stringify(value.length > 80 ? value.slice(0, 80) + '…' : value);
  if (typeof value === 'number' || typeof value === 'boolean' || value == null) return String(value);
  return typeof value;
}
