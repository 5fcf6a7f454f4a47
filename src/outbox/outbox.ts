import { toExecutor } from '../driver/index.js';
import type { Driver, Executor, TxLike } from '../driver/types.js';
import { HeraldError, InvalidArgumentError, InvalidOptionError } from '../errors.js';
import { schemaIdent } from '../internal/ident.js';
import { assertInt, assertText, jsonHasNul } from '../internal/validate.js';
import { withSpan } from '../internal/tracing.js';
import type { Notifier } from '../notifier/notifier.js';
import {
  outboxInsertMany,
  outboxInsertOne,
  outboxGet,
  outboxListDead,
  type OUTBOX_KEY_LOCK_BUCKETS,
  outboxPruneDead,
  outboxPrunePublished,
  outboxRedrive,
  outboxStats,
} from './queries.js';
import { GroupCommit } from '../internal/group-commit.js';
import { HorizonWatch } from '../internal/horizon.js';
import { Relay, toOutboxEvent, type RelayOptions } from './relay.js';
import type { OutboxEvent } from './sinks.js';

/** An event to add to the outbox. */
export interface NewOutboxEvent {
  /** Event type, e.g. `order.created` (non-empty). */
  type: string;
  /**
   * Ordering key, e.g. the aggregate id: events of one key are published in commit
   * order, one at a time. Omit (or null) for events without order.
   */
  key?: string | null;
  /** Any JSON value. @defaultValue null */
  payload?: unknown;
  /** String headers passed to the sink (HTTP/NATS headers). @defaultValue {} */
  headers?: Record<string, string>;
}

/** Backlog counters of the outbox. */
export interface OutboxStats {
  /** Not yet published and not dead. */
  pending: number;
  /** Pending and due now. */
  due: number;
  /** Pending after at least one failed or interrupted attempt (not counting events a relay holds right now). */
  retrying: number;
  /** Dead-lettered. */
  dead: number;
  /** Published and not yet pruned (with `estimate`: from the table's statistics). */
  published: number;
  /** Whether `published` is an estimate. */
  publishedEstimated: boolean;
  /** Age of the oldest pending event in ms (database time), or null. */
  oldestPendingAgeMs: number | null;
}

/** A dead-lettered event. */
export interface DeadOutboxEvent extends OutboxEvent {
  lastError: string | null;
  deadAt: Date;
}

/** An event with its delivery state, as {@link Outbox.get} returns it. */
export interface OutboxEventInfo extends OutboxEvent {
  /** `pending` (waiting for a relay, or retrying), `published` or `dead`. */
  state: 'pending' | 'published' | 'dead';
  lastError: string | null;
  /** When a relay may try it next (pending events). */
  nextAttemptAt: Date;
  publishedAt: Date | null;
  deadAt: Date | null;
}

const LOCK_NAMESPACE = 'pgherald.outbox:';

/** `lock_timeout` of a grouped add statement, which takes key locks (ms). */
export const ADD_GROUP_LOCK_TIMEOUT_MS = 50;
/** Most events in one grouped add statement (a single larger request still goes, alone). */
export const ADD_GROUP_MAX_EVENTS = 1000;

/**
 * The transactional outbox: `add` writes events in the caller's transaction; relays
 * (`relay()`) publish them to a sink. Reach it as `herald.outbox`.
 *
 * @example
 * await herald.transaction(async (tx) => {
 *   await tx.query('INSERT INTO orders (id) VALUES ($1)', [42]);
 *   await herald.outbox.add({ type: 'order.created', key: 'order:42', payload: { id: 42 } }, { tx });
 * });
 * const relay = herald.outbox.relay({ sink: async (event) => console.log(event.id, event.type) });
 */
export class Outbox {
  /** NOTIFY channel that wakes relays: `<schema>.outbox`. */
  readonly channel: string;
  readonly #driver: Driver;
  readonly #notifier: Notifier;
  readonly #s: string;
  readonly #lockPrefix: string;
  readonly #relays = new Set<Relay>();
  readonly #active: () => void;
  readonly #group: GroupCommit<CheckedEvent>;
  /** Whether a transaction is held open in the cluster: shared by this outbox's relays (their key floors). */
  readonly #horizon: HorizonWatch;

  /** @internal Use `herald.outbox`. `active` is called on every add and relay: it starts the maintenance service. */
  constructor(driver: Driver, notifier: Notifier, schema: string, active: () => void = () => {}) {
    this.#active = active;
    this.#driver = driver;
    this.#notifier = notifier;
    this.#s = schemaIdent(schema);
    this.channel = `${schema}.outbox`;
    this.#lockPrefix = `${LOCK_NAMESPACE}${schema}:`;
    this.#horizon = new HorizonWatch(driver.executor);
    this.#group = new GroupCommit<CheckedEvent>(
      (events) => this.#insert(events, ADD_GROUP_LOCK_TIMEOUT_MS),
      (events) => this.#insert(events, null),
      ADD_GROUP_MAX_EVENTS,
    );
  }

  /**
   * Adds one event; with `{ tx }` it exists only if that transaction commits. Returns
   * the event id (a UUID). Producers of one key wait for each other until commit (a
   * transaction-level advisory lock on the key's bucket, one of
   * {@link OUTBOX_KEY_LOCK_BUCKETS}), which keeps the key's events in commit order.
   */
  async add(event: NewOutboxEvent, options: { tx?: TxLike } = {}): Promise<string> {
    const e = checkEvent(event, 'event');
    this.#active();
    return withSpan('herald.outbox.add', { 'herald.event_type': e.type }, async () =>
      options.tx
        ? this.#write(options.tx, (ex) => outboxInsertOne(ex, this.#s, this.#lockPrefix, e), (ex) => outboxInsertOne(ex, this.#s, this.#lockPrefix, e))
        : // Our own commit: grouped with the other adds of this process that are waiting.
          (await this.#group.submit([e]))[0],
    );
  }

  /** Adds a batch in one statement (in array order); returns the ids in the same order. */
  async addMany(events: readonly NewOutboxEvent[], options: { tx?: TxLike } = {}): Promise<string[]> {
    if (!Array.isArray(events)) throw new HeraldError('INVALID_ARGUMENT', 'addMany expects an array');
    if (events.length === 0) return [];
    const checked = events.map((e, i) => checkEvent(e, `events[${i}]`));
    this.#active();
    return withSpan('herald.outbox.add', { 'herald.batch_size': events.length }, () =>
      options.tx ? this.#insert(checked, null, options.tx) : this.#group.submit(checked),
    );
  }

  /**
   * Inserts events in one statement (in array order) with their key locks: in `tx`, or
   * committed by us. `lockTimeoutMs`: how long our own transaction may wait for a key's
   * lock (a grouped statement must not hold its other callers behind one key), null to wait.
   */
  #insert(events: readonly CheckedEvent[], lockTimeoutMs: number | null, tx?: TxLike): Promise<string[]> {
    const cols = {
      types: events.map((e) => e.type),
      keys: events.map((e) => e.key),
      payloads: events.map((e) => e.payload),
      headers: events.map((e) => e.headers),
    };
    // The key locks must live until commit: in the caller's transaction, or in the
    // statement's own (one statement, committed by itself, when it is ours).
    const insert = (ex: Executor, timeoutMs: number | null) => outboxInsertMany(ex, this.#s, cols, { prefix: this.#lockPrefix, timeoutMs });
    return this.#write(tx, (ex) => insert(ex, tx ? null : lockTimeoutMs), (ex) => insert(ex, lockTimeoutMs));
  }

  /**
   * Runs an insert. Its wake-up is the table's statement trigger, which skips the
   * NOTIFY when `herald.outbox_wake` is `off`: while wake-ups are paused (a nearly full
   * notification queue) the insert runs after `SET LOCAL herald.outbox_wake = off` — in
   * the caller's transaction, for the rest of it; otherwise in a transaction of ours.
   * Without `tx`, an insert whose commit met a full queue runs once more that way
   * (nothing of it committed). `inTx` runs in a transaction, `onPool` on the pool.
   */
  #write<T>(tx: TxLike | undefined, inTx: (ex: Executor) => Promise<T>, onPool: (ex: Executor) => Promise<T>): Promise<T> {
    const quiet = async (ex: Executor) => {
      await ex.query(`SELECT set_config('herald.outbox_wake', 'off', true)`);
      return inTx(ex);
    };
    if (tx) return this.#notifier.wakeups ? inTx(toExecutor(tx)) : quiet(toExecutor(tx));
    return this.#notifier.pressure.run((wake) => (wake ? onPool(this.#driver.executor) : this.#driver.transaction(quiet)));
  }

  /**
   * Creates and starts a relay. Run one or several per process, in as many processes
   * as you like. `stop()` it, or `herald.close()` stops every relay of this outbox.
   */
  relay(options: RelayOptions): Relay {
    const relay = new Relay(this.#driver, this.#notifier, this.#s, this.channel, options, this.#horizon);
    this.#active();
    this.#relays.add(relay);
    relay.once('relay:stopped', () => this.#relays.delete(relay));
    return relay.start();
  }

  /**
   * Backlog counters. Pending, due, retrying and dead are exact and read partial
   * indexes (their cost follows the backlog); `published` is exact (a scan of every
   * published event) unless `estimate`, which takes it from the table's statistics
   * (`pg_class.reltuples`, as of the last VACUUM or ANALYZE, less pending and dead
   * events) — what the dashboard reads.
   */
  async stats(options: { estimate?: boolean } = {}): Promise<OutboxStats> {
    const r = await outboxStats(this.#driver.executor, this.#s, options.estimate === true);
    return {
      pending: r.pending,
      due: r.due,
      retrying: r.retrying,
      dead: r.dead,
      published: r.published,
      publishedEstimated: r.published_estimated,
      oldestPendingAgeMs: r.oldest_pending_age_ms === null ? null : Math.max(0, Math.round(Number(r.oldest_pending_age_ms))),
    };
  }

  /** One event by id (a UUID) with its delivery state, or undefined (unknown, or pruned). */
  async get(id: string): Promise<OutboxEventInfo | undefined> {
    if (typeof id !== 'string' || !UUID.test(id)) throw new InvalidArgumentError('id', id, 'an event id (UUID)');
    const r = await outboxGet(this.#driver.executor, this.#s, id);
    if (!r) return undefined;
    const at = (d: Date | string | null) => (d === null ? null : d instanceof Date ? d : new Date(d));
    return {
      ...toOutboxEvent(r),
      state: r.dead_at !== null ? 'dead' : r.published_at !== null ? 'published' : 'pending',
      lastError: r.last_error,
      nextAttemptAt: at(r.next_attempt_at)!,
      publishedAt: at(r.published_at),
      deadAt: at(r.dead_at),
    };
  }

  /** Dead-lettered events, oldest first. @param options.limit at most this many @defaultValue 100 */
  async dead(options: { limit?: number } = {}): Promise<DeadOutboxEvent[]> {
    const limit = options.limit ?? 100;
    assertInt('limit', limit, 1, 10_000);
    const rows = await outboxListDead(this.#driver.executor, this.#s, limit);
    return rows.map((r) => ({ ...toOutboxEvent(r), lastError: r.last_error, deadAt: new Date(r.dead_at) }));
  }

  /**
   * Returns dead events to the backlog with their attempts reset, due now, and wakes
   * the relays. `ids` limits it to those events. Returns how many were redriven.
   */
  async redrive(options: { ids?: string[] } = {}): Promise<number> {
    const ids = options.ids ?? null;
    if (ids !== null && (!Array.isArray(ids) || ids.some((id) => typeof id !== 'string' || !UUID.test(id)))) {
      throw new InvalidOptionError('ids', ids, 'an array of event ids (UUIDs)');
    }
    return this.#notifier.pressure.run((wake) => outboxRedrive(this.#driver.executor, this.#s, wake ? this.channel : null, ids));
  }

  /**
   * Deletes published events older than `olderThanMs` (database time), in batches of
   * `batchSize`, until none is left; returns how many. The maintenance task
   * `outboxRetention` calls it (on by default, 7 days). @defaultValue olderThanMs 86400000, batchSize 10000
   */
  async prune(options: { olderThanMs?: number; batchSize?: number } = {}): Promise<number> {
    return this.#deleteOld(outboxPrunePublished, options);
  }

  /**
   * Deletes dead-lettered events dead for longer than `olderThanMs` (database time),
   * in batches; returns how many. The maintenance task `deadLetterRetention` calls it.
   * @defaultValue olderThanMs 2592000000 (30 days), batchSize 10000
   */
  async pruneDead(options: { olderThanMs?: number; batchSize?: number } = {}): Promise<number> {
    return this.#deleteOld(outboxPruneDead, { olderThanMs: options.olderThanMs ?? 2_592_000_000, batchSize: options.batchSize });
  }

  async #deleteOld(
    statement: (ex: Executor, s: string, olderThanMs: number, limit: number) => Promise<number>,
    options: { olderThanMs?: number; batchSize?: number },
  ): Promise<number> {
    const olderThanMs = options.olderThanMs ?? 86_400_000;
    const batchSize = options.batchSize ?? 10_000;
    if (!(olderThanMs >= 0) || !Number.isFinite(olderThanMs)) throw new InvalidOptionError('olderThanMs', olderThanMs, 'a number >= 0');
    if (!Number.isInteger(batchSize) || batchSize < 1) throw new InvalidOptionError('batchSize', batchSize, 'a positive integer');
    let total = 0;
    for (;;) {
      const n = await statement(this.#driver.executor, this.#s, olderThanMs, batchSize);
      total += n;
      if (n < batchSize) return total;
    }
  }

  /** Relays started by this outbox and not stopped yet. */
  relays(): Relay[] {
    return [...this.#relays];
  }

  /** Stops every relay (each finishes its batch in flight). Idempotent. */
  async stop(): Promise<void> {
    await Promise.all([...this.#relays].map((r) => r.stop()));
    await this.#group.idle();
  }
}

/** Longest event type (UTF-8 bytes). */
export const OUTBOX_TYPE_MAX_BYTES = 200;
/** Longest event key (UTF-8 bytes). */
export const OUTBOX_KEY_MAX_BYTES = 1000;

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;

/** An event checked and serialised for the insert. */
type CheckedEvent = { type: string; key: string | null; payload: string; headers: string };

function checkEvent(event: NewOutboxEvent, where: string): CheckedEvent {
  if (event === null || typeof event !== 'object') throw new HeraldError('INVALID_ARGUMENT', `${where} must be an object`);
  assertText(`${where}.type`, event.type, OUTBOX_TYPE_MAX_BYTES);
  const key = event.key ?? null;
  if (key !== null && (typeof key !== 'string' || key.includes('\0') || Buffer.byteLength(key) > OUTBOX_KEY_MAX_BYTES)) {
    throw new InvalidArgumentError(`${where}.key`, key, `null or a string of at most ${OUTBOX_KEY_MAX_BYTES} UTF-8 bytes without NUL`);
  }
  const headers = event.headers ?? {};
  if (typeof headers !== 'object' || Array.isArray(headers) || Object.entries(headers).some(([k, v]) => typeof v !== 'string' || k.includes('\0') || v.includes('\0'))) {
    throw new HeraldError('INVALID_ARGUMENT', `${where}.headers must be an object of strings without NUL`);
  }
  let payload: string;
  try {
    payload = JSON.stringify(event.payload ?? null);
  } catch (err) {
    throw new HeraldError('INVALID_PAYLOAD', `${where}.payload is not JSON-serialisable`, { cause: err });
  }
  if (payload === undefined) throw new HeraldError('INVALID_PAYLOAD', `${where}.payload is not JSON-serialisable`);
  // jsonb cannot hold NUL (\u0000).
  if (jsonHasNul(payload)) throw new HeraldError('INVALID_PAYLOAD', `${where}.payload must not contain a NUL character (\\u0000)`);
  return { type: event.type, key, payload, headers: JSON.stringify(headers) };
}
