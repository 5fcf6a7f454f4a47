import type { Executor, TxLike } from '../driver/types.js';

/** Options of the mailbox (`createHerald({ mailbox: { ... } })`); every one has a default. */
export interface MailboxOptions {
  /**
   * Safety poll: a waiting receiver or consumer queries at least this often, so it finds
   * messages even if every notification is lost. Each consumer also looks for
   * abandoned takes of its destination (a consumer that died in its handler) this
   * often, and at its first take. @defaultValue 30000
   */
  pollIntervalMs?: number;
  /** Failed handler runs before a message moves to the dead-letter state. @defaultValue 5 */
  maxAttempts?: number;
  /** Delay before the first redelivery after a failure; doubles per attempt. @defaultValue 1000 */
  retryDelayMs?: number;
  /** Cap of the redelivery delay. @defaultValue 60000 */
  maxRetryDelayMs?: number;
  /** Share of each redelivery delay taken off at random (0 = none, 1 = full jitter; the retry policy in docs/library.md). @defaultValue 0 */
  retryJitter?: number;
  /**
   * How long consumed messages are kept before retention deletes them. The id of a kept
   * message still deduplicates sends, so this is also the idempotency window. The
   * default of the maintenance task `mailboxRetention` (`maintenance.mailboxRetention.retentionMs` wins).
   * @defaultValue 86400000 (one day)
   */
  retentionMs?: number;
  /**
   * How long dead messages are kept; 0 keeps them until redriven or deleted by hand. A
   * value > 0 enables the maintenance task `deadLetterRetention` with this retention
   * (which then covers dead outbox events too). @defaultValue 0
   */
  deadRetentionMs?: number;
  /**
   * Interval of the maintenance task `mailboxRetention` (the service runs in every
   * process that uses any part, on the elected leader); 0 disables the task.
   * `maintenance.mailboxRetention` wins. @defaultValue 60000
   */
  retentionIntervalMs?: number;
  /**
   * Group commit of sends without `tx`: concurrent `send`/`sendMany` calls of this
   * process that wait while its previous statement runs share the next one, up to this
   * many messages (1 turns grouping off: each call is its own statement). @defaultValue 1000
   */
  sendGroupMaxMessages?: number;
  /** Most payload bytes (UTF-8, as encoded) in one grouped statement; a larger single call still goes, alone. @defaultValue 4194304 (4 MiB) */
  sendGroupMaxBytes?: number;
  /**
   * Default `handlerTimeoutMs` of `consume`: a handler run longer than this fails its
   * attempt (the consume transaction rolls back; the failure is recorded like a throw).
   * 0 leaves handlers unbounded. @defaultValue 60000
   */
  handlerTimeoutMs?: number;
}

/** A message to send. */
export interface MailboxSend {
  /** Destination: a non-empty name of at most 1000 UTF-8 bytes, exact (case-sensitive). */
  to: string;
  /** Optional topic, so receivers of one destination may take only some messages. */
  topic?: string | null;
  /**
   * A string is stored as text, byte-exact; anything else is stored as JSON
   * (`JSON.stringify`) and comes back parsed. Of any size: it lives in the row, never in a NOTIFY.
   */
  payload: unknown;
  /**
   * The message id and idempotency key: sending the same id again (concurrently, or as
   * a retry after an unknown commit outcome) never makes a second message.
   * @defaultValue a random UUID
   */
  id?: string;
}

/** What `send` reports. */
export interface SendResult {
  id: string;
  /** True if this call created the message; false if a message with this id already existed. */
  created: boolean;
}

/** A received message. */
export interface MailboxMessage<P = unknown> {
  id: string;
  to: string;
  topic: string | null;
  /** The payload: a string as sent, or the parsed JSON value. */
  payload: P;
  /** Deliveries so far, this one included (counted by a take row sent before the handler runs and committed on its own: failed, timed-out and interrupted runs count). Read from another session during a run, a message shows the count before that run. */
  attempts: number;
  createdAt: Date;
}

/** Options of `receive`. */
export interface ReceiveOptions {
  /** Only messages of this topic. @defaultValue any */
  topic?: string;
  /** How long to wait for a message; 0 looks once. @defaultValue 0 */
  timeoutMs?: number;
  /** The caller's transaction: the message is consumed only if it commits. */
  tx?: TxLike;
  /**
   * Stops waiting. Without `tx`, a receive whose signal aborts while it takes a message
   * rolls the take back: an aborted receive never consumes a message.
   */
  signal?: AbortSignal;
}

/** Handler of `consume`: runs inside the transaction that marks the message consumed. */
export type MailboxHandler<P = unknown> = (message: MailboxMessage<P>, tx: Executor) => Promise<unknown> | unknown;

/** Options of `consume`. */
export interface ConsumeOptions {
  /** Only messages of this topic. @defaultValue any */
  topic?: string;
  /** Transactions running at once (each on its own pooled connection). @defaultValue 1 */
  concurrency?: number;
  /**
   * After a take that found less than a full batch, the next take of this consumer
   * starts no sooner than this long after that one began: the wake-ups of messages sent
   * meanwhile are served by one take (one transaction, one commit) instead of one each.
   * Adds at most this much latency; a take that found a full batch is followed at once.
   * 0 takes on every wake-up (wake-ups that arrive while a take runs are still served by
   * the next one). For throughput with `batchSize > 1`, a few milliseconds. @defaultValue 0
   */
  cooldownMs?: number;
  /**
   * Messages taken per transaction. If a handler throws, the whole transaction rolls
   * back, the failure is recorded for that message, and the others are delivered again.
   * @defaultValue 1
   */
  batchSize?: number;
  /** Overrides the mailbox's `maxAttempts` for this consumer. */
  maxAttempts?: number;
  /**
   * A handler run (one message) longer than this fails its attempt: the consume
   * transaction rolls back (its `statement_timeout` is set to this too, so a statement of
   * the handler stuck on a lock ends), the failure is recorded with a `TIMEOUT` error,
   * and a statement the handler issues later on its `tx` fails instead of running.
   * The attempt was counted before the handler ran. 0 leaves handlers unbounded.
   * @defaultValue the mailbox's `handlerTimeoutMs` (60000)
   */
  handlerTimeoutMs?: number;
}

/** A dead message with its last error. */
export interface DeadMessage<P = unknown> extends MailboxMessage<P> {
  lastError: string | null;
  deadAt: Date;
}

/** A message with its state, as `get` returns it. */
export interface MessageInfo<P = unknown> extends MailboxMessage<P> {
  state: 'ready' | 'consumed' | 'dead';
  lastError: string | null;
  /** When a ready message may be handed out (later than now after a failed delivery). */
  visibleAt: Date;
  consumedAt: Date | null;
  deadAt: Date | null;
}

/** Counts of one destination. */
export interface DestinationStats {
  to: string;
  /** Waiting and deliverable now. */
  ready: number;
  /** Waiting for a redelivery delay after a failure. */
  delayed: number;
  /** Consumed, kept until retention. */
  consumed: number;
  /** In the dead-letter state. */
  dead: number;
  /** Creation time of the oldest waiting message, or null. */
  oldestReadyAt: Date | null;
  /** Present with `stats({ estimate: true })`: whether `consumed` is estimated from a sample. */
  estimated?: boolean;
}

/** Events of the mailbox (`herald.mailbox.on(name, fn)`). */
export type MailboxEvents = {
  /** A handler threw; the message will be delivered again after a delay. */
  'message:handlerError': [info: { to: string; id: string; attempts: number; error: unknown }];
  /** A message reached `maxAttempts` and moved to the dead-letter state. */
  'message:dead': [info: { to: string; id: string; attempts: number; error: unknown }];
  /** A background failure (a consume transaction); it is retried. Failures of retention are `maintenance:error` events of `herald.maintenance`. */
  'message:problem': [err: Error];
  /** `purge()` deleted messages (the maintenance tasks `mailboxRetention` and `deadLetterRetention` call it). */
  'message:purged': [info: { consumed: number; dead: number }];
}
