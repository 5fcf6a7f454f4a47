import { randomUUID } from 'node:crypto';
import { getEventListeners } from 'node:events';
import { deadline } from '../driver/deadline.js';
import { toExecutor } from '../driver/index.js';
import { DEFAULT_CONNECT_TIMEOUT_MS, type Driver, type ListenSession, type QueryResult, type RawNotification, type TxLike } from '../driver/types.js';
import { HeraldError, InvalidOptionError, ListenNotSessionError, NotifyQueueFullError, ServerInRecoveryError } from '../errors.js';
import { backoffDelay, sleep, withTimeout } from '../internal/backoff.js';
import { TypedEmitter } from '../internal/events.js';
import { quoteIdent } from '../internal/ident.js';
import { attemptsOrInfinity, boolean, nonNegativeNumber, numberBetween, positiveInteger, positiveNumber, resolveOptions } from '../internal/options.js';
import { notifyManyOn, notifyOn, type OutgoingNotification } from './notify.js';
import { NotifyPressure, queueTailHolders, type QueueTailHolder } from './pressure.js';
import { Subscription, type SubscriptionHost } from './subscription.js';
import type { Notification, NotifierEvents, NotifierOptions, NotifierStats, NotifierStatus } from './types.js';
import { assertChannel } from './validate.js';

/** Defaults of {@link NotifierOptions}; the option table of docs/notifier.md is this object. */
export const NOTIFIER_DEFAULTS: Required<NotifierOptions> = {
  subscriberBufferSize: 1000,
  healthCheckIntervalMs: 5000,
  healthCheckTimeoutMs: 3000,
  reconnectBaseDelayMs: 50,
  reconnectMaxDelayMs: 1000,
  maxReconnectAttempts: Infinity,
  maxConnectAttempts: Infinity,
  connectTimeoutMs: DEFAULT_CONNECT_TIMEOUT_MS,
  statementTimeoutMs: 5000,
  verifySession: true,
  verifySessionTimeoutMs: 2000,
  queueUsageIntervalMs: 10000,
  queueUsageWarnThreshold: 0.5,
  queueUsageHighWater: 0.5,
  queueUsageLowWater: 0.25,
};

function resolveNotifierOptions(options: NotifierOptions = {}): Required<NotifierOptions> {
  // maxConnectAttempts follows maxReconnectAttempts unless given itself.
  const defaults = { ...NOTIFIER_DEFAULTS, maxConnectAttempts: options.maxReconnectAttempts ?? NOTIFIER_DEFAULTS.maxConnectAttempts };
  const o = resolveOptions<Required<NotifierOptions>>(defaults, options, {
    subscriberBufferSize: positiveInteger(),
    healthCheckIntervalMs: positiveNumber,
    healthCheckTimeoutMs: positiveNumber,
    connectTimeoutMs: positiveNumber,
    statementTimeoutMs: positiveNumber,
    verifySessionTimeoutMs: positiveNumber,
    reconnectBaseDelayMs: nonNegativeNumber,
    reconnectMaxDelayMs: nonNegativeNumber,
    queueUsageIntervalMs: nonNegativeNumber,
    maxReconnectAttempts: attemptsOrInfinity,
    maxConnectAttempts: attemptsOrInfinity,
    queueUsageWarnThreshold: numberBetween(0, 1),
    queueUsageHighWater: numberBetween(0, 1),
    queueUsageLowWater: numberBetween(0, 1),
    verifySession: boolean,
  });
  if (o.queueUsageLowWater >= o.queueUsageHighWater) {
    throw new InvalidOptionError('queueUsageLowWater', o.queueUsageLowWater, `a number below queueUsageHighWater (${o.queueUsageHighWater})`);
  }
  return o;
}

interface ChannelState {
  subs: Set<Subscription>;
  delivered: number;
  dropped: number;
}

/** Options of one subscription. */
export interface ListenOptions {
  /** This subscriber's buffer size. @defaultValue the notifier's `subscriberBufferSize` */
  bufferSize?: number;
  /** Called after LISTEN becomes live, first and after every reconnect: the moment to catch up by query. */
  onListen?: () => void;
}

/**
 * One listen connection per process, shared by any number of channels and
 * subscribers. It LISTENs once per channel, fans notifications out to bounded
 * per-subscriber buffers, detects a dead session by a health query on the session
 * itself, reconnects with jittered backoff, re-LISTENs every channel and only then
 * emits `reconnected`.
 *
 * NOTIFY is a wake-up, not a delivery: notifications sent while the session is down
 * are gone. Durable parts keep the truth in tables and catch up on `onListen`.
 */
export class Notifier extends TypedEmitter<NotifierEvents> implements SubscriptionHost {
  readonly options: Readonly<Required<NotifierOptions>>;
  /**
   * The process's "wake-ups on" state under notification-queue pressure: the parts ask
   * it before attaching a wake-up to a write (see `src/notifier/pressure.ts`).
   */
  readonly pressure: NotifyPressure;
  readonly #driver: Driver;
  readonly #channels = new Map<string, ChannelState>();
  /** Channels LISTENed on the current session. */
  readonly #live = new Set<string>();
  /** Channels whose UNLISTEN is in flight: not live for a new subscriber. */
  readonly #unlistening = new Set<string>();
  readonly #probes = new Map<string, (payload: string) => void>();
  #status: NotifierStatus = 'stopped';
  /** The last connect found the server in recovery (a standby). */
  #inRecovery = false;
  #session: ListenSession | undefined;
  #loop: Promise<void> | undefined;
  #abort = new AbortController();
  #ready: Promise<void> | undefined;
  #readyResolve?: () => void;
  #readyReject?: (err: Error) => void;
  #chain: Promise<void> = Promise.resolve();
  #reconnects = 0;
  #queueUsage: number | null = null;
  #lastError: Error | null = null;
  #queueTimer: NodeJS.Timeout | undefined;
  #healthTimer: NodeJS.Timeout | undefined;
  #probeFailures = 0;
  /** Sessions already found dead: a statement failing on one is a consequence, not another problem. */
  readonly #dead = new WeakSet<ListenSession>();
  readonly #reported = new WeakSet<Error>();

  constructor(driver: Driver, options: NotifierOptions = {}) {
    super();
    this.#driver = driver;
    this.options = resolveNotifierOptions(options);
    this.pressure = new NotifyPressure({
      sample: () => this.sampleQueueUsage(),
      executor: driver.executor,
      highWater: this.options.queueUsageHighWater,
      lowWater: this.options.queueUsageLowWater,
      intervalMs: this.options.queueUsageIntervalMs,
      pausedIntervalMs: this.options.queueUsageIntervalMs || this.options.healthCheckIntervalMs,
      started: () => this.#ready !== undefined && this.#status !== 'failed',
      full: (info) => this.emit('notifier:queueFull', info),
      resumed: (info) => {
        this.emit('notifier:queueResumed', info);
        // Writes made while paused woke nobody: every subscriber catches up now.
        for (const c of this.#live) for (const sub of this.#channels.get(c)?.subs ?? []) sub._listening();
      },
    });
  }

  /** False while wake-ups are paused because the notification queue is (nearly) full (see {@link NotifyPressure}). */
  get wakeups(): boolean {
    return this.pressure.wakeups;
  }

  /** The backends that may hold the notification queue's tail, best candidate first (`pg_stat_activity`). */
  queueTailHolders(limit?: number): Promise<QueueTailHolder[]> {
    return queueTailHolders(this.#driver.executor, limit);
  }

  /** Where the connection stands: connecting, listening, reconnecting, failed or stopped. */
  get status(): NotifierStatus {
    return this.#status;
  }

  /**
   * Opens the listen connection. Resolves once LISTEN is live for every channel
   * subscribed so far; rejects with {@link ListenNotSessionError} when the
   * connection cannot hold LISTEN. Idempotent; `listen()` calls it for you.
   */
  start(): Promise<void> {
    if (this.#ready) return this.#ready;
    this.#abort = new AbortController();
    this.#ready = new Promise<void>((resolve, reject) => {
      this.#readyResolve = resolve;
      this.#readyReject = reject;
    });
    this.#ready.catch(() => {});
    this.#setStatus('connecting');
    this.#loop = this.#run();
    if (this.options.queueUsageIntervalMs > 0) {
      this.#queueTimer = setInterval(() => void this.sampleQueueUsage().catch(() => {}), this.options.queueUsageIntervalMs);
      this.#queueTimer.unref();
    }
    return this.#ready;
  }

  /**
   * Subscribes to `channel`. The channel name is used exactly as given (quoted), so
   * `OrderCreated` and `ordercreated` are different channels.
   *
   * @example
   * const sub = notifier.listen('orders', (n) => console.log(n.payload));
   * await sub.established; // LISTEN is live on the server
   */
  listen(channel: string, handler?: (n: Notification) => unknown, options?: ListenOptions): Subscription;
  listen(channel: string, options?: ListenOptions): Subscription;
  listen(
    channel: string,
    handlerOrOptions?: ((n: Notification) => unknown) | ListenOptions,
    maybeOptions: ListenOptions = {},
  ): Subscription {
    assertChannel(channel);
    const handler = typeof handlerOrOptions === 'function' ? handlerOrOptions : undefined;
    const options = (typeof handlerOrOptions === 'object' && handlerOrOptions) || maybeOptions;
    const bufferSize = options.bufferSize ?? this.options.subscriberBufferSize;
    if (!Number.isInteger(bufferSize) || bufferSize <= 0) throw new InvalidOptionError('bufferSize', bufferSize, 'a positive integer');
    if (this.#status === 'failed') throw this.#lastError ?? new HeraldError('STOPPED', 'notifier failed');
    const sub = new Subscription(channel, this, { bufferSize, handler, onListen: options.onListen });
    let state = this.#channels.get(channel);
    if (!state) {
      state = { subs: new Set(), delivered: 0, dropped: 0 };
      this.#channels.set(channel, state);
    }
    state.subs.add(sub);
    void this.start();
    // A channel whose UNLISTEN is in flight is not live: the next sync LISTENs it again.
    if (this.#live.has(channel) && !this.#unlistening.has(channel) && this.#status === 'listening') {
      queueMicrotask(() => sub._listening());
    }
    // Always: an UNLISTEN of this channel (its previous last subscriber left) may be in
    // flight; it removes the channel from #live when it completes, and this sync then
    // LISTENs again (and calls onListen, so a durable consumer catches up).
    this.#schedule();
    return sub;
  }

  /**
   * Sends a notification; with `{ tx }` it is delivered only if that transaction commits.
   * Throws a typed error before any SQL for a bad channel or a payload of 8000 bytes or more.
   */
  async notify(channel: string, payload = '', options: { tx?: TxLike } = {}): Promise<void> {
    await this.#queueFull(notifyOn(options.tx ? toExecutor(options.tx) : this.#driver.executor, channel, payload));
  }

  /** Sends a batch of notifications in one round trip (in the caller's transaction with `{ tx }`). */
  async notifyMany(items: readonly OutgoingNotification[], options: { tx?: TxLike } = {}): Promise<void> {
    await this.#queueFull(notifyManyOn(options.tx ? toExecutor(options.tx) : this.#driver.executor, items));
  }

  /** A full notification queue becomes {@link NotifyQueueFullError} (and pauses wake-ups). */
  async #queueFull(sent: Promise<void>): Promise<void> {
    try {
      await sent;
    } catch (err) {
      if (!this.pressure.noteError(err)) throw err;
      throw new NotifyQueueFullError(
        'the notification queue is full: a session that LISTENs is stuck in a long transaction (see queueTailHolders() or herald doctor)',
        { cause: err },
      );
    }
  }

  /** Samples `pg_notification_queue_usage()` now, emits `queueUsage` (and `queueWarning` at the threshold). */
  async sampleQueueUsage(): Promise<number> {
    const { rows } = await this.#driver.executor.query<{ u: number }>('SELECT pg_notification_queue_usage()::float8 AS u', [], {
      timeoutMs: this.options.statementTimeoutMs,
    });
    const usage = Number(rows[0]?.u ?? 0);
    this.#queueUsage = usage;
    this.emit('notifier:queueUsage', usage);
    if (usage >= this.options.queueUsageWarnThreshold) this.emit('notifier:queueWarning', usage);
    this.pressure.observe(usage);
    return usage;
  }

  /** Counters and status, for health endpoints and metrics. */
  stats(): NotifierStats {
    const channels: NotifierStats['channels'] = {};
    for (const [name, s] of this.#channels) {
      channels[name] = { subscribers: s.subs.size, delivered: s.delivered, dropped: s.dropped, listening: this.#live.has(name) };
    }
    return {
      status: this.#status,
      reconnects: this.#reconnects,
      channels,
      queueUsage: this.#queueUsage,
      wakeups: !this.pressure.paused,
      wakeupsPausedSince: this.pressure.pausedSince,
      queueFullEpisodes: this.pressure.episodes,
      lastError: this.#lastError,
    };
  }

  /**
   * The channels the listen session holds on the server (`pg_listening_channels()`),
   * queried on the session itself after every LISTEN/UNLISTEN already requested.
   */
  async serverChannels(): Promise<string[]> {
    return this.#enqueue(async () => {
      const session = this.#session;
      if (!session) throw new HeraldError('NOT_STARTED', 'the notifier has no live listen session');
      const { rows } = await this.#statement<{ c: string }>(session, 'SELECT pg_listening_channels() AS c');
      return rows.map((r) => r.c).sort();
    });
  }

  /** Channels with at least one subscriber. */
  channels(): string[] {
    return [...this.#channels.keys()];
  }

  /**
   * Closes every subscription and the listen connection; leaves no socket or timer
   * behind. Idempotent; `start()` may be called again afterwards.
   *
   * It returns promptly whatever state the connection is in: every wait of the
   * notifier (connecting, a statement on the session, the probe through the pool,
   * the backoff) ends on stop, and the session is destroyed rather than waited on. A
   * LISTEN or UNLISTEN that stop cuts off is not a `problem`: closing the session
   * ends every LISTEN anyway.
   */
  async stop(): Promise<void> {
    this.pressure.stop();
    if (!this.#ready) return;
    this.#abort.abort();
    clearInterval(this.#queueTimer);
    clearTimeout(this.#healthTimer);
    this.#session?.destroy();
    await this.#loop;
    await this.#chain.catch(() => {});
    const stopped = new HeraldError('STOPPED', 'notifier stopped');
    this.#readyReject?.(stopped);
    for (const state of this.#channels.values()) for (const sub of state.subs) sub._fail(stopped);
    this.#channels.clear();
    this.#live.clear();
    this.#ready = undefined;
    this.#loop = undefined;
    this.#setStatus('stopped');
  }

  // ---- SubscriptionHost ----

  /** @internal */
  release(sub: Subscription): void {
    const state = this.#channels.get(sub.channel);
    if (!state || !state.subs.delete(sub)) return;
    if (state.subs.size === 0) {
      this.#channels.delete(sub.channel);
      this.#schedule();
    }
  }

  /** @internal */
  overflow(sub: Subscription): void {
    this.emit('notifier:overflow', { channel: sub.channel, dropped: sub.dropped, bufferSize: sub.bufferSize });
  }

  /** @internal */
  handlerFailed(sub: Subscription, error: unknown): void {
    this.emit('notifier:handlerError', { channel: sub.channel, error });
  }

  // ---- internals ----

  #setStatus(status: NotifierStatus): void {
    if (this.#status === status) return;
    this.#status = status;
    this.emit('notifier:status', status);
  }

  #dispatch(n: RawNotification): void {
    // Hot path (one call per notification): no probe lookup unless a probe is pending,
    // and the driver's object is handed on as is: it is fresh per notification and has
    // the shape of a Notification, so a copy would only cost an allocation.
    if (this.#probes.size !== 0) {
      const probe = this.#probes.get(n.channel);
      if (probe) return probe(n.payload);
    }
    const state = this.#channels.get(n.channel);
    if (!state) return;
    const notification: Notification = n;
    // Handlers run inline (Subscription._push): one that subscribes to this channel
    // again adds to the set being walked. Sets iterate in insertion order, so counting
    // keeps this notification to the subscribers that existed when it arrived.
    let remaining = state.subs.size;
    for (const sub of state.subs) {
      if (remaining-- === 0) break;
      const before = sub.dropped;
      sub._push(notification);
      if (sub.dropped !== before) state.dropped++;
      else state.delivered++;
    }
  }

  /** Serialises every statement on the session (LISTEN/UNLISTEN diffs, health queries). */
  #enqueue<T>(task: () => Promise<T>): Promise<T> {
    const next = this.#chain.then(task, task);
    this.#chain = next.then(
      () => {},
      () => {},
    );
    return next;
  }

  #destroy(session: ListenSession): void {
    this.#dead.add(session);
    session.destroy();
  }

  /**
   * Runs one statement on the listen session with a deadline
   * (`statementTimeoutMs`); past it the session is destroyed (the reconnect path
   * rebuilds it and LISTENs every wanted channel). Ends at once on stop.
   */
  async #statement<R>(session: ListenSession, text: string, values?: readonly unknown[]): Promise<QueryResult<R>> {
    const ms = this.options.statementTimeoutMs;
    try {
      return await deadline(
        session.query<R>(text, values),
        ms,
        () => new HeraldError('TIMEOUT', `a statement on the listen connection (${text.split(' ')[0]}) took over ${ms} ms (statementTimeoutMs)`),
        this.#abort.signal,
      );
    } catch (err) {
      if (err instanceof HeraldError && err.code === 'TIMEOUT' && !this.#dead.has(session)) {
        this.#problem(err);
        this.#destroy(session);
      }
      throw err;
    }
  }

  #schedule(): void {
    void this.#enqueue(() => this.#sync()).catch(() => {});
  }

  /** Brings the session's LISTEN set in line with the subscribed channels. */
  async #sync(): Promise<void> {
    const session = this.#session;
    if (!session || this.#status !== 'listening') return; // the connect path LISTENs everything
    const add = [...this.#channels.keys()].filter((c) => !this.#live.has(c));
    const remove = [...this.#live].filter((c) => !this.#channels.has(c));
    if (add.length === 0 && remove.length === 0) return;
    const sql = [...add.map((c) => `LISTEN ${quoteIdent(c)}`), ...remove.map((c) => `UNLISTEN ${quoteIdent(c)}`)].join('; ');
    for (const c of remove) this.#unlistening.add(c);
    try {
      await this.#statement(session, sql);
    } catch (err) {
      // Cut off by stop(), or the session already died and was replaced: not a problem.
      if (this.#abort.signal.aborted || session !== this.#session || this.#dead.has(session)) return;
      this.#problem(err);
      this.#destroy(session); // the reconnect path re-LISTENs everything
      return;
    } finally {
      for (const c of remove) this.#unlistening.delete(c);
    }
    if (session !== this.#session) return;
    for (const c of remove) this.#live.delete(c);
    for (const c of add) {
      this.#live.add(c);
      for (const sub of this.#channels.get(c)?.subs ?? []) sub._listening();
    }
  }

  #problem(err: unknown): void {
    const e = err instanceof Error ? err : new Error(String(err));
    if (this.#reported.has(e)) return; // one fault, one event
    this.#reported.add(e);
    this.#lastError = e;
    this.emit('notifier:problem', e);
  }

  async #run(): Promise<void> {
    const signal = this.#abort.signal;
    let attempts = 0;
    let everConnected = false;
    let lostAt = 0;
    while (!signal.aborted) {
      let session: ListenSession | undefined;
      try {
        session = await this.#open(signal);
        // A standby (or a primary being demoted) takes no LISTEN worth having: NOTIFY is
        // not replicated. Not ready: try again until the address leads to a primary.
        const { rows: recovery } = await this.#statement<{ r: boolean }>(session, 'SELECT pg_is_in_recovery() AS r');
        if (recovery[0]?.r) throw new ServerInRecoveryError();
        if (this.#inRecovery) {
          this.#inRecovery = false;
          this.emit('notifier:recovery', { inRecovery: false });
        }
        const closed = new Promise<Error | undefined>((resolve) => session!.onClose(resolve));
        session.onNotification((n) => this.#dispatch(n));
        this.#session = session;
        this.#live.clear();
        const wanted = [...this.#channels.keys()];
        if (wanted.length > 0) await this.#statement(session, wanted.map((c) => `LISTEN ${quoteIdent(c)}`).join('; '));
        if (this.options.verifySession) await this.#verify(session, signal);
        for (const c of wanted) this.#live.add(c);
        const downtimeMs = everConnected ? Date.now() - lostAt : 0;
        const tries = attempts;
        attempts = 0;
        this.#setStatus('listening');
        this.#readyResolve?.();
        for (const c of wanted) for (const sub of this.#channels.get(c)?.subs ?? []) sub._listening();
        this.emit('notifier:connected');
        if (everConnected) {
          this.#reconnects++;
          this.emit('notifier:reconnected', { attempts: tries, downtimeMs });
        }
        everConnected = true;
        this.#schedule(); // channels subscribed while we were connecting
        this.#scheduleHealth(session);
        // Until the session dies or stop(); the abort listener goes away with the
        // session (one left behind per reconnect was a leak).
        const err = await deadline(closed, Infinity, () => new Error('unreachable'), signal).catch(() => undefined);
        clearTimeout(this.#healthTimer);
        this.#session = undefined;
        this.#live.clear();
        session.destroy();
        await session.close();
        if (signal.aborted) break;
        lostAt = Date.now();
        this.#problem(err ?? new HeraldError('CONNECTION', 'listen connection closed'));
        this.#setStatus('reconnecting');
        this.emit('notifier:lost', err);
      } catch (err) {
        clearTimeout(this.#healthTimer);
        this.#session = undefined;
        this.#live.clear();
        if (session) {
          session.destroy();
          await session.close();
        }
        if (signal.aborted) break;
        // One report per state change, not one per retry, while the server is a standby.
        if (err instanceof ServerInRecoveryError) {
          if (!this.#inRecovery) {
            this.#inRecovery = true;
            this.emit('notifier:recovery', { inRecovery: true });
            this.#problem(err);
          }
        } else this.#problem(err);
        const limit = everConnected ? this.options.maxReconnectAttempts : this.options.maxConnectAttempts;
        if (err instanceof ListenNotSessionError || ++attempts >= limit) {
          const final = err instanceof Error ? err : new Error(String(err));
          this.#fail(final);
          return;
        }
        this.#setStatus(everConnected ? 'reconnecting' : 'connecting');
      }
      await sleep(backoffDelay(attempts, this.options.reconnectBaseDelayMs, this.options.reconnectMaxDelayMs), signal);
    }
  }

  /**
   * Opens a listen session within `connectTimeoutMs` (the driver's own timeout; a
   * backstop at twice that in case a driver does not keep it). A session that
   * arrives after the deadline or after stop() is closed.
   */
  async #open(signal: AbortSignal): Promise<ListenSession> {
    const ms = this.options.connectTimeoutMs;
    const opening = this.#driver.openListenSession({ connectTimeoutMs: ms });
    try {
      return await deadline(
        opening,
        2 * ms,
        () => new HeraldError('TIMEOUT', `could not open the listen connection within ${ms} ms (connectTimeoutMs)`),
        signal,
      );
    } catch (err) {
      opening.then(
        (late) => {
          late.destroy();
          void late.close();
        },
        () => {},
      );
      throw err;
    }
  }

  #fail(err: Error): void {
    this.#lastError = err;
    clearInterval(this.#queueTimer);
    this.#setStatus('failed');
    this.#readyReject?.(err);
    for (const state of this.#channels.values()) for (const sub of state.subs) sub._fail(err);
    this.#channels.clear();
  }

  /**
   * Proves LISTEN sticks on this session: LISTEN a probe channel, NOTIFY it through
   * the pool (another session), and wait for it. Behind a transaction-mode pooler,
   * LISTEN lands on a server connection that is handed to someone else, and the
   * notification never comes back.
   *
   * Every step has a deadline: the NOTIFY through the pool gets `statementTimeoutMs`
   * (a pooled connection black-holed while idle is discarded by the driver, and the
   * next attempt takes another), the statements on the session too.
   */
  async #verify(session: ListenSession, signal: AbortSignal): Promise<void> {
    const probe = `herald.probe.${randomUUID()}`.slice(0, 63);
    const token = randomUUID();
    const arrived = new Promise<void>((resolve) => this.#probes.set(probe, (p) => p === token && resolve()));
    let verified = false;
    try {
      await this.#statement(session, `LISTEN ${quoteIdent(probe)}`);
      const ms = this.options.statementTimeoutMs;
      try {
        await deadline(notifyOn(this.#driver.executor, probe, token, { timeoutMs: ms }), Infinity, () => new Error('unreachable'), signal);
      } catch (err) {
        // A full notification queue (a stalled listener elsewhere) cannot carry the probe:
        // the session stays unverified rather than never listening (wake-ups pause).
        if (this.pressure.noteError(err)) return;
        throw err;
      }
      try {
        const waitMs = this.options.verifySessionTimeoutMs;
        await deadline(arrived, waitMs, () => new HeraldError('TIMEOUT', `LISTEN round trip took over ${waitMs} ms`), signal);
        this.#probeFailures = 0;
      } catch (err) {
        if (signal.aborted) throw err;
        const { rows } = await this.#statement<{ n: number }>(
          session,
          'SELECT count(*)::int AS n FROM pg_listening_channels() c WHERE c = $1',
          [probe],
        );
        if (rows[0]?.n === 0 || ++this.#probeFailures >= 3) {
          throw new ListenNotSessionError(
            'LISTEN does not stick on the listen connection: a pooler in transaction mode (such as PgBouncer with pool_mode=transaction) is in front of it. Give the listen connection a direct or session-pooled connection string.',
          );
        }
        throw err;
      }
      verified = true;
    } finally {
      this.#probes.delete(probe);
    }
    // A failed UNLISTEN of the probe on a verified session is a failed session: it
    // goes through the reconnect path like any other.
    if (verified) await this.#statement(session, `UNLISTEN ${quoteIdent(probe)}`);
  }

  /**
   * The health query runs on the listen session itself, so a black-holed socket
   * (open, passing nothing) is found even when no error ever arrives. Its deadline
   * (`healthCheckTimeoutMs`) counts from the moment the check is due, the wait behind
   * a LISTEN or UNLISTEN in flight included: a statement stuck in a black hole
   * cannot hide the dead session, which is found within
   * `healthCheckIntervalMs + healthCheckTimeoutMs`.
   */
  #scheduleHealth(session: ListenSession): void {
    clearTimeout(this.#healthTimer);
    this.#healthTimer = setTimeout(() => void this.#checkHealth(session), this.options.healthCheckIntervalMs);
    this.#healthTimer.unref();
  }

  async #checkHealth(session: ListenSession): Promise<void> {
    if (session !== this.#session) return;
    const ms = this.options.healthCheckTimeoutMs;
    try {
      const held = await deadline(
        this.#enqueue(async () => {
          if (session !== this.#session) return -1;
          const { rows } = await this.#statement<{ n: number }>(session, 'SELECT count(*)::int AS n FROM pg_listening_channels()');
          return rows[0]?.n ?? 0;
        }),
        ms,
        () => new HeraldError('TIMEOUT', `listen connection health query took over ${ms} ms (healthCheckTimeoutMs)`),
        this.#abort.signal,
      );
      if (session !== this.#session || held < 0) return;
      if (held < this.#live.size) {
        throw new HeraldError('CONNECTION', `the listen session holds ${held} channels, expected ${this.#live.size}`);
      }
      this.#scheduleHealth(session);
    } catch (err) {
      if (this.#abort.signal.aborted || session !== this.#session || this.#dead.has(session)) return;
      this.#problem(err);
      this.#destroy(session);
    }
  }

  /** @internal Test seam: what the notifier holds that could grow per reconnect. */
  _resources(): { abortListeners: number; probes: number } {
    return { abortListeners: getEventListeners(this.#abort.signal, 'abort').length, probes: this.#probes.size };
  }
}
