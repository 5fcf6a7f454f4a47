import type { Driver, Executor, TxLike } from '../driver/types.js';
import { toExecutor } from '../driver/index.js';
import { HeraldError, InvalidOptionError } from '../errors.js';
import { quoteIdent, schemaIdent } from '../internal/ident.js';
import { assertBigintId, assertInt, hasLoneSurrogate, jsonHasNul } from '../internal/validate.js';
import { withSpan } from '../internal/tracing.js';
import { Slots } from '../internal/slots.js';
import { GroupCommit } from '../internal/group-commit.js';
import type { Notifier } from '../notifier/notifier.js';
import { TopicConsumer } from './consumer.js';
import * as q from './queries.js';
import { toDeadLetter, toMessage } from './message.js';
import {
  assertName,
  checkStart,
  nonNegative,
  parsePosition,
  positiveInt,
  TopicRetentionError,
  TOPIC_KEY_MAX_BYTES,
  TOPICS_DEFAULTS,
  type ConsumerOptions,
  type GroupStart,
  type PublishedMessage,
  type TopicBatch,
  type TopicDeadLetter,
  type TopicMessage,
  type TopicOptions,
  type TopicPosition,
  type TopicsOptions,
} from './types.js';

interface TopicState {
  row: q.TopicRow;
  /** Highest segment upper bound known. */
  upper: bigint;
  /** Highest log id this process saw handed out. */
  lastId: bigint;
  checkedAt: number;
  /**
   * The pending floor: a publish id below which every pending row of the topic has been
   * moved into the log (or rolled back). Sequencer runs and "anything pending?" checks
   * start there, not at the topic's first pending row: while a transaction anywhere holds
   * vacuum back, the moved rows below stay as dead index entries that every such scan
   * would walk (migration 023). Raised by the runs of this process; 0 at start.
   */
  floor: string;
  /** When a run of this process last asked to raise the floor (Date.now()). */
  floorCheckedAt: number;
  /** The highest publish id a run of this process moved. */
  movedMax: bigint;
  /** The sequencer run of this process in progress, and the one queued behind it (see #sequence). */
  seqRunning?: Promise<Map<string, string>>;
  seqQueued?: Promise<Map<string, string>>;
  /** Publishes without tx, one statement in flight (see #publishGroup). */
  group?: GroupCommit<{ key: string | null; payload: string }>;
  /** When this process's last sequencer run began (performance.now()), and how many messages it moved. */
  lastRunAt: number;
  lastRunMoved: number;
  /** A background run waiting for the burst gap (see #sequenceSoon). */
  burstTimer?: NodeJS.Timeout;
  /** The wake-up of other processes' consumers in flight, and whether another is wanted after it (see #wakeSoon). */
  waking?: Promise<void>;
  wakeAgain?: boolean;
}

/** A sequencer run that moved at least this many messages means a burst (see #sequenceSoon). */
const BURST_RUN_MESSAGES = 16;

/** Most messages in one grouped publish statement (a single larger publishMany still goes, alone). */
const PUBLISH_GROUP_MAX_MESSAGES = 1000;

/** Options of {@link Topics.maintain}. */
export interface MaintainOptions {
  /**
   * @internal Test seam: awaited after each retention step of a segment has committed
   * (`'marked'`, `'detached'`, `'dropped'`), so a test can kill the process between steps.
   */
  onStep?: (step: 'marked' | 'detached' | 'dropped', info: { topic: string; segment: string }) => Promise<void> | void;
}

/** Statistics of one topic (`herald.topics.stats`). */
export interface TopicStats {
  name: string;
  partitions: number;
  segmentSize: number;
  retentionMs: number | null;
  retentionBytes: number | null;
  messages: number;
  /** Messages committed but not yet moved into the log by the sequencer (normally 0 or a few). */
  pending: number;
  bytes: number;
  segments: number;
  oldestAt: Date | null;
  newestAt: Date | null;
  groups: { name: string; lag: number; dead: number; redriving: number; partitions: { partition: number; position: TopicPosition; lag: number; updatedAt: Date }[] }[];
}

/**
 * When a sequencer run tries to raise the pending floor (see `TopicState.floor`): once
 * the process moved FLOOR_CHECK_SPAN publish ids above it, and at most every
 * FLOOR_CHECK_MS per topic and process, unless it moved FLOOR_FORCE_SPAN above it (a
 * fast burst: the time gate alone let the floor lag by whatever moved in 50 ms). The
 * check reads pg_locks (every session's locks: about a millisecond on a busy server,
 * more than a small run); in between, scans above the floor walk at most about
 * FLOOR_FORCE_SPAN moved rows, plus one run's batch, while a held transaction keeps them.
 */
const FLOOR_CHECK_SPAN = 256n;
const FLOOR_FORCE_SPAN = 1024n;
const FLOOR_CHECK_MS = 50;

/** Re-check of the sequence against the segments at least this often per topic and process. */
const SEGMENT_CHECK_MS = 1000;

/**
 * Durable topics: an append-only log per topic with consumer groups and replay
 * (`herald.topics`). See docs/topics.md and src/topic/README.md.
 */
export class Topics {
  readonly #driver: Driver;
  readonly #notifier: Notifier;
  readonly #s: string;
  readonly #schema: string;
  readonly #defaults: Required<TopicOptions>;
  readonly #maintenanceIntervalMs: number;
  readonly #autoCreate: boolean;
  readonly #sequencerBatchSize: number;
  readonly #sequencerBurstGapMs: number;
  readonly #topics = new Map<string, Promise<TopicState>>();
  readonly #consumers = new Set<TopicConsumer>();
  /** Sequencer runs started in the background by publishes (awaited by `stop()`). */
  readonly #background = new Set<Promise<void>>();
  #timer: NodeJS.Timeout | undefined;
  #maintaining: Promise<unknown> | undefined;
  /**
   * Batch transactions of this process's consumers at once, all topics: one fewer than
   * the pool's connections. A batch holds its connection while its attempt count waits
   * for another one: with as many batches as connections none would ever get it (three
   * consumers of concurrency 4 on the default pool of 10 stopped for good).
   */
  readonly #batchSlots: Slots;
  /**
   * Pending floors go back to 0 when the notifier reconnects: after a failover the new
   * primary's publish sequences may be behind what the old one handed out (what
   * asynchronous replication had not sent yet), and its new pending rows would land
   * below a floor found before. The next run scans from 0 once and raises it again.
   */
  readonly #resetFloors = () => {
    for (const p of this.#topics.values()) void p.then((st) => (st.floor = '0'), () => {});
  };
  #watching = false;

  constructor(driver: Driver, notifier: Notifier, schema: string, options: TopicsOptions = {}) {
    this.#driver = driver;
    this.#notifier = notifier;
    this.#schema = schema;
    this.#s = schemaIdent(schema);
    this.#defaults = resolveTopicOptions(options.topicDefaults ?? {}, 'topicDefaults.');
    this.#maintenanceIntervalMs = positiveInt('maintenanceIntervalMs', options.maintenanceIntervalMs ?? TOPICS_DEFAULTS.maintenanceIntervalMs);
    const autoCreate = options.autoCreate ?? TOPICS_DEFAULTS.autoCreate;
    if (typeof autoCreate !== 'boolean') throw new InvalidOptionError('topics.autoCreate', autoCreate, 'true or false');
    this.#autoCreate = autoCreate;
    this.#sequencerBatchSize = positiveInt('topics.sequencerBatchSize', options.sequencerBatchSize ?? TOPICS_DEFAULTS.sequencerBatchSize, 1_000_000);
    const gap = options.sequencerBurstGapMs ?? TOPICS_DEFAULTS.sequencerBurstGapMs;
    if (typeof gap !== 'number' || !Number.isFinite(gap) || gap < 0 || gap > 60_000) throw new InvalidOptionError('topics.sequencerBurstGapMs', gap, 'a number from 0 to 60000');
    this.#sequencerBurstGapMs = gap;
    this.#batchSlots = new Slots(Math.max(1, (driver.maxConnections ?? 10) - 1));
  }

  /** The notification channel that wakes consumers (payload: the topic name). */
  get channel(): string {
    return `${this.#schema}.topics`;
  }

  /**
   * Creates a topic (idempotent; the options of an existing topic are kept). Resolves
   * true when this call created it. With `autoCreate` (the default) a first publish
   * creates a missing topic with `topicDefaults` too.
   */
  async create(name: string, options: TopicOptions = {}): Promise<boolean> {
    assertName('topic', name);
    const o = resolveTopicOptions({ ...this.#defaults, ...stripUndefined(options) }, '');
    const created = { created: false };
    await this.#driver.transaction((tx) => q.topicCreate(tx, this.#s, name, o, created));
    return created.created;
  }

  /**
   * Publishes one message (a JSON value) to a topic; with `{ tx }` it exists only if that
   * transaction commits. One statement: without `tx` the call costs one committed
   * insert, and the topic's sequencer numbers the message in the background (the
   * returned `position` is `null`) unless `waitForPosition` is true: then the call waits
   * for the sequencer run that numbers it and returns its position. A missing topic is
   * created with `topicDefaults` when `autoCreate` (this call's, else the
   * `topics.autoCreate` option) is true, else `HeraldError` `NOT_FOUND`.
   */
  async publish(
    topic: string,
    payload: unknown,
    options: { tx?: TxLike; key?: string | null; autoCreate?: boolean; waitForPosition?: boolean } = {},
  ): Promise<PublishedMessage> {
    const [m] = await this.publishMany(topic, [{ payload, key: options.key ?? null }], {
      tx: options.tx,
      autoCreate: options.autoCreate,
      waitForPosition: options.waitForPosition,
    });
    return m;
  }

  /**
   * Publishes a batch in one statement (one wake-up), in order; returns ids (and, with
   * `waitForPosition`, positions) in the same order. Options as in {@link publish}.
   */
  async publishMany(
    topic: string,
    messages: readonly { payload: unknown; key?: string | null }[],
    options: { tx?: TxLike; autoCreate?: boolean; waitForPosition?: boolean } = {},
  ): Promise<PublishedMessage[]> {
    assertName('topic', topic);
    if (!Array.isArray(messages)) throw new HeraldError('INVALID_ARGUMENT', 'messages must be an array');
    const wait = options.waitForPosition ?? false;
    if (typeof wait !== 'boolean') throw new HeraldError('INVALID_ARGUMENT', 'waitForPosition must be true or false');
    if (wait && options.tx) throw new HeraldError('INVALID_ARGUMENT', 'waitForPosition needs a publish without tx (inside a transaction nothing is committed yet)');
    if (messages.length === 0) return [];
    const keys: (string | null)[] = [];
    const payloads: string[] = [];
    for (const m of messages) {
      let text: string | undefined;
      try {
        text = m?.payload === undefined ? undefined : JSON.stringify(m.payload);
      } catch (err) {
        // A BigInt, a cycle, a toJSON that throws: not a JSON value either.
        throw new HeraldError('INVALID_PAYLOAD', `a topic payload must be a JSON value: ${(err as Error).message}`);
      }
      if (text === undefined) throw new HeraldError('INVALID_PAYLOAD', 'a topic payload must be a JSON value (not undefined or a function)');
      if (jsonHasNul(text)) throw new HeraldError('INVALID_PAYLOAD', 'a topic payload cannot contain NUL characters');
      const key = m.key ?? null;
      // A lone surrogate (not encodable as UTF-8) is refused too: Postgres would reject it in the statement.
      if (key !== null && (typeof key !== 'string' || key.includes('\0') || hasLoneSurrogate(key) || Buffer.byteLength(key) > TOPIC_KEY_MAX_BYTES)) {
        throw new HeraldError('INVALID_ARGUMENT', `key must be null or a string of at most ${TOPIC_KEY_MAX_BYTES} UTF-8 bytes without NUL or lone surrogates`);
      }
      keys.push(key);
      payloads.push(text);
    }
    const ex = options.tx ? toExecutor(options.tx) : this.#driver.executor;
    return withSpan('herald.topics.publish', { 'herald.topic': topic, 'herald.count': messages.length }, async () => {
      const state = await this.#state(topic, options.autoCreate ?? this.#autoCreate);
      const append = (wake: boolean) => q.pendingAppend(ex, this.#s, state.row, keys, payloads, wake ? this.channel : null);
      if (options.tx) {
        // Inside the caller's transaction nothing is committed yet: the wake-up rides in
        // the statement (none once wake-ups are paused) and consumers sequence the
        // messages when it (or their poll) comes after the commit.
        const rows = await append(this.#notifier.wakeups);
        return rows.map((r) => ({ id: r.publish_id, position: null }));
      }
      // Without tx: no wake-up in the publish. A transaction that NOTIFYs holds the
      // cluster's notification lock through its commit's WAL flush, so notifying
      // publishes commit one at a time; this process's sequencer run, right after, moves
      // the message and wakes the consumers (one NOTIFY per run, for every publish it moved).
      if (!wait) {
        // Grouped with the other publishes of this process that wait for a statement: one
        // commit (and one WAL flush) for all of them (see GroupCommit).
        // Committed when it returns: in the log already (consumers woken), or pending
        // with a sequencer run started in the background (shared with every publish
        // meanwhile), so delivery does not wait for a consumer's turn.
        const ids = await this.#publishGroup(state).submit(keys.map((key, i) => ({ key, payload: payloads[i] })));
        return ids.map((id) => ({ id, position: null }));
      }
      const rows = await append(false);
      const moved = await this.#sequence(state);
      const ids = rows.map((r) => r.publish_id);
      let found = moved;
      if (ids.some((id) => !moved.has(id))) found = await q.messagePositions(this.#driver.executor, this.#s, state.row.id, rows[0].floor, ids);
      return rows.map((r) => ({ id: r.publish_id, position: found.get(r.publish_id) ?? null }));
    });
  }

  /**
   * Creates a consumer of `group` on `topic`: every group receives every message;
   * the consumers of one group share the key partitions (one key stays in order).
   * Call `start()` on it; `herald.close()` stops it.
   */
  consumer<T = unknown>(topic: string, group: string, handler: (batch: TopicBatch<T>) => Promise<void> | void, options: ConsumerOptions = {}): TopicConsumer<T> {
    assertName('topic', topic);
    assertName('group', group);
    const c = new TopicConsumer<T>(
      {
        driver: this.#driver,
        notifier: this.#notifier,
        s: this.#s,
        channel: this.channel,
        topic: () => this.#state(topic).then((st) => st.row),
        sequence: () => this.#sequenceIfPending(topic),
        pendingFloor: () => this.#topics.get(topic)?.then((st) => st.floor) ?? Promise.resolve('0'),
        sequenceSoon: () => void this.#existing(topic).then((st) => this.#sequenceSoon(st), () => {}),
        forget: () => this.#consumers.delete(c as TopicConsumer),
        batchSlot: () => this.#batchSlots.take(),
      },
      topic,
      group,
      handler,
      options,
    );
    this.#consumers.add(c as TopicConsumer);
    return c;
  }

  /** Creates a group if missing (cursors at `start`); returns true when it was created. */
  async createGroup(topic: string, group: string, start: GroupStart = 'earliest'): Promise<boolean> {
    // Every argument checked before anything is created (autoCreate would create the topic).
    assertName('topic', topic);
    assertName('group', group);
    const from = checkStart(start);
    const st = await this.#state(topic);
    await this.#sequenceIfPending(topic);
    return q.groupCreate(this.#driver.executor, this.#s, st.row.id, group, from);
  }

  /**
   * Moves a group's position: `earliest` replays every retained message, `latest`
   * skips to now, a `Date` goes to the first message published at or after it, a
   * position resumes after it. Returns the number of key partitions moved (0: no such group).
   * With `{ tx }` the move commits with the caller's transaction. Running consumers
   * pick the new position up at their next batch.
   */
  async resetGroup(topic: string, group: string, to: GroupStart | { position: TopicPosition }, options: { tx?: TxLike } = {}): Promise<number> {
    assertName('group', group);
    const st = await this.#existing(topic);
    const ex = options.tx ? toExecutor(options.tx) : this.#driver.executor;
    // The move takes the partitions' locks, then writes: one transaction (the caller's).
    const inTx = <R>(fn: (tx: Executor) => Promise<R>) => (options.tx ? fn(ex) : this.#driver.transaction(fn));
    let moved: number;
    if (typeof to === 'object' && !(to instanceof Date)) {
      const id = parsePosition(to.position);
      moved = await inTx((tx) => q.groupResetTo(tx, this.#s, st.row.id, group, id));
    } else {
      checkStart(to);
      await this.#sequenceIfPending(topic);
      moved = await inTx((tx) => q.groupReset(tx, this.#s, st.row.id, group, to));
    }
    // Wake the running consumers (with the caller's transaction: when it commits).
    // The wake-up is a courtesy (consumers also poll): never attached while paused, and
    // one that meets a full queue after the move committed on its own is dropped.
    if (moved > 0 && this.#notifier.wakeups) {
      await this.#notifier.notify(this.channel, topic, { tx: ex }).catch((err) => {
        if (options.tx || !this.#notifier.pressure.noteError(err)) throw err;
      });
    }
    return moved;
  }

  /**
   * Reads the whole topic (all key partitions, no group) after a position, in delivery
   * order: `after` is a position, `'earliest'` (default) or `'latest'`. Throws
   * {@link TopicRetentionError} when messages after `after` were dropped by retention.
   */
  async read<T = unknown>(topic: string, options: { after?: TopicPosition | 'earliest' | 'latest'; limit?: number } = {}): Promise<{ messages: TopicMessage<T>[]; position: TopicPosition }> {
    const st = await this.#existing(topic);
    const limit = assertInt('limit', options.limit ?? 100, 1, 100_000);
    const ex = this.#driver.executor;
    const position = await this.resolveAfter(topic, options.after ?? 'earliest');
    await this.#sequenceIfPending(topic);
    const dropped = await q.topicDroppedMax(ex, this.#s, st.row.id);
    if (BigInt(position) < BigInt(dropped)) {
      const oldest = await q.messageOldest(ex, this.#s, st.row.id);
      throw new TopicRetentionError({ topic, group: null, partition: null, position, through: dropped, oldestPosition: oldest ?? null });
    }
    const rows = await q.messageReadTopic(ex, this.#s, st.row.id, position, limit);
    const messages = rows.map((r) => toMessage<T>(topic, r));
    return { messages, position: messages.length ? messages[messages.length - 1].position : position };
  }

  /**
   * Follows a topic without a group: yields every message after `after` (a position,
   * `'earliest'` or `'latest'`, default `'latest'`) in delivery order, then waits for
   * more (notifier wake-ups, a catch-up read after every (re)LISTEN, a safety poll)
   * until `signal` aborts. Throws {@link TopicRetentionError} if it falls behind retention.
   */
  async *tail<T = unknown>(
    topic: string,
    options: { after?: TopicPosition | 'earliest' | 'latest'; signal?: AbortSignal; batchSize?: number; pollIntervalMs?: number } = {},
  ): AsyncGenerator<TopicMessage<T>, void, undefined> {
    const signal = options.signal;
    const pollMs = positiveInt('pollIntervalMs', options.pollIntervalMs ?? 1000);
    const batchSize = assertInt('batchSize', options.batchSize ?? 500, 1, 100_000);
    let wake: (() => void) | undefined;
    let dirty = true;
    const poke = () => {
      dirty = true;
      wake?.();
    };
    const sub = this.#notifier.listen(this.channel, (n) => void (n.payload === topic && poke()), { onListen: poke });
    const onAbort = () => poke();
    signal?.addEventListener('abort', onAbort);
    try {
      await sub.established;
      let position = await this.resolveAfter(topic, options.after ?? 'latest');
      while (!signal?.aborted) {
        dirty = false;
        const r = await this.read<T>(topic, { after: position, limit: batchSize });
        for (const m of r.messages) {
          if (signal?.aborted) return;
          yield m;
        }
        position = r.position;
        if (r.messages.length > 0) continue;
        const ms = pollMs;
        if (dirty || signal?.aborted) continue;
        await new Promise<void>((resolve) => {
          const timer = setTimeout(() => {
            wake = undefined;
            resolve();
          }, ms);
          wake = () => {
            wake = undefined;
            clearTimeout(timer);
            resolve();
          };
        });
      }
    } finally {
      signal?.removeEventListener('abort', onAbort);
      wake?.();
      await sub.close();
    }
  }

  /**
   * Turns `'earliest'`, `'latest'` or a position (an earlier version's `"<xid>:<id>"`
   * means its id) into the position to read after. `'latest'`: after every message
   * committed so far (the sequencer runs first).
   */
  async resolveAfter(topic: string, after: string): Promise<TopicPosition> {
    const st = await this.#existing(topic);
    const ex = this.#driver.executor;
    if (after === 'earliest') return q.topicDroppedMax(ex, this.#s, st.row.id);
    if (after === 'latest') {
      await this.#sequenceIfPending(topic);
      return q.topicLatest(ex, this.#s, st.row.id);
    }
    return parsePosition(after);
  }

  /** Names of the topics. */
  async list(): Promise<string[]> {
    return (await q.topicList(this.#driver.executor, this.#s)).map((t) => t.name);
  }

  /** Size, retention and per-group lag of a topic (the sequencer runs first when messages wait, as for `read`). */
  async stats(topic: string): Promise<TopicStats> {
    await this.#existing(topic);
    await this.#sequenceIfPending(topic);
    const ex = this.#driver.executor;
    const t = (await q.topicGet(ex, this.#s, topic))!;
    const [counts, segments, groups, pending, dead] = await Promise.all([
      q.topicCounts(ex, this.#s, t.id),
      q.segmentList(ex, this.#s, t.id),
      q.groupStats(ex, this.#s, t.id),
      q.pendingCount(ex, this.#s, t.id),
      q.deadLetterCounts(ex, this.#s, t.id),
    ]);
    const byGroup = new Map<string, TopicStats['groups'][number]>();
    for (const g of groups) {
      let e = byGroup.get(g.group_name);
      if (!e) byGroup.set(g.group_name, (e = { name: g.group_name, lag: 0, dead: 0, redriving: 0, partitions: [] }));
      e.lag += Number(g.lag);
      e.partitions.push({ partition: g.kpart, position: g.cursor_id, lag: Number(g.lag), updatedAt: g.updated_at });
    }
    for (const d of dead) {
      const e = byGroup.get(d.group_name);
      if (e) {
        e.dead = Number(d.dead);
        e.redriving = Number(d.redriving);
      }
    }
    return {
      name: t.name,
      partitions: t.partitions,
      segmentSize: Number(t.segment_size),
      retentionMs: t.retention_ms === null ? null : Number(t.retention_ms),
      retentionBytes: t.retention_bytes === null ? null : Number(t.retention_bytes),
      messages: Number(counts.messages),
      pending,
      bytes: segments.reduce((a, x) => a + Number(x.bytes), 0),
      segments: segments.length,
      oldestAt: counts.oldest,
      newestAt: counts.newest,
      groups: [...byGroup.values()],
    };
  }

  /**
   * A group's dead letters (or every group's), in position order: messages whose
   * handler failed `maxAttempts` times. `after` pages by position within a group.
   */
  async deadLetters<T = unknown>(topic: string, options: { group?: string; after?: TopicPosition; limit?: number } = {}): Promise<TopicDeadLetter<T>[]> {
    const st = await this.#existing(topic);
    if (options.group !== undefined) assertName('group', options.group);
    const limit = assertInt('limit', options.limit ?? 100, 1, 10_000);
    const after = options.after === undefined ? '0' : parsePosition(options.after);
    const rows = await q.deadLetterList(this.#driver.executor, this.#s, st.row.id, options.group ?? null, after, limit);
    return rows.map((r) => toDeadLetter<T>(topic, r));
  }

  /**
   * Hands dead letters of a group back to its consumers (all of them, or the given
   * positions): each is delivered again as a batch of its own, after the messages the
   * group is on (not in its key's original place), with a fresh `maxAttempts`; it
   * leaves the dead letters when that batch commits, and comes back if it fails again.
   * Returns how many were handed back.
   */
  async redrive(topic: string, group: string, options: { positions?: TopicPosition[] } = {}): Promise<number> {
    assertName('group', group);
    const st = await this.#existing(topic);
    const ids = options.positions === undefined ? null : options.positions.map((p) => parsePosition(p));
    const n = await q.deadLetterRedrive(this.#driver.executor, this.#s, st.row.id, group, ids);
    if (n > 0 && this.#notifier.wakeups) {
      await this.#notifier.notify(this.channel, topic).catch((err) => {
        if (!this.#notifier.pressure.noteError(err)) throw err;
      });
    }
    return n;
  }

  /**
   * Retention of every topic (or of `topic`): drops whole segments that are full and
   * whose newest message is older than `retentionMs` (default 7 days), or the oldest
   * full ones while the log is larger than `retentionBytes`; the segment being written
   * and the spare ones are never dropped. Returns the number of segments dropped.
   *
   * Each segment goes in three steps, each committed before the next: (1) the key
   * partitions' retention marks are raised to the newest ids it holds (from then on a
   * group whose position is below a mark gets `topic:behind` for exactly the messages
   * after its position through the mark, and no claim reads the segment); (2) `DETACH
   * PARTITION ... CONCURRENTLY`; (3) `DROP TABLE`. A run interrupted anywhere leaves
   * marked segments that the next run finishes first. Safe to call from many
   * processes at once (a second detach of one table fails that run; the next goes on).
   *
   * This is the function a maintenance service calls on a timer; `start()` runs it
   * every `maintenanceIntervalMs`.
   */
  async maintain(topic?: string, options: MaintainOptions = {}): Promise<number> {
    const ex = this.#driver.executor;
    const rows = topic ? [(await this.#existing(topic)).row] : await q.topicList(ex, this.#s);
    let dropped = 0;
    for (const t of rows) {
      const segments = await q.segmentList(ex, this.#s, t.id);
      // Finish what an interrupted run marked (in order: marks are already up).
      for (const seg of segments.filter((x) => x.marked)) {
        await this.#dropMarked(t, seg, options);
        dropped++;
      }
      if (t.retention_ms === null && t.retention_bytes === null) continue;
      const last = await q.topicSequenceLast(ex, this.#s, t.id);
      // Full: every id of the segment was handed out (the mark step waits for the sequencer run in progress).
      const full = segments.filter((x) => !x.marked && BigInt(x.upper) - 1n <= last);
      let total = segments.filter((x) => !x.marked).reduce((a, x) => a + Number(x.bytes), 0);
      for (const seg of full) {
        let drop = false;
        if (t.retention_bytes !== null && total > Number(t.retention_bytes)) drop = true;
        if (!drop && t.retention_ms !== null) {
          const newest = await q.segmentNewest(ex, this.#s, t.id, seg.lower, seg.upper);
          const { rows: r } = await ex.query<{ old: boolean }>(`SELECT $1::timestamptz IS NULL OR $1::timestamptz < now() - $2::bigint * interval '1 millisecond' AS old`, [
            newest,
            t.retention_ms,
          ]);
          drop = r[0].old;
        }
        if (!drop) break; // segments age in order: a younger one follows
        await this.#driver.transaction((tx) => q.segmentMark(tx, this.#s, t.id, seg.table_name, seg.lower, seg.upper));
        await options.onStep?.('marked', { topic: t.name, segment: seg.table_name });
        await this.#dropMarked(t, seg, options);
        total -= Number(seg.bytes);
        dropped++;
      }
    }
    return dropped;
  }

  async #dropMarked(t: q.TopicRow, seg: { lower: string; table_name: string }, options: MaintainOptions): Promise<void> {
    // Must run outside a transaction block: the pool.
    await q.segmentDetach(this.#driver.executor, this.#s, t.id, seg.table_name);
    await options.onStep?.('detached', { topic: t.name, segment: seg.table_name });
    await this.#driver.transaction((tx) => q.segmentForget(tx, this.#s, t.id, seg.table_name, seg.lower));
    await options.onStep?.('dropped', { topic: t.name, segment: seg.table_name });
  }

  /** Starts periodic maintenance (retention). Idempotent. */
  start(): void {
    if (this.#timer) return;
    this.#timer = setInterval(() => {
      if (this.#maintaining) return;
      this.#maintaining = this.maintain()
        .catch(() => {})
        .finally(() => (this.#maintaining = undefined));
    }, this.#maintenanceIntervalMs);
    this.#timer.unref();
  }

  /** Stops maintenance and every consumer made by `consumer()`. Idempotent. */
  async stop(): Promise<void> {
    if (this.#timer) clearInterval(this.#timer);
    this.#timer = undefined;
    await Promise.all([...this.#consumers].map((c) => c.stop()));
    // A background run waiting for the burst gap runs now (its messages would otherwise
    // wait for a consumer's poll).
    for (const p of this.#topics.values()) {
      const st = await p.catch(() => undefined);
      if (st?.burstTimer) {
        clearTimeout(st.burstTimer);
        st.burstTimer = undefined;
        st.lastRunMoved = 0;
        this.#sequenceSoon(st);
      }
    }
    await Promise.all([...this.#background]);
    await this.#maintaining;
    if (this.#watching) {
      this.#watching = false;
      this.#notifier.off('notifier:reconnected', this.#resetFloors);
    }
  }

  /** @internal Test seam: resolves once no background sequencer run of this process is in flight. */
  async backgroundIdle(): Promise<void> {
    while (this.#background.size > 0) await Promise.all([...this.#background]);
  }

  /**
   * The group commit of the topic's publishes without tx (made on first use). Each
   * statement goes straight into the log when the topic's sequencer lock is free
   * (`topic_publish`, migration 031), else into `topic_pending`; either way it has
   * committed when it returns, and this process then wakes the consumers (straight in
   * the log) or starts a sequencer run (pending).
   */
  #publishGroup(st: TopicState): GroupCommit<{ key: string | null; payload: string }> {
    if (!st.group) {
      const append = async (items: readonly { key: string | null; payload: string }[]) => {
        const keys = items.map((m) => m.key);
        const payloads = items.map((m) => m.payload);
        const limit = Math.min(this.#sequencerBatchSize, Number(st.row.segment_size));
        // Straight into the log, or null when it must go pending.
        const direct = async (): Promise<{ publish_id: string; id: string | null }[] | null> => {
          // A single large publishMany: pending, moved by runs of at most `limit`, so the
          // topic's lock is never held for one long statement.
          if (items.length > PUBLISH_GROUP_MAX_MESSAGES) return null;
          try {
            // The run inside may move `limit` pending messages before these: segments for both.
            await this.#ensureSegments(st, limit + items.length);
          } catch {
            // Segments cannot be made here (a role without the right, say): pending, as
            // before; a sequencer run elsewhere makes them.
            return null;
          }
          try {
            const rows = await q.publishDirect(this.#driver.executor, this.#s, st.row, keys, payloads, st.floor, limit, this.#floorCheck(st));
            if (rows.length > 0) this.#moved(st, rows[0].floor, rows[0].moved_max);
            return rows;
          } catch (err) {
            // 23514: no segment for a position (other processes used up the spare one
            // since our last check). Nothing committed: pending instead (a publish never
            // fails for want of a segment; the sequencer run makes it first).
            if ((err as { code?: string }).code !== '23514') throw err;
            st.checkedAt = 0;
            return null;
          }
        };
        const rows =
          (await direct()) ?? (await q.pendingAppendQuiet(this.#driver.executor, this.#s, st.row, keys, payloads)).map((r) => ({ publish_id: r.publish_id, id: null }));
        const last = rows[rows.length - 1]?.id ?? null;
        if (last === null) this.#sequenceSoon(st);
        else {
          if (BigInt(last) > st.lastId) st.lastId = BigInt(last);
          this.#wakeSoon(st);
        }
        return rows.map((r) => r.publish_id);
      };
      st.group = new GroupCommit(append, append, PUBLISH_GROUP_MAX_MESSAGES);
    }
    return st.group;
  }

  /**
   * After messages went straight into the log: this process's consumers of the topic
   * look at once, and one wake-up goes to every process (none while wake-ups are
   * paused; consumers then find the messages at their poll). One wake-up statement in
   * flight per topic; publishes meanwhile share the next one.
   */
  #wakeSoon(st: TopicState): void {
    for (const c of this.#consumers) if (c.topic === st.row.name) c.nudge();
    if (st.waking) {
      st.wakeAgain = true;
      return;
    }
    const run = (async () => {
      do {
        st.wakeAgain = false;
        await this.#notifier.pressure.run(async (wake) => {
          if (wake) await q.topicWake(this.#driver.executor, this.channel, st.row.name);
        });
      } while (st.wakeAgain);
    })()
      .catch(() => {}) // a lost wake-up: consumers poll
      .finally(() => {
        st.waking = undefined;
        this.#background.delete(run);
        // Asked for after the loop's last look (or after a failure): one more.
        if (st.wakeAgain) {
          st.wakeAgain = false;
          this.#wakeSoon(st);
        }
      });
    st.waking = run;
    this.#background.add(run);
  }

  /** The topic's state, created with `topicDefaults` when missing and `create` (default: the `autoCreate` option), else NOT_FOUND. */
  #state(topic: string, create = this.#autoCreate): Promise<TopicState> {
    let p = this.#topics.get(topic);
    if (!p) {
      if (!this.#watching) {
        this.#watching = true;
        this.#notifier.on('notifier:reconnected', this.#resetFloors);
      }
      p = (async () => {
        let row = await q.topicGet(this.#driver.executor, this.#s, topic);
        if (!row && !create) throw new HeraldError('NOT_FOUND', `no topic ${JSON.stringify(topic)}: create it first (herald.topics.create), or enable autoCreate`);
        if (!row) row = await this.#driver.transaction((tx) => q.topicCreate(tx, this.#s, topic, this.#defaults));
        return { row, upper: 0n, lastId: 0n, checkedAt: 0, floor: '0', floorCheckedAt: 0, movedMax: 0n, lastRunAt: 0, lastRunMoved: 0 };
      })();
      p.catch(() => this.#topics.delete(topic));
      this.#topics.set(topic, p);
    }
    return p;
  }

  async #existing(topic: string): Promise<TopicState> {
    assertName('topic', topic);
    const cached = this.#topics.get(topic);
    if (cached) return cached;
    const row = await q.topicGet(this.#driver.executor, this.#s, topic);
    if (!row) throw new HeraldError('NOT_FOUND', `no topic ${JSON.stringify(topic)}`);
    return this.#state(topic);
  }

  /**
   * Runs the sequencer when the topic has committed messages waiting (one cheap read
   * otherwise). Consumers call it at every turn, readers before reading.
   */
  async #sequenceIfPending(topic: string): Promise<void> {
    const st = await this.#existing(topic);
    if (await q.pendingExists(this.#driver.executor, this.#s, st.row.id, st.floor)) await this.#sequence(st);
  }

  /**
   * Schedules a sequencer run in the background (after a committed publish). Joins the
   * run already queued, if any: a burst of publishes makes one run per run in flight.
   * A failed run is left to the next one (consumers sequence at every turn and poll).
   */
  #sequenceSoon(st: TopicState): void {
    if (st.seqQueued || st.burstTimer) return;
    // In a burst (the last run moved at least BURST_RUN_MESSAGES), runs start at least
    // sequencerBurstGapMs apart: fewer, larger runs (each a commit with its WAL flush and
    // NOTIFY), at the price of up to that much delivery latency while the burst lasts.
    if (st.lastRunMoved >= BURST_RUN_MESSAGES) {
      const wait = st.lastRunAt + this.#sequencerBurstGapMs - performance.now();
      if (wait > 0) {
        st.burstTimer = setTimeout(() => {
          st.burstTimer = undefined;
          this.#sequenceSoon(st);
        }, wait);
        return;
      }
    }
    const run = this.#sequence(st).then(
      () => {},
      () => {},
    );
    this.#background.add(run);
    void run.finally(() => this.#background.delete(run));
  }

  /**
   * A sequencer run for this process: calls made while one runs share the next one,
   * which starts after it ends (its snapshot may predate a caller's commit, the next
   * one's does not). Across processes runs are serialized by the topic's advisory lock
   * in `topic_sequence`. Resolves the publish id → position map of what that run moved.
   */
  #sequence(st: TopicState): Promise<Map<string, string>> {
    if (st.seqQueued) return st.seqQueued;
    const queued = (async () => {
      await st.seqRunning?.catch(() => {});
      st.seqQueued = undefined;
      const running = this.#sequenceNow(st);
      st.seqRunning = running;
      try {
        return await running;
      } finally {
        if (st.seqRunning === running) st.seqRunning = undefined;
      }
    })();
    st.seqQueued = queued;
    return queued;
  }

  async #sequenceNow(st: TopicState): Promise<Map<string, string>> {
    const moved = new Map<string, string>();
    st.lastRunAt = performance.now();
    // A run moves at most one segment's worth, so the segments made ahead cover it.
    const limit = Math.min(this.#sequencerBatchSize, Number(st.row.segment_size));
    for (;;) {
      await this.#ensureSegments(st, limit);
      const check = this.#floorCheck(st);
      const run = (wake: boolean) => q.sequencerRun(this.#driver.executor, this.#s, st.row, limit, wake ? this.channel : null, st.floor, check);
      let result: { rows: { publish_id: string; id: string }[]; floor: string };
      try {
        result = await this.#notifier.pressure.run(run);
      } catch (err) {
        // 23514: no segment for an id (another process's runs used up the spare segment
        // since our last check). Nothing committed: make it and run again.
        if ((err as { code?: string }).code !== '23514') throw err;
        st.checkedAt = 0;
        st.lastId = await q.topicSequenceLast(this.#driver.executor, this.#s, st.row.id);
        await this.#ensureSegments(st, limit);
        result = await this.#notifier.pressure.run(run);
      }
      const rows = result.rows;
      this.#moved(st, result.floor, rows.reduce<string | null>((m, r) => (m === null || BigInt(r.publish_id) > BigInt(m) ? r.publish_id : m), null));
      for (const r of rows) moved.set(r.publish_id, r.id);
      if (rows.length > 0) {
        const last = BigInt(rows[rows.length - 1].id);
        if (last > st.lastId) st.lastId = last;
        // This process's consumers of the topic look at once (the run's NOTIFY wakes
        // every process, this one too, but later; none is sent while wake-ups are paused).
        for (const c of this.#consumers) if (c.topic === st.row.name) c.nudge();
      }
      st.lastRunMoved = moved.size;
      if (rows.length < limit) return moved;
    }
  }

  /**
   * Whether the next run asks to raise the pending floor. That reads pg_locks (more than
   * a small run costs): only once this process moved FLOOR_CHECK_SPAN publish ids above
   * it, and at most every FLOOR_CHECK_MS unless FLOOR_FORCE_SPAN are above it.
   */
  #floorCheck(st: TopicState): boolean {
    const span = st.movedMax - BigInt(st.floor);
    const check = span >= FLOOR_CHECK_SPAN && (span >= FLOOR_FORCE_SPAN || Date.now() - st.floorCheckedAt >= FLOOR_CHECK_MS);
    if (check) st.floorCheckedAt = Date.now();
    return check;
  }

  /** After a run (a background one, or inside a publish): its floor, and the highest publish id it moved. */
  #moved(st: TopicState, floor: string | null, movedMax: string | null): void {
    if (floor !== null && BigInt(floor) > BigInt(st.floor)) st.floor = floor;
    if (movedMax !== null && BigInt(movedMax) > st.movedMax) st.movedMax = BigInt(movedMax);
  }

  /**
   * Keeps a spare segment ahead of the ids the next sequencer run may take. Checked
   * from local knowledge, and against the sequence at least every second (other
   * processes sequence too). Segments are made on the pool in a transaction of their own.
   */
  async #ensureSegments(state: TopicState, n: number): Promise<void> {
    const size = BigInt(state.row.segment_size);
    const near = state.lastId + BigInt(n) + size / 2n >= state.upper;
    if (!near && Date.now() - state.checkedAt < SEGMENT_CHECK_MS) return;
    const last = await q.topicSequenceLast(this.#driver.executor, this.#s, state.row.id);
    if (last > state.lastId) state.lastId = last;
    if (state.lastId + BigInt(n) + size / 2n >= state.upper) {
      state.upper = await this.#driver.transaction((tx) => q.segmentEnsure(tx, this.#s, state.row, state.lastId + BigInt(n) + size));
    }
    state.checkedAt = Date.now();
  }
}

function resolveTopicOptions(o: TopicOptions, prefix: string): Required<TopicOptions> {
  const r = { ...TOPICS_DEFAULTS, ...stripUndefined(o) };
  return {
    partitions: positiveInt(prefix + 'partitions', r.partitions, 1024),
    segmentSize: positiveInt(prefix + 'segmentSize', r.segmentSize),
    retentionMs: r.retentionMs === null ? null : nonNegative(prefix + 'retentionMs', r.retentionMs),
    retentionBytes: r.retentionBytes === null ? null : nonNegative(prefix + 'retentionBytes', r.retentionBytes),
  };
}

function stripUndefined<T extends object>(o: T): Partial<T> {
  return Object.fromEntries(Object.entries(o).filter(([, v]) => v !== undefined)) as Partial<T>;
}
