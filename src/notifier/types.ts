import type { QueueFullInfo, QueueResumedInfo } from './pressure.js';

/** A notification handed to subscribers. */
export interface Notification {
  /** The channel, exactly as given to `listen`. */
  channel: string;
  /** The payload text ('' when none was sent). */
  payload: string;
  /** Backend process id of the sender (0 when the driver does not report it). */
  processId: number;
}

/** Where the notifier's connection stands. */
export type NotifierStatus =
  /** Opening the first connection. */
  | 'connecting'
  /** LISTEN is live for every subscribed channel. */
  | 'listening'
  /** The connection was lost; retrying with backoff. Notifications sent meanwhile are lost (NOTIFY is a wake-up). */
  | 'reconnecting'
  /** The connection cannot hold LISTEN (a transaction-mode pooler), or reconnect attempts ran out. See `lastError`. */
  | 'failed'
  /** `stop()` was called. */
  | 'stopped';

/** Options of the notifier; every one has a default. */
export interface NotifierOptions {
  /** Notifications each subscriber may hold unread before it drops new ones. @defaultValue 1000 */
  subscriberBufferSize?: number;
  /** Interval of the health query on the listen session itself. @defaultValue 5000 */
  healthCheckIntervalMs?: number;
  /**
   * A health query not answered this long after it was due (waiting behind a LISTEN
   * or UNLISTEN in flight included) counts as a dead (black-holed) connection: a dead
   * session is found within `healthCheckIntervalMs + healthCheckTimeoutMs`. @defaultValue 3000
   */
  healthCheckTimeoutMs?: number;
  /** First reconnect delay ceiling; doubles per attempt (full jitter). @defaultValue 50 */
  reconnectBaseDelayMs?: number;
  /** Cap of the reconnect delay. @defaultValue 1000 */
  reconnectMaxDelayMs?: number;
  /** Reconnect attempts in a row (after a lost connection) before status `failed`. @defaultValue Infinity (never give up) */
  maxReconnectAttempts?: number;
  /**
   * Attempts to open the first connection before status `failed` (then `start()`
   * and every `established` reject with the last error). The CLI sets 1, so a
   * command against an unreachable address fails instead of retrying for ever.
   * @defaultValue `maxReconnectAttempts` (Infinity: never give up)
   */
  maxConnectAttempts?: number;
  /**
   * How long opening the listen session may take (TCP connect, TLS, startup,
   * authentication); an address that accepts and never answers counts as a failed
   * attempt, retried with backoff. @defaultValue createHerald's `connectTimeoutMs` (10000)
   */
  connectTimeoutMs?: number;
  /**
   * Deadline of every statement pgherald issues for the notifier: LISTEN and
   * UNLISTEN on the listen session (past it the session is destroyed and rebuilt,
   * and every wanted channel LISTENed again), the probe NOTIFY of the round trip and
   * `sampleQueueUsage()` through the pool (past it that pooled connection is
   * discarded, never handed out again). @defaultValue 5000
   */
  statementTimeoutMs?: number;
  /**
   * After every (re)connect, prove that LISTEN sticks with a round trip: LISTEN a
   * probe channel, NOTIFY it through the pool, wait for it. This is how a
   * transaction-mode pooler is detected. @defaultValue true
   */
  verifySession?: boolean;
  /** How long the round trip may take. @defaultValue 2000 */
  verifySessionTimeoutMs?: number;
  /** Interval for sampling `pg_notification_queue_usage()`; 0 turns it off. @defaultValue 10000 */
  queueUsageIntervalMs?: number;
  /** Usage (0..1) at or above which `queueWarning` is emitted. @defaultValue 0.5 */
  queueUsageWarnThreshold?: number;
  /**
   * Usage (0..1) of a sample at or above which this process pauses its wake-ups: the
   * parts stop attaching `pg_notify` to their writes, consumers rely on their polls,
   * and `queueFull` fires. A write that fails with "too many notifications in the
   * NOTIFY queue" pauses them too, whatever the usage. 1 pauses only on that failure.
   * @defaultValue 0.5
   */
  queueUsageHighWater?: number;
  /**
   * Usage (0..1) of a sample at or below which paused wake-ups resume (`queueResumed`).
   * Below `queueUsageHighWater`. While paused, the usage is sampled every
   * `queueUsageIntervalMs` (or `healthCheckIntervalMs` when that is 0).
   * @defaultValue 0.25
   */
  queueUsageLowWater?: number;
}

/** Per-channel counters. */
export interface ChannelStats {
  subscribers: number;
  delivered: number;
  dropped: number;
  listening: boolean;
}

/** A snapshot of the notifier. */
export interface NotifierStats {
  status: NotifierStatus;
  reconnects: number;
  channels: Record<string, ChannelStats>;
  /** Last sampled `pg_notification_queue_usage()` (0..1), or null before the first sample. */
  queueUsage: number | null;
  /** False while wake-ups are paused because the notification queue is (nearly) full. */
  wakeups: boolean;
  /** When the current pause began, or null. */
  wakeupsPausedSince: Date | null;
  /** Pauses (`queueFull` episodes) so far in this process. */
  queueFullEpisodes: number;
  lastError: Error | null;
}

/** Events of the notifier (`notifier.on(name, listener)`). */
export type NotifierEvents = {
  /** Status changed. */
  'notifier:status': [status: NotifierStatus];
  /** LISTEN is live on a new session (first connect and every reconnect). */
  'notifier:connected': [];
  /**
   * The listen connection found the server in recovery (a standby; `inRecovery: true`,
   * reported once, with one `notifier:problem` carrying a `ServerInRecoveryError`), or a
   * primary again after that (`false`). Meanwhile the notifier reconnects with backoff
   * and LISTENs nothing.
   */
  'notifier:recovery': [info: { inRecovery: boolean }];
  /**
   * LISTEN is live again after a lost connection (emitted once per recovery, after
   * every channel is LISTENed again and each subscription's `onListen` ran): durable
   * consumers catch up by query now and cut any error backoff short.
   */
  'notifier:reconnected': [info: { attempts: number; downtimeMs: number }];
  /** The listen session died (socket error, terminate, restart, failed health query). */
  'notifier:lost': [err: Error | undefined];
  /** A subscriber's buffer filled; it drops until it reads again. Emitted once per episode. */
  'notifier:overflow': [info: { channel: string; dropped: number; bufferSize: number }];
  /** A subscriber's handler threw or rejected. */
  'notifier:handlerError': [info: { channel: string; error: unknown }];
  /** A sample of `pg_notification_queue_usage()`. */
  'notifier:queueUsage': [usage: number];
  /** Usage reached `queueUsageWarnThreshold`: some session may sit in a long transaction while listening. */
  'notifier:queueWarning': [usage: number];
  /**
   * The notification queue is full or above `queueUsageHighWater`: wake-ups are paused
   * (writes commit without them; consumers find work by their polls). Once per episode;
   * `holders` names the backends that may hold the queue's tail.
   */
  'notifier:queueFull': [info: QueueFullInfo];
  /** The queue drained to `queueUsageLowWater`: wake-ups resume and every subscription's `onListen` runs (catch up now). */
  'notifier:queueResumed': [info: QueueResumedInfo];
  /** A background failure (connect attempt, health query, LISTEN); the notifier keeps trying. */
  'notifier:problem': [err: Error];
}
