import type { Executor } from '../driver/types.js';
import { HeraldError, InvalidOptionError } from '../errors.js';
import { BIGINT_MAX } from '../internal/validate.js';

/**
 * A position in a topic: decimal text, the message's id in the topic's log, given when
 * the sequencer moved the committed message into the log. Positions sort in delivery
 * order (numerically); a reader resumes *after* a position. Positions of earlier
 * versions, `"<xid>:<id>"`, are still accepted as input and mean the id.
 */
export type TopicPosition = string;

/** One message as consumers and readers get it. */
export interface TopicMessage<T = unknown> {
  /** The topic's name. */
  topic: string;
  /** Message id (decimal text): the id its publish returned, unique per topic. */
  id: string;
  /** Where this message sits in delivery order (its id in the log); resume after it. */
  position: TopicPosition;
  /** The key given at publish (messages with one key keep their order within a group), or null. */
  key: string | null;
  /** The key partition (hash of the key modulo the topic's `partitions`; round-robin without key). */
  partition: number;
  /** The JSON payload as published. */
  payload: T;
  /** Database time of the publishing statement. */
  publishedAt: Date;
}

/** What `publish` returns. */
export interface PublishedMessage {
  /** The message's id (consumers see it as `message.id`). */
  id: string;
  /**
   * Its position, when the call waited for it (`waitForPosition: true`, without `tx`):
   * the sequencer numbered it before the call returned. Otherwise `null`: the message
   * is committed (or commits with the caller's `tx`) and the sequencer gives its
   * position shortly after, in the background.
   */
  position: TopicPosition | null;
}

/** Options of a topic, fixed when the topic is created (first `create` or first publish). */
export interface TopicOptions {
  /** Key partitions: the most consumers of one group that work at once. @defaultValue 8 */
  partitions?: number;
  /** Message ids per segment (the unit retention drops). @defaultValue 1000000 */
  segmentSize?: number;
  /** Drop segments whose newest message is older than this (null: keep by age). @defaultValue 604800000 (7 days) */
  retentionMs?: number | null;
  /** Drop the oldest segments while the topic's log is larger than this. @defaultValue null (keep) */
  retentionBytes?: number | null;
}

/** Options of `herald.topics` (the `topics` option of `createHerald`). */
export interface TopicsOptions {
  /** Defaults of topics created implicitly by a first publish. */
  topicDefaults?: TopicOptions;
  /** Interval of retention and segment maintenance once `herald.topics.start()` ran. @defaultValue 60000 */
  maintenanceIntervalMs?: number;
  /**
   * Whether a publish (or a consumer's `start`, or `createGroup`) on a missing topic
   * creates it with `topicDefaults`. With `false`, topics are created only by
   * `herald.topics.create` and those calls throw `HeraldError` `NOT_FOUND`. A publish
   * may override it per call (`{ autoCreate }`). `herald serve` never relies on it: its
   * HTTP publish creates nothing unless the server runs with `autoCreateTopics`.
   * @defaultValue true
   */
  autoCreate?: boolean;
  /**
   * Most messages one sequencer run moves into the log (a run is one short
   * transaction; a larger backlog takes several). Capped by the topic's `segmentSize`.
   * @defaultValue 10000
   */
  sequencerBatchSize?: number;
  /**
   * After a publish without `tx`, this process runs the sequencer in the background
   * (it numbers the message and wakes the consumers). While publishes come in a burst (the
   * last run moved at least 16 messages), these runs start at least this many ms apart,
   * so each moves more: fewer commits, each with its WAL flush and wake-up, for up to this
   * much more delivery latency during the burst. Runs that move fewer (a steady rate that
   * one run at a time keeps up with) are not delayed. `0`: every run starts as soon as
   * the previous one ended. @defaultValue 3
   */
  sequencerBurstGapMs?: number;
}

/** Where a new group starts: `earliest` retained message, `latest` (only what comes next), or a point in time. */
export type GroupStart = 'earliest' | 'latest' | Date;

/** `start` checked: `'earliest'`, `'latest'` or a valid Date, else `INVALID_ARGUMENT`. */
export function checkStart(start: GroupStart): GroupStart {
  if (start === 'earliest' || start === 'latest' || (start instanceof Date && !Number.isNaN(start.getTime()))) return start;
  throw new HeraldError('INVALID_ARGUMENT', `start must be 'earliest', 'latest' or a valid Date, got ${JSON.stringify(String(start))}`);
}

/** A batch handed to a consumer's handler, inside the transaction that commits the group's position. */
export interface TopicBatch<T = unknown> {
  topic: string;
  group: string;
  /** The key partition this batch comes from (all its messages share it). */
  partition: number;
  /** Messages in delivery order. */
  messages: TopicMessage<T>[];
  /**
   * The batch's transaction: write through it and your writes commit together with
   * the group's new position (exactly once). Throwing rolls both back.
   */
  tx: Executor;
}

/** Options of {@link Topics.consumer}. */
export interface ConsumerOptions {
  /** Where the group starts if it does not exist yet. @defaultValue 'earliest' */
  start?: GroupStart;
  /** Most messages per batch. @defaultValue 100 */
  batchSize?: number;
  /**
   * Key partitions this consumer works on at once: up to this many batches run at the
   * same time, each in its own transaction (and pool connection), each on a different
   * key partition (one partition is never worked on twice at once, so one key's
   * messages stay in order). Handlers of different key partitions then run
   * concurrently. More than the topic's `partitions` adds nothing. @defaultValue 1
   */
  concurrency?: number;
  /** Safety poll when no wake-up comes. @defaultValue 1000 */
  pollIntervalMs?: number;
  /** @deprecated No effect: delivery no longer waits for other transactions. */
  horizonPollMs?: number;
  /** @deprecated No effect: delivery no longer waits for other transactions. */
  horizonPollMaxMs?: number;
  /** Pause after a handler failure before the same batch is retried. @defaultValue 1000 */
  retryDelayMs?: number;
  /**
   * Attempts on one message before it goes to the group's dead letters and the key
   * partition moves on. An attempt is counted (and committed) before the handler runs,
   * so a handler that kills its process uses one up too. Give every consumer of a
   * group the same value. @defaultValue 10
   */
  maxAttempts?: number;
  /**
   * Longest a handler may run: past it the batch's running statement is cancelled, the
   * batch rolls back and the attempt counts as failed (`topic:handlerError` with a
   * `TIMEOUT` error). 0: no limit. @defaultValue 60000
   */
  handlerTimeoutMs?: number;
}

/** Defaults of {@link ConsumerOptions}. */
export const CONSUMER_DEFAULTS: Required<Omit<ConsumerOptions, 'start' | 'horizonPollMs' | 'horizonPollMaxMs'>> & { start: GroupStart } = {
  start: 'earliest',
  batchSize: 100,
  concurrency: 1,
  pollIntervalMs: 1000,
  retryDelayMs: 1000,
  maxAttempts: 10,
  handlerTimeoutMs: 60_000,
};

/** Defaults of {@link TopicOptions} and {@link TopicsOptions}. */
export const TOPICS_DEFAULTS = {
  partitions: 8,
  segmentSize: 1_000_000,
  retentionMs: 7 * 24 * 3600_000 as number | null,
  retentionBytes: null as number | null,
  maintenanceIntervalMs: 60_000,
  autoCreate: true,
  sequencerBatchSize: 10_000,
  sequencerBurstGapMs: 3,
};

/** What the `behind` event and {@link TopicRetentionError} carry. */
export interface BehindInfo {
  topic: string;
  group: string | null;
  /** The key partition concerned (null for a whole-topic reader). */
  partition: number | null;
  /** The reader's position: messages after it, through `through`, were dropped by retention. */
  position: TopicPosition;
  /** The newest dropped position concerned: the lost messages are those after `position` up to and including this one. */
  through: TopicPosition;
  /** Position of the oldest retained message of the topic, or null when the log is empty. */
  oldestPosition: TopicPosition | null;
}

/** A group or reader whose position fell out of retention: messages it never got were dropped. Never a silent skip. */
export class TopicRetentionError extends HeraldError {
  readonly info: BehindInfo;
  constructor(info: BehindInfo) {
    super(
      'RETENTION',
      `topic ${info.topic}${info.group ? ` group ${info.group}` : ''}${info.partition !== null ? ` partition ${info.partition}` : ''}: position ${info.position} is behind retention (messages after it through ${info.through} were dropped; oldest retained ${info.oldestPosition ?? 'none'}); reset the position to go on`,
    );
    this.name = 'TopicRetentionError';
    this.info = info;
  }
}

/** Events of a {@link TopicConsumer}. */
export type ConsumerEvents = {
  /** A batch committed. */
  'topic:batch': [{ partition: number; count: number; position: TopicPosition }];
  /** A key partition of the group is behind retention; it is not consumed until the group is reset. */
  'topic:behind': [BehindInfo & { error: TopicRetentionError }];
  /** The handler threw (or ran past `handlerTimeoutMs`); the batch rolled back and is retried after `retryDelayMs`. `attempts`: attempts on the batch's first message so far. */
  'topic:handlerError': [{ partition: number; error: unknown; attempts: number }];
  /** A message used up `maxAttempts` and went to the group's dead letters; the key partition moves on. */
  'topic:dead': [{ partition: number; id: string; position: TopicPosition; key: string | null; attempts: number; lastError: string | null }];
  /** A background failure (connection lost...); the consumer keeps trying. */
  'topic:problem': [unknown];
  /** The consumer is running. */
  'topic:started': [];
  /** The consumer stopped. */
  'topic:stopped': [];
};

/** Longest message key (UTF-8 bytes). */
export const TOPIC_KEY_MAX_BYTES = 1000;
const XID8_MAX = 18446744073709551615n;


/**
 * Parses a position (an id; the `"<xid>:<id>"` form of earlier versions means its id)
 * to the id; throws INVALID_ARGUMENT for anything else.
 */
export function parsePosition(position: string): string {
  const m = /^(?:(\d{1,20}):)?(\d{1,19})$/.exec(String(position));
  // 64-bit in the database (the legacy xid8 unsigned, the id a bigint): a larger number
  // is refused here, not by Postgres with its own text.
  if (!m || (m[1] !== undefined && BigInt(m[1]) > XID8_MAX) || BigInt(m[2]) > BIGINT_MAX) {
    throw new HeraldError('INVALID_ARGUMENT', `not a topic position: ${JSON.stringify(String(position).slice(0, 60))} (expected a message position, a 63-bit number)`);
  }
  return String(BigInt(m[2]));
}

/** Validates a topic or group name. */
export function assertName(what: 'topic' | 'group', name: unknown): asserts name is string {
  if (typeof name !== 'string' || name.length === 0 || name.length > 200 || name.includes('\0')) {
    throw new HeraldError('INVALID_ARGUMENT', `${what} name must be 1 to 200 characters without NUL, got ${JSON.stringify(String(name).slice(0, 60))}`);
  }
}

export function positiveInt(option: string, v: unknown, max = Number.MAX_SAFE_INTEGER): number {
  if (typeof v !== 'number' || !Number.isInteger(v) || v < 1 || v > max) throw new InvalidOptionError(option, v, `an integer from 1 to ${max}`);
  return v;
}

export function nonNegative(option: string, v: unknown): number {
  // Kept in bigint columns: a whole number.
  if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < 0) throw new InvalidOptionError(option, v, 'an integer >= 0');
  return v;
}

/** A message of a group's dead letters (`herald.topics.deadLetters`). */
export interface TopicDeadLetter<T = unknown> extends TopicMessage<T> {
  /** The group it failed in. */
  group: string;
  /** Attempts it used (since its last redrive, when redriven). */
  attempts: number;
  /** The last failure (`describeError` text), or null when the process died. */
  lastError: string | null;
  /** When it went to dead letters. */
  deadAt: Date;
  /** True once `redrive` handed it back to the group, until a batch with it commits. */
  redriving: boolean;
}
