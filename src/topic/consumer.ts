import type { Driver } from '../driver/types.js';
import { HeraldError } from '../errors.js';
import { TypedEmitter } from '../internal/events.js';
import { Loop, type Turn } from '../internal/loop.js';
import { describeError } from '../internal/describe-error.js';
import { positiveInteger, nonNegativeNumber, resolveOptions } from '../internal/options.js';
import { withSpan } from '../internal/tracing.js';
import type { Notifier } from '../notifier/notifier.js';
import type { Subscription } from '../notifier/subscription.js';
import * as q from './queries.js';
import { toMessage } from './message.js';
import { Slots } from '../internal/slots.js';
import {
  checkStart,
  CONSUMER_DEFAULTS,
  TopicRetentionError,
  type ConsumerEvents,
  type ConsumerOptions,
  type GroupStart,
  type TopicBatch,
  type TopicMessage,
} from './types.js';

/** What a consumer needs from `Topics`. */
export interface ConsumerHost {
  driver: Driver;
  notifier: Notifier;
  s: string;
  channel: string;
  topic: () => Promise<q.TopicRow>;
  /** Runs the topic's sequencer if committed messages wait to enter the log. */
  sequence: () => Promise<void>;
  /**
   * Starts a sequencer run in the background (joining the one queued, if any); a run
   * that moves messages wakes this process's consumers of the topic.
   */
  sequenceSoon: () => void;
  /** The topic's pending floor in this process (see `TopicState.floor` in topics.ts). */
  pendingFloor: () => Promise<string>;
  forget: () => void;
  /** A slot for one batch transaction (shared by the process's consumers; see `Topics`); resolves with its release. */
  batchSlot: () => Promise<() => void>;
}

type Resolved = Required<Omit<ConsumerOptions, 'start' | 'horizonPollMs' | 'horizonPollMaxMs'>> & { start: GroupStart };

/** What a batch transaction did. */
type Outcome = false | 'batch' | 'dead' | 'retry' | 'exhausted' | 'redriven';

/** A batch claimed ahead rolls back when stop() came before its handler's turn. */
const STOPPED = Symbol('stopped');

/**
 * One consumer of a group. Each turn first runs the topic's sequencer when committed
 * messages wait to enter the log, then takes one batch in one transaction: lock a key
 * partition of the group (FOR UPDATE SKIP LOCKED), read its next messages after the
 * cursor, count the attempt (committed on the pool before the handler runs), run the
 * handler with the transaction, advance the cursor, commit. A crash or a throw rolls
 * back the handler's writes and the cursor together; a message whose attempts reach
 * `maxAttempts` goes to the group's dead letters and the partition moves on.
 *
 * Wake-ups: a NOTIFY per publishing statement inside a caller's transaction and per
 * sequencer run that moved messages (payload: topic name) on the one listen connection; a catch-up pass after every (re)LISTEN; a safety
 * poll. Nothing waits for other transactions: a publish that commits late is
 * sequenced (and woken for) when it commits.
 */
export class TopicConsumer<T = unknown> extends TypedEmitter<ConsumerEvents> {
  readonly topic: string;
  readonly group: string;
  readonly options: Readonly<Resolved>;
  readonly #host: ConsumerHost;
  readonly #handler: (batch: TopicBatch<T>) => Promise<void> | void;
  #loop: Loop | undefined;
  #sub: Subscription | undefined;
  #rotate = Math.floor(Math.random() * 1024);
  /** Claims lanes may begin without a wake-up (see #turn). */
  #permits = 0;
  /**
   * Handlers running or about to: `concurrency` at once, in the order their batches were
   * claimed. The loop has one lane more than `concurrency`: one batch is claimed (another
   * key partition) while the handlers run, and its handler starts when one ends.
   */
  #handlerSlots: Slots;
  /** The last claim saw redriven dead letters of the group (checked at start too). */
  #redrivenSeen = true;
  /** Per key partition, the retention mark already reported (one `behind` event per episode). */
  readonly #reported = new Map<number, string>();
  /** Messages this consumer committed. */
  consumed = 0;

  constructor(host: ConsumerHost, topic: string, group: string, handler: (batch: TopicBatch<T>) => Promise<void> | void, options: ConsumerOptions) {
    super();
    if (typeof handler !== 'function') throw new HeraldError('INVALID_ARGUMENT', 'handler must be a function');
    if (options.start !== undefined) checkStart(options.start);
    this.options = resolveOptions<Resolved>(CONSUMER_DEFAULTS, options, {
      batchSize: positiveInteger(100_000),
      concurrency: positiveInteger(1024),
      pollIntervalMs: positiveInteger(),
      retryDelayMs: nonNegativeNumber,
      maxAttempts: positiveInteger(1_000_000),
      handlerTimeoutMs: nonNegativeNumber,
    });
    this.#host = host;
    this.topic = topic;
    this.group = group;
    this.#handler = handler;
    this.#handlerSlots = new Slots(this.options.concurrency);
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
    await this.#host.sequence();
    await q.groupCreate(this.#host.driver.executor, this.#host.s, row.id, this.group, this.options.start);
    const loop: Loop = new Loop({
      turn: () => this.#turn(loop, row),
      pollIntervalMs: this.options.pollIntervalMs,
      onError: (err) => this.emit('topic:problem', err),
      reconnects: this.#host.notifier,
      lanes: this.options.concurrency + 1,
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
    loop.start();
    try {
      await sub.established;
    } catch (err) {
      await this.stop();
      throw err;
    }
    this.emit('topic:started');
  }

  /**
   * Stops after the batches whose handlers run (each commits or rolls back); a batch
   * claimed ahead that waits for its handler's turn rolls back unhandled. Leaves no
   * timer or listener. Idempotent.
   */
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

  /**
   * @internal The topic's sequencer (run by this process) moved messages into the log:
   * look at once, as a wake-up would.
   */
  nudge(): void {
    this.#loop?.wake();
  }

  /**
   * One turn of the loop: a redriven dead letter when the last claim saw one, else a
   * batch; then at once again, or idle until a wake-up or the poll. A claim that finds
   * nothing says whether committed messages wait for the sequencer: the consumer starts
   * a run then and does not wait for it (the run wakes it when it moved something).
   *
   * Lanes (`concurrency`): a wake-up ends every lane's idle wait, but only the lane that
   * takes it (clears `dirty`) claims; the others go back to waiting unless a permit is
   * left. A claim that finds messages leaves a permit and releases one waiting lane (other
   * key partitions may have messages too), and a lane that finished a batch takes one to
   * claim again. So lanes join as far as there is work, and a wake-up costs one empty
   * claim, not one per lane.
   */
  async #turn(loop: Loop, row: q.TopicRow): Promise<Turn> {
    // Woken (a wake-up or the safety poll) rather than going on after a batch: then the
    // claim also asks whether messages wait for the sequencer.
    const woken = loop.dirty;
    if (woken) loop.dirty = false;
    else if (this.#permits > 0) this.#permits--;
    else return 'idle'; // another lane began a claim after the last wake-up
    let worked: Outcome = false;
    if (this.#redrivenSeen) {
      worked = await this.#redriven(row);
      if (!worked) this.#redrivenSeen = false;
    }
    if (!worked) worked = await this.#batch(loop, row, woken);
    loop.succeeded();
    if (worked === 'retry') {
      await loop.sleep(this.options.retryDelayMs);
      this.#permit();
      return 'again';
    }
    if (worked) {
      // A busy group still reports a partition that fell behind retention.
      if (Date.now() - this.#behindCheckedAt >= this.options.pollIntervalMs) await this.#checkBehind(row);
      this.#permit();
      return 'again';
    }
    // Idle: look for partitions behind retention, at most twice per poll interval (every
    // sequencer run wakes the consumer; the safety poll's turn always looks).
    if (Date.now() - this.#behindCheckedAt >= this.options.pollIntervalMs / 2) await this.#checkBehind(row);
    return 'idle';
  }

  /** One more claim may begin without a wake-up (at most one per lane waiting for it). */
  #permit(): void {
    if (this.#permits < this.options.concurrency + 1) this.#permits++;
  }

  /** Runs the handler on `messages` in `tx`, bounded by `handlerTimeoutMs` (which cancels the batch's statement). */
  async #runHandler(batch: TopicBatch<T>, pid: number): Promise<void> {
    const work = withSpan('herald.topics.consume', { 'herald.topic': this.topic, 'herald.group': this.group, 'herald.count': batch.messages.length }, async () => {
      await this.#handler(batch);
    });
    const ms = this.options.handlerTimeoutMs;
    if (ms === 0) return work;
    let timer: NodeJS.Timeout | undefined;
    const timeout = new Promise<'timeout'>((resolve) => (timer = setTimeout(() => resolve('timeout'), ms)));
    try {
      const r = await Promise.race([work, timeout]);
      if (r === 'timeout') {
        work.catch(() => {}); // it may still settle; the batch is over
        // A statement of the handler may be running on the batch's connection: cancel it
        // so the rollback does not wait for it (a cancel that finds the session idle is ignored).
        await this.#host.driver.executor.query('SELECT pg_cancel_backend($1)', [pid]).catch(() => {});
        throw new HeraldError('TIMEOUT', `topic ${this.topic} group ${this.group}: handler ran longer than handlerTimeoutMs (${ms} ms); the batch rolled back`);
      }
    } finally {
      clearTimeout(timer);
    }
  }

  /** Runs a batch transaction in one of the process's batch slots (see `Topics`). */
  async #inSlot<R>(fn: () => Promise<R>): Promise<R> {
    const release = await this.#host.batchSlot();
    try {
      return await fn();
    } finally {
      release();
    }
  }

  /** One batch transaction. */
  async #batch(loop: Loop, row: q.TopicRow, askPending: boolean): Promise<Outcome> {
    const { driver, s } = this.#host;
    const max = this.options.maxAttempts;
    let failed: { partition: number; error: unknown; attempts: number; head: string } | undefined;
    let done: { partition: number; count: number; position: string } | undefined;
    let dead: { partition: number; id: string; position: string; key: string | null; attempts: number } | undefined;
    const HANDLER = Symbol('handler');
    const floor = await this.#host.pendingFloor();
    try {
      const outcome = await this.#inSlot(() => driver.transaction(async (tx): Promise<Outcome> => {
        const found = await q.cursorClaimRead(tx, s, row.id, this.group, this.#rotate++ % row.partitions, row.partitions, this.options.batchSize, askPending, floor);
        if (found.pending) this.#host.sequenceSoon();
        if (found.redriven) this.#redrivenSeen = true;
        const claim = found.claim;
        // Nothing: the claim also said whether messages wait for the sequencer (a run
        // was started above; it wakes this consumer when it moved something).
        if (!claim || claim.rows.length === 0) return found.redriven ? 'redriven' : false;
        // Another key partition may have messages too: let one more lane claim now (with
        // concurrency 1 too: the next batch is claimed while this one's handler runs).
        this.#permit();
        loop.interrupt();
        const rows = claim.rows;
        const head = rows[0].id;
        // After a failed attempt, up to the last message of the batch that failed, batches
        // hold one message: the attempts count against the message that fails.
        const a = claim.attempt;
        const suspect = a !== null && BigInt(a.through_id) >= BigInt(head);
        const prior = suspect && a.message_id === head ? a.attempts : 0;
        // The claim held the batch to one message already (and moved the cursor to it); a
        // longer one here would mean the cursor moved past messages not handled: fail.
        if (suspect && rows.length > 1) throw new Error('the topic claim returned more than one message after a failed batch (a bug): the batch rolls back');
        if (prior >= max) {
          // Its attempts are used up (the last one failed, or killed its process): to the
          // group's dead letters, and the partition moves on in the same transaction (the
          // claim, held to this one message, already moved the cursor to it).
          await q.deadLetterInsert(tx, s, row.id, this.group, head, prior);
          dead = { partition: claim.kpart, id: rows[0].publish_id ?? head, position: head, key: rows[0].key, attempts: prior };
          return 'dead';
        }
        const last = rows[rows.length - 1].id;
        const messages: TopicMessage<T>[] = rows.map((r) => toMessage<T>(this.topic, r));
        // The handler's turn (claimed while others' handlers ran: it waits for one to end),
        // given back in one place whatever happens below.
        const handlerDone = await this.#handlerSlots.take();
        let counted: Promise<number>;
        let thrown: { error: unknown } | undefined;
        try {
          // stop() came while this batch waited: it rolls back unhandled (no attempt used).
          if (loop.stopping) throw STOPPED;
          // Counted on the pool, in its own commit: the handler starts once the statement
          // has left the process (a process killed from then on cannot take it back: the
          // server runs it and commits), and the batch commits only after it did. Sent
          // once the handler's turn has come: a batch waiting for it has used no attempt.
          let sent!: () => void;
          const leftProcess = new Promise<void>((resolve) => (sent = resolve));
          counted = q.attemptBegin(driver.executor, s, row.id, this.group, claim.kpart, head, last, rows.length === 1, { onSent: () => sent() });
          counted.catch(() => {});
          // A statement that failed before it was sent fails the batch (nothing ran).
          await Promise.race([leftProcess, counted]);
          try {
            await this.#runHandler({ topic: this.topic, group: this.group, partition: claim.kpart, messages, tx }, claim.pid);
          } catch (error) {
            thrown = { error };
          }
        } finally {
          handlerDone();
        }
        if (thrown) {
          failed = { partition: claim.kpart, error: thrown.error, attempts: await this.#attemptsOf(counted, prior), head };
          throw HANDLER;
        }
        // The count commits before the batch: the next claim of the partition reads it.
        await this.#attemptsOf(counted, prior);
        // The claim already moved the cursor to `last`, in this transaction: the COMMIT is all that is left.
        done = { partition: claim.kpart, count: rows.length, position: last };
        return 'batch';
      }));
      if (outcome === 'batch' && done) {
        this.consumed += done.count;
        this.emit('topic:batch', done);
      }
      if (outcome === 'dead' && dead) {
        const lastError = (await q.deadLetterList(driver.executor, s, row.id, this.group, String(BigInt(dead.position) - 1n), 1))[0]?.last_error ?? null;
        this.emit('topic:dead', { ...dead, lastError });
      }
      return outcome;
    } catch (err) {
      if (err === STOPPED) return false;
      if (err === HANDLER && failed) {
        const f = failed;
        await q.attemptFailed(driver.executor, s, row.id, this.group, f.partition, f.head, describeError(f.error)).catch((e) => this.emit('topic:problem', e));
        this.emit('topic:handlerError', { partition: f.partition, error: f.error, attempts: f.attempts });
        // The last attempt failed: no pause, the next claim moves the message to dead letters.
        return f.attempts >= max ? 'exhausted' : 'retry';
      }
      throw err;
    }
  }

  /**
   * The attempts counted for a batch's first message (see {@link #batch}). A count that
   * failed after it was sent (its connection lost, say) leaves the batch as it is: its
   * handler already ran. `topic:problem` says so, and the count is taken as the prior
   * attempts plus this one.
   */
  async #attemptsOf(counted: Promise<number>, prior: number): Promise<number> {
    try {
      return await counted;
    } catch (err) {
      this.emit('topic:problem', err);
      return prior + 1;
    }
  }

  /** Redelivers one dead letter that `redrive()` handed back, as a batch of its own. */
  async #redriven(row: q.TopicRow): Promise<Outcome> {
    const { driver, s } = this.#host;
    const max = this.options.maxAttempts;
    if (!(await q.deadLetterRedrivenExists(driver.executor, s, row.id, this.group))) return false;
    // The handler's turn first (its attempt is counted before it runs).
    const handlerDone = await this.#handlerSlots.take();
    try {
      return await this.#redrivenOne(row);
    } finally {
      handlerDone();
    }
  }

  async #redrivenOne(row: q.TopicRow): Promise<Outcome> {
    const { driver, s } = this.#host;
    const max = this.options.maxAttempts;
    // Attempts used up by handlers that killed their process: back to dead.
    await q.deadLetterExhausted(driver.executor, s, row.id, this.group, max);
    const d = await q.deadLetterNextRedriven(driver.executor, s, row.id, this.group); // counts the attempt, committed
    if (!d) return false;
    let failure: unknown;
    const HANDLER = Symbol('handler');
    try {
      const ok = await this.#inSlot(() => driver.transaction(async (tx) => {
        if (!(await q.deadLetterLock(tx, s, row.id, this.group, d.id))) return false;
        const { rows } = await tx.query<{ pid: number }>('SELECT pg_backend_pid() AS pid');
        try {
          await this.#runHandler({ topic: this.topic, group: this.group, partition: d.kpart, messages: [toMessage<T>(this.topic, d)], tx }, rows[0].pid);
        } catch (error) {
          failure = error;
          throw HANDLER;
        }
        await q.deadLetterDelete(tx, s, row.id, this.group, d.id);
        return true;
      }));
      if (ok) {
        this.consumed += 1;
        this.emit('topic:batch', { partition: d.kpart, count: 1, position: d.id });
      }
      return ok ? 'batch' : false;
    } catch (err) {
      if (err !== HANDLER) throw err;
      const text = describeError(failure);
      const isDead = await q.deadLetterFailed(driver.executor, s, row.id, this.group, d.id, text, max);
      this.emit('topic:handlerError', { partition: d.kpart, error: failure, attempts: d.attempts });
      if (isDead) this.emit('topic:dead', { partition: d.kpart, id: d.publish_id ?? d.id, position: d.id, key: d.key, attempts: d.attempts, lastError: text });
      return 'retry';
    }
  }

  #behindCheckedAt = 0;

  async #checkBehind(row: q.TopicRow): Promise<void> {
    this.#behindCheckedAt = Date.now();
    const ex = this.#host.driver.executor;
    const behind = await q.groupBehind(ex, this.#host.s, row.id, this.group);
    const now = new Set<number>();
    for (const b of behind) {
      now.add(b.kpart);
      if (this.#reported.get(b.kpart) === b.dropped_id) continue;
      this.#reported.set(b.kpart, b.dropped_id);
      const oldest = await q.messageOldest(ex, this.#host.s, row.id);
      const info = {
        topic: this.topic,
        group: this.group,
        partition: b.kpart,
        position: b.cursor_id,
        through: b.dropped_id,
        oldestPosition: oldest ?? null,
      };
      this.emit('topic:behind', { ...info, error: new TopicRetentionError(info) });
    }
    for (const k of [...this.#reported.keys()]) if (!now.has(k)) this.#reported.delete(k);
  }
}

export { TopicRetentionError };
