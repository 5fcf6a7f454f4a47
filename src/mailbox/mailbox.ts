import { randomUUID } from 'node:crypto';
import { toExecutor } from '../driver/index.js';
import type { Driver, TxLike } from '../driver/types.js';
import { HeraldError, InvalidArgumentError, InvalidOptionError } from '../errors.js';
import { assertInt, MAX_DURATION_MS } from '../internal/validate.js';
import { TypedEmitter } from '../internal/events.js';
import { schemaIdent } from '../internal/ident.js';
import { nonNegativeNumber, numberBetween, positiveInteger, positiveNumber, resolveOptions, STATS_SAMPLE_PAGES } from '../internal/options.js';
import { withSpan } from '../internal/tracing.js';
import type { Notifier } from '../notifier/notifier.js';
import { MailboxConsumer, type ConsumerHost } from './consumer.js';
import {
  mailboxClaim,
  mailboxDeadList,
  mailboxGet,
  mailboxPurge,
  mailboxPurgeTakes,
  mailboxRedrive,
  mailboxSendBatch,
  mailboxStats,
  mailboxStatsEstimated,
  type MessageInsert,
  type MessageRow,
} from './queries.js';
import type {
  ConsumeOptions,
  DeadMessage,
  DestinationStats,
  MailboxEvents,
  MailboxHandler,
  MailboxMessage,
  MailboxOptions,
  MailboxSend,
  MessageInfo,
  ReceiveOptions,
  SendResult,
} from './types.js';
import { GROUP_LOCK_TIMEOUT_MS, SendGroup } from './group.js';
import { TakeLog } from './takes.js';
import { Floors } from './floor.js';
import { mailboxChannel, waitBounded, WakeHub } from './wakeup.js';

/** Defaults of {@link MailboxOptions}; the option table of docs/mailbox.md is this object. */
export const MAILBOX_DEFAULTS: Required<MailboxOptions> = {
  pollIntervalMs: 30_000,
  maxAttempts: 5,
  retryDelayMs: 1000,
  maxRetryDelayMs: 60_000,
  retryJitter: 0,
  retentionMs: 86_400_000,
  deadRetentionMs: 0,
  retentionIntervalMs: 60_000,
  sendGroupMaxMessages: 1000,
  sendGroupMaxBytes: 4_194_304,
  handlerTimeoutMs: 60_000,
};

/** Default `cooldownMs` of `consume`. */
export const CONSUME_COOLDOWN_MS = 0;

/** Longest destination, topic or id, in UTF-8 bytes (a destination travels as a NOTIFY payload). */
export const MAX_NAME_BYTES = 1000;

function resolveMailboxOptions(options: MailboxOptions = {}): Required<MailboxOptions> {
  return resolveOptions(MAILBOX_DEFAULTS, options, {
    pollIntervalMs: positiveNumber,
    maxAttempts: positiveInteger(10_000),
    sendGroupMaxMessages: positiveInteger(),
    sendGroupMaxBytes: positiveInteger(),
    retryDelayMs: nonNegativeNumber,
    maxRetryDelayMs: nonNegativeNumber,
    retryJitter: numberBetween(0, 1),
    retentionMs: nonNegativeNumber,
    deadRetentionMs: nonNegativeNumber,
    retentionIntervalMs: nonNegativeNumber,
    handlerTimeoutMs: durationOrZero,
  });
}

const durationOrZero = (v: unknown) => (typeof v === 'number' && Number.isFinite(v) && v >= 0 && v <= MAX_DURATION_MS ? undefined : `a number of ms from 0 to ${MAX_DURATION_MS}`);

function assertName(value: unknown, what: string): asserts value is string {
  if (typeof value !== 'string' || value.length === 0) throw new HeraldError('INVALID_ARGUMENT', `${what} must be a non-empty string`);
  if (value.includes('\0')) throw new HeraldError('INVALID_ARGUMENT', `${what} must not contain a NUL character`);
  const bytes = Buffer.byteLength(value);
  if (bytes > MAX_NAME_BYTES) throw new HeraldError('INVALID_ARGUMENT', `${what} is ${bytes} bytes; the limit is ${MAX_NAME_BYTES} (UTF-8)`);
}

function encodePayload(payload: unknown): { format: 'text' | 'json'; payload: string } {
  if (typeof payload === 'string') {
    // Postgres text cannot hold NUL; say so instead of failing in the driver.
    if (payload.includes('\0')) throw new HeraldError('INVALID_PAYLOAD', 'a text payload must not contain a NUL character (send it as JSON or encode it)');
    return { format: 'text', payload };
  }
  let text: string | undefined;
  try {
    text = JSON.stringify(payload);
  } catch (err) {
    throw new HeraldError('INVALID_PAYLOAD', `payload cannot be serialised as JSON: ${(err as Error).message}`, { cause: err });
  }
  if (text === undefined) throw new HeraldError('INVALID_PAYLOAD', `payload must be a string or a JSON value, got ${typeof payload}`);
  return { format: 'json', payload: text };
}

function encode(message: MailboxSend): MessageInsert {
  if (message === null || typeof message !== 'object') throw new HeraldError('INVALID_ARGUMENT', 'a message must be an object { to, payload, topic?, id? }');
  assertName(message.to, 'to');
  const topic = message.topic ?? null;
  if (topic !== null) assertName(topic, 'topic');
  const id = message.id ?? randomUUID();
  assertName(id, 'id');
  if (!('payload' in message)) throw new HeraldError('INVALID_PAYLOAD', 'a message needs a payload');
  return { id, destination: message.to, topic, ...encodePayload(message.payload) };
}

/**
 * Durable point-to-point messages, exactly once. A message is a row: `send` writes it
 * in the caller's transaction (its id is the idempotency key), `receive`/`consume` take
 * it in the receiver's, and NOTIFY only wakes receivers up. See src/mailbox/README.md.
 *
 * @example
 * await herald.mailbox.send({ to: 'billing', payload: { orderId: 42 } }, { tx });
 * const consumer = herald.mailbox.consume('billing', async (msg, tx) => {
 *   await tx.query('INSERT INTO invoices (order_id) VALUES ($1)', [msg.payload.orderId]);
 * });
 */
export class Mailbox extends TypedEmitter<MailboxEvents> {
  readonly options: Readonly<Required<MailboxOptions>>;
  /** The NOTIFY channel of this schema's mailbox (payload: the destination). */
  readonly channel: string;
  readonly #driver: Driver;
  readonly #schemaSql: string;
  readonly #hub: WakeHub;
  readonly #floors: Floors;
  readonly #group: SendGroup;
  readonly #consumers = new Set<MailboxConsumer>();
  readonly #receives = new Set<AbortController>();
  #host: ConsumerHost;
  readonly #notifier: Notifier;
  readonly #active: () => void;

  /** @param active called on every send, receive and consume: starts the maintenance service (`createHerald` passes it). */
  constructor(driver: Driver, notifier: Notifier, schema = 'herald', options: MailboxOptions = {}, active: () => void = () => {}) {
    super();
    this.#active = active;
    this.options = resolveMailboxOptions(options);
    this.#driver = driver;
    this.#notifier = notifier;
    this.#schemaSql = schemaIdent(schema);
    this.channel = mailboxChannel(schema);
    this.#hub = new WakeHub(notifier, this.channel, (err) => this.emit('message:problem', err));
    this.#floors = new Floors(driver.executor, this.#schemaSql, notifier, (err) => this.emit('message:problem', err instanceof Error ? err : new Error(String(err))));
    this.#group = new SendGroup(
      // With its wake-up while wake-ups are on; a commit that met a full notification
      // queue runs once more without it (nothing of it committed; ids are idempotent anyway).
      async (rows, shared) =>
        (await notifier.pressure.run((wake) => mailboxSendBatch(driver.executor, this.#schemaSql, rows, wake ? this.channel : null, shared ? GROUP_LOCK_TIMEOUT_MS : null)))
          .created,
      { maxMessages: this.options.sendGroupMaxMessages, maxBytes: this.options.sendGroupMaxBytes },
    );
    const self = this;
    this.#host = {
      driver,
      schemaSql: this.#schemaSql,
      hub: this.#hub,
      reconnects: notifier,
      pollIntervalMs: this.options.pollIntervalMs,
      retry: { baseMs: this.options.retryDelayMs, maxMs: this.options.maxRetryDelayMs, jitter: this.options.retryJitter },
      takes: new TakeLog(driver.executor, this.#schemaSql),
      floors: this.#floors,
      decode: (row) => decode(row),
      problem: (err) => self.emit('message:problem', err instanceof Error ? err : new Error(String(err))),
      failed: (info) => {
        self.emit('message:handlerError', { to: info.to, id: info.id, attempts: info.attempts, error: info.error });
        if (info.dead) self.emit('message:dead', { to: info.to, id: info.id, attempts: info.attempts, error: info.error });
      },
      released: (c) => self.#consumers.delete(c),
    };
  }

  /** `receive` calls of this process waiting for a message now. */
  get waiting(): number {
    return this.#receives.size;
  }

  /** Consumers of this process that are running. */
  get consumers(): number {
    return this.#consumers.size;
  }

  /**
   * Sends one message, in the caller's transaction with `{ tx }` (then it exists only if
   * that commits). Sending an id that exists already creates nothing: `created` is false.
   * Receivers are woken with one NOTIFY naming the destination, never the message, in
   * the same commit. Without `tx`, concurrent sends of this process share one statement
   * and one commit (see {@link SendGroup}); each still gets its own answer.
   */
  async send(message: MailboxSend, options: { tx?: TxLike } = {}): Promise<SendResult> {
    const [result] = await this.sendMany([message], options);
    return result;
  }

  /** Sends a batch in one statement (one NOTIFY per distinct destination). Results are in input order. */
  async sendMany(messages: readonly MailboxSend[], options: { tx?: TxLike } = {}): Promise<SendResult[]> {
    if (!Array.isArray(messages)) throw new HeraldError('INVALID_ARGUMENT', 'sendMany expects an array of messages');
    if (messages.length === 0) return [];
    const rows = messages.map(encode);
    this.#active();
    const created = await withSpan('herald.mailbox.send', { 'herald.mailbox.count': rows.length }, async () => {
      if (options.tx) {
        // In the caller's transaction: the NOTIFY commits with it, from the same statement
        // (none while wake-ups are paused: a full notification queue would fail the commit).
        const ids = (await mailboxSendBatch(toExecutor(options.tx), this.#schemaSql, rows, this.#notifier.wakeups ? this.channel : null)).created;
        // A batch that repeats an id creates it once: the first occurrence reports it.
        return rows.map((r) => ids.delete(r.id));
      }
      // Our own commit: grouped with the other sends of this process that are waiting.
      return this.#group.submit(rows);
    });
    return rows.map((r, i) => ({ id: r.id, created: created[i] }));
  }

  /**
   * Takes one message of `to`, exactly once: concurrent receivers never get the same
   * one. With `{ tx }` it is consumed only if that transaction commits; without, it is
   * consumed when this call returns it. Waits up to `timeoutMs` (woken by NOTIFY, with
   * the safety poll as a floor) and returns null at the timeout.
   */
  async receive<P = unknown>(to: string, options: ReceiveOptions = {}): Promise<MailboxMessage<P> | null> {
    assertName(to, 'to');
    const topic = options.topic ?? null;
    if (topic !== null) assertName(topic, 'topic');
    this.#active();
    const timeoutMs = options.timeoutMs ?? 0;
    if (typeof timeoutMs !== 'number' || !(timeoutMs >= 0) || timeoutMs > MAX_DURATION_MS) throw new InvalidOptionError('timeoutMs', timeoutMs, `a number of ms from 0 to ${MAX_DURATION_MS}`);
    const executor = options.tx ? toExecutor(options.tx) : undefined;
    const signal = options.signal;
    const take = (): Promise<MessageRow | undefined> =>
      withSpan('herald.mailbox.receive', { 'herald.mailbox.to': to }, async () => {
        const floor = this.#floors.floor(to);
        if (executor) return (await mailboxClaim(executor, this.#schemaSql, to, topic, 1, floor))[0];
        if (!signal) return (await mailboxClaim(this.#driver.executor, this.#schemaSql, to, topic, 1, floor))[0];
        // With a signal: take inside a transaction and roll back if the caller gave up meanwhile.
        return this.#driver
          .transaction(async (tx) => {
            const row = (await mailboxClaim(tx, this.#schemaSql, to, topic, 1, floor))[0];
            if (row && signal.aborted) throw new AbortedTake();
            return row;
          })
          .catch((err) => {
            if (err instanceof AbortedTake) return undefined;
            throw err;
          });
      });

    if (timeoutMs === 0 || signal?.aborted) {
      const row = signal?.aborted ? undefined : await take();
      return row ? (decode(row) as MailboxMessage<P>) : null;
    }
    const deadline = Date.now() + timeoutMs;
    const unwatch = this.#hub.watch(to);
    const stop = new AbortController();
    this.#receives.add(stop);
    const onAbort = () => stop.abort();
    signal?.addEventListener('abort', onAbort, { once: true });
    try {
      // LISTEN first; the first query is the catch-up. A notifier that cannot connect
      // does not hold the receive past its timeout: it then relies on the safety poll.
      await waitBounded(this.#hub.ready(), timeoutMs, stop.signal);
      while (!stop.signal.aborted) {
        const seen = this.#hub.epoch(to);
        const row = await take();
        if (row) return decode(row) as MailboxMessage<P>;
        const left = deadline - Date.now();
        if (left <= 0) break;
        await this.#hub.wait(to, seen, Math.min(left, this.options.pollIntervalMs), stop.signal);
      }
      return null;
    } finally {
      signal?.removeEventListener('abort', onAbort);
      this.#receives.delete(stop);
      unwatch();
    }
  }

  /**
   * Runs `handler` for every message of `to` until stopped. The handler gets the message
   * and the transaction that marks it consumed: its own writes commit together with the
   * consumption. A handler that throws rolls everything back; the message is delivered
   * again after `retryDelayMs` (doubling), and after `maxAttempts` failures it moves to
   * the dead-letter state with its last error (see `deadLetters`, `redrive`).
   */
  consume<P = unknown>(to: string, handler: MailboxHandler<P>, options: ConsumeOptions = {}): MailboxConsumer {
    assertName(to, 'to');
    if (typeof handler !== 'function') throw new HeraldError('INVALID_ARGUMENT', 'consume needs a handler function');
    const topic = options.topic ?? null;
    if (topic !== null) assertName(topic, 'topic');
    const concurrency = options.concurrency ?? 1;
    const batchSize = options.batchSize ?? 1;
    const maxAttempts = options.maxAttempts ?? this.options.maxAttempts;
    for (const [k, v, max] of [['concurrency', concurrency, 10_000], ['batchSize', batchSize, 100_000], ['maxAttempts', maxAttempts, 10_000]] as const) {
      if (!Number.isInteger(v) || v < 1 || v > max) throw new InvalidOptionError(k, v, `an integer from 1 to ${max}`);
    }
    const cooldownMs = options.cooldownMs ?? CONSUME_COOLDOWN_MS;
    if (typeof cooldownMs !== 'number' || !(cooldownMs >= 0) || !Number.isFinite(cooldownMs)) throw new InvalidOptionError('cooldownMs', cooldownMs, 'a number >= 0');
    const handlerTimeoutMs = options.handlerTimeoutMs ?? this.options.handlerTimeoutMs;
    const expected = durationOrZero(handlerTimeoutMs);
    if (expected) throw new InvalidOptionError('handlerTimeoutMs', handlerTimeoutMs, expected);
    const settings = { to, topic, concurrency, batchSize, maxAttempts, cooldownMs, handlerTimeoutMs };
    const consumer = new MailboxConsumer(this.#host, settings, handler as MailboxHandler);
    this.#consumers.add(consumer);
    const ready = this.start();
    consumer._start(ready);
    return consumer;
  }

  /**
   * Starts the background work: the LISTEN (resolves when it is live) and the
   * maintenance service (which purges consumed messages: `herald.maintenance`).
   * `consume` calls it. Idempotent.
   */
  start(): Promise<void> {
    this.#active();
    return this.#hub.ready();
  }

  /**
   * Stops every consumer (in-flight transactions finish), ends pending `receive` waits
   * (they return null) and UNLISTENs. Leaves no timer or listener. Idempotent.
   */
  async stop(): Promise<void> {
    for (const r of this.#receives) r.abort();
    await Promise.all([...this.#consumers].map((c) => c.stop()));
    await this.#group.idle();
    await this.#floors.close();
    await this.#hub.close();
  }

  /** One message by id, in any state (ready, consumed until purged, dead), or undefined. */
  async get<P = unknown>(id: string): Promise<MessageInfo<P> | undefined> {
    assertName(id, 'id');
    const r = await mailboxGet(this.#driver.executor, this.#schemaSql, id);
    if (!r) return undefined;
    return {
      ...(decode({ ...r, seq: '0', created_ms: r.created_at.getTime() }) as MailboxMessage<P>),
      state: r.state,
      lastError: r.last_error,
      visibleAt: r.visible_at,
      consumedAt: r.consumed_at,
      deadAt: r.dead_at,
    };
  }

  /** Dead messages of `to`, oldest first (at most `limit`, default 100). */
  async deadLetters<P = unknown>(to: string, options: { limit?: number } = {}): Promise<DeadMessage<P>[]> {
    assertName(to, 'to');
    const limit = options.limit ?? 100;
    assertInt('limit', limit, 1, 10_000);
    const rows = await mailboxDeadList(this.#driver.executor, this.#schemaSql, to, limit);
    return rows.map((r) => ({
      ...(decode({ ...r, seq: '0', created_ms: r.created_at.getTime() }) as MailboxMessage<P>),
      lastError: r.last_error,
      deadAt: r.dead_at,
    }));
  }

  /** Puts dead messages of `to` (all, or `ids`) back to ready with attempts reset; returns how many. */
  async redrive(to: string, options: { ids?: readonly string[]; tx?: TxLike } = {}): Promise<number> {
    assertName(to, 'to');
    if (options.ids !== undefined) {
      if (!Array.isArray(options.ids)) throw new InvalidArgumentError('ids', options.ids, 'an array of message ids');
      options.ids.forEach((id) => assertName(id, 'id'));
    }
    const ids = options.ids ? [...options.ids] : null;
    if (options.tx) return mailboxRedrive(toExecutor(options.tx), this.#schemaSql, this.#notifier.wakeups ? this.channel : null, to, ids);
    return this.#notifier.pressure.run((wake) => mailboxRedrive(this.#driver.executor, this.#schemaSql, wake ? this.channel : null, to, ids));
  }

  /**
   * Counts per destination (all destinations, or one). A full scan: for operators. With
   * `{ estimate: true }` (all destinations; what the dashboard reads) ready, delayed and
   * dead messages are counted exactly from their indexes and consumed ones estimated
   * from a sample of at most `samplePages` pages (default 500, `STATS_SAMPLE_PAGES`; exact when the table is
   * no larger); rows then carry `estimated`.
   */
  async stats(to?: string | { estimate?: boolean; samplePages?: number }): Promise<DestinationStats[]> {
    if (typeof to === 'object' && to !== null) {
      const pages = assertInt('samplePages', to.samplePages ?? STATS_SAMPLE_PAGES, 1, 1_000_000_000);
      if (to.estimate) {
        const rows = await mailboxStatsEstimated(this.#driver.executor, this.#schemaSql, pages);
        return rows.map((r) => ({ to: r.destination, ready: r.ready, delayed: r.delayed, consumed: r.consumed, dead: r.dead, oldestReadyAt: r.oldest_ready_at, estimated: r.estimated }));
      }
      to = undefined;
    }
    if (to !== undefined) assertName(to, 'to');
    const rows = await mailboxStats(this.#driver.executor, this.#schemaSql, to ?? null);
    return rows.map((r) => ({
      to: r.destination,
      ready: r.ready,
      delayed: r.delayed,
      consumed: r.consumed,
      dead: r.dead,
      oldestReadyAt: r.oldest_ready_at,
    }));
  }

  /**
   * Deletes consumed messages older than `consumedOlderThanMs` (default `retentionMs`),
   * and take rows as old (at least an hour: see `mailboxPurgeTakes`),
   * and dead ones older than `deadOlderThanMs` (default `deadRetentionMs`, where 0 keeps
   * them); null keeps that kind. In batches of `batchSize` (default
   * 5000). The maintenance service calls it (tasks `mailboxRetention` for consumed
   * messages, `deadLetterRetention` for dead ones); emits `message:purged` when it
   * deleted any.
   */
  async purge(options: { batchSize?: number; consumedOlderThanMs?: number | null; deadOlderThanMs?: number | null } = {}): Promise<{ consumed: number; dead: number }> {
    const batch = assertInt('batchSize', options.batchSize ?? 5000, 1, 1_000_000);
    const consumedMs = options.consumedOlderThanMs === undefined ? this.options.retentionMs : options.consumedOlderThanMs;
    // deadRetentionMs 0 means "keep dead messages"; an explicit deadOlderThanMs 0 means "all of them".
    const deadMs = options.deadOlderThanMs === undefined ? this.options.deadRetentionMs || null : options.deadOlderThanMs;
    for (const [k, v] of [['consumedOlderThanMs', consumedMs], ['deadOlderThanMs', deadMs]] as const) {
      if (v !== null && !(typeof v === 'number' && v >= 0 && Number.isFinite(v))) throw new InvalidOptionError(k, v, 'null or a number >= 0');
    }
    const sweep = async (state: 'consumed' | 'dead', olderThanMs: number): Promise<number> => {
      let total = 0;
      for (;;) {
        const n = await mailboxPurge(this.#driver.executor, this.#schemaSql, state, olderThanMs, batch);
        total += n;
        if (n < batch) return total;
      }
    };
    const consumed = consumedMs === null ? 0 : await sweep('consumed', consumedMs);
    // Take rows nobody will look at again go with the consumed messages' retention.
    if (consumedMs !== null) while ((await mailboxPurgeTakes(this.#driver.executor, this.#schemaSql, consumedMs, batch)) >= batch);
    const dead = deadMs === null ? 0 : await sweep('dead', deadMs);
    if (consumed || dead) this.emit('message:purged', { consumed, dead });
    return { consumed, dead };
  }
}

class AbortedTake extends Error {}

function decode(row: MessageRow): MailboxMessage {
  return {
    id: row.id,
    to: row.destination,
    topic: row.topic,
    payload: row.format === 'json' ? JSON.parse(row.payload) : row.payload,
    attempts: row.attempts,
    createdAt: new Date(row.created_ms),
  };
}

