/** Topics over both driver adapters (pg and postgres.js): publish in a transaction, consume, replay. */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { Herald } from '../client.js';
import { freshDatabase, type TestDatabase } from '../../test/support/db.js';
import { DRIVERS } from '../../test/support/drivers.js';
import { waitFor } from '../../test/support/wait.js';

let db: TestDatabase;
before(async () => {
  db = await freshDatabase({ isolated: true }); // topics: see freshDatabase
});
after(async () => {
  await db.drop();
});

for (const d of DRIVERS) {
  describe(`topics over ${d.name}`, () => {
    it('publishes in a transaction (keys and null keys), consumes with the batch tx, replays', async () => {
      const driver = d.make(db.url);
      const herald = new Herald({ driver });
      const topic = `drv-${d.name}`;
      try {
        await herald.driver.executor.query(`CREATE TABLE IF NOT EXISTS "sink_${d.name}" (id text PRIMARY KEY, body jsonb NOT NULL)`);
        await herald.transaction(async (tx) => {
          await herald.topics.publishMany(topic, [{ payload: { a: 1 }, key: 'k' }, { payload: [1, 'two'] }, { payload: 'ü "quoted"', key: null }], { tx });
        });
        await assert.rejects(
          herald.transaction(async (tx) => {
            await herald.topics.publish(topic, 'rolled back', { tx });
            throw new Error('rollback');
          }),
          /rollback/,
        );
        // $2::text::jsonb: postgres.js JSON-encodes a parameter the server types as jsonb (a string would be stored as a JSON string).
        const c = herald.topics.consumer(topic, 'g', async ({ messages, tx }) => {
          for (const m of messages) await tx.query(`INSERT INTO "sink_${d.name}" (id, body) VALUES ($1, $2::text::jsonb) ON CONFLICT (id) DO NOTHING`, [m.id, JSON.stringify(m.payload)]);
        });
        await c.start();
        await waitFor(() => c.consumed === 3);
        const { rows } = await herald.driver.executor.query<{ body: string }>(`SELECT body::text AS body FROM "sink_${d.name}" ORDER BY id::bigint`);
        assert.deepEqual(rows.map((r) => JSON.parse(r.body)), [{ a: 1 }, [1, 'two'], 'ü "quoted"']);
        await herald.topics.resetGroup(topic, 'g', 'earliest');
        await waitFor(() => c.consumed === 6);
        const r = await herald.topics.read(topic);
        assert.equal(r.messages.length, 3);
        assert.ok(r.messages[0].publishedAt instanceof Date);
        assert.equal(r.messages[0].key, 'k');
        assert.equal(r.messages[1].key, null);
        await c.stop();
      } finally {
        await herald.close();
        await driver.end();
      }
    });
  });
}
