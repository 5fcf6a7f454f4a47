/**
 * Group commit of sends without `tx`, the consumer's take discipline (one take per
 * wake-up, cooldown after a partial take), and prepared statements (also through a
 * transaction-mode PgBouncer that cannot keep them).
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import pg from 'pg';
import { createHerald, type Herald } from '../client.js';
import type { TestDatabase } from '../../test/support/db.js';
import { useHerald } from '../../test/support/herald.js';
import { pgbouncerBinary, startPgBouncer } from '../../test/support/pgbouncer.js';
import { waitFor } from '../../test/support/wait.js';

let db: TestDatabase;
let herald: Herald;
let pool: pg.Pool;
useHerald({ poolSize: 8 }, (d, h) => {
  db = d;
  herald = h;
  pool = new pg.Pool({ connectionString: db.url, max: 2 });
  pool.on('error', () => {});
  return () => pool.end();
});

let n = 0;
const dest = (name: string) => `${name}-${++n}`;

/** Transactions that wrote the rows of a destination (rows of one statement share an xmin). */
async function writers(to: string): Promise<number> {
  const { rows } = await pool.query(`SELECT count(DISTINCT xmin::text)::int AS c FROM herald.mailbox_messages WHERE destination = $1`, [to]);
  return rows[0].c;
}

describe('group commit of sends without tx', () => {
  it('concurrent sends share one statement, and each caller gets its own created answer', async () => {
    const to = dest('group');
    await herald.mailbox.send({ to, payload: 'before', id: 'grp-old' });
    const calls = [
      ...Array.from({ length: 10 }, (_, i) => herald.mailbox.send({ to, payload: `p${i}`, id: `grp-${i}` })),
      herald.mailbox.send({ to, payload: 'dup a', id: 'grp-dup' }),
      herald.mailbox.send({ to, payload: 'dup b', id: 'grp-dup' }),
      herald.mailbox.send({ to, payload: 'again', id: 'grp-old' }),
      herald.mailbox.sendMany([
        { to, payload: 'm1', id: 'grp-m1' },
        { to, payload: 'm2', id: 'grp-3' },
      ]),
    ];
    const results = await Promise.all(calls);
    assert.deepEqual(results.slice(0, 10), Array.from({ length: 10 }, (_, i) => ({ id: `grp-${i}`, created: true })));
    // Two sends of one id in one group: the first creates it, the second is told it existed.
    assert.deepEqual(results[10], { id: 'grp-dup', created: true });
    assert.deepEqual(results[11], { id: 'grp-dup', created: false });
    assert.deepEqual(results[12], { id: 'grp-old', created: false });
    assert.deepEqual(results[13], [
      { id: 'grp-m1', created: true },
      { id: 'grp-3', created: false },
    ]);
    // 'grp-old' was written alone; everything else by one statement.
    assert.equal(await writers(to), 2);
    const { rows } = await pool.query(`SELECT payload FROM herald.mailbox_messages WHERE id = 'grp-dup'`);
    assert.deepEqual(rows, [{ payload: 'dup a' }]);
  });

  it('a send the server rejects does not sink the others of its group', async () => {
    const to = dest('poison');
    // A real statement failure for one row only: a check constraint of the application.
    await pool.query(`ALTER TABLE herald.mailbox_messages ADD CONSTRAINT test_no_poison CHECK (payload <> 'poison')`);
    try {
      const calls = Array.from({ length: 8 }, (_, i) => herald.mailbox.send({ to, payload: i === 3 ? 'poison' : `ok${i}`, id: `poison-${i}` }));
      const settled = await Promise.allSettled(calls);
      for (const [i, s] of settled.entries()) {
        if (i === 3) {
          assert.equal(s.status, 'rejected');
          assert.equal((s as PromiseRejectedResult).reason.code, '23514');
        } else {
          assert.deepEqual(s, { status: 'fulfilled', value: { id: `poison-${i}`, created: true } });
        }
      }
      const { rows } = await pool.query(`SELECT id FROM herald.mailbox_messages WHERE destination = $1 ORDER BY id`, [to]);
      assert.deepEqual(
        rows.map((r) => r.id),
        [0, 1, 2, 4, 5, 6, 7].map((i) => `poison-${i}`),
      );
    } finally {
      await pool.query(`ALTER TABLE herald.mailbox_messages DROP CONSTRAINT test_no_poison`);
    }
  });

  it('sendGroupMaxMessages bounds a group but never splits a sendMany; 1 turns grouping off', async () => {
    const small = createHerald({ connectionString: db.url, poolSize: 4, mailbox: { sendGroupMaxMessages: 3 } });
    const single = createHerald({ connectionString: db.url, poolSize: 4, mailbox: { sendGroupMaxMessages: 1 } });
    try {
      const to = dest('bounded');
      const many = Array.from({ length: 5 }, (_, i) => ({ to, payload: `m${i}`, id: `bounded-m${i}` }));
      await Promise.all([small.mailbox.sendMany(many), ...Array.from({ length: 4 }, (_, i) => small.mailbox.send({ to, payload: 's', id: `bounded-s${i}` }))]);
      const { rows } = await pool.query(`SELECT count(DISTINCT xmin::text)::int AS c FROM herald.mailbox_messages WHERE id LIKE 'bounded-m%'`);
      assert.equal(rows[0].c, 1);
      // 5 (alone: over the bound) + 3 + 1
      assert.equal(await writers(to), 3);

      const to2 = dest('ungrouped');
      await Promise.all(Array.from({ length: 4 }, (_, i) => single.mailbox.send({ to: to2, payload: 's', id: `ungrouped-${i}` })));
      assert.equal(await writers(to2), 4);
    } finally {
      await small.close();
      await single.close();
    }
  });

  it('a grouped send wakes a waiting receiver once per statement, naming the destination', async () => {
    const to = dest('wake');
    const sub = herald.listen(herald.mailbox.channel);
    await sub.established;
    try {
      const waiting = herald.mailbox.receive(to, { timeoutMs: 10_000 });
      await Promise.all(Array.from({ length: 5 }, (_, i) => herald.mailbox.send({ to, payload: `w${i}` })));
      assert.equal((await waiting)?.payload, 'w0');
      const note = await sub.wait({ timeoutMs: 10_000 });
      assert.equal(note?.payload, to);
    } finally {
      await sub.close();
    }
  });

  it('a send waiting on a row lock of an open transaction does not hold the other sends back', async () => {
    const to = dest('stall');
    const client = await pool.connect();
    try {
      await client.query('BEGIN');
      await herald.mailbox.send({ to, payload: 'in tx', id: 'stall-x' }, { tx: client });
      const blocked = herald.mailbox.send({ to, payload: 'outside', id: 'stall-x' }); // waits for that transaction
      // Sent after it, answered while the transaction is still open.
      assert.deepEqual(await herald.mailbox.send({ to, payload: 'other', id: 'stall-y' }), { id: 'stall-y', created: true });
      await client.query('ROLLBACK');
      assert.deepEqual(await blocked, { id: 'stall-x', created: true });
    } finally {
      client.release();
    }
    const { rows } = await pool.query(`SELECT id, payload FROM herald.mailbox_messages WHERE destination = $1 ORDER BY id`, [to]);
    assert.deepEqual(rows, [
      { id: 'stall-x', payload: 'outside' },
      { id: 'stall-y', payload: 'other' },
    ]);
  });

  it('rejects bad group options', () => {
    for (const mailbox of [{ sendGroupMaxMessages: 0 }, { sendGroupMaxMessages: 1.5 }, { sendGroupMaxBytes: -1 }]) {
      assert.throws(() => createHerald({ connectionString: db.url, mailbox }), { name: 'InvalidOptionError' });
    }
  });
});

describe('consumer takes', () => {
  it('a wake-up costs one take, not one per loop', async () => {
    const to = dest('takes');
    const consumer = herald.mailbox.consume(to, () => {}, { concurrency: 4, batchSize: 10, cooldownMs: 0 });
    try {
      await herald.mailbox.start();
      await waitFor(() => consumer.takes >= 1, { what: 'the catch-up take' });
      await herald.mailbox.send({ to, payload: 'one' });
      await waitFor(() => consumer.consumed === 1, { what: 'the message consumed' });
      // catch-up (at most twice, if the LISTEN's own wake-up came after it) + one take
      // for the message; four loops that each took on every wake-up would make 8.
      assert.ok(consumer.takes <= 3, `takes: ${consumer.takes}`);
    } finally {
      await consumer.stop();
    }
  });

  it('a full batch is followed by the next take at once; after a partial one the next waits for cooldownMs', async () => {
    const to = dest('cooldown');
    await herald.mailbox.sendMany(Array.from({ length: 12 }, (_, i) => ({ to, payload: `c${i}` })));
    const consumer = herald.mailbox.consume(to, () => {}, { batchSize: 5, cooldownMs: 600_000 });
    try {
      await waitFor(() => consumer.consumed === 12, { what: '12 messages in batches of 5, 5, 2' });
      assert.equal(consumer.takes, 3);
      await herald.mailbox.send({ to, payload: 'late' });
    } finally {
      await consumer.stop(); // ends the cooldown wait
    }
    assert.equal(consumer.takes, 3);
    const [stats] = await herald.mailbox.stats(to);
    assert.equal(stats.ready, 1);
    assert.throws(() => herald.mailbox.consume(to, () => {}, { cooldownMs: -1 }), { name: 'InvalidOptionError' });
  });
});

describe('prepared statements', () => {
  /** Named statements on the one connection of a pool of 1, after a send without tx. */
  const prepared = async (preparedStatements?: boolean): Promise<string[]> => {
    const h = createHerald({ connectionString: db.url, poolSize: 1, preparedStatements });
    try {
      await h.mailbox.send({ to: dest('prep'), payload: 'x' });
      const { rows } = await h.driver.executor.query<{ name: string }>(`SELECT name FROM pg_prepared_statements WHERE name LIKE 'herald%'`);
      return rows.map((r) => r.name);
    } finally {
      await h.close();
    }
  };

  it('a send without tx runs as a prepared statement; preparedStatements: false does not', async () => {
    assert.equal((await prepared()).length, 1);
    assert.deepEqual(await prepared(false), []);
  });

  const missing = pgbouncerBinary() ? false : 'pgbouncer is not installed (apt-get install pgbouncer; .ci/run installs it)';
  it('works through PgBouncer in transaction mode, which cannot keep prepared statements', { skip: missing }, async () => {
    const bouncer = await startPgBouncer(db.url, 'transaction');
    const via = createHerald({
      connectionString: bouncer.url(db.url),
      listenConnectionString: db.url,
      poolSize: 8,
      mailbox: { sendGroupMaxMessages: 1 },
    });
    const problems: Error[] = [];
    via.mailbox.on('message:problem', (err) => problems.push(err));
    try {
      const to = dest('bouncer');
      const seen = new Map<string, number>();
      const consumer = via.mailbox.consume(to, (m) => void seen.set(m.id, (seen.get(m.id) ?? 0) + 1), { concurrency: 3, batchSize: 5, cooldownMs: 0 });
      const results = await Promise.all(Array.from({ length: 60 }, (_, i) => via.mailbox.send({ to, payload: i, id: `bouncer-${i}` })));
      assert.ok(results.every((r) => r.created));
      await waitFor(() => seen.size === 60, { what: 'every message consumed' });
      await consumer.stop();
      assert.ok([...seen.values()].every((c) => c === 1));
      // Statements that hit a missing or duplicate prepared statement ran again unprepared.
      assert.deepEqual(problems, []);
    } finally {
      await via.close();
      await bouncer.stop();
    }
  });
});
