/** Publishes without tx share commits (GroupCommit), and each caller keeps its own outcome. */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import pg from 'pg';
import { waitFor, waitForCount } from '../../test/support/wait.js';
import type { Herald } from '../client.js';
import { createHerald } from '../index.js';
import { InvalidOptionError } from '../errors.js';
import { useHerald } from '../../test/support/herald.js';

let herald: Herald;
let url: string;
useHerald({ poolSize: 8, topics: { sequencerBurstGapMs: 60_000 } }, async (d, h) => {
  url = d.url;
  herald = h;
  const ex = h.driver.executor;
  // Which transaction inserted each pending row, and a row the server refuses.
  await ex.query(`CREATE TABLE publish_xacts (publish_id bigint, xid xid8 DEFAULT pg_current_xact_id())`);
  await ex.query(`CREATE FUNCTION publish_probe() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
      IF NEW.payload ? 'poison' THEN RAISE EXCEPTION 'refused by the test' USING ERRCODE = 'P0001'; END IF;
      -- A statement the test holds up (a stalled server or connection): it waits for lock 4242.
      IF NEW.payload ? 'stall' THEN PERFORM pg_advisory_xact_lock(4242); END IF;
      -- The publishing transaction (a message the sequencer moves keeps its xid).
      INSERT INTO publish_xacts (publish_id, xid) VALUES (NEW.publish_id, NEW.xid);
      RETURN NEW;
    END $$`);
  // A publish goes straight into the log, or into topic_pending when the topic's sequencer lock is taken.
  await ex.query(`CREATE TRIGGER publish_probe BEFORE INSERT ON herald.topic_pending FOR EACH ROW EXECUTE FUNCTION publish_probe()`);
  await ex.query(`CREATE TRIGGER publish_probe BEFORE INSERT ON herald.topic_messages FOR EACH ROW EXECUTE FUNCTION publish_probe()`);
});

const ex = () => herald.driver.executor;

async function readAll(topic: string): Promise<{ id: string; payload: { i: number; part?: number } }[]> {
  const r = await herald.topics.read<{ i: number; part?: number }>(topic, { after: 'earliest', limit: 10_000 });
  return r.messages.map((m) => ({ id: m.id, payload: m.payload }));
}

describe('topic publishes without tx: group commit', () => {
  it('concurrent publishes of one process share a commit; each caller gets its own ids, in its own order', async () => {
    await herald.topics.create('grouped', { partitions: 4 });
    const calls = Array.from({ length: 200 }, (_, i) =>
      i % 2 === 0
        ? herald.topics.publish('grouped', { i }, { key: `k${i % 7}` }).then((m) => [m.id])
        : herald.topics.publishMany('grouped', [{ payload: { i, part: 0 }, key: 'same' }, { payload: { i, part: 1 }, key: 'same' }]).then((ms) => ms.map((m) => m.id)),
    );
    const ids = await Promise.all(calls);
    const all = ids.flat();
    assert.equal(all.length, 300);
    assert.equal(new Set(all).size, 300, 'distinct ids');
    const { rows } = await ex().query<{ xacts: number }>(
      `SELECT count(DISTINCT xid::text)::int AS xacts FROM publish_xacts WHERE publish_id = ANY($1::bigint[])`,
      [all],
    );
    assert.ok(rows[0].xacts <= 2, `200 concurrent calls made in one synchronous run committed in ${rows[0].xacts} transactions`);
    // Each caller's ids are the ones of its messages, and a publishMany keeps its order.
    const byId = new Map((await readAll('grouped')).map((m) => [m.id, m.payload]));
    ids.forEach((mine, i) => {
      if (i % 2 === 0) assert.deepEqual(byId.get(mine[0]), { i });
      else assert.deepEqual(mine.map((id) => byId.get(id)), [{ i, part: 0 }, { i, part: 1 }]);
    });
  });

  it('a publish the server refuses fails alone: the others of its group commit', async () => {
    await herald.topics.create('refused', { partitions: 2 });
    const calls = Array.from({ length: 20 }, (_, i) =>
      herald.topics.publish('refused', i === 7 ? { i, poison: true } : { i }).then(
        (m) => ({ ok: true as const, id: m.id, i }),
        (error: unknown) => ({ ok: false as const, error, i }),
      ),
    );
    const results = await Promise.all(calls);
    const failed = results.filter((r) => !r.ok);
    assert.deepEqual(failed.map((r) => r.i), [7]);
    assert.match(String((failed[0] as { error: unknown }).error), /refused by the test/);
    const got = (await readAll('refused')).map((m) => m.payload.i).sort((a, b) => a - b);
    assert.deepEqual(got, Array.from({ length: 20 }, (_, i) => i).filter((i) => i !== 7));
  });

  it('a grouped statement that stalls does not hold the other publishes of the process; it answers its own call when it ends', async () => {
    await herald.topics.create('stalling', { partitions: 2 });
    const locker = new pg.Client({ connectionString: url });
    await locker.connect();
    try {
      await locker.query('SELECT pg_advisory_lock(4242)');
      const stalled = herald.topics.publish('stalling', { stall: true });
      stalled.catch(() => {});
      await waitFor(async () => (await ex().query(`SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND objid = 4242 AND NOT granted`)).rowCount === 1, { what: 'the statement to wait for the lock' });
      let done = 0;
      const others = Array.from({ length: 20 }, (_, i) => herald.topics.publish('stalling', { i }).then((m) => (done++, m)));
      await waitForCount(() => done, 20, { what: 'the publishes behind the stalled statement' });
      await locker.query('SELECT pg_advisory_unlock(4242)');
      const m = await stalled;
      const ids = new Set([m.id, ...(await Promise.all(others)).map((o) => o.id)]);
      assert.equal(ids.size, 21);
      const got = await readAll('stalling');
      assert.equal(got.length, 21);
    } finally {
      await locker.end();
    }
  });

  it('in a burst, the next background sequencer run waits sequencerBurstGapMs after the last began; stop() runs it at once', async () => {
    await herald.topics.create('burst', { partitions: 2 });
    const pending = async () =>
      (await ex().query<{ n: number }>(`SELECT count(*)::int AS n FROM herald.topic_pending p JOIN herald.topics t ON t.id = p.topic_id WHERE t.name = 'burst'`)).rows[0].n;
    // Publishes go through topic_pending (and the sequencer) while another session holds
    // the topic's sequencer lock.
    const locker = new pg.Client({ connectionString: url });
    await locker.connect();
    const id = (await ex().query<{ id: number }>(`SELECT id FROM herald.topics WHERE name = 'burst'`)).rows[0].id;
    const lock = () => locker.query(`SELECT pg_advisory_lock(hashtextextended($1, 0))`, [`pgherald.topic-seq:${id}`]);
    const unlock = () => locker.query(`SELECT pg_advisory_unlock(hashtextextended($1, 0))`, [`pgherald.topic-seq:${id}`]);
    try {
      const burst = (from: number) => Promise.all(Array.from({ length: 40 }, (_, i) => herald.topics.publish('burst', { i: from + i })));
      await lock();
      await burst(0);
      assert.equal(await pending(), 40, 'publishes do not wait for the lock');
      await unlock();
      await herald.topics.backgroundIdle(); // its run moved 40 (>= 16): a burst
      assert.equal(await pending(), 0);
      await lock();
      await burst(40);
      await unlock();
      await herald.topics.backgroundIdle(); // nothing in flight: the next run waits for the gap (60 s here)
      assert.equal(await pending(), 40, 'the second burst waits for the gap');
      await herald.topics.stop();
      assert.equal(await pending(), 0, 'stop() ran the waiting run');
    } finally {
      await locker.end();
    }
    const got = (await readAll('burst')).map((m) => m.payload.i).sort((a, b) => a - b);
    assert.deepEqual(got, Array.from({ length: 80 }, (_, i) => i));
  });

  it('sequencerBurstGapMs is a number from 0 to 60000', () => {
    for (const bad of [-1, 60_001, Number.NaN, '3']) {
      assert.throws(() => createHerald({ connectionString: 'postgres://localhost/none', topics: { sequencerBurstGapMs: bad as number } }), InvalidOptionError);
    }
  });
});
