import { performance } from 'node:perf_hooks';
import type { Driver } from '../driver/types.js';
import { backoffDelay, sleep } from '../internal/backoff.js';
import { withSpan } from '../internal/tracing.js';
import { mailboxClaim, mailboxRecordFailure, type MessageRow } from './queries.js';
import type { MailboxHandler, MailboxMessage } from './types.js';
import { waitBounded, type WakeHub } from './wakeup.js';

/** What a consumer needs from its mailbox. */
export interface ConsumerHost {
  readonly driver: Driver;
  readonly schemaSql: string;
  readonly hub: WakeHub;
  readonly pollIntervalMs: number;
  readonly retryDelayMs: number;
  readonly maxRetryDelayMs: number;
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
  readonly #abort = new AbortController();
  readonly #timers = new Set<NodeJS.Timeout>();
  #loops: Promise<void>[] = [];
  #stopping: Promise<void> | undefined;
  #unwatch: () => void = () => {};
  /** A take of this consumer in flight (its loops take one after the other). */
  #taking: Promise<void> | undefined;
  /** The epoch read before the last take that left the destination empty (took less than a batch). */
  #emptyAt: number | undefined;
  /** When the last take that found less than a full batch began (performance.now()). */
  #lastPartialAt = -Infinity;

  /** @internal created by `Mailbox.consume`. */
  constructor(host: ConsumerHost, settings: ConsumerSettings, handler: MailboxHandler) {
    this.#host = host;
    this.#settings = settings;
    this.#handler = handler;
    this.to = settings.to;
  }

  /** True once `stop()` was called. */
  get stopped(): boolean {
    return this.#abort.signal.aborted;
  }

  /** @internal */
  _start(ready: Promise<void>): void {
    this.#unwatch = this.#host.hub.watch(this.to);
    for (let i = 0; i < this.#settings.concurrency; i++) this.#loops.push(this.#loop(ready));
  }

  /**
   * Stops taking messages, lets the transactions in flight finish (their handlers run
   * to the end and commit), and releases everything. Idempotent.
   */
  stop(): Promise<void> {
    if (!this.#stopping) {
      this.#abort.abort();
      for (const t of this.#timers) clearTimeout(t);
      this.#timers.clear();
      this.#stopping = Promise.all(this.#loops).then(() => {
        this.#unwatch();
        this.#host.released(this);
      });
    }
    return this.#stopping;
  }

  async #loop(ready: Promise<void>): Promise<void> {
    const signal = this.#abort.signal;
    const hub = this.#host.hub;
    // LISTEN first, then the first query is the catch-up (bounded by the safety poll, and
    // by stop(), in case the notifier cannot connect).
    await waitBounded(ready, this.#host.pollIntervalMs, signal);
    let errors = 0;
    while (!signal.aborted) {
      // The loops of one consumer take one after the other, and a loop takes only if the
      // last take found a full batch (more may be ready) or a wake-up came since: so a
      // wake-up costs one take, not one per loop (each an empty transaction).
      while (this.#taking) await this.#taking;
      if (signal.aborted) break;
      const seen = hub.epoch(this.to);
      if (this.#emptyAt === seen) {
        await hub.wait(this.to, seen, this.#host.pollIntervalMs, signal);
        // The safety poll: look even if no wake-up came.
        if (hub.epoch(this.to) === seen) this.#emptyAt = undefined;
        continue;
      }
      // Cooldown after a partial take: messages sent meanwhile share the next take.
      const wait = this.#lastPartialAt + this.#settings.cooldownMs - performance.now();
      if (wait > 0 && this.#emptyAt !== undefined) {
        await sleep(wait, signal);
        continue; // read the epoch again: the take below covers everything sent until now
      }
      let took: number;
      try {
        took = await this.#runOnce(seen);
        errors = 0;
      } catch (err) {
        this.#host.problem(err);
        await sleep(backoffDelay(errors++, 100, 5000) + 50, signal);
        continue;
      }
      if (took > 0) continue;
      await hub.wait(this.to, seen, this.#host.pollIntervalMs, signal);
      if (hub.epoch(this.to) === seen) this.#emptyAt = undefined;
    }
  }

  /** One transaction: take, handle, commit. Returns how many messages were taken. */
  async #runOnce(seen: number): Promise<number> {
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
            this.#emptyAt = seen;
            this.#lastPartialAt = began;
          } else {
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
      this.#emptyAt = undefined;
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
        this.#host.retryDelayMs,
        this.#host.maxRetryDelayMs,
      );
      if (result) {
        this.#host.failed({ to, id: err.row.id, attempts: result.attempts, error: err.error, dead: result.state === 'dead' });
        if (result.state === 'ready' && !this.stopped) {
          // Wake this process when the message becomes visible again, before the safety poll.
          const timer = setTimeout(() => {
            this.#timers.delete(timer);
            this.#host.hub.wake(to);
          }, Math.ceil(result.delayMs) + 5);
          timer.unref();
          this.#timers.add(timer);
        }
      }
      return 1; // others of the batch may be ready again: look at once
    }
  }
}

/** The text kept as `last_error`: an Error's message, or the thrown value as a string (at most 4000 characters). */
export function describeError(error: unknown): string {
  if (error instanceof Error) return error.message.slice(0, 4000);
  try {
    return String(error).slice(0, 4000);
  } catch {
    return 'unprintable error';
  }
}
