/**
 * SQL of topics. Every statement takes the quoted schema `s` (from `schemaIdent`) and
 * `$n` parameters; dynamic identifiers (per-topic tables, segments, sequences) only go
 * through `quoteIdent`.
 *
 * Publishers write into `topic_pending`; one sequencer run at a time per topic moves
 * the committed rows into the log and gives them their ids. Delivery order is the
 * log's id: ids become visible in increasing order, so a reader that read up to id N
 * never sees a row at or below N appear later (trap 6 of DESIGN.md), and no reader
 * waits for anyone else's transaction.
 */
import { wakeSql } from '../notifier/pressure.js';
import { LEASE_COMMITS_ASYNC } from '../internal/lease.js';
import type { Executor, QueryOptions } from '../driver/types.js';
import { quoteIdent } from '../internal/ident.js';

/** A topic's configuration row. */
export interface TopicRow {
  id: number;
  name: string;
  partitions: number;
  segment_size: string;
  retention_ms: string | null;
  retention_bytes: string | null;
  created_at: Date;
}

/** A message row as read. `xid` is text (xid8). */
export interface MessageRow {
  /** The log id: the message's position. */
  id: string;
  /** The id its publish returned (null for messages of versions before the sequencer: then `id`). */
  publish_id: string | null;
  kpart: number;
  key: string | null;
  /** jsonb as text: parsed by the library, the same way over every driver. */
  payload: string;
  /** Publish time in epoch milliseconds: a float parses far faster than a timestamptz in node-postgres. */
  published_ms: number;
}

/** Per-topic object names (all in the herald schema). */
export function topicTableName(topicId: number): string {
  return `topic_messages_${topicId}`;
}
export function topicSequenceName(topicId: number): string {
  return `topic_seq_${topicId}`;
}
/** The sequence of publish ids (migration 012). */
export function topicPublishSequenceName(topicId: number): string {
  return `topic_pub_${topicId}`;
}
function segmentTableName(topicId: number, lower: bigint): string {
  return `topic_messages_${topicId}_s${lower}`;
}

export async function topicGet(ex: Executor, s: string, name: string): Promise<TopicRow | undefined> {
  const { rows } = await ex.query<TopicRow>(`SELECT * FROM ${s}.topics WHERE name = $1`, [name]);
  return rows[0];
}

export async function topicList(ex: Executor, s: string): Promise<TopicRow[]> {
  return (await ex.query<TopicRow>(`SELECT * FROM ${s}.topics ORDER BY name`)).rows;
}

/**
 * Creates a topic with its log table, its sequence, its key partitions and a first
 * segment; idempotent (runs under a per-topic advisory lock in `tx`). Tables are made
 * with CREATE TABLE + ATTACH PARTITION: ATTACH takes SHARE UPDATE EXCLUSIVE on the
 * parent, which does not conflict with publishers' ROW EXCLUSIVE (CREATE TABLE ...
 * PARTITION OF would take ACCESS EXCLUSIVE and queue behind any open publisher).
 */
export async function topicCreate(
  tx: Executor,
  s: string,
  name: string,
  o: { partitions: number; segmentSize: number; retentionMs: number | null; retentionBytes: number | null },
  created?: { created: boolean },
): Promise<TopicRow> {
  await tx.query(`SELECT pg_advisory_xact_lock(hashtextextended($1, 0))`, ['pgherald.topic:' + s + name]);
  const existing = await topicGet(tx, s, name);
  if (existing) return existing;
  if (created) created.created = true;
  const { rows } = await tx.query<TopicRow>(
    `INSERT INTO ${s}.topics (name, partitions, segment_size, retention_ms, retention_bytes) VALUES ($1, $2, $3, $4, $5) RETURNING *`,
    [name, o.partitions, o.segmentSize, o.retentionMs, o.retentionBytes],
  );
  const t = rows[0];
  const table = `${s}.${quoteIdent(topicTableName(t.id))}`;
  await tx.query(`CREATE SEQUENCE ${s}.${quoteIdent(topicSequenceName(t.id))} AS bigint`);
  await tx.query(`CREATE SEQUENCE ${s}.${quoteIdent(topicPublishSequenceName(t.id))} AS bigint`);
  await tx.query(`CREATE TABLE ${table} (LIKE ${s}.topic_messages INCLUDING DEFAULTS) PARTITION BY RANGE (id)`);
  await tx.query(`ALTER TABLE ${s}.topic_messages ATTACH PARTITION ${table} FOR VALUES IN (${Number(t.id)})`);
  await tx.query(`INSERT INTO ${s}.topic_partitions (topic_id, kpart) SELECT $1, g FROM generate_series(0, $2 - 1) g`, [t.id, t.partitions]);
  await segmentCreateLocked(tx, s, t.id, 1n, 1n + BigInt(o.segmentSize));
  return t;
}

async function segmentCreateLocked(tx: Executor, s: string, topicId: number, lower: bigint, upper: bigint): Promise<void> {
  const seg = `${s}.${quoteIdent(segmentTableName(topicId, lower))}`;
  await tx.query(`CREATE TABLE ${seg} (LIKE ${s}.topic_messages INCLUDING DEFAULTS)`);
  // Bounds are numbers we computed (bigint), not user input; DDL takes no parameters.
  await tx.query(
    `ALTER TABLE ${s}.${quoteIdent(topicTableName(topicId))} ATTACH PARTITION ${seg} FOR VALUES FROM (${lower}) TO (${upper})`,
  );
  await tx.query(`INSERT INTO ${s}.topic_segments (topic_id, lower, upper, table_name) VALUES ($1, $2, $3, $4)`, [
    topicId,
    String(lower),
    String(upper),
    segmentTableName(topicId, lower),
  ]);
}

/**
 * Makes sure segments cover ids up to `target` (exclusive upper bound above it), in
 * `tx` under the topic's advisory lock. Returns the highest upper bound.
 */
export async function segmentEnsure(tx: Executor, s: string, topic: TopicRow, target: bigint): Promise<bigint> {
  await tx.query(`SELECT pg_advisory_xact_lock(hashtextextended($1, 0))`, ['pgherald.topic:' + s + topic.name]);
  const { rows } = await tx.query<{ upper: string | null }>(`SELECT max(upper)::text AS upper FROM ${s}.topic_segments WHERE topic_id = $1`, [topic.id]);
  let upper = BigInt(rows[0]?.upper ?? '1');
  const size = BigInt(topic.segment_size);
  // Segments of segment_size each (retention's unit); past 64 at once (a burst far
  // larger than the segment size) the last one stretches to cover the target.
  for (let made = 0; upper <= target; made++) {
    const next = made < 63 || upper + size > target ? upper + size : target + 1n;
    await segmentCreateLocked(tx, s, topic.id, upper, next);
    upper = next;
  }
  return upper;
}

/** The sequence's last handed-out id (non-transactional, cheap). */
export async function topicSequenceLast(ex: Executor, s: string, topicId: number): Promise<bigint> {
  const { rows } = await ex.query<{ v: string }>(`SELECT (CASE WHEN is_called THEN last_value ELSE last_value - 1 END)::text AS v FROM ${s}.${quoteIdent(topicSequenceName(topicId))}`);
  return BigInt(rows[0].v);
}

/**
 * The messages of a publish as rows (pid: a publish id drawn in array order; k: key; p:
 * payload as jsonb), from $4 (the keys, a JSON array of strings and nulls) and $5 (the
 * payloads, one JSON array): {@link publishArrays}; typed text (postgres.js would
 * serialise a string bound to a json parameter as a JSON string). Two JSON texts instead of two text
 * arrays: no array escaping of every payload's quotes in Node, no array literal to
 * unescape and no text-to-jsonb cast per row on the server (a publish of 500 about 13%
 * less time, statement alone).
 */
const PUBLISH_SOURCE = `SELECT nextval($2::regclass) AS pid, k.k, p.p
    FROM jsonb_array_elements($5::text::jsonb) WITH ORDINALITY AS p(p, ord)
    JOIN json_array_elements_text($4::text::json) WITH ORDINALITY AS k(k, ord) USING (ord)
   ORDER BY ord`;

/** The keys and payloads of a publish as the two JSON texts {@link PUBLISH_SOURCE} reads (payloads: JSON texts already). */
function publishArrays(keys: readonly (string | null)[], payloads: readonly string[]): [string, string] {
  return [JSON.stringify(keys), '[' + payloads.join(',') + ']'];
}

/**
 * Publishes: inserts into `topic_pending` (publish ids from the topic's `topic_pub_<id>`
 * in array order) and sends one coalesced wake-up (channel `channel`, payload the topic
 * name; none when `channel` is null: wake-ups paused) in the same statement. `kpart` is
 * the key's hash modulo the topic's partitions; a message without key goes round-robin
 * by publish id. `floor` is the log sequence's value when the statement ran: every id
 * the sequencer gives these rows is above it (it runs after they commit).
 */
export async function pendingAppend(
  ex: Executor,
  s: string,
  topic: TopicRow,
  keys: (string | null)[],
  payloads: string[],
  channel: string | null,
): Promise<{ publish_id: string; floor: string }[]> {
  const { rows } = await ex.query<{ publish_id: string; floor: string }>(
    `WITH src AS (${PUBLISH_SOURCE}), ins AS (
       INSERT INTO ${s}.topic_pending (topic_id, publish_id, kpart, key, payload)
       SELECT $1, src.pid,
              CASE WHEN src.k IS NULL THEN (src.pid % $3)::int
                   ELSE (((hashtextextended(src.k, 0) % $3) + $3) % $3)::int END,
              src.k, src.p
         FROM src
       RETURNING publish_id
     ), wake AS (SELECT ${wakeSql('$6', '$7')}),
     -- A sequence never used yet says last_value 1 with is_called false: nothing handed out.
     floor AS (SELECT CASE WHEN is_called THEN last_value ELSE last_value - 1 END AS v FROM ${s}.${quoteIdent(topicSequenceName(topic.id))})
     SELECT ins.publish_id::text AS publish_id, floor.v::text AS floor FROM ins, wake, floor ORDER BY ins.publish_id`,
    [topic.id, `${s}.${quoteIdent(topicPublishSequenceName(topic.id))}`, topic.partitions, ...publishArrays(keys, payloads), channel, topic.name],
  );
  return rows;
}

/**
 * Publishes without a wake-up and without the floor (a publish that does not wait for
 * its positions): the lean form of {@link pendingAppend}, prepared once per connection.
 */
export async function pendingAppendQuiet(ex: Executor, s: string, topic: TopicRow, keys: (string | null)[], payloads: string[]): Promise<{ publish_id: string }[]> {
  const { rows } = await ex.query<{ publish_id: string }>(
    `INSERT INTO ${s}.topic_pending (topic_id, publish_id, kpart, key, payload)
     SELECT $1, src.pid,
            CASE WHEN src.k IS NULL THEN (src.pid % $3)::int
                 ELSE (((hashtextextended(src.k, 0) % $3) + $3) % $3)::int END,
            src.k, src.p
       FROM (${PUBLISH_SOURCE}) src
     RETURNING publish_id::text AS publish_id`,
    [topic.id, `${s}.${quoteIdent(topicPublishSequenceName(topic.id))}`, topic.partitions, ...publishArrays(keys, payloads)],
    { prepare: true },
  );
  return rows.sort((a, b) => (BigInt(a.publish_id) < BigInt(b.publish_id) ? -1 : 1));
}

/**
 * A publish without tx, straight into the log when it can (migration 031's
 * `topic_publish`): under the topic's sequencer lock, if free, it first moves what is
 * pending (up to `limit`), then appends these messages with the next positions; else
 * (lock held elsewhere, or more pending than `limit`) it inserts into `topic_pending`
 * like {@link pendingAppendQuiet}. Rows in array order: publish id, and position
 * (null: pending); when it ran the sequencer, each row also carries the pending floor
 * after the run (raised only with `checkFloor`, see {@link sequencerRun}) and the highest
 * publish id it moved. One statement, its own transaction; prepared once per connection.
 */
export async function publishDirect(
  ex: Executor,
  s: string,
  topic: TopicRow,
  keys: readonly (string | null)[],
  payloads: readonly string[],
  floor: string,
  limit: number,
  checkFloor: boolean,
): Promise<{ publish_id: string; id: string | null; floor: string | null; moved_max: string | null }[]> {
  const { rows } = await ex.query<{ publish_id: string; id: string | null; floor: string | null; moved_max: string | null }>(
    `SELECT publish_id::text AS publish_id, id::text AS id, floor::text AS floor, moved_max::text AS moved_max
       FROM ${s}.topic_publish($1, $2::regclass, $3::regclass, $4, $5, $6, $7::bigint, $8, $9)`,
    [
      topic.id,
      `${s}.${quoteIdent(topicSequenceName(topic.id))}`,
      `${s}.${quoteIdent(topicPublishSequenceName(topic.id))}`,
      topic.partitions,
      ...publishArrays(keys, payloads),
      floor,
      limit,
      checkFloor,
    ],
    { prepare: true },
  );
  return rows;
}

/**
 * A wake-up of the topic's consumers in every process (payload: the topic name), in a
 * transaction of its own that does not wait for the WAL flush: a NOTIFY holds the
 * cluster's notification lock until its transaction ends.
 */
export async function topicWake(ex: Executor, channel: string, name: string): Promise<void> {
  await ex.query(`SELECT pg_notify($1, $2) FROM (SELECT 1) one WHERE ${LEASE_COMMITS_ASYNC}`, [channel, name], { prepare: true });
}

/**
 * True when the topic has committed messages the sequencer has not moved into the log
 * yet. `floor`: a publish id below which every pending row of the topic was moved (see
 * {@link sequencerRun}); the check starts there instead of walking the moved rows.
 */
export async function pendingExists(ex: Executor, s: string, topicId: number, floor = '0'): Promise<boolean> {
  const { rows } = await ex.query<{ p: boolean }>(`SELECT EXISTS (SELECT 1 FROM ${s}.topic_pending WHERE topic_id = $1 AND publish_id >= $2::bigint) AS p`, [topicId, floor], { prepare: true });
  return rows[0].p;
}

/** Messages still pending for a topic (committed, not yet in the log). */
export async function pendingCount(ex: Executor, s: string, topicId: number): Promise<number> {
  const { rows } = await ex.query<{ n: string }>(`SELECT count(*)::text AS n FROM ${s}.topic_pending WHERE topic_id = $1`, [topicId]);
  return Number(rows[0].n);
}

/** Takes the topic's sequencer lock for the rest of `tx` (waits for a run in progress). */
export async function sequencerLock(tx: Executor, s: string, topicId: number): Promise<void> {
  await tx.query(`SELECT pg_advisory_xact_lock(hashtextextended($1, 0))`, [`pgherald.topic-seq:${topicId}`]);
}

/**
 * One sequencer run in one round trip (the `topic_sequence` function of migration 024;
 * call it outside a transaction): under the topic's sequencer lock, moves up to
 * `limit` committed pending messages into the log in publish-id order; each gets its
 * position, the next id of the topic's `topic_seq_<id>`. Rows of transactions still
 * open are invisible to it and stay pending: a later run moves them once they commit.
 * Wakes consumers when it moved anything (`channel` null: wake-ups paused).
 *
 * The scan starts at `floor` (a publish id below which every pending row of the topic
 * was moved); with `checkFloor` the run returns a higher floor when no other
 * transaction could still commit a pending row below it (migration 023 says how it
 * knows; the check reads pg_locks), else the same.
 */
export async function sequencerRun(
  ex: Executor,
  s: string,
  topic: TopicRow,
  limit: number,
  channel: string | null,
  floor: string,
  checkFloor: boolean,
): Promise<{ rows: { publish_id: string; id: string }[]; floor: string }> {
  const { rows } = await ex.query<{ publish_id: string | null; id: string | null; floor: string | null }>(
    `SELECT publish_id::text AS publish_id, id::text AS id, floor::text AS floor FROM ${s}.topic_sequence($1, $2::regclass, $3, $4, $5, $6::regclass, $7::bigint, $8)`,
    [topic.id, `${s}.${quoteIdent(topicSequenceName(topic.id))}`, limit, channel, topic.name, `${s}.${quoteIdent(topicPublishSequenceName(topic.id))}`, floor, checkFloor],
    { prepare: true },
  );
  // Every row is a moved message but the last, which carries the floor.
  const last = rows.pop();
  return { rows: rows as { publish_id: string; id: string }[], floor: last?.floor ?? floor };
}

/** Log ids of messages by publish id, among ids above `floor` (what a publish returns as positions). */
export async function messagePositions(ex: Executor, s: string, topicId: number, floor: string, publishIds: string[]): Promise<Map<string, string>> {
  const { rows } = await ex.query<{ publish_id: string; id: string }>(
    `SELECT publish_id::text AS publish_id, id::text AS id FROM ${s}.topic_messages
      WHERE topic_id = $1 AND id > $2::bigint AND publish_id = ANY($3::bigint[])`,
    [topicId, floor, publishIds],
  );
  return new Map(rows.map((r) => [r.publish_id, r.id]));
}

/** Creates a group with one cursor per key partition; `start` gives each cursor's first value. Idempotent. */
export async function groupCreate(
  ex: Executor,
  s: string,
  topicId: number,
  group: string,
  start: 'earliest' | 'latest' | Date,
): Promise<boolean> {
  const { rows } = await ex.query<{ created: boolean }>(
    `WITH g AS (
       INSERT INTO ${s}.topic_groups (topic_id, name) VALUES ($1, $2) ON CONFLICT DO NOTHING RETURNING name
     ), c AS (
       INSERT INTO ${s}.topic_group_cursors (topic_id, group_name, kpart, cursor_id)
       SELECT $1, g.name, p.kpart, st.i FROM g, ${s}.topic_partitions p, LATERAL (${startCursorSql(s)}) st
        WHERE p.topic_id = $1
     )
     SELECT count(*) > 0 AS created FROM g`,
    [topicId, group, start instanceof Date ? 'time' : start, start instanceof Date ? start : null],
  );
  return rows[0].created;
}

/**
 * The cursor (an id) a key partition `p` starts from: everything at or below it counts
 * as consumed. earliest: the partition's retention mark; latest: the newest id in the
 * log (callers run the sequencer first, so every message committed before is in it);
 * time: just before the first retained message of the partition published at or after
 * $4 (as latest where there is none).
 */
function startCursorSql(s: string): string {
  const latest = `GREATEST(p.dropped_id, COALESCE((SELECT m.id FROM ${s}.topic_messages m WHERE m.topic_id = p.topic_id ORDER BY m.id DESC LIMIT 1), 0))`;
  return `SELECT CASE $3 WHEN 'earliest' THEN p.dropped_id
                         WHEN 'latest' THEN ${latest}
                         WHEN 'time' THEN CASE WHEN f.id IS NULL THEN ${latest} ELSE GREATEST(p.dropped_id, f.id - 1) END END AS i
            FROM (SELECT 1) one
            LEFT JOIN LATERAL (
              SELECT m.id FROM ${s}.topic_messages m
               WHERE $3 = 'time' AND m.topic_id = p.topic_id AND m.kpart = p.kpart AND m.id > p.dropped_id AND m.published_at >= $4::timestamptz
               ORDER BY m.id LIMIT 1) f ON true`;
}

/** The newest id in the topic's log (0 when empty), at least the highest retention mark. */
export async function topicLatest(ex: Executor, s: string, topicId: number): Promise<string> {
  const { rows } = await ex.query<{ id: string }>(
    `SELECT GREATEST(COALESCE((SELECT m.id FROM ${s}.topic_messages m WHERE m.topic_id = $1 ORDER BY m.id DESC LIMIT 1), 0),
                     COALESCE((SELECT max(dropped_id) FROM ${s}.topic_partitions WHERE topic_id = $1), 0))::text AS id`,
    [topicId],
  );
  return rows[0].id;
}

/**
 * Moves every cursor of a group, in the caller's transaction (`tx`): first each
 * partition's row lock (a consumer's batch there ends first), then, in a statement whose
 * snapshot sees what those batches committed, the group's moves are replaced by one new
 * move per partition, to `cursor` (SQL over the partition `p`, parameters from $3). The
 * partitions' attempt counts go too: they describe batches after the old position (a
 * replay must not take them for failed ones and go one message at a time). Returns the
 * number of cursors moved.
 */
async function groupMove(tx: Executor, s: string, topicId: number, group: string, cursor: string, params: unknown[]): Promise<number> {
  await tx.query(`SELECT 1 FROM ${s}.topic_group_cursors c WHERE c.topic_id = $1 AND c.group_name = $2 FOR UPDATE`, [topicId, group]);
  const { rows } = await tx.query<{ n: string }>(
    `WITH locked AS (
       SELECT c.topic_id, c.kpart, c.ref FROM ${s}.topic_group_cursors c WHERE c.topic_id = $1 AND c.group_name = $2
     ), forget AS (
       DELETE FROM ${s}.topic_tries t WHERE t.ref IN (SELECT ref FROM locked)
     ), gone AS (
       DELETE FROM ${s}.topic_cursor_moves mv WHERE mv.ref IN (SELECT ref FROM locked)
     ), moved AS (
       INSERT INTO ${s}.topic_cursor_moves (ref, cursor_id)
       SELECT l.ref, (${cursor}) FROM locked l JOIN ${s}.topic_partitions p ON p.topic_id = l.topic_id AND p.kpart = l.kpart
       RETURNING 1
     )
     SELECT count(*)::text AS n FROM moved`,
    [topicId, group, ...params],
  );
  return Number(rows[0].n);
}

/** Moves every cursor of a group (replay or skip), in the transaction `ex`. Returns the number of cursors moved. */
export async function groupReset(ex: Executor, s: string, topicId: number, group: string, to: 'earliest' | 'latest' | Date): Promise<number> {
  return groupMove(ex, s, topicId, group, startCursorSql(s), [to instanceof Date ? 'time' : to, to instanceof Date ? to : null]);
}

/** Moves every cursor of a group to a position (an id), in the transaction `ex`: delivery resumes after it. */
export async function groupResetTo(ex: Executor, s: string, topicId: number, group: string, id: string): Promise<number> {
  return groupMove(ex, s, topicId, group, 'SELECT $3::bigint', [id]);
}

/**
 * A partition's cursor as SQL over the cursor row `c`: its newest move, or the group's
 * first cursor while it has none (migration 027's topic_cursor_of: newest first down
 * the primary key, so the moves a held transaction keeps from being cleaned up are
 * never read, whatever the statistics say).
 */
const cursorOf = (s: string) => `${s}.topic_cursor_of(c.ref, c.cursor_id)`;

/** What a claim returns: the locked key partition, its cursor, its attempt row and the next messages. */
export interface Claim {
  kpart: number;
  cursor: string;
  /** The attempt row of this key partition, if any. */
  attempt: { message_id: string; through_id: string; attempts: number } | null;
  rows: MessageRow[];
  /** The backend running the batch's transaction (a handler timeout cancels its statement). */
  pid: number;
}

/** A claim's answer: the claim (none when no key partition had work) and what else waits. */
export interface ClaimResult {
  claim: Claim | undefined;
  /** The topic has committed messages the sequencer has not moved into the log yet (asked only with `askPending`). */
  pending: boolean;
  /** The group has dead letters handed back by `redrive`. */
  redriven: boolean;
}

/**
 * Claims one key partition of the group, reads its next batch and moves the cursor to
 * the batch's last message, in one round trip (the `topic_claim_batch` function of
 * migration 032, whose plans the session keeps: inside the batch's transaction a plain
 * statement would be planned on every batch). The cursor moves in the caller's
 * transaction (the batch's): it commits with the handler's writes or rolls back with
 * them. While the partition's attempt row covers the first message (a batch through it
 * failed), the batch holds that message alone.
 * The claim locks a cursor that has messages after it and is not behind retention,
 * FOR UPDATE SKIP LOCKED (LIMIT 1): the consumers of a group share the partitions
 * without waiting on each other, and the lock, held until the batch commits, keeps one
 * key's messages in order. It reads the cursor as its last holder committed it (a new
 * snapshot after the lock). The rotation ($3) spreads consumers over partitions. The log
 * is read by id after the cursor: the sequencer makes ids visible in increasing order,
 * so whatever this snapshot sees after the cursor is a prefix of what will ever be
 * there. Postgres prunes the segments below the cursor at run time (claims touch only
 * the segments at or after it).
 *
 * The first row is the claim (one text column; see the migration): the partition, its
 * cursor, the attempt row, whether the group has redriven dead letters and, when
 * `askPending` (the probe walks the pending index, dead entries included, so it is
 * asked only on a wake-up or poll) or when nothing was claimed, whether the topic has
 * messages waiting for the sequencer. The other rows are the messages. (One JSON array
 * per batch instead of rows was tried: decoding in Node was no cheaper overall, and
 * building it cost Postgres 3.5 ms per 500 messages against 0.6 ms for the rows.)
 */
export async function cursorClaimRead(
  ex: Executor,
  s: string,
  topicId: number,
  group: string,
  rotate: number,
  partitions: number,
  limit: number,
  askPending: boolean,
  floor: string,
): Promise<ClaimResult> {
  const { rows } = await ex.query<{ claim: string | null } & MessageRow>(
    `SELECT * FROM ${s}.topic_claim_batch($1, $2, $3, $4, $5, $6, $7::bigint)`,
    [topicId, group, rotate, partitions, limit, askPending, floor],
    { prepare: true },
  );
  const head = rows.shift()?.claim;
  // The claim moved the cursor in this transaction: messages without their claim must
  // never commit (they would skip messages): fail the batch instead (a guard).
  if (head == null) throw new Error('topic_claim_batch returned no claim row (a bug): the batch rolls back');
  const [pending, redriven, kpart, cursor, pid, mid, through, attempts] = head.split(',');
  const out: ClaimResult = { claim: undefined, pending: pending === 't', redriven: redriven === 't' };
  if (kpart === '') return out;
  out.claim = {
    kpart: Number(kpart),
    cursor,
    pid: Number(pid),
    attempt: mid === '' ? null : { message_id: mid, through_id: through, attempts: Number(attempts) },
    rows,
  };
  return out;
}

/**
 * Records an attempt starting at `messageId` through `throughId`, on the pool,
 * committed before the handler runs: a handler that kills its process still uses up
 * the attempt. Only an attempt on one message alone (`single`) counts against it: a
 * larger batch that fails names no message, it only makes the next batches single
 * (up to `throughId`). Returns the attempts on `messageId` so far, this one included.
 */
export async function attemptBegin(
  ex: Executor,
  s: string,
  topicId: number,
  group: string,
  kpart: number,
  messageId: string,
  throughId: string,
  single: boolean,
  opts: Pick<QueryOptions, 'onSent'> = {},
): Promise<number> {
  // Appended (migration 027, topic_try). Its commit does not wait for the WAL flush.
  const { rows } = await ex.query<{ attempts: number }>(
    `SELECT ${s}.topic_try($1, $2, $3, $4, $5, $6) AS attempts FROM (SELECT 1) one WHERE ${LEASE_COMMITS_ASYNC}`,
    [topicId, group, kpart, messageId, throughId, single],
    { prepare: true, ...opts },
  );
  if (rows[0].attempts === null) throw new Error(`topic ${topicId} group ${group}: no cursor for key partition ${kpart} (the group was deleted?)`);
  return rows[0].attempts;
}

/** Records the error of a failed attempt (on the pool, after the batch rolled back). */
export async function attemptFailed(ex: Executor, s: string, topicId: number, group: string, kpart: number, messageId: string, error: string): Promise<void> {
  await ex.query(
    `WITH c AS (SELECT c.ref FROM ${s}.topic_group_cursors c WHERE c.topic_id = $1 AND c.group_name = $2 AND c.kpart = $3)
     UPDATE ${s}.topic_tries t SET last_error = $5, at = now()
      WHERE t.ref = (SELECT ref FROM c) AND t.message_id = $4
        AND t.seq = (SELECT n.seq FROM ${s}.topic_tries n WHERE n.ref = (SELECT ref FROM c) ORDER BY n.seq DESC LIMIT 1)`,
    [topicId, group, kpart, messageId, error],
  );
}

/** Copies a message into the group's dead letters (in the batch's transaction, with the cursor moving past it). */
export async function deadLetterInsert(tx: Executor, s: string, topicId: number, group: string, id: string, attempts: number): Promise<void> {
  await tx.query(
    `INSERT INTO ${s}.topic_dead_letters (topic_id, group_name, id, publish_id, kpart, key, payload, published_at, attempts, last_error)
     SELECT m.topic_id, $2, m.id, m.publish_id, m.kpart, m.key, m.payload, m.published_at, $4,
            (SELECT CASE WHEN t.message_id = m.id THEN t.last_error END
               FROM ${s}.topic_group_cursors c JOIN ${s}.topic_tries t ON t.ref = c.ref
              WHERE c.topic_id = $1 AND c.group_name = $2 AND c.kpart = m.kpart ORDER BY t.seq DESC LIMIT 1)
       FROM ${s}.topic_messages m WHERE m.topic_id = $1 AND m.id = $3
     ON CONFLICT (topic_id, group_name, id) DO UPDATE
       SET attempts = EXCLUDED.attempts, last_error = EXCLUDED.last_error, dead_at = now(), redrive_at = NULL`,
    [topicId, group, id, attempts],
  );
}

/** A dead letter as stored. */
export interface DeadLetterRow extends MessageRow {
  group_name: string;
  attempts: number;
  last_error: string | null;
  dead_at: Date;
  redrive_at: Date | null;
}

const DEAD_COLUMNS = `d.group_name, d.id::text AS id, d.publish_id::text AS publish_id, d.kpart, d.key, d.payload::text AS payload,
  (extract(epoch FROM d.published_at) * 1000)::float8 AS published_ms, d.attempts, d.last_error, d.dead_at, d.redrive_at`;

/** Dead letters of a topic (one group or all), oldest position first, after `afterId`. */
export async function deadLetterList(ex: Executor, s: string, topicId: number, group: string | null, afterId: string, limit: number): Promise<DeadLetterRow[]> {
  const { rows } = await ex.query<DeadLetterRow>(
    `SELECT ${DEAD_COLUMNS} FROM ${s}.topic_dead_letters d
      WHERE d.topic_id = $1 AND ($2::text IS NULL OR d.group_name = $2) AND d.id > $3::bigint
      ORDER BY d.group_name, d.id LIMIT $4`,
    [topicId, group, afterId, limit],
  );
  return rows;
}

/** Marks dead letters of a group for redelivery (all, or the given ids). Returns how many. */
export async function deadLetterRedrive(ex: Executor, s: string, topicId: number, group: string, ids: string[] | null): Promise<number> {
  const { rowCount } = await ex.query(
    `UPDATE ${s}.topic_dead_letters SET redrive_at = now(), attempts = 0
      WHERE topic_id = $1 AND group_name = $2 AND redrive_at IS NULL AND ($3::bigint[] IS NULL OR id = ANY($3::bigint[]))`,
    [topicId, group, ids],
  );
  return rowCount;
}

/**
 * Claims one redriven dead letter of the group (FOR UPDATE SKIP LOCKED: one consumer
 * takes it) and counts an attempt on it. The count must commit before the handler
 * runs, so this runs on the pool; the row lock is taken again by {@link deadLetterLock}.
 */
export async function deadLetterNextRedriven(ex: Executor, s: string, topicId: number, group: string): Promise<DeadLetterRow | undefined> {
  const { rows } = await ex.query<DeadLetterRow>(
    `WITH d AS (
       SELECT topic_id, group_name, id FROM ${s}.topic_dead_letters
        WHERE topic_id = $1 AND group_name = $2 AND redrive_at IS NOT NULL
        ORDER BY id LIMIT 1 FOR UPDATE SKIP LOCKED
     )
     UPDATE ${s}.topic_dead_letters d SET attempts = d.attempts + 1
       FROM d AS x WHERE d.topic_id = x.topic_id AND d.group_name = x.group_name AND d.id = x.id
     RETURNING ${DEAD_COLUMNS}`,
    [topicId, group],
  );
  return rows[0];
}

/** True when the group has dead letters handed back by `redrive` (a probe of a small partial index). */
export async function deadLetterRedrivenExists(ex: Executor, s: string, topicId: number, group: string): Promise<boolean> {
  const { rows } = await ex.query<{ e: boolean }>(
    `SELECT EXISTS (SELECT 1 FROM ${s}.topic_dead_letters WHERE topic_id = $1 AND group_name = $2 AND redrive_at IS NOT NULL) AS e`,
    [topicId, group],
  );
  return rows[0].e;
}

/** Locks a redriven dead letter in the batch's transaction; false when another consumer holds it or it is gone. */
export async function deadLetterLock(tx: Executor, s: string, topicId: number, group: string, id: string): Promise<boolean> {
  const { rows } = await tx.query(
    `SELECT 1 FROM ${s}.topic_dead_letters WHERE topic_id = $1 AND group_name = $2 AND id = $3 AND redrive_at IS NOT NULL FOR UPDATE SKIP LOCKED`,
    [topicId, group, id],
  );
  return rows.length > 0;
}

/** Removes a dead letter (its redelivery committed), in the batch's transaction. */
export async function deadLetterDelete(tx: Executor, s: string, topicId: number, group: string, id: string): Promise<void> {
  await tx.query(`DELETE FROM ${s}.topic_dead_letters WHERE topic_id = $1 AND group_name = $2 AND id = $3`, [topicId, group, id]);
}

/** A redriven dead letter failed again: back to dead (on the pool) with its error. */
export async function deadLetterFailed(ex: Executor, s: string, topicId: number, group: string, id: string, error: string, maxAttempts: number): Promise<boolean> {
  const { rows } = await ex.query<{ dead: boolean }>(
    `UPDATE ${s}.topic_dead_letters SET last_error = $4,
            redrive_at = CASE WHEN attempts >= $5 THEN NULL ELSE redrive_at END,
            dead_at = CASE WHEN attempts >= $5 THEN now() ELSE dead_at END
      WHERE topic_id = $1 AND group_name = $2 AND id = $3 RETURNING redrive_at IS NULL AS dead`,
    [topicId, group, id, error, maxAttempts],
  );
  return rows[0]?.dead ?? false;
}

/** A redriven dead letter whose attempts are used up (its handler killed the process): back to dead. */
export async function deadLetterExhausted(ex: Executor, s: string, topicId: number, group: string, maxAttempts: number): Promise<number> {
  const { rowCount } = await ex.query(
    `UPDATE ${s}.topic_dead_letters SET redrive_at = NULL, dead_at = now()
      WHERE topic_id = $1 AND group_name = $2 AND redrive_at IS NOT NULL AND attempts >= $3`,
    [topicId, group, maxAttempts],
  );
  return rowCount;
}

/** Per group: dead letters waiting and being redriven (dashboard, stats). */
export async function deadLetterCounts(ex: Executor, s: string, topicId: number): Promise<{ group_name: string; dead: string; redriving: string }[]> {
  const { rows } = await ex.query<{ group_name: string; dead: string; redriving: string }>(
    `SELECT group_name, count(*) FILTER (WHERE redrive_at IS NULL)::text AS dead, count(*) FILTER (WHERE redrive_at IS NOT NULL)::text AS redriving
       FROM ${s}.topic_dead_letters WHERE topic_id = $1 GROUP BY group_name ORDER BY group_name`,
    [topicId],
  );
  return rows;
}

/** Reads the whole topic (every key partition) after an id, in delivery order. */
export async function messageReadTopic(ex: Executor, s: string, topicId: number, id: string, limit: number): Promise<MessageRow[]> {
  const { rows } = await ex.query<MessageRow>(
    `SELECT m.id::text AS id, m.publish_id::text AS publish_id, m.kpart, m.key, m.payload::text AS payload,
            (extract(epoch FROM m.published_at) * 1000)::float8 AS published_ms FROM ${s}.topic_messages m
      WHERE m.topic_id = $1 AND m.id > $2::bigint
      ORDER BY m.id LIMIT $3`,
    [topicId, id, limit],
  );
  return rows;
}

/** Key partitions of a group whose cursor lies below retention: messages after `cursor_id` through `dropped_id` were dropped. */
export async function groupBehind(ex: Executor, s: string, topicId: number, group: string): Promise<{ kpart: number; cursor_id: string; dropped_id: string }[]> {
  const { rows } = await ex.query<{ kpart: number; cursor_id: string; dropped_id: string }>(
    `SELECT c.kpart, cur.id::text AS cursor_id, p.dropped_id::text AS dropped_id
       FROM ${s}.topic_group_cursors c JOIN ${s}.topic_partitions p ON p.topic_id = c.topic_id AND p.kpart = c.kpart
      CROSS JOIN LATERAL (SELECT ${cursorOf(s)} AS id) cur
      WHERE c.topic_id = $1 AND c.group_name = $2 AND cur.id < p.dropped_id
      ORDER BY c.kpart`,
    [topicId, group],
  );
  return rows;
}

/** The highest retention mark of the topic over all key partitions (a whole-topic reader below it lost messages). */
export async function topicDroppedMax(ex: Executor, s: string, topicId: number): Promise<string> {
  const { rows } = await ex.query<{ id: string }>(
    `SELECT COALESCE(max(dropped_id), 0)::text AS id FROM ${s}.topic_partitions WHERE topic_id = $1`,
    [topicId],
  );
  return rows[0].id;
}

/** The oldest retained message's id, if any (above every retention mark). */
export async function messageOldest(ex: Executor, s: string, topicId: number): Promise<string | undefined> {
  const { rows } = await ex.query<{ id: string }>(
    `SELECT m.id::text AS id FROM ${s}.topic_messages m
      WHERE m.topic_id = $1 AND m.id > (SELECT COALESCE(max(dropped_id), 0) FROM ${s}.topic_partitions WHERE topic_id = $1)
      ORDER BY m.id LIMIT 1`,
    [topicId],
  );
  return rows[0]?.id;
}

/** Segments with size, oldest first. */
export async function segmentList(ex: Executor, s: string, topicId: number): Promise<{ lower: string; upper: string; table_name: string; bytes: string; marked: boolean }[]> {
  const { rows } = await ex.query<{ lower: string; upper: string; table_name: string; bytes: string; marked: boolean }>(
    `SELECT lower::text AS lower, upper::text AS upper, table_name, marked,
            COALESCE(pg_total_relation_size(to_regclass(quote_ident($2) || '.' || quote_ident(table_name))), 0)::text AS bytes
       FROM ${s}.topic_segments g WHERE g.topic_id = $1 ORDER BY g.lower`,
    [topicId, s.slice(1, -1).replaceAll('""', '"')],
  );
  return rows;
}

/**
 * Retention step 1: in one transaction under the sequencer lock (no run in progress,
 * so every id of a full segment is committed), raises each key partition's retention
 * mark to the newest id the segment holds there, and marks the segment as dropping.
 * From this commit on no claim reads the segment (cursors below a mark are behind)
 * and no one loses a message silently: a group whose cursor is below the mark gets
 * `topic:behind` for exactly (cursor, mark].
 */
export async function segmentMark(tx: Executor, s: string, topicId: number, table: string, lower: string, upper: string): Promise<void> {
  await sequencerLock(tx, s, topicId);
  await tx.query(
    `UPDATE ${s}.topic_partitions p SET dropped_id = d.id
       FROM (SELECT kpart, max(id) AS id FROM ${s}.topic_messages
              WHERE topic_id = $1 AND id >= $2::bigint AND id < $3::bigint GROUP BY kpart) d
      WHERE p.topic_id = $1 AND p.kpart = d.kpart AND d.id > p.dropped_id`,
    [topicId, lower, upper],
  );
  // Every partition's mark reaches at least the segment's end: a cursor there is not
  // behind, one below lost the partition's messages in between (none when the
  // segment held none of the partition: then no message is reported lost).
  await tx.query(`UPDATE ${s}.topic_segments SET marked = true WHERE topic_id = $1 AND lower = $2`, [topicId, lower]);
  void table;
}

/** Retention step 2: DETACH ... CONCURRENTLY (or FINALIZE an interrupted one); outside a transaction. No-op when already detached. */
export async function segmentDetach(ex: Executor, s: string, topicId: number, table: string): Promise<void> {
  const seg = `${s}.${quoteIdent(table)}`;
  const { rows } = await ex.query<{ pending: boolean }>(`SELECT inhdetachpending AS pending FROM pg_inherits WHERE inhrelid = to_regclass($1)`, [seg]);
  if (rows.length === 0) return;
  const how = rows[0].pending ? 'FINALIZE' : 'CONCURRENTLY';
  await ex.query(`ALTER TABLE ${s}.${quoteIdent(topicTableName(topicId))} DETACH PARTITION ${seg} ${how}`);
}

/** Retention step 3: drops the detached table and forgets the segment, in one transaction. */
export async function segmentForget(tx: Executor, s: string, topicId: number, table: string, lower: string): Promise<void> {
  await tx.query(`DROP TABLE IF EXISTS ${s}.${quoteIdent(table)}`);
  await tx.query(`DELETE FROM ${s}.topic_segments WHERE topic_id = $1 AND lower = $2`, [topicId, lower]);
}

/** Newest publish time in a segment's id range (null when it holds nothing). */
export async function segmentNewest(ex: Executor, s: string, topicId: number, lower: string, upper: string): Promise<Date | null> {
  const { rows } = await ex.query<{ t: Date | null }>(
    `SELECT max(published_at) AS t FROM ${s}.topic_messages WHERE topic_id = $1 AND id >= $2::bigint AND id < $3::bigint`,
    [topicId, lower, upper],
  );
  return rows[0].t;
}

/** Per group and key partition: cursor and lag (messages after the cursor). */
export async function groupStats(ex: Executor, s: string, topicId: number): Promise<{ group_name: string; kpart: number; cursor_id: string; lag: string; updated_at: Date }[]> {
  const { rows } = await ex.query<{ group_name: string; kpart: number; cursor_id: string; lag: string; updated_at: Date }>(
    `SELECT c.group_name, c.kpart, cur.cursor_id::text AS cursor_id, cur.updated_at,
            (SELECT count(*) FROM ${s}.topic_messages m WHERE m.topic_id = c.topic_id AND m.kpart = c.kpart
                AND m.id > cur.cursor_id)::text AS lag
       FROM ${s}.topic_group_cursors c
       LEFT JOIN LATERAL (SELECT mv.cursor_id, mv.moved_at FROM ${s}.topic_cursor_moves mv WHERE mv.ref = c.ref ORDER BY mv.seq DESC LIMIT 1) mv ON true
       CROSS JOIN LATERAL (SELECT coalesce(mv.cursor_id, c.cursor_id) AS cursor_id, coalesce(mv.moved_at, c.updated_at) AS updated_at) cur
      WHERE c.topic_id = $1 ORDER BY c.group_name, c.kpart`,
    [topicId],
  );
  return rows;
}

/** Message count, oldest and newest publish time of a topic. */
export async function topicCounts(ex: Executor, s: string, topicId: number): Promise<{ messages: string; oldest: Date | null; newest: Date | null }> {
  const { rows } = await ex.query<{ messages: string; oldest: Date | null; newest: Date | null }>(
    `SELECT count(*)::text AS messages, min(published_at) AS oldest, max(published_at) AS newest FROM ${s}.topic_messages WHERE topic_id = $1`,
    [topicId],
  );
  return rows[0];
}
