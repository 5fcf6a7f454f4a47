import { randomUUID } from 'node:crypto';
import { performance } from 'node:perf_hooks';
import type { Driver } from '../driver/types.js';
import { HeraldError, InvalidOptionError } from '../errors.js';
import { retryDelay, withTimeout, type RetryPolicy } from '../internal/backoff.js';
import { describeError } from '../internal/describe-error.js';
import { TypedEmitter } from '../internal/events.js';
import { Loop } from '../internal/loop.js';
import { boolean, nonNegativeNumber, numberBetween, positiveInteger, positiveNumber, resolveOptions } from '../internal/options.js';
import { withSpan } from '../internal/tracing.js';
import type { Notifier } from '../notifier/notifier.js';
import type { Subscription } from '../notifier/subscription.js';
import {
  ABANDONED_EVENT_ERROR,
  outboxClaim,
  outboxClaimAbandoned,
  outboxLease,
  outboxSettle,
  outboxSettleHeld,
  REDRIVE_PAYLOAD,
  type OutboxEventRow,
} from './queries.js';
import { KeyFloors } from './floors.js';
import { HORIZON_LOOK_MS, HorizonWatch } from '../internal/horizon.js';
import { callbackSink, type OutboxEvent, type OutboxSink } from './sinks.js';

/** Options of a relay (`outbox.relay(options)`). */
export interface RelayOptions {
  /** Where events go: an {@link OutboxSink} or a callback `(event) => unknown`. */
  sink: OutboxSink | ((event: OutboxEvent) => unknown);
  /** Events claimed per transaction: key heads, extended into runs of a key's next events. @defaultValue 100 */
  batchSize?: number;
  /** Runs of one batch published at once (a run, one key's events, goes one event after another). @defaultValue 10 */
  concurrency?: number;
  /** Safety poll when no notification arrives. @defaultValue 1000 */
  pollIntervalMs?: number;
  /** Attempts before an event is dead-lettered. @defaultValue 10 */
  maxAttempts?: number;
  /** Retry delay ceiling after the first failure; doubles per attempt (the retry policy in docs/library.md). @defaultValue 1000 */
  retryBaseDelayMs?: number;
  /** Cap of the retry delay. @defaultValue 300000 */
  retryMaxDelayMs?: number;
  /** Share of each retry delay taken off at random (0 = none, 1 = full jitter). @defaultValue 0.5 */
  retryJitter?: number;
  /** A publish that takes longer fails its attempt. @defaultValue 30000 */
  publishTimeoutMs?: number;
  /**
   * How long a leased batch is this relay's: its events are hidden from other relays
   * until then. Past it (by this process's clock) the relay publishes no further event
   * of the batch, and its outcome is recorded only for events no other relay leased
   * since (fenced by the lease token). A relay that dies leaves its batch to be taken
   * again when the lease ends. Keep it above the time a batch takes to publish
   * (`publishTimeoutMs` for a run of one). @defaultValue 60000
   */
  leaseMs?: number;
  /** Close the sink on `stop()` (when it has `close`). @defaultValue true */
  closeSink?: boolean;
  /**
   * When claims start each key the relay has seen at its floor (the lowest pending seq
   * it last saw for the key) instead of at the key's oldest entry of the pending index.
   * While a transaction is held open anywhere in the cluster, the entries of events
   * published since it began stay in that index, and a claim that starts a key at its
   * oldest entry walks them all: claims slow down the longer the transaction lasts. With
   * floors they read about what they claim, at some cost per claim otherwise.
   * `'auto'`: only while a transaction has been open for a second or more (the relay
   * looks at `pg_locks` at most once a second); `'always'`; `'never'`. @defaultValue 'auto'
   */
  keyFloors?: 'auto' | 'always' | 'never';
}

/** Defaults of {@link RelayOptions}. */
export const RELAY_DEFAULTS = {
  batchSize: 100,
  concurrency: 10,
  pollIntervalMs: 1000,
  maxAttempts: 10,
  retryBaseDelayMs: 1000,
  retryMaxDelayMs: 300_000,
  retryJitter: 0.5,
  publishTimeoutMs: 30_000,
  leaseMs: 60_000,
  closeSink: true,
  keyFloors: 'auto',
} as const;

type ResolvedRelayOptions = Required<Omit<RelayOptions, 'sink'>>;

function resolveRelayOptions(options: RelayOptions): ResolvedRelayOptions {
  return resolveOptions<ResolvedRelayOptions>(RELAY_DEFAULTS, options, {
    batchSize: positiveInteger(),
    concurrency: positiveInteger(),
    maxAttempts: positiveInteger(),
    pollIntervalMs: positiveNumber,
    publishTimeoutMs: positiveNumber,
    leaseMs: positiveNumber,
    retryBaseDelayMs: nonNegativeNumber,
    retryMaxDelayMs: nonNegativeNumber,
    retryJitter: numberBetween(0, 1),
    closeSink: boolean,
    keyFloors: (v) => (v === 'auto' || v === 'always' || v === 'never' ? undefined : "'auto', 'always' or 'never'"),
  });
}

/** Events of a relay. */
export type RelayEvents = {
  /** A batch was published and marked (after the marking statement committed). */
  'relay:published': [events: OutboxEvent[]];
  /** An attempt failed; the event is retried after `delayMs` (database time). */
  'relay:retry': [info: { event: OutboxEvent; error: unknown; attempts: number; delayMs: number }];
  /** An event reached `maxAttempts` and was dead-lettered. */
  'relay:dead': [info: { event: OutboxEvent; error: unknown; attempts: number }];
  /**
   * The outcome of events this relay published (or failed, or gave back) was refused:
   * their lease ended and another relay leased them again (or published them). `published`
   * lists the ids this relay did publish all the same (sinks deduplicate on the id).
   */
  'relay:fenced': [info: { events: OutboxEvent[]; published: string[] }];
  /** A database failure (connection lost, ...); the relay retries with backoff. */
  'relay:problem': [err: Error];
  /** The relay stopped. */
  'relay:stopped': [];
}

/** Counters of a relay. */
export interface RelayStats {
  running: boolean;
  published: number;
  failed: number;
  dead: number;
  batches: number;
  /** Outcomes refused by the lease fence (see `relay:fenced`). */
  fenced: number;
  /** Whether the last claim started keys at their floors (see {@link RelayOptions.keyFloors}). */
  keyFloors: boolean;
}

/** Turns a claimed row into the event sinks receive. */
export function toOutboxEvent(r: OutboxEventRow): OutboxEvent {
  return {
    id: r.id,
    seq: String(r.seq),
    type: r.type,
    key: r.key,
    payload: r.payload,
    headers: r.headers ?? {},
    attempts: r.attempts,
    createdAt: r.created_at instanceof Date ? r.created_at : new Date(r.created_at),
  };
}

/**
 * A relay: leases batches of due events (runs from the head of each key, SKIP LOCKED, in
 * a short transaction that counts the attempt), publishes them to its sink with no
 * transaction open, then marks the outcome in one statement fenced by the lease token.
 * The lease is the "in flight" mark: if the relay dies, the lease ends and another
 * relay publishes the same events again, with the same ids (an event that kills its
 * relay every time is taken alone and dead-lettered at `maxAttempts`). Wakes on the
 * outbox's NOTIFY channel, catches up after every (re)LISTEN, and polls every
 * `pollIntervalMs` as a safety net.
 */
export class Relay extends TypedEmitter<RelayEvents> {
  readonly options: Readonly<ResolvedRelayOptions>;
  readonly #sink: OutboxSink;
  readonly #driver: Driver;
  readonly #notifier: Notifier;
  readonly #schema: string;
  readonly #channel: string;
  #loop: Loop | undefined;
  #stopping: Promise<void> | undefined;
  #sub: Subscription | undefined;
  #nextRetryAt = Infinity;
  /** The key the last claim stopped at: the next claim's key scan starts after it. */
  #cursor: string | null = null;
  /** Where the claim's key scan starts each key it saw, while key floors are on (see `KeyFloors`). */
  readonly #floors = new KeyFloors();
  readonly #horizon: HorizonWatch;
  /** Whether the next claim looks for abandoned events first (see runOnce). */
  #suspects = true;
  readonly #retry: RetryPolicy;
  readonly #stats = { published: 0, failed: 0, dead: 0, batches: 0, fenced: 0, keyFloors: false };

  /** @internal Use `herald.outbox.relay(options)`. */
  /**
   * @param horizon tells whether a transaction is held open in the cluster (shared by the
   * relays of one outbox; by default one of this relay's own)
   */
  constructor(driver: Driver, notifier: Notifier, quotedSchema: string, channel: string, options: RelayOptions, horizon?: HorizonWatch) {
    super();
    if (!options || (typeof options.sink !== 'function' && typeof (options.sink as OutboxSink)?.publish !== 'function')) {
      throw new InvalidOptionError('sink', options?.sink, 'a function or an object with publish(event)');
    }
    this.options = resolveRelayOptions(options);
    this.#retry = { baseMs: this.options.retryBaseDelayMs, maxMs: this.options.retryMaxDelayMs, jitter: this.options.retryJitter };
    this.#sink = typeof options.sink === 'function' ? callbackSink(options.sink) : options.sink;
    this.#driver = driver;
    this.#notifier = notifier;
    this.#schema = quotedSchema;
    this.#channel = channel;
    this.#horizon = horizon ?? new HorizonWatch(driver.executor, HORIZON_LOOK_MS);
  }

  /** True between `start()` and `stop()`. */
  get running(): boolean {
    return this.#loop !== undefined;
  }

  /** Counters since start. */
  stats(): RelayStats {
    return { running: this.running, ...this.#stats };
  }

  /** Starts claiming and publishing. Idempotent. */
  start(): this {
    if (this.#loop) return this;
    const loop: Loop = new Loop({
      turn: () => this.#turn(loop),
      pollIntervalMs: this.options.pollIntervalMs,
      onError: (err) => this.emit('relay:problem', err as Error),
      reconnects: this.#notifier,
    });
    this.#loop = loop;
    this.#sub = this.#notifier.listen(
      this.#channel,
      (n) => {
        // A redrive: its events are pending again below their keys' floors.
        if (n.payload === REDRIVE_PAYLOAD) this.#floors.clear();
        loop.wake();
      },
      {
        // Listening (again): a redrive may have gone unheard, and after a failover the
        // new primary's sequence may be behind the floors.
        onListen: () => {
          this.#floors.clear();
          loop.wake();
        },
      },
    );
    loop.start();
    return this;
  }

  /**
   * Stops after the batch in flight is published and marked; closes the sink (see
   * `closeSink`). Leaves no timer, subscription or connection behind. Idempotent.
   */
  stop(): Promise<void> {
    if (this.#stopping) return this.#stopping;
    const loop = this.#loop;
    if (!loop) return Promise.resolve();
    return (this.#stopping = (async () => {
      await loop.stop();
      this.#loop = undefined;
      await this.#sub?.close();
      this.#sub = undefined;
      if (this.options.closeSink) await this.#sink.close?.().catch(() => {});
      this.#stopping = undefined;
      this.emit('relay:stopped');
    })());
  }

  /** One turn of the loop: claim, publish, mark; then at once again, or idle until a wake-up, the poll or the next retry. */
  async #turn(loop: Loop): Promise<number | 'again' | 'idle'> {
    if (Date.now() >= this.#nextRetryAt) this.#nextRetryAt = Infinity;
    loop.dirty = false;
    const claimed = await this.runOnce();
    loop.succeeded();
    // Anything claimed: claim again at once. A short batch does not mean caught up:
    // the window of keys scanned is bounded, and published runs make the keys' next events due.
    if (claimed > 0) return 'again';
    return this.#nextRetryAt === Infinity ? 'idle' : this.#nextRetryAt - Date.now();
  }

  /**
   * Holds (or leases), publishes and records one batch; returns how many events it
   * took. The loop calls it; tests and tools may too (on a relay that is not started).
   *
   * Three steps, no transaction open across the network: (1) one statement
   * (`outbox_claim`, committed by itself) claims the batch (SKIP LOCKED) and holds it with one row (`outbox_holds`: a fresh
   * token, the hold's end, the batch's keys and seqs; it counts the attempt) and
   * commits; (2) the sink publishes with nothing of ours open; (3) one statement
   * deletes the hold and records the outcome, only if the hold was still there. An
   * abandoned event (an ended hold or lease with no outcome) is taken alone instead,
   * with a per-event lease (attempts + 1 on the row, fenced by `lease = token`).
   */
  async runOnce(): Promise<number> {
    const o = this.options;
    const token = randomUUID();
    const leasedAt = performance.now();
    // An abandoned event (its relay never recorded an outcome) goes alone, first, in a
    // short transaction of its own. Looked for only when the previous claim saw that one
    // might exist (an ended hold, a due lease); otherwise it would cost a statement per batch.
    let taken: { held: boolean; rows: OutboxEventRow[][]; dead: Set<string>; claimed: number } | undefined;
    if (this.#suspects) {
      taken = await this.#driver.transaction(async (tx) => {
        const abandoned = await outboxClaimAbandoned(tx, this.#schema);
        if (!abandoned) return undefined;
        const marks = await outboxLease(tx, this.#schema, [abandoned.seq], token, o.leaseMs, o.maxAttempts);
        return { held: false, rows: [[abandoned]], dead: new Set(marks.filter((m) => m.dead).map((m) => m.seq)), claimed: marks.length };
      }, { prepare: true });
      // Another may be due: look again next time (the claim below would say so too).
      this.#suspects = taken !== undefined;
    }
    if (!taken) {
      // Otherwise one statement claims the batch as runs and holds it (outboxClaim).
      const floors = o.keyFloors === 'always' || (o.keyFloors === 'auto' && (await this.#horizon.refresh()));
      this.#stats.keyFloors = floors;
      const generation = this.#floors.generation;
      const claim = await withSpan('herald.outbox.claim', { 'herald.batch_size': o.batchSize }, () =>
        outboxClaim(this.#driver.executor, this.#schema, token, o.leaseMs, o.batchSize, this.#cursor, floors ? this.#floors.hints() : null),
      );
      if (claim.heads) this.#floors.learn(claim.heads.keys, claim.heads.seqs, generation);
      this.#cursor = claim.cursor;
      this.#suspects = claim.suspects;
      taken = { held: true, rows: claim.runs, dead: new Set<string>(), claimed: claim.runs.reduce((n, run) => n + run.length, 0) };
    }
    const claimed = taken.claimed;
    if (claimed === 0) return 0;
    const died = taken.dead;
    for (const run of taken.rows) {
      for (const r of run) {
        if (!died.has(r.seq)) continue;
        this.#stats.dead++;
        this.emit('relay:dead', { event: toOutboxEvent(r), error: new Error(ABANDONED_EVENT_ERROR), attempts: r.attempts });
      }
    }
    const runs = taken.rows.map((run) => run.filter((r) => !died.has(r.seq)).map(toOutboxEvent)).filter((run) => run.length > 0);
    const leaseEnd = leasedAt + o.leaseMs;
    const ok: OutboxEvent[] = [];
    const failed: { event: OutboxEvent; error: unknown; delayMs: number }[] = [];
    const untried: OutboxEvent[] = [];
    // Workers take whole runs (one key each); a run's events go one after another, and
    // a failure ends the run: the key's later events go back untried, so the failed
    // event stays the key's head and order holds. So does a hold or lease that ran out
    // (by this process's clock, from before the claim): another relay may hold the key
    // now, and publishing the rest would publish out of order.
    let next = 0;
    const worker = async () => {
      while (next < runs.length) {
        const run = runs[next++];
        for (let i = 0; i < run.length; i++) {
          const event = run[i];
          if (performance.now() >= leaseEnd) {
            untried.push(...run.slice(i));
            break;
          }
          try {
            await withSpan('herald.outbox.publish', { 'herald.event_id': event.id, 'herald.event_type': event.type }, () =>
              withTimeout(Promise.resolve().then(() => this.#sink.publish(event)), o.publishTimeoutMs, () => new HeraldError('TIMEOUT', `publish took over ${o.publishTimeoutMs} ms`)),
            );
            ok.push(event);
          } catch (error) {
            failed.push({ event, error, delayMs: retryDelay(this.#retry, event.attempts + 1) });
            untried.push(...run.slice(i + 1));
            break;
          }
        }
      }
    };
    await Promise.all(Array.from({ length: Math.min(o.concurrency, runs.length) }, worker));
    const outcome = {
      published: ok.map((e) => e.seq),
      failed: failed.map((f) => ({ seq: f.event.seq, error: describeError(f.error), delayMs: f.delayMs })),
      released: untried.map((e) => e.seq),
    };
    let settled: { published: Set<string>; failed: Map<string, { attempts: number; dead: boolean }>; released: Set<string> };
    if (taken.held) {
      const r = await outboxSettleHeld(this.#driver.executor, this.#schema, token, outcome, o.maxAttempts);
      settled = { published: r.published, failed: r.failed, released: r.held ? new Set(outcome.released) : new Set() };
    } else {
      settled = await outboxSettle(this.#driver.executor, this.#schema, token, outcome, o.maxAttempts);
    }
    this.#stats.batches++;
    const marked = ok.filter((e) => settled.published.has(e.seq));
    this.#stats.published += marked.length;
    if (marked.length) this.emit('relay:published', marked);
    // Refused by the fence: the hold or lease ended and the events were taken again (or
    // published) elsewhere. Published by this relay all the same: sinks deduplicate by id.
    const fenced = [...ok.filter((e) => !settled.published.has(e.seq)), ...failed.map((f) => f.event).filter((e) => !settled.failed.has(e.seq)), ...untried.filter((e) => !settled.released.has(e.seq))];
    if (fenced.length) {
      this.#stats.fenced += fenced.length;
      this.emit('relay:fenced', { events: fenced, published: ok.filter((e) => !settled.published.has(e.seq)).map((e) => e.id) });
    }
    for (const f of failed) {
      const mark = settled.failed.get(f.event.seq);
      if (!mark) continue;
      this.#stats.failed++;
      if (mark.dead) {
        this.#stats.dead++;
        this.emit('relay:dead', { event: f.event, error: f.error, attempts: mark.attempts });
      } else {
        this.#nextRetryAt = Math.min(this.#nextRetryAt, Date.now() + f.delayMs);
        this.emit('relay:retry', { event: f.event, error: f.error, attempts: mark.attempts, delayMs: f.delayMs });
      }
    }
    return claimed;
  }
}
