import { randomUUID } from 'node:crypto';
import { performance } from 'node:perf_hooks';
import type { Driver } from '../driver/types.js';
import type { RetryPolicy } from '../internal/backoff.js';
import { describeError } from '../internal/describe-error.js';
import { Loop, type ReconnectSource, type Turn } from '../internal/loop.js';
import { withSpan } from '../internal/tracing.js';
import { HeraldError } from '../errors.js';
import type { Executor } from '../driver/types.js';
import { withTimeout } from '../internal/backoff.js';
import { ABANDONED_ERROR, mailboxConsumeLeased, mailboxLease, mailboxNextVisible, mailboxRecordFailure, mailboxRelease, type LeasedRow, type MessageRow } from './queries.js';
import type { MailboxHandler, MailboxMessage } from './types.js';
import type { WakeHub } from './wakeup.js';

/** What a consumer needs from its mailbox. */
export interface ConsumerHost {
  readonly driver: Driver;
  readonly schemaSql: string;
  readonly hub: WakeHub;
  /** The notifier: its `reconnected` event cuts a consumer's error backoff short. */
  readonly reconnects: ReconnectSource;
  readonly pollIntervalMs: number;
  /** Redelivery delays after failed handler runs (the one retry policy). */
  readonly retry: RetryPolicy;
  decode(row: MessageRow): MailboxMessage;
  problem(err: unknown): void;
  failed(info: { to: string; id: string; attempts: number; error: unknown; dead: boolean }): void;
  released(consumer: MailboxConsumer): void;
}

/** Settings of one consumer (resolved). */
export interface ConsumerSettings {
  to: string;
  topic: string | null;
  concurrency: number;
  batchSize: number;
  maxAttempts: number;
  cooldownMs: number;
  /** How long a taken message stays hidden if its consumer never records an outcome. */
  leaseMs: number;
  /** A handler run longer than this fails its attempt (0: unbounded). */
  handlerTimeoutMs: number;
}

class HandlerFailed extends Error {
  constructor(readonly row: LeasedRow, readonly error: unknown) {
    super('handler failed');
  }
}

/**
 * A running consumer of one destination: `concurrency` loops, each leasing up to
 * `batchSize` messages (attempt counted and committed), then consuming them in a
 * transaction that runs the handler on them and commits the consumption together with
 * the handler's own writes.
 */
export class MailboxConsumer {
  /** Messages whose consumption committed. */
  consumed = 0;
  /** Handler runs that threw. */
  failures = 0;
  /** Take transactions begun (each one transaction and one commit, whatever it found). */
  takes = 0;
  readonly to: string;
  readonly #host: ConsumerHost;
  readonly #settings: ConsumerSettings;
  readonly #handler: MailboxHandler;
  /** Its lanes are the `concurrency` loops; `dirty` is "the destination's epoch moved". */
  readonly #loop: Loop;
  #stopping: Promise<void> | undefined;
  #unwatch: () => void = () => {};
  /** A take of this consumer in flight (its loops take one after the other). */
  #taking: Promise<void> | undefined;
  /** The last take left the destination empty (took less than a batch), and no wake-up came since it began. */
  #empty = false;
  /** When the last take that found less than a full batch began (performance.now()). */
  #lastPartialAt = -Infinity;
  /** When the armed "a hidden message becomes visible" wake-up fires (performance.now()), or Infinity. */
  #visibleWakeAt = Infinity;

  /** @internal created by `Mailbox.consume`. */
  constructor(host: ConsumerHost, settings: ConsumerSettings, handler: MailboxHandler) {
    this.#host = host;
    this.#settings = settings;
    this.#handler = handler;
    this.to = settings.to;
    this.#loop = new Loop({
      turn: () => this.#turn(),
      pollIntervalMs: host.pollIntervalMs,
      onError: (err) => host.problem(err),
      reconnects: host.reconnects,
      lanes: settings.concurrency,
    });
  }

  /** True once `stop()` was called. */
  get stopped(): boolean {
    return this.#loop.stopping;
  }

  /** @internal */
  _start(ready: Promise<void>): void {
    const loop = this.#loop;
    this.#unwatch = this.#host.hub.watch(this.to, () => loop.wake());
    // LISTEN first, then the first take is the catch-up (bounded by the safety poll, and
    // by stop(), in case the notifier cannot connect).
    loop.start(ready);
  }

  /**
   * Stops taking messages, lets the transactions in flight finish (their handlers run
   * to the end and commit), and releases everything. Idempotent.
   */
  stop(): Promise<void> {
    return (this.#stopping ??= this.#loop.stop().then(() => {
      this.#unwatch();
      this.#host.released(this);
    }));
  }

  /**
   * One turn of a lane. The lanes of one consumer take one after the other, and a lane
   * takes only if the last take found a full batch (more may be ready) or a wake-up came
   * since it began: so a wake-up costs one take, not one per lane (each an empty
   * transaction).
   */
  async #turn(): Promise<Turn> {
    while (this.#taking) await this.#taking;
    const loop = this.#loop;
    if (loop.stopping) return 'again';
    // Nothing new since the last take found the destination empty: wait for a wake-up or
    // the safety poll (which marks the loop dirty: look even if no wake-up came).
    if (this.#empty && !loop.dirty) return 'idle';
    // Cooldown after a partial take: messages sent meanwhile share the next take.
    if (this.#empty) {
      const wait = this.#lastPartialAt + this.#settings.cooldownMs - performance.now();
      if (wait > 0) {
        await loop.sleep(wait);
        return 'again'; // look again: the take covers everything sent until it begins
      }
    }
    loop.dirty = false;
    const took = await this.#runOnce();
    loop.succeeded();
    return took > 0 ? 'again' : 'idle';
  }

  /**
   * After a take that found nothing: if a hidden message of the destination becomes
   * visible before the safety poll (another consumer's lease or retry delay ending),
   * wake this consumer then. One timer at a time, the earliest.
   */
  async #wakeWhenVisible(): Promise<void> {
    const { to, topic } = this.#settings;
    const ms = await mailboxNextVisible(this.#host.driver.executor, this.#host.schemaSql, to, topic);
    if (ms === null || ms >= this.#host.pollIntervalMs) return;
    const at = performance.now() + ms;
    if (at >= this.#visibleWakeAt) return;
    this.#visibleWakeAt = at;
    this.#loop.timer(Math.ceil(ms) + 5, () => {
      if (this.#visibleWakeAt === at) this.#visibleWakeAt = Infinity;
      this.#host.hub.wake(to);
    });
  }

  /**
   * One take: the lease (its own commit: the attempt is counted before any handler
   * runs), then one transaction that consumes the leased messages (fenced by the lease
   * token), runs the handler on them and commits the consumption together with the
   * handler's writes. Returns how many messages the lease took.
   */
  async #runOnce(): Promise<number> {
    const { to, topic, batchSize, maxAttempts, leaseMs, handlerTimeoutMs } = this.#settings;
    const host = this.#host;
    let release!: () => void;
    const began = performance.now();
    this.takes++;
    const taking = new Promise<void>((resolve) => (release = resolve));
    this.#taking = taking;
    // Called after the lease: by then another loop may have begun its own take, whose
    // promise must stay in place (its waiters wait for its lease).
    const done = () => {
      if (this.#taking === taking) this.#taking = undefined;
      release();
    };
    const token = randomUUID();
    let rows: LeasedRow[];
    try {
      rows = await mailboxLease(host.driver.executor, host.schemaSql, to, topic, batchSize, token, leaseMs, maxAttempts);
      // Fewer than a batch (and not an abandoned message taken alone): nothing else was
      // ready when this take looked; the next take waits for a wake-up (or the safety poll).
      if (rows.length < batchSize && !rows.some((r) => r.alone)) {
        this.#empty = true;
        this.#lastPartialAt = began;
      } else {
        this.#empty = false;
        this.#lastPartialAt = -Infinity;
      }
    } finally {
      done();
    }
    // Abandoned messages that had used up their deliveries died in the lease statement.
    for (const r of rows) {
      if (r.state === 'dead') host.failed({ to, id: r.id, attempts: r.attempts, error: new Error(ABANDONED_ERROR), dead: true });
    }
    if (rows.length === 0) {
      await this.#wakeWhenVisible();
      return 0;
    }
    const live = rows.filter((r) => r.state === 'ready');
    if (live.length === 0) return rows.length;
    try {
      const n = await host.driver.transaction(async (tx) => {
        const held = await mailboxConsumeLeased(tx, host.schemaSql, live, token, handlerTimeoutMs > 0 ? handlerTimeoutMs : null);
        // The handler gets the transaction through a guard: once its time is up (or the
        // take is over) a late statement of it fails instead of running on a connection
        // that went back to the pool.
        let open = true;
        const guarded: Executor = {
          query: (text, values, options) =>
            open ? tx.query(text, values, options) : Promise.reject(new HeraldError('TIMEOUT', 'this consume transaction has ended (handlerTimeoutMs); the handler may no longer use it')),
        };
        try {
          for (const row of live) {
            if (!held.has(row.id)) continue; // lease lost before we locked it: another consumer has it
            const message = host.decode(row);
            try {
              await withSpan('herald.mailbox.consume', { 'herald.mailbox.to': to, 'herald.mailbox.id': row.id }, async () => {
                const run = Promise.resolve().then(() => this.#handler(message, guarded));
                await (handlerTimeoutMs > 0
                  ? withTimeout(run, handlerTimeoutMs, () => new HeraldError('TIMEOUT', `the handler ran over handlerTimeoutMs (${handlerTimeoutMs} ms)`))
                  : run);
              });
            } catch (error) {
              throw new HandlerFailed(row, error);
            }
          }
        } finally {
          open = false;
        }
        return held.size;
      });
      this.consumed += n;
      return rows.length;
    } catch (err) {
      // Rolled back: what this take held is ready again (now or when its lease ends),
      // so the next take must look.
      this.#empty = false;
      const failedId = err instanceof HandlerFailed ? err.row.id : null;
      // The others of the batch go back unused (fenced: a consumed or re-leased one is
      // untouched). A database error may leave them leased until the lease ends.
      await mailboxRelease(host.driver.executor, host.schemaSql, live.filter((r) => r.id !== failedId), token).catch((e) => host.problem(e));
      if (!(err instanceof HandlerFailed)) throw err;
      // The handler's writes and the consumption are undone; the attempt was counted by
      // the lease. Record the failure for this one message in its own statement.
      this.failures++;
      const result = await mailboxRecordFailure(host.driver.executor, host.schemaSql, err.row, token, describeError(err.error), maxAttempts, host.retry);
      if (result) {
        host.failed({ to, id: err.row.id, attempts: result.attempts, error: err.error, dead: result.state === 'dead' });
        if (result.state === 'ready') {
          // Wake this process when the message becomes visible again, before the safety poll.
          this.#loop.timer(Math.ceil(result.delayMs) + 5, () => host.hub.wake(to));
        }
      }
      return rows.length; // others of the batch may be ready again: look at once
    }
  }
}
