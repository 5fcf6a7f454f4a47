/**
 * Migration 012 on a database written by the previous design: positions become ids,
 * each group's cursor moves to just below the first message it had not consumed (so
 * nothing is skipped; consumed messages with a higher id come once more), and
 * publishing and consuming work on the upgraded topic.
 */
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { createHerald } from '../index.js';
import { pgDriver } from '../driver/pg.js';
import { migrate } from '../schema/migrator.js';
import { freshDatabase, type TestDatabase } from '../../test/support/db.js';
import { waitFor } from '../../test/support/wait.js';

let db: TestDatabase;
before(async () => {
  db = await freshDatabase({ migrated: false });
});
after(async () => db.drop());

test('012 converts (xid, id) cursors to ids without skipping; the topic goes on', async () => {
  const d = pgDriver({ connectionString: db.url, max: 1 });
  try {
    await migrate(d, 'herald', { to: 9 });
    // A topic as the previous version left it: ids committed out of order (xid order
    // differs from id order), two groups at different (xid, id) cursors.
    await d.executor.query(`
      INSERT INTO herald.topics (name, partitions, segment_size) VALUES ('old', 1, 1000);
      CREATE SEQUENCE herald.topic_seq_1 AS bigint;
      SELECT setval('herald.topic_seq_1', 3);
      CREATE TABLE herald.topic_messages_1 (LIKE herald.topic_messages INCLUDING DEFAULTS) PARTITION BY RANGE (id);
      ALTER TABLE herald.topic_messages ATTACH PARTITION herald.topic_messages_1 FOR VALUES IN (1);
      CREATE TABLE herald.topic_messages_1_s1 (LIKE herald.topic_messages INCLUDING DEFAULTS);
      ALTER TABLE herald.topic_messages_1 ATTACH PARTITION herald.topic_messages_1_s1 FOR VALUES FROM (1) TO (1001);
      INSERT INTO herald.topic_segments (topic_id, lower, upper, table_name) VALUES (1, 1, 1001, 'topic_messages_1_s1');
      INSERT INTO herald.topic_partitions (topic_id, kpart) VALUES (1, 0);
      INSERT INTO herald.topic_messages (topic_id, id, xid, kpart, payload) VALUES
        (1, 2, '100', 0, '"b"'), (1, 1, '101', 0, '"a"'), (1, 3, '102', 0, '"c"');
      INSERT INTO herald.topic_groups (topic_id, name) VALUES (1, 'ahead'), (1, 'behind');
      -- ahead consumed (100,2) and (101,1); behind consumed only (100,2).
      INSERT INTO herald.topic_group_cursors (topic_id, group_name, kpart, cursor_xid, cursor_id) VALUES
        (1, 'ahead', 0, '101', 1), (1, 'behind', 0, '100', 2);
    `);
    await migrate(d, 'herald');
    const { rows } = await d.executor.query<{ group_name: string; cursor_id: string }>('SELECT group_name, cursor_id::text FROM herald.topic_group_cursors ORDER BY group_name');
    assert.deepEqual(rows, [
      { group_name: 'ahead', cursor_id: '2' }, // next: id 3
      { group_name: 'behind', cursor_id: '0' }, // next: ids 1, 2 (again), 3
    ]);
  } finally {
    await d.end();
  }
  const herald = createHerald({ connectionString: db.url });
  try {
    const p = await herald.topics.publish('old', 'd', { waitForPosition: true });
    assert.equal(p.id, '4', 'publish ids continue after the old ids');
    assert.ok(BigInt(p.position!) > 3n);
    const seen: Record<string, string[]> = { ahead: [], behind: [] };
    const cs = ['ahead', 'behind'].map((g) => herald.topics.consumer<string>('old', g, ({ messages }) => void seen[g].push(...messages.map((m) => m.payload))));
    for (const c of cs) await c.start();
    await waitFor(() => seen.ahead.length === 2 && seen.behind.length === 4);
    assert.deepEqual(seen.ahead, ['c', 'd']);
    assert.deepEqual(seen.behind, ['a', 'b', 'c', 'd']);
    for (const c of cs) await c.stop();
  } finally {
    await herald.close();
  }
});
