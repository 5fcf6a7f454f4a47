-- 013 topic dead letters: a message whose handler failed maxAttempts times leaves the
-- group's way (see src/topic/README.md, "Poison messages").
--
-- One attempt row per (group, key partition): the message the group is trying there
-- (`message_id`, the log id), how many attempts began on it, and `through_id`, the last
-- id of the batch that failed first (up to it, batches hold one message so a failure
-- names its message). The count is written and committed before the handler runs, in
-- its own statement: a handler that kills its process still uses up an attempt.
CREATE TABLE IF NOT EXISTS :schema.topic_attempts (
  topic_id int NOT NULL,
  group_name text NOT NULL,
  kpart int NOT NULL,
  message_id bigint NOT NULL,
  through_id bigint NOT NULL,
  attempts int NOT NULL,
  last_error text,
  updated_at timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (topic_id, group_name, kpart),
  FOREIGN KEY (topic_id, group_name) REFERENCES :schema.topic_groups (topic_id, name) ON DELETE CASCADE
);

-- A group's dead letters: a copy of the message (retention may drop the log segment),
-- with the attempts and the last error. `redrive_at` set: handed to the group's
-- consumers again (then deleted when a batch with it commits).
CREATE TABLE IF NOT EXISTS :schema.topic_dead_letters (
  topic_id int NOT NULL,
  group_name text NOT NULL,
  id bigint NOT NULL,
  publish_id bigint,
  kpart int NOT NULL,
  key text,
  payload jsonb NOT NULL,
  published_at timestamptz NOT NULL,
  attempts int NOT NULL,
  last_error text,
  dead_at timestamptz NOT NULL DEFAULT now(),
  redrive_at timestamptz,
  PRIMARY KEY (topic_id, group_name, id),
  FOREIGN KEY (topic_id, group_name) REFERENCES :schema.topic_groups (topic_id, name) ON DELETE CASCADE
);
CREATE INDEX IF NOT EXISTS topic_dead_letters_redrive ON :schema.topic_dead_letters (topic_id, group_name, id) WHERE redrive_at IS NOT NULL;
