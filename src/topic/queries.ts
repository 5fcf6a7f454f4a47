/**
 * SQL of topics. Every statement takes the quoted schema `s` (from `schemaIdent`) and
 * `$n` parameters; dynamic identifiers (per-topic tables, segments, sequences) only go
 * through `quoteIdent`.
 *
 * Delivery order is (xid, id). A reader only takes rows with
 * `xid < pg_snapshot_xmin(pg_current_snapshot())`: every transaction below that
 * horizon has ended, so a cursor handed out can never be passed by a row that
 * commits later (trap 6 of DESIGN.md).
 */
import { wakeSql } from '../notifier/pressure.js';
import type { Executor } from '../driver/types.js';
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
  id: string;
  xid: string;
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
  const { rows } = await ex.query<{ v: string }>(`SELECT last_value::text AS v FROM ${s}.${quoteIdent(topicSequenceName(topicId))}`);
  return BigInt(rows[0].v);
}

/**
 * Appends messages and sends one coalesced wake-up (channel `channel`, payload the
 * topic name; none when `channel` is null: wake-ups paused) in the same statement. `kpart` is the key's hash modulo the topic's
 * partitions; a message without key goes round-robin by id. Ids come from the
 * topic's sequence in array order.
 */
export async function messageAppend(
  ex: Executor,
  s: string,
  topic: TopicRow,
  keys: (string | null)[],
  payloads: string[],
  channel: string | null,
): Promise<{ id: string; xid: string }[]> {
  const { rows } = await ex.query<{ id: string; xid: string }>(
    `WITH src AS (
       SELECT nextval($2::regclass) AS id, u.k, u.p
         FROM unnest($4::text[], $5::text[]) WITH ORDINALITY AS u(k, p, ord)
     ), ins AS (
       INSERT INTO ${s}.topic_messages (topic_id, id, kpart, key, payload)
       SELECT $1, src.id,
              CASE WHEN src.k IS NULL THEN (src.id % $3)::int
                   ELSE (((hashtextextended(src.k, 0) % $3) + $3) % $3)::int END,
              src.k, src.p::jsonb
         FROM src
       RETURNING id, xid
     ), wake AS (SELECT ${wakeSql('$6', '$7')})
     -- ORDER BY the numeric column: an output alias of the same name would sort as text.
     SELECT ins.id::text AS id, ins.xid::text AS xid FROM ins, wake ORDER BY ins.id::bigint`,
    [topic.id, `${s}.${quoteIdent(topicSequenceName(topic.id))}`, topic.partitions, keys, payloads, channel, topic.name],
  );
  return rows;
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
       INSERT INTO ${s}.topic_group_cursors (topic_id, group_name, kpart, cursor_xid, cursor_id)
       SELECT $1, g.name, p.kpart, st.x, st.i FROM g, ${s}.topic_partitions p, LATERAL (${startCursorSql(s)}) st
        WHERE p.topic_id = $1
     )
     SELECT count(*) > 0 AS created FROM g`,
    [topicId, group, start instanceof Date ? 'time' : start, start instanceof Date ? start : null],
  );
  return rows[0].created;
}

/**
 * The cursor (x, i) a key partition `p` starts from: everything at or below it counts
 * as consumed. earliest: the partition's retention mark; latest: after the newest
 * committed message and at least the current horizon (a transaction still open may
 * come or not: it committed neither before nor after); time: just before the first
 * retained message published at or after $4 (as latest where there is none).
 */
function startCursorSql(s: string): string {
  // "after the newest committed message, at least the horizon" is 'latest', and the
  // fallback of 'time' for a partition with nothing published since.
  const latestX = `CASE WHEN l.xid IS NULL OR l.xid < h.x THEN h.x ELSE l.xid END`;
  const latestI = `CASE WHEN l.xid IS NULL OR l.xid < h.x THEN 0::bigint ELSE l.id END`;
  return `SELECT CASE $3 WHEN 'earliest' THEN p.dropped_xid
                         WHEN 'latest' THEN ${latestX}
                         ELSE COALESCE(f.xid, ${latestX}) END AS x,
                 CASE $3 WHEN 'earliest' THEN p.dropped_id
                         WHEN 'latest' THEN ${latestI}
                         ELSE COALESCE(f.id - 1, ${latestI}) END AS i
            FROM (SELECT pg_snapshot_xmin(pg_current_snapshot()) AS x) h
            LEFT JOIN LATERAL (
              SELECT m.xid, m.id FROM ${s}.topic_messages m
               WHERE $3 = 'time' AND m.topic_id = p.topic_id AND m.kpart = p.kpart AND m.published_at >= $4::timestamptz
               ORDER BY m.xid, m.id LIMIT 1) f ON true
            LEFT JOIN LATERAL (
              SELECT m.xid, m.id FROM ${s}.topic_messages m
               WHERE $3 <> 'earliest' AND m.topic_id = p.topic_id AND m.kpart = p.kpart
               ORDER BY m.xid DESC, m.id DESC LIMIT 1) l ON true`;
}

/** The position after the newest committed message of a topic, at least the current horizon. */
export async function topicLatest(ex: Executor, s: string, topicId: number): Promise<{ xid: string; id: string }> {
  const { rows } = await ex.query<{ xid: string; id: string }>(
    `SELECT (CASE WHEN l.xid IS NULL OR l.xid < h.x THEN h.x ELSE l.xid END)::text AS xid,
            (CASE WHEN l.xid IS NULL OR l.xid < h.x THEN 0 ELSE l.id END)::text AS id
       FROM (SELECT pg_snapshot_xmin(pg_current_snapshot()) AS x) h
       LEFT JOIN LATERAL (SELECT m.xid, m.id FROM ${s}.topic_messages m WHERE m.topic_id = $1
                           ORDER BY m.xid DESC, m.id DESC LIMIT 1) l ON true`,
    [topicId],
  );
  return rows[0];
}

/** Moves every cursor of a group (replay or skip). Returns the number of cursors moved. */
export async function groupReset(ex: Executor, s: string, topicId: number, group: string, to: 'earliest' | 'latest' | Date): Promise<number> {
  const { rowCount } = await ex.query(
    `UPDATE ${s}.topic_group_cursors c SET cursor_xid = st.x, cursor_id = st.i, updated_at = now()
       FROM ${s}.topic_partitions p, LATERAL (${startCursorSql(s)}) st
      WHERE c.topic_id = $1 AND c.group_name = $2 AND p.topic_id = c.topic_id AND p.kpart = c.kpart`,
    [topicId, group, to instanceof Date ? 'time' : to, to instanceof Date ? to : null],
  );
  return rowCount;
}

/** Moves every cursor of a group to a position (xid, id): delivery resumes after it. */
export async function groupResetTo(ex: Executor, s: string, topicId: number, group: string, xid: string, id: string): Promise<number> {
  const { rowCount } = await ex.query(
    `UPDATE ${s}.topic_group_cursors SET cursor_xid = $3::xid8, cursor_id = $4::bigint, updated_at = now()
      WHERE topic_id = $1 AND group_name = $2`,
    [topicId, group, xid, id],
  );
  return rowCount;
}

/**
 * Claims one key partition of the group and reads its next batch, in one round trip.
 * The claim locks a cursor that has deliverable messages and is not behind retention,
 * with FOR UPDATE SKIP LOCKED inside the CTE (LIMIT 1): the consumers of a group share
 * the partitions without waiting on each other, and the lock, held until the batch
 * commits, keeps one key's messages in order. In READ COMMITTED the locked row is the
 * current version, so a cursor another consumer just advanced is seen. The rotation
 * ($3) spreads consumers over partitions. Returns the cursor's partition and up to $5
 * messages after it, below the horizon. Both parts share the statement's snapshot; rows below its xmin are final,
 * so reading with it never hands out a row out of order.
 */
export async function cursorClaimRead(
  ex: Executor,
  s: string,
  topicId: number,
  group: string,
  rotate: number,
  partitions: number,
  limit: number,
): Promise<{ kpart: number; rows: MessageRow[] } | undefined> {
  const { rows } = await ex.query<MessageRow & { ckpart: number }>(
    `WITH c AS (
       SELECT c.kpart, c.cursor_xid, c.cursor_id
         FROM ${s}.topic_group_cursors c
         JOIN ${s}.topic_partitions p ON p.topic_id = c.topic_id AND p.kpart = c.kpart
        WHERE c.topic_id = $1 AND c.group_name = $2
          AND (c.cursor_xid, c.cursor_id) >= (p.dropped_xid, p.dropped_id)
          AND EXISTS (SELECT 1 FROM ${s}.topic_messages m
                       WHERE m.topic_id = $1 AND m.kpart = c.kpart
                         AND (m.xid, m.id) > (c.cursor_xid, c.cursor_id)
                         AND m.xid < pg_snapshot_xmin(pg_current_snapshot()))
        ORDER BY (c.kpart + $4 - $3) % $4
        LIMIT 1
        FOR UPDATE OF c SKIP LOCKED
     )
     SELECT c.kpart AS ckpart, m.id::text AS id, m.xid::text AS xid, m.kpart, m.key, m.payload::text AS payload,
            (extract(epoch FROM m.published_at) * 1000)::float8 AS published_ms
       FROM c LEFT JOIN LATERAL (
         SELECT m.* FROM ${s}.topic_messages m
          WHERE m.topic_id = $1 AND m.kpart = c.kpart AND (m.xid, m.id) > (c.cursor_xid, c.cursor_id)
            AND m.xid < pg_snapshot_xmin(pg_current_snapshot())
          ORDER BY m.xid, m.id LIMIT $5) m ON true
      ORDER BY m.xid, m.id`,
    [topicId, group, rotate, partitions, limit],
  );
  if (rows.length === 0) return undefined;
  return { kpart: rows[0].ckpart, rows: rows[0].id === null ? [] : rows };
}

/** Reads the whole topic (every key partition) after a position, below the visibility horizon. */
export async function messageReadTopic(ex: Executor, s: string, topicId: number, xid: string, id: string, limit: number): Promise<MessageRow[]> {
  const { rows } = await ex.query<MessageRow>(
    `SELECT m.id::text AS id, m.xid::text AS xid, m.kpart, m.key, m.payload::text AS payload,
            (extract(epoch FROM m.published_at) * 1000)::float8 AS published_ms FROM ${s}.topic_messages m
      WHERE m.topic_id = $1 AND (m.xid, m.id) > ($2::xid8, $3::bigint)
        AND m.xid < pg_snapshot_xmin(pg_current_snapshot())
      ORDER BY m.xid, m.id LIMIT $4`,
    [topicId, xid, id, limit],
  );
  return rows;
}

/** Advances a claimed cursor (in the batch's transaction). */
export async function cursorAdvance(ex: Executor, s: string, topicId: number, group: string, kpart: number, xid: string, id: string): Promise<void> {
  await ex.query(
    `UPDATE ${s}.topic_group_cursors SET cursor_xid = $4::xid8, cursor_id = $5::bigint, updated_at = now()
      WHERE topic_id = $1 AND group_name = $2 AND kpart = $3`,
    [topicId, group, kpart, xid, id],
  );
}

/** True when the topic has rows that are not yet below the horizon (a transaction still open). */
export async function messagePendingHorizon(ex: Executor, s: string, topicId: number): Promise<boolean> {
  const { rows } = await ex.query<{ p: boolean }>(
    `SELECT EXISTS (SELECT 1 FROM ${s}.topic_messages WHERE topic_id = $1 AND xid >= pg_snapshot_xmin(pg_current_snapshot())) AS p`,
    [topicId],
  );
  return rows[0].p;
}

/** Key partitions of a group whose cursor lies below retention, with the oldest retained position. */
export async function groupBehind(ex: Executor, s: string, topicId: number, group: string): Promise<{ kpart: number; cursor_xid: string; cursor_id: string; dropped_xid: string; dropped_id: string }[]> {
  const { rows } = await ex.query<{ kpart: number; cursor_xid: string; cursor_id: string; dropped_xid: string; dropped_id: string }>(
    `SELECT c.kpart, c.cursor_xid::text AS cursor_xid, c.cursor_id::text AS cursor_id, p.dropped_xid::text AS dropped_xid, p.dropped_id::text AS dropped_id
       FROM ${s}.topic_group_cursors c JOIN ${s}.topic_partitions p ON p.topic_id = c.topic_id AND p.kpart = c.kpart
      WHERE c.topic_id = $1 AND c.group_name = $2 AND (c.cursor_xid, c.cursor_id) < (p.dropped_xid, p.dropped_id)
      ORDER BY c.kpart`,
    [topicId, group],
  );
  return rows;
}

/** The highest retention mark of the topic over all key partitions (a whole-topic reader below it lost messages). */
export async function topicDroppedMax(ex: Executor, s: string, topicId: number): Promise<{ xid: string; id: string }> {
  const { rows } = await ex.query<{ xid: string; id: string }>(
    `SELECT p.dropped_xid::text AS xid, p.dropped_id::text AS id FROM ${s}.topic_partitions p WHERE p.topic_id = $1
      ORDER BY p.dropped_xid DESC, p.dropped_id DESC LIMIT 1`,
    [topicId],
  );
  return rows[0] ?? { xid: '0', id: '0' };
}

/** The oldest retained message's position, if any. */
export async function messageOldest(ex: Executor, s: string, topicId: number): Promise<{ xid: string; id: string } | undefined> {
  const { rows } = await ex.query<{ xid: string; id: string }>(
    `SELECT m.xid::text AS xid, m.id::text AS id FROM ${s}.topic_messages m WHERE m.topic_id = $1 ORDER BY m.xid, m.id LIMIT 1`,
    [topicId],
  );
  return rows[0];
}

/** The xid of a retained message by id (to turn an id into a position). */
export async function messageXid(ex: Executor, s: string, topicId: number, id: string): Promise<string | undefined> {
  const { rows } = await ex.query<{ xid: string }>(`SELECT xid::text AS xid FROM ${s}.topic_messages WHERE topic_id = $1 AND id = $2`, [topicId, id]);
  return rows[0]?.xid;
}

/** Segments with size and newest publish time, oldest first. */
export async function segmentList(ex: Executor, s: string, topicId: number): Promise<{ lower: string; upper: string; table_name: string; bytes: string }[]> {
  const { rows } = await ex.query<{ lower: string; upper: string; table_name: string; bytes: string }>(
    `SELECT lower::text AS lower, upper::text AS upper, table_name,
            COALESCE(pg_total_relation_size(to_regclass(quote_ident($2) || '.' || quote_ident(table_name))), 0)::text AS bytes
       FROM ${s}.topic_segments g WHERE g.topic_id = $1 ORDER BY g.lower`,
    [topicId, s.slice(1, -1).replaceAll('""', '"')],
  );
  return rows;
}

/** Newest publish time in one segment (null when empty). */
export async function segmentNewest(ex: Executor, s: string, table: string): Promise<Date | null> {
  const { rows } = await ex.query<{ t: Date | null }>(`SELECT max(published_at) AS t FROM ${s}.${quoteIdent(table)}`);
  return rows[0].t;
}

/**
 * Drops one segment: DETACH ... CONCURRENTLY (PG 14+; waits for every transaction that
 * may still write into it, without blocking publishers), then, in one transaction,
 * raises each key partition's retention mark to the newest (xid, id) the segment held
 * and drops the table. Must run outside a transaction block (`ex` is the pool).
 */
export async function segmentDrop(ex: Executor, tx: (fn: (t: Executor) => Promise<void>) => Promise<void>, s: string, topicId: number, table: string, lower: string): Promise<void> {
  const seg = `${s}.${quoteIdent(table)}`;
  const { rows } = await ex.query<{ pending: boolean }>(`SELECT inhdetachpending AS pending FROM pg_inherits WHERE inhrelid = to_regclass($1)`, [seg]);
  if (rows.length > 0) {
    // An interrupted DETACH ... CONCURRENTLY leaves the partition "detach pending": finish it.
    const how = rows[0].pending ? 'FINALIZE' : 'CONCURRENTLY';
    await ex.query(`ALTER TABLE ${s}.${quoteIdent(topicTableName(topicId))} DETACH PARTITION ${seg} ${how}`);
  }
  await tx(async (t) => {
    await t.query(
      `UPDATE ${s}.topic_partitions p SET dropped_xid = d.xid, dropped_id = d.id
         FROM (SELECT DISTINCT ON (kpart) kpart, xid, id FROM ${seg} ORDER BY kpart, xid DESC, id DESC) d
        WHERE p.topic_id = $1 AND p.kpart = d.kpart AND (d.xid, d.id) > (p.dropped_xid, p.dropped_id)`,
      [topicId],
    );
    await t.query(`DROP TABLE ${seg}`);
    await t.query(`DELETE FROM ${s}.topic_segments WHERE topic_id = $1 AND lower = $2`, [topicId, lower]);
  });
}

/** Per group and key partition: cursor and lag (messages after the cursor). */
export async function groupStats(ex: Executor, s: string, topicId: number): Promise<{ group_name: string; kpart: number; cursor_xid: string; cursor_id: string; lag: string; updated_at: Date }[]> {
  const { rows } = await ex.query<{ group_name: string; kpart: number; cursor_xid: string; cursor_id: string; lag: string; updated_at: Date }>(
    `SELECT c.group_name, c.kpart, c.cursor_xid::text AS cursor_xid, c.cursor_id::text AS cursor_id, c.updated_at,
            (SELECT count(*) FROM ${s}.topic_messages m WHERE m.topic_id = c.topic_id AND m.kpart = c.kpart
                AND (m.xid, m.id) > (c.cursor_xid, c.cursor_id))::text AS lag
       FROM ${s}.topic_group_cursors c WHERE c.topic_id = $1 ORDER BY c.group_name, c.kpart`,
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
