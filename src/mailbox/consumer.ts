import { performance } from 'node:perf_hooks';
import type { Driver } from '../driver/types.js';
import type { RetryPolicy } from '../internal/backoff.js';
import { describeError } from '../internal/describe-error.js';
import { Loop, type ReconnectSource, type Turn } from '../internal/loop.js';
import { withSpan } from '../internal/tracing.js';
import { mailboxClaim, mailboxRecordFailure, type MessageRow } from './queries.js';
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
}

class HandlerFailed extends Error {
  constructor(readonly row: MessageRow, readonly error: unknown) {
    super('handler failed');
  }
}

/**
 * A running consumer of one destination: `concurrency` loops, each taking up to
 * `batchSize` messages in a transaction, running the handler on them inside it, and
 * committing the consumption together with the handler's own writes.
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

  /** One transaction: take, handle, commit. Returns how many messages were taken. */
  async #runOnce(): Promise<number> {
    const { to, topic, batchSize } = this.#settings;
    let release!: () => void;
    const began = performance.now();
    this.takes++;
    const taking = new Promise<void>((resolve) => (release = resolve));
    this.#taking = taking;
    // Called after the claim and again on failure: by then another loop may have begun
    // its own take, whose promise must stay in place (its waiters wait for its claim).
    const done = () => {
      if (this.#taking === taking) this.#taking = undefined;
      release();
    };
    try {
      const n = await this.#host.driver.transaction(async (tx) => {
        let rows: MessageRow[];
        try {
          rows = await mailboxClaim(tx, this.#host.schemaSql, to, topic, batchSize);
          // Fewer than a batch: nothing else was ready when this take looked; the next
          // take waits for a wake-up (or the safety poll).
          if (rows.length < batchSize) {
            this.#empty = true;
            this.#lastPartialAt = began;
          } else {
            this.#empty = false;
            this.#lastPartialAt = -Infinity;
          }
        } finally {
          done();
        }
        for (const row of rows) {
          const message = this.#host.decode(row);
          try {
            await withSpan('herald.mailbox.consume', { 'herald.mailbox.to': to, 'herald.mailbox.id': row.id }, async () => {
              await this.#handler(message, tx);
            });
          } catch (error) {
            throw new HandlerFailed(row, error);
          }
        }
        return rows.length;
      });
      this.consumed += n;
      return n;
    } catch (err) {
      done(); // BEGIN failed (after the claim, a no-op)
      // Rolled back: what this take held is ready again, so the next take must look.
      this.#empty = false;
      if (!(err instanceof HandlerFailed)) throw err;
      // The transaction rolled back: the handler's writes and every mark are undone.
      // Record the failure for this one message in its own statement.
      this.failures++;
      const result = await mailboxRecordFailure(
        this.#host.driver.executor,
        this.#host.schemaSql,
        err.row.id,
        describeError(err.error),
        this.#settings.maxAttempts,
        this.#host.retry,
      );
      if (result) {
        this.#host.failed({ to, id: err.row.id, attempts: result.attempts, error: err.error, dead: result.state === 'dead' });
        if (result.state === 'ready') {
          // Wake this process when the message becomes visible again, before the safety poll.
          this.#loop.timer(Math.ceil(result.delayMs) + 5, () => this.#host.hub.wake(to));
        }
      }
      return 1; // others of the batch may be ready again: look at once
    }
  }
}
