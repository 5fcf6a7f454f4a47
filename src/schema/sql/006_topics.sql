-- 006 topics: durable fan-out with consumer groups and replay (see src/topic/README.md).
--
-- The log: one row per message, partitioned by topic (LIST), each topic's table
-- partitioned again by id range into segments (RANGE). Retention drops whole
-- segments, never DELETEs rows. Segments are created ahead by the library
-- (CREATE TABLE + ATTACH PARTITION, which does not block publishers).
--
-- Delivery order is (xid, id): `xid` is the publishing transaction's id
-- (pg_current_xact_id()), `id` a global sequence. Readers only take rows whose xid
-- is below pg_snapshot_xmin(pg_current_snapshot()): every transaction below that
-- horizon has ended, so no row can later appear before a cursor that was handed out
-- (serial ids alone do not commit in order).
CREATE SEQUENCE IF NOT EXISTS :schema.topic_message_id_seq AS bigint;

CREATE TABLE IF NOT EXISTS :schema.topics (
  id int GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  name text NOT NULL UNIQUE CHECK (length(name) BETWEEN 1 AND 200),
  partitions int NOT NULL CHECK (partitions BETWEEN 1 AND 1024),
  segment_size bigint NOT NULL CHECK (segment_size >= 1),
  retention_ms bigint CHECK (retention_ms >= 0),
  retention_bytes bigint CHECK (retention_bytes >= 0),
  created_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS :schema.topic_messages (
  topic_id int NOT NULL,
  id bigint NOT NULL,
  xid xid8 NOT NULL DEFAULT pg_current_xact_id(),
  kpart int NOT NULL,
  key text,
  payload jsonb NOT NULL,
  published_at timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (topic_id, id)
) PARTITION BY LIST (topic_id);

-- A group partition reads its key partition in delivery order.
CREATE INDEX IF NOT EXISTS topic_messages_kpart_order ON :schema.topic_messages (topic_id, kpart, xid, id);
-- Whole-topic readers (tail, SSE) and the horizon check read in delivery order.
CREATE INDEX IF NOT EXISTS topic_messages_order ON :schema.topic_messages (topic_id, xid, id);

-- Segments of each topic's log: [lower, upper) id ranges.
CREATE TABLE IF NOT EXISTS :schema.topic_segments (
  topic_id int NOT NULL REFERENCES :schema.topics (id) ON DELETE CASCADE,
  lower bigint NOT NULL,
  upper bigint NOT NULL,
  table_name text NOT NULL,
  PRIMARY KEY (topic_id, lower)
);

-- Per key partition: the last (xid, id) that retention dropped. A group cursor below
-- it has lost messages: the group is behind retention.
CREATE TABLE IF NOT EXISTS :schema.topic_partitions (
  topic_id int NOT NULL REFERENCES :schema.topics (id) ON DELETE CASCADE,
  kpart int NOT NULL,
  dropped_xid xid8 NOT NULL DEFAULT '0'::xid8,
  dropped_id bigint NOT NULL DEFAULT 0,
  PRIMARY KEY (topic_id, kpart)
);

CREATE TABLE IF NOT EXISTS :schema.topic_groups (
  topic_id int NOT NULL REFERENCES :schema.topics (id) ON DELETE CASCADE,
  name text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
  created_at timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (topic_id, name)
);

-- One committed cursor per (group, key partition): the (xid, id) of the last message
-- the group consumed there. Consumers lock the row (FOR UPDATE SKIP LOCKED) for the
-- length of one batch transaction and advance it in that same transaction.
CREATE TABLE IF NOT EXISTS :schema.topic_group_cursors (
  topic_id int NOT NULL,
  group_name text NOT NULL,
  kpart int NOT NULL,
  cursor_xid xid8 NOT NULL,
  cursor_id bigint NOT NULL,
  updated_at timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (topic_id, group_name, kpart),
  FOREIGN KEY (topic_id, group_name) REFERENCES :schema.topic_groups (topic_id, name) ON DELETE CASCADE
);
