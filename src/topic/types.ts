import type { Executor } from '../driver/types.js';
import { HeraldError, InvalidOptionError } from '../errors.js';
import { BIGINT_MAX } from '../internal/validate.js';

/**
 * A position in a topic: `"<xid>:<id>"`, the publishing transaction's id and the
 * message id. Positions sort in delivery order (by xid, then id); a reader resumes
 * *after* a position. Treat it as opaque text.
 */
export type TopicPosition = string;

/** One message as consumers and readers get it. */
export interface TopicMessage<T = unknown> {
  /** The topic's name. */
  topic: string;
  /** Message id (decimal text): unique per topic, from the topic's sequence. */
  id: string;
  /** Where this message sits in delivery order; resume after it. */
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
  id: string;
  position: TopicPosition;
}

/** Options of a topic, fixed when the topic is created (first `create` or first publish). */
export interface TopicOptions {
  /** Key partitions: the most consumers of one group that work at once. @defaultValue 8 */
  partitions?: number;
  /** Message ids per segment (the unit retention drops). @defaultValue 1000000 */
  segmentSize?: number;
  /** Drop segments whose newest message is older than this. @defaultValue null (keep) */
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
}

/** Where a new group starts: `earliest` retained message, `latest` (only what comes next), or a point in time. */
export type GroupStart = 'earliest' | 'latest' | Date;

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
  /** Safety poll when no wake-up comes. @defaultValue 1000 */
  pollIntervalMs?: number;
  /** Re-check interval while messages wait for an open transaction to end (they cannot be handed out before). @defaultValue 25 */
  horizonPollMs?: number;
  /** Longest re-check interval while messages wait for an open transaction (the interval doubles from `horizonPollMs` up to this, or `pollIntervalMs` if lower). @defaultValue 1000 */
  horizonPollMaxMs?: number;
  /** Pause after a handler failure before the same batch is retried. @defaultValue 1000 */
  retryDelayMs?: number;
}

/** Defaults of {@link ConsumerOptions}. */
export const CONSUMER_DEFAULTS: Required<Omit<ConsumerOptions, 'start'>> & { start: GroupStart } = {
  start: 'earliest',
  batchSize: 100,
  pollIntervalMs: 1000,
  horizonPollMs: 25,
  horizonPollMaxMs: 1000,
  retryDelayMs: 1000,
};

/** Defaults of {@link TopicOptions} and {@link TopicsOptions}. */
export const TOPICS_DEFAULTS = {
  partitions: 8,
  segmentSize: 1_000_000,
  retentionMs: null as number | null,
  retentionBytes: null as number | null,
  maintenanceIntervalMs: 60_000,
  autoCreate: true,
};

/** What the `behind` event and {@link TopicRetentionError} carry. */
export interface BehindInfo {
  topic: string;
  group: string | null;
  /** The key partition concerned (null for a whole-topic reader). */
  partition: number | null;
  /** The reader's position: messages after it were dropped by retention. */
  position: TopicPosition;
  /** Position of the oldest retained message of the topic, or null when the log is empty. */
  oldestPosition: TopicPosition | null;
}

/** A group or reader whose position fell out of retention: messages it never got were dropped. Never a silent skip. */
export class TopicRetentionError extends HeraldError {
  readonly info: BehindInfo;
  constructor(info: BehindInfo) {
    super(
      'RETENTION',
      `topic ${info.topic}${info.group ? ` group ${info.group}` : ''}${info.partition !== null ? ` partition ${info.partition}` : ''}: position ${info.position} is behind retention (oldest retained ${info.oldestPosition ?? 'none'}); reset the position to go on`,
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
  /** The handler threw; the batch rolled back and is retried after `retryDelayMs`. */
  'topic:handlerError': [{ partition: number; error: unknown }];
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

/** Formats a position. */
export function formatPosition(xid: string, id: string): TopicPosition {
  return `${xid}:${id}`;
}

/** Parses a position; throws INVALID_ARGUMENT for anything else. */
export function parsePosition(position: string): { xid: string; id: string } {
  const m = /^(\d{1,20}):(\d{1,19})$/.exec(String(position));
  // Both parts are 64-bit in the database (xid8 is unsigned, the id a bigint): a larger
  // number is refused here, not by Postgres with its own text.
  if (!m || BigInt(m[1]) > XID8_MAX || BigInt(m[2]) > BIGINT_MAX) {
    throw new HeraldError('INVALID_ARGUMENT', `not a topic position: ${JSON.stringify(String(position).slice(0, 60))} (expected "<xid>:<id>", each a 64-bit number)`);
  }
  return { xid: m[1], id: m[2] };
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
  if (typeof v !== 'number' || !Number.isFinite(v) || v < 0) throw new InvalidOptionError(option, v, 'a number >= 0');
  return v;
}
