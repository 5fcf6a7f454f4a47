-- 001 foundation: the schema's own bookkeeping.
-- :schema is replaced by the configured schema name, validated and quoted.
CREATE TABLE IF NOT EXISTS :schema.meta (
  key text PRIMARY KEY,
  value jsonb NOT NULL,
  updated_at timestamptz NOT NULL DEFAULT now()
);
