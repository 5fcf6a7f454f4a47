import type { Driver } from '../driver/types.js';
import { HeraldError } from '../errors.js';
import { TypedEmitter } from '../internal/events.js';
import { Loop, type Turn } from '../internal/loop.js';
import { positiveInteger, nonNegativeNumber, resolveOptions } from '../internal/options.js';
import { withSpan } from '../internal/tracing.js';
import type { Notifier } from '../notifier/notifier.js';
import type { Subscription } from '../notifier/subscription.js';
import * as q from './queries.js';
import { toMessage } from './message.js';
import {
  CONSUMER_DEFAULTS,
  formatPosition,
  TopicRetentionError,
  type ConsumerEvents,
  type ConsumerOptions,
  type GroupStart,
  type TopicBatch,
} from './types.js';

/** What a consumer needs from `Topics`. */
export interface ConsumerHost {
  driver: Driver;
  notifier: Notifier;
  s: string;
  channel: string;
  topic: () => Promise<q.TopicRow>;
  forget: () => void;
}

/**
 * One consumer of a group. Each batch is one transaction: lock a key partition of the
 * group (FOR UPDATE SKIP LOCKED), read its next messages below the visibility
 * horizon, run the handler with the transaction, advance the cursor, commit. A crash
 * or a throw rolls back the handler's writes and the cursor together.
 *
 * Wake-ups: a NOTIFY per publishing statement (payload: topic name) on the one listen
 * connection; a catch-up pass after every (re)LISTEN; a safety poll; and a short
 * re-check while messages wait for an open transaction below them to end (its end
 * sends no notification).
 */
export class TopicConsumer<T = unknown> extends TypedEmitter<ConsumerEvents> {
  readonly topic: string;
  readonly group: string;
  readonly options: Readonly<Required<Omit<ConsumerOptions, 'start'>> & { start: GroupStart }>;
  readonly #host: ConsumerHost;
  readonly #handler: (batch: TopicBatch<T>) => Promise<void> | void;
  #loop: Loop | undefined;
  #sub: Subscription | undefined;
  /** The next re-check interval while messages wait for an open transaction below them. */
  #horizonWait: number;
  #rotate = Math.floor(Math.random() * 1024);
  /** Per key partition, the retention mark already reported (one `behind` event per episode). */
  readonly #reported = new Map<number, string>();
  /** Messages this consumer committed. */
  consumed = 0;

  constructor(host: ConsumerHost, topic: string, group: string, handler: (batch: TopicBatch<T>) => Promise<void> | void, options: ConsumerOptions) {
    super();
    if (typeof handler !== 'function') throw new HeraldError('INVALID_ARGUMENT', 'handler must be a function');
    this.options = resolveOptions(CONSUMER_DEFAULTS, options, {
      batchSize: positiveInteger(100_000),
      pollIntervalMs: positiveInteger(),
      horizonPollMs: positiveInteger(),
      horizonPollMaxMs: positiveInteger(),
      retryDelayMs: nonNegativeNumber,
    });
    this.#horizonWait = this.options.horizonPollMs;
    this.#host = host;
    this.topic = topic;
    this.group = group;
    this.#handler = handler;
  }

  /** True between `start()` and `stop()`. */
  get running(): boolean {
    return this.#loop !== undefined;
  }

  /**
   * Creates the group if missing (at `start`), subscribes to wake-ups and starts
   * consuming. Resolves once LISTEN is live. Idempotent.
   */
  async start(): Promise<void> {
    if (this.#loop) return;
    const row = await this.#host.topic();
    await q.groupCreate(this.#host.driver.executor, this.#host.s, row.id, this.group, this.options.start);
    const loop: Loop = new Loop({
      turn: () => this.#turn(loop, row),
      pollIntervalMs: this.options.pollIntervalMs,
      onError: (err) => this.emit('topic:problem', err),
      reconnects: this.#host.notifier,
    });
    const sub = this.#host.notifier.listen(
      this.#host.channel,
      (n) => {
        if (n.payload === this.topic) loop.wake();
      },
      { onListen: () => loop.wake() },
    );
    this.#sub = sub;
    this.#loop = loop;
    this.#horizonWait = this.options.horizonPollMs;
    loop.start();
    try {
      await sub.established;
    } catch (err) {
      await this.stop();
      throw err;
    }
    this.emit('topic:started');
  }

  /** Stops after the batch in flight (which commits or rolls back); leaves no timer or listener. Idempotent. */
  async stop(): Promise<void> {
    const loop = this.#loop;
    if (!loop) return;
    const stopped = loop.stop();
    await this.#sub?.close();
    this.#sub = undefined;
    await stopped;
    if (this.#loop !== loop) return; // a concurrent stop() finished
    this.#loop = undefined;
    this.#host.forget();
    this.emit('topic:stopped');
  }

  /** One turn of the loop: a batch; then at once again, or idle until a wake-up, the horizon re-check or the poll. */
  async #turn(loop: Loop, row: q.TopicRow): Promise<Turn> {
    loop.dirty = false;
    const worked = await this.#batch(row);
    loop.succeeded();
    if (worked === 'retry') {
      await loop.sleep(this.options.retryDelayMs);
      return 'again';
    }
    if (worked) {
      this.#horizonWait = this.options.horizonPollMs;
      // A busy group still reports a partition that fell behind retention.
      if (Date.now() - this.#behindCheckedAt >= this.options.pollIntervalMs) await this.#checkBehind(row);
      return 'again';
    }
    await this.#checkBehind(row);
    const pending = await q.messagePendingHorizon(this.#host.driver.executor, this.#host.s, row.id);
    if (!pending) {
      this.#horizonWait = this.options.horizonPollMs;
      return 'idle';
    }
    // Open transactions anywhere in the cluster hold the horizon back; they usually end
    // soon, so the re-check backs off only up to horizonPollMaxMs.
    const wait = this.#horizonWait;
    this.#horizonWait = Math.min(wait * 2, this.options.horizonPollMaxMs, this.options.pollIntervalMs);
    return wait;
  }

  /** One batch transaction. Returns true when messages were consumed, 'retry' after a handler failure. */
  async #batch(row: q.TopicRow): Promise<boolean | 'retry'> {
    const { driver, s } = this.#host;
    let handlerError: { partition: number; error: unknown } | undefined;
    const HANDLER = Symbol('handler');
    try {
      return await driver.transaction(async (tx) => {
        const claim = await q.cursorClaimRead(tx, s, row.id, this.group, this.#rotate++ % row.partitions, row.partitions, this.options.batchSize);
        if (!claim || claim.rows.length === 0) return false;
        const rows = claim.rows;
        const messages = rows.map((r) => toMessage<T>(this.topic, r));
        try {
          await withSpan('herald.topics.consume', { 'herald.topic': this.topic, 'herald.group': this.group, 'herald.count': rows.length }, async () => {
            await this.#handler({ topic: this.topic, group: this.group, partition: claim.kpart, messages, tx });
          });
        } catch (error) {
          handlerError = { partition: claim.kpart, error };
          throw HANDLER;
        }
        const lastRow = rows[rows.length - 1];
        await q.cursorAdvance(tx, s, row.id, this.group, claim.kpart, lastRow.xid, lastRow.id);
        this.#pending = { partition: claim.kpart, count: rows.length, position: formatPosition(lastRow.xid, lastRow.id) };
        return true;
      }).then((r) => {
        const p = this.#pending;
        this.#pending = undefined;
        if (r && p) {
          this.consumed += p.count;
          this.emit('topic:batch', p);
        }
        return r;
      });
    } catch (err) {
      this.#pending = undefined;
      if (err === HANDLER && handlerError) {
        this.emit('topic:handlerError', handlerError);
        return 'retry';
      }
      throw err;
    }
  }
  #pending: { partition: number; count: number; position: string } | undefined;

  #behindCheckedAt = 0;

  async #checkBehind(row: q.TopicRow): Promise<void> {
    this.#behindCheckedAt = Date.now();
    const ex = this.#host.driver.executor;
    const behind = await q.groupBehind(ex, this.#host.s, row.id, this.group);
    const now = new Set<number>();
    for (const b of behind) {
      now.add(b.kpart);
      const mark = formatPosition(b.dropped_xid, b.dropped_id);
      if (this.#reported.get(b.kpart) === mark) continue;
      this.#reported.set(b.kpart, mark);
      const oldest = await q.messageOldest(ex, this.#host.s, row.id);
      const info = {
        topic: this.topic,
        group: this.group,
        partition: b.kpart,
        position: formatPosition(b.cursor_xid, b.cursor_id),
        oldestPosition: oldest ? formatPosition(oldest.xid, oldest.id) : null,
      };
      this.emit('topic:behind', { ...info, error: new TopicRetentionError(info) });
    }
    for (const k of [...this.#reported.keys()]) if (!now.has(k)) this.#reported.delete(k);
  }
}

export { TopicRetentionError };
