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
import { ABANDONED_ERROR, mailboxNextVisible, mailboxReapTakes, mailboxRecordFailure, mailboxTake, mailboxTakesDelete, type MessageRow, type TakenRow } from './queries.js';
import type { TakeLog, TakeRecord } from './takes.js';
import type { Floors } from './floor.js';
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
  /** Writes the take rows of this mailbox's consumers. */
  readonly takes: TakeLog;
  /** The destinations' floors (takes start their scan there). */
  readonly floors: Floors;
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
  /** A handler run longer than this fails its attempt (0: unbounded). */
  handlerTimeoutMs: number;
}

const isThenable = (v: unknown): v is PromiseLike<unknown> => typeof (v as { then?: unknown } | null)?.then === 'function';

class HandlerFailed extends Error {
  constructor(readonly row: TakenRow, readonly error: unknown) {
    super('handler failed');
  }
}

/** Abandoned take rows counted per statement (more are counted at the next turn). */
export const REAP_BATCH = 100;

/**
 * A running consumer of one destination: `concurrency` loops, each taking up to
 * `batchSize` messages in a transaction that marks them consumed, commits a take row
 * (the attempt) on a second connection, runs the handler on them and commits the
 * consumption together with the handler's own writes. See src/mailbox/README.md.
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
  /** When abandoned take rows of the destination are next looked for (performance.now()): at the first take, then every pollIntervalMs. */
  #reapAt = -Infinity;
  /** Tokens of takes that committed, whose take rows (committed too) the next take row's statement deletes. */
  #committed: string[] = [];
  /**
   * The last take row that ended failed: until one commits, handlers wait for their take
   * row's commit (a failure then fails the take before any handler ran), so while take
   * rows cannot be written no handler runs without its attempt counted more than once.
   */
  #rowsFailing = false;
  /** Take rows of committed takes still on their way (stop() waits for them before its last delete). */
  readonly #landing = new Set<Promise<void>>();

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
    return (this.#stopping ??= this.#loop.stop().then(async () => {
      this.#unwatch();
      await Promise.all(this.#landing);
      // The take rows of the last committed takes (a process that dies before this
      // leaves them to mailboxReapTakes, which drops them: their messages are consumed).
      const tokens = this.#committed;
      this.#committed = [];
      if (tokens.length > 0) await mailboxTakesDelete(this.#host.driver.executor, this.#host.schemaSql, tokens).catch((err) => this.#host.problem(err));
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
   * visible before the safety poll (a retry delay of another process's consumer ending),
   * wake this consumer then. One timer at a time, the earliest.
   */
  async #wakeWhenVisible(): Promise<void> {
    const { to, topic } = this.#settings;
    const ms = await mailboxNextVisible(this.#host.driver.executor, this.#host.schemaSql, to, topic, this.#host.floors.floor(to));
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
   * Looks for abandoned takes of the destination (at this consumer's first take, then
   * every pollIntervalMs): counts their attempts, and reports messages that died of it.
   */
  async #reapIfDue(): Promise<void> {
    if (performance.now() < this.#reapAt) return;
    const { to, maxAttempts } = this.#settings;
    const host = this.#host;
    const { takes, rows } = await mailboxReapTakes(host.driver.executor, host.schemaSql, to, maxAttempts, REAP_BATCH);
    // A full batch of take rows: there may be more; look again at the next take.
    this.#reapAt = takes >= REAP_BATCH ? -Infinity : performance.now() + host.pollIntervalMs;
    for (const r of rows) {
      if (r.state === 'dead') host.failed({ to, id: r.id, attempts: r.attempts, error: new Error(ABANDONED_ERROR), dead: true });
      else this.#empty = false; // ready again, to be taken alone
    }
  }

  /**
   * One take: a transaction that takes up to `batchSize` messages (marked consumed in
   * it), sends their take row on another connection (the attempt: the handlers run once
   * it has left the process, while it commits; the same statement deletes the take
   * rows of this consumer's earlier committed takes), runs the handler on each message
   * and commits the consumption together with the handler's writes. Returns how many
   * it took.
   */
  async #runOnce(): Promise<number> {
    const { to, topic, batchSize, maxAttempts, handlerTimeoutMs } = this.#settings;
    const host = this.#host;
    let release!: () => void;
    const began = performance.now();
    this.takes++;
    const taking = new Promise<void>((resolve) => (release = resolve));
    this.#taking = taking;
    // Called after the take statement: by then another loop may have begun its own take,
    // whose promise must stay in place (its waiters wait for its take statement).
    const done = () => {
      if (this.#taking === taking) this.#taking = undefined;
      release();
    };
    try {
      await this.#reapIfDue();
    } catch (err) {
      done();
      throw err;
    }
    const token = randomUUID();
    let rows: TakenRow[] = [];
    let take: TakeRecord | undefined;
    try {
      const n = await host.driver.transaction(async (tx) => {
        try {
          rows = await mailboxTake(tx, host.schemaSql, to, topic, batchSize, handlerTimeoutMs > 0 ? handlerTimeoutMs : null, host.floors.floor(to));
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
        if (rows.length === 0) return 0;
        // The attempt: if this transaction never commits, the row stays and a later take
        // counts it (mailboxReapTakes). The handlers run once its insert has left the
        // process (a process killed in a handler cannot take it back: the server still
        // runs it), not once it committed: its round trip overlaps the handlers and the
        // commit instead of preceding them. A row that fails is reported; the take goes
        // on (the row only matters if this process dies), and the next takes wait for
        // their rows' commit until one commits (#rowsFailing).
        // Earlier takes' rows go in the same statement (back to the list if it fails).
        const drop = this.#committed;
        this.#committed = [];
        const strict = this.#rowsFailing;
        const t = (take = host.takes.record({ token, destination: to, ids: rows.map((r) => r.id) }, drop));
        t.committed.then(
          () => void (this.#rowsFailing = false),
          () => {
            this.#rowsFailing = true;
            this.#committed.push(...drop);
          },
        );
        if (strict) {
          await t.committed; // fails this take (its error reaches the loop) if the row fails again
        } else {
          t.sent.then(() => t.committed.catch((err) => host.problem(err)), () => {}); // a row never sent fails this take instead
          await t.sent;
        }
        // The handler gets the transaction through a guard: once its time is up (or the
        // take is over) a late statement of it fails instead of running on a connection
        // that went back to the pool.
        let open = true;
        const guarded: Executor = {
          query: (text, values, options) =>
            open ? tx.query(text, values, options) : Promise.reject(new HeraldError('TIMEOUT', 'this consume transaction has ended (handlerTimeoutMs); the handler may no longer use it')),
        };
        try {
          for (const row of rows) {
            const message = host.decode(row);
            try {
              await withSpan('herald.mailbox.consume', { 'herald.mailbox.to': to, 'herald.mailbox.id': row.id }, async () => {
                const run = this.#handler(message, guarded);
                // A handler that returned without a promise has finished: no timer for it.
                if (handlerTimeoutMs > 0 && isThenable(run)) {
                  await withTimeout(Promise.resolve(run), handlerTimeoutMs, () => new HeraldError('TIMEOUT', `the handler ran over handlerTimeoutMs (${handlerTimeoutMs} ms)`));
                } else await run;
              });
            } catch (error) {
              throw new HandlerFailed(row, error);
            }
          }
        } finally {
          open = false;
        }
        return rows.length;
      });
      this.consumed += n;
      // Committed: its take row names consumed messages only; the next take deletes it
      // once it has committed too (one that failed left nothing to delete).
      if (take) {
        const landing: Promise<void> = take.committed.then(
          () => void this.#committed.push(token),
          () => {},
        ).finally(() => this.#landing.delete(landing));
        this.#landing.add(landing);
      }
      if (n === 0) await this.#wakeWhenVisible();
      return n;
    } catch (err) {
      done(); // BEGIN failed (after the take statement, a no-op)
      // Rolled back: what this take held is ready again, so the next take must look.
      this.#empty = false;
      if (!(err instanceof HandlerFailed)) throw err; // a take row that committed is counted later
      // The handler's writes and every mark of the batch are undone; the others of the
      // batch are ready again, their attempt uncounted. Record the failure of this one
      // message, and drop the take row, in one statement.
      this.failures++;
      // The take row first: the record deletes it. If its insert failed there is none,
      // and the record counts the attempt by itself.
      const landed = await take!.committed.then(() => true, () => false);
      const result = await mailboxRecordFailure(host.driver.executor, host.schemaSql, err.row.id, landed ? token : null, describeError(err.error), maxAttempts, host.retry);
      if (result && result !== 'held') {
        host.failed({ to, id: err.row.id, attempts: result.attempts, error: err.error, dead: result.state === 'dead' });
        if (result.state === 'ready') {
          // Wake this process when the message becomes visible again, before the safety poll.
          this.#loop.timer(Math.ceil(result.delayMs) + 5, () => host.hub.wake(to));
        }
      } else {
        // Another consumer counted the take as abandoned first (between the rollback and
        // this statement): the attempt is counted, the message is ready again. Or
        // ('held') another take has taken the message meanwhile (a lane of this consumer
        // that waited for the connection the rollback freed): the take row stays and
        // counts this attempt later unless that take consumes the message.
        host.failed({ to, id: err.row.id, attempts: err.row.attempts, error: err.error, dead: false });
      }
      return rows.length; // others of the batch may be ready again: look at once
    }
  }
}
