import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { describe, it } from 'node:test';
import pg from 'pg';
import postgres from 'postgres';
import { createHerald, type Herald } from '../client.js';
import { HeraldError, InvalidOptionError } from '../errors.js';
import type { TestDatabase } from '../../test/support/db.js';
import { useHerald } from '../../test/support/herald.js';
import { deferred, waitFor } from '../../test/support/wait.js';
import type { MailboxMessage } from './types.js';

let db: TestDatabase;
let herald: Herald;
let pool: pg.Pool;
useHerald({ poolSize: 12, mailbox: { retryDelayMs: 10, maxRetryDelayMs: 50 } }, async (d, h) => {
  db = d;
  herald = h;
  pool = new pg.Pool({ connectionString: db.url, max: 4 });
  pool.on('error', () => {});
  await pool.query('CREATE TABLE ledger (message_id text PRIMARY KEY, note text)');
  return () => pool.end();
});

let n = 0;
const dest = (name: string) => `${name}-${++n}`;

describe('send', () => {
  it('reports created, and a second send of the same id creates nothing', async () => {
    const to = dest('idem');
    assert.deepEqual(await herald.mailbox.send({ to, payload: 'a', id: 'idem-1' }), { id: 'idem-1', created: true });
    assert.deepEqual(await herald.mailbox.send({ to, payload: 'b', id: 'idem-1' }), { id: 'idem-1', created: false });
    const got = await herald.mailbox.receive(to);
    assert.equal(got?.payload, 'a');
    assert.equal(await herald.mailbox.receive(to), null);
    // still deduplicated after it was consumed (until retention deletes it)
    assert.equal((await herald.mailbox.send({ to, payload: 'c', id: 'idem-1' })).created, false);
  });

  it('concurrent sends of one id make one message, and exactly one caller is told it created it', async () => {
    const to = dest('race');
    const results = await Promise.all(Array.from({ length: 10 }, (_, i) => herald.mailbox.send({ to, payload: `p${i}`, id: 'race-id' })));
    assert.equal(results.filter((r) => r.created).length, 1);
    const [{ c }] = (await pool.query(`SELECT count(*)::int AS c FROM herald.mailbox_messages WHERE id = 'race-id'`)).rows;
    assert.equal(c, 1);
  });

  it('a retry after the first transaction rolled back creates the message', async () => {
    const to = dest('retry');
    const client = await pool.connect();
    await client.query('BEGIN');
    assert.equal((await herald.mailbox.send({ to, payload: 'x', id: 'retry-1' }, { tx: client })).created, true);
    const second = herald.mailbox.send({ to, payload: 'y', id: 'retry-1' }); // waits on the first transaction
    await client.query('ROLLBACK');
    client.release();
    assert.equal((await second).created, true);
    assert.equal((await herald.mailbox.receive(to))?.payload, 'y');
  });

  it('sendMany writes a batch in one statement, results in input order, a repeated id once', async () => {
    const to = dest('many');
    await herald.mailbox.send({ to, payload: 'old', id: 'many-0' });
    const results = await herald.mailbox.sendMany([
      { to, payload: 'one', id: 'many-1' },
      { to, payload: 'zero', id: 'many-0' },
      { to, payload: { n: 2 }, id: 'many-2' },
      { to, payload: 'dup', id: 'many-1' },
    ]);
    assert.deepEqual(results, [
      { id: 'many-1', created: true },
      { id: 'many-0', created: false },
      { id: 'many-2', created: true },
      { id: 'many-1', created: false },
    ]);
    const order = [];
    for (let m; (m = await herald.mailbox.receive(to)); ) order.push(m.payload);
    assert.deepEqual(order, ['old', 'one', { n: 2 }]);
  });

  it('a batch costs one notification per destination, and a rolled-back send wakes nobody', async () => {
    const sub = herald.listen(herald.mailbox.channel);
    await sub.established;
    const rolledBack = dest('rolled');
    await assert.rejects(
      herald.transaction(async (tx) => {
        await herald.mailbox.send({ to: rolledBack, payload: 'never' }, { tx });
        throw new Error('abort');
      }),
      /abort/,
    );
    const a = dest('batch-a');
    const b = dest('batch-b');
    await herald.mailbox.sendMany(Array.from({ length: 1000 }, (_, i) => ({ to: i % 2 ? a : b, payload: String(i) })));
    const marker = dest('marker');
    await herald.mailbox.send({ to: marker, payload: 'm' });
    const seen: string[] = [];
    for (;;) {
      const note = await sub.wait({ timeoutMs: 10_000 });
      assert.ok(note, 'the marker notification arrives');
      seen.push(note.payload);
      if (note.payload === marker) break;
    }
    await sub.close();
    assert.deepEqual(seen.sort(), [a, b, marker].sort());
    const [{ c }] = (await pool.query('SELECT count(*)::int AS c FROM herald.mailbox_messages WHERE destination = $1', [rolledBack])).rows;
    assert.equal(c, 0, 'the rolled-back send left nothing behind');
  });

  it('rejects bad input before any SQL, with typed errors', async () => {
    const bad = [
      [{ to: '', payload: 'x' }, 'INVALID_ARGUMENT'],
      [{ to: 'a'.repeat(1001), payload: 'x' }, 'INVALID_ARGUMENT'],
      [{ to: 'a', payload: 'x', id: '' }, 'INVALID_ARGUMENT'],
      [{ to: 'a', payload: 'nul\0' }, 'INVALID_PAYLOAD'],
      [{ to: 'a', payload: undefined }, 'INVALID_PAYLOAD'],
      [{ to: 'a' }, 'INVALID_PAYLOAD'],
      [{ to: 'a', payload: 10n }, 'INVALID_PAYLOAD'],
    ] as const;
    for (const [message, code] of bad) {
      await assert.rejects(herald.mailbox.send(message as never), (e: unknown) => e instanceof HeraldError && e.code === code);
    }
    assert.throws(() => createHerald({ connectionString: db.url, mailbox: { pollIntervalMs: 0 } }), InvalidOptionError);
    assert.throws(() => herald.mailbox.consume('a', () => {}, { concurrency: 0 }), InvalidOptionError);
  });
});

describe('payloads', () => {
  it('100 KB and 1 MB arrive byte-exact, as text and as JSON', async () => {
    const to = dest('big');
    const kb100 = randomText(100 * 1024);
    const mb1 = randomText(1024 * 1024);
    const json = { blob: randomText(1024 * 1024), nested: [1, 'ü€😀', null, { a: true }] };
    await herald.mailbox.sendMany([
      { to, payload: kb100, id: 'big-100k' },
      { to, payload: mb1, id: 'big-1m' },
      { to, payload: json, id: 'big-json' },
    ]);
    const got = new Map<string, unknown>();
    for (let m; (m = await herald.mailbox.receive(to)); ) got.set(m.id, m.payload);
    assert.ok(Buffer.from(got.get('big-100k') as string).equals(Buffer.from(kb100)));
    assert.ok(Buffer.from(got.get('big-1m') as string).equals(Buffer.from(mb1)));
    assert.deepEqual(got.get('big-json'), json);
  });
});

describe('receive', () => {
  it('returns null at the timeout', async () => {
    assert.equal(await herald.mailbox.receive(dest('empty'), { timeoutMs: 50 }), null);
  });

  it('wakes on a send while waiting', async () => {
    const to = dest('wake');
    const waiting = herald.mailbox.receive(to, { timeoutMs: 20_000 });
    await waitFor(() => herald.notifier.stats().channels[herald.mailbox.channel]?.listening);
    await herald.mailbox.send({ to, payload: 'hello' });
    assert.equal((await waiting)?.payload, 'hello');
    // a send in the caller's transaction wakes when that transaction commits
    const second = herald.mailbox.receive(to, { timeoutMs: 20_000 });
    await waitFor(() => herald.mailbox.waiting === 1);
    await herald.transaction((tx) => herald.mailbox.send({ to, payload: 'in tx' }, { tx }));
    assert.equal((await second)?.payload, 'in tx');
  });

  it('concurrent receivers never get the same message', async () => {
    const to = dest('shared');
    const total = 300;
    await herald.mailbox.sendMany(Array.from({ length: total }, (_, i) => ({ to, payload: String(i), id: `${to}-${i}` })));
    const got: string[] = [];
    await Promise.all(
      Array.from({ length: 8 }, async () => {
        for (let m; (m = await herald.mailbox.receive(to)); ) got.push(m.id);
      }),
    );
    assert.equal(got.length, total);
    assert.equal(new Set(got).size, total);
  });

  it('with { tx } the message is consumed only if the transaction commits', async () => {
    const to = dest('txrecv');
    await herald.mailbox.send({ to, payload: 'p', id: `${to}-1` });
    await assert.rejects(
      herald.transaction(async (tx) => {
        assert.equal((await herald.mailbox.receive(to, { tx }))?.id, `${to}-1`);
        throw new Error('rollback');
      }),
    );
    const again = await herald.transaction((tx) => herald.mailbox.receive(to, { tx }));
    assert.equal(again?.id, `${to}-1`);
    assert.equal(await herald.mailbox.receive(to), null);
  });

  it('takes only the asked topic', async () => {
    const to = dest('topics');
    await herald.mailbox.sendMany([
      { to, topic: 'a', payload: '1' },
      { to, topic: 'b', payload: '2' },
    ]);
    assert.equal((await herald.mailbox.receive(to, { topic: 'b' }))?.payload, '2');
    assert.equal(await herald.mailbox.receive(to, { topic: 'b' }), null);
    assert.equal((await herald.mailbox.receive(to))?.topic, 'a');
  });

  it('an aborted receive returns null and consumes nothing', async () => {
    const to = dest('abort');
    const ac = new AbortController();
    const waiting = herald.mailbox.receive(to, { timeoutMs: 20_000, signal: ac.signal });
    ac.abort();
    assert.equal(await waiting, null);
    await herald.mailbox.send({ to, payload: 'kept' });
    assert.equal((await herald.mailbox.receive(to))?.payload, 'kept');
  });
});

describe('consume', () => {
  it('commits the handler writes together with the consumption', async () => {
    const to = dest('consume');
    const ids = Array.from({ length: 50 }, (_, i) => `${to}-${i}`);
    await herald.mailbox.sendMany(ids.map((id) => ({ to, payload: { id }, id })));
    const consumer = herald.mailbox.consume<{ id: string }>(
      to,
      async (m, tx) => {
        await tx.query('INSERT INTO ledger (message_id) VALUES ($1)', [m.payload.id]);
      },
      { concurrency: 3, batchSize: 7 },
    );
    await waitFor(async () => (await pool.query('SELECT count(*)::int AS c FROM ledger WHERE message_id LIKE $1', [`${to}-%`])).rows[0].c === 50);
    await consumer.stop();
    assert.equal(consumer.consumed, 50);
    const [s] = await herald.mailbox.stats(to);
    assert.equal(s.consumed, 50);
    assert.equal(s.ready, 0);
  });

  it('a throwing handler leaves the message for redelivery; after maxAttempts it is dead, and can be redriven', async () => {
    const to = dest('poison');
    await herald.mailbox.sendMany([
      { to, payload: 'bad', id: `${to}-bad` },
      { to, payload: 'good', id: `${to}-good` },
    ]);
    let fail = true;
    const dead = deferred<{ id: string; attempts: number }>();
    herald.mailbox.once('message:dead', (info) => dead.resolve(info));
    const consumer = herald.mailbox.consume<string>(
      to,
      async (m, tx) => {
        await tx.query('INSERT INTO ledger (message_id) VALUES ($1)', [m.id]);
        if (m.payload === 'bad' && fail) throw new Error('boom ' + m.attempts);
      },
      { batchSize: 2, maxAttempts: 3 },
    );
    const info = await dead.promise;
    assert.equal(info.id, `${to}-bad`);
    assert.equal(info.attempts, 3);
    await waitFor(async () => (await herald.mailbox.stats(to))[0]?.consumed === 1);
    const letters = await herald.mailbox.deadLetters(to);
    assert.equal(letters.length, 1);
    assert.equal(letters[0].lastError, 'boom 3');
    // The failed runs' writes rolled back: only the good message's ledger row exists.
    const rows = (await pool.query('SELECT message_id FROM ledger WHERE message_id LIKE $1', [`${to}-%`])).rows;
    assert.deepEqual(rows.map((r) => r.message_id), [`${to}-good`]);
    fail = false;
    assert.equal(await herald.mailbox.redrive(to), 1);
    await waitFor(async () => (await herald.mailbox.stats(to))[0]?.consumed === 2);
    await consumer.stop();
    const [s] = await herald.mailbox.stats(to);
    assert.deepEqual([s.dead, s.ready, s.delayed], [0, 0, 0]);
  });

  it('the safety poll finds a message whose notification never came', async () => {
    const local = createHerald({ connectionString: db.url, poolSize: 2, mailbox: { pollIntervalMs: 100 } });
    const to = dest('silent');
    const got = deferred<string>();
    const c = local.mailbox.consume(to, (m) => got.resolve(m.id));
    await local.mailbox.start();
    // Written behind the mailbox's back: no NOTIFY at all.
    await pool.query(`INSERT INTO herald.mailbox_messages (id, destination, payload) VALUES ($1, $2, 'quiet')`, [`${to}-1`, to]);
    assert.equal(await got.promise, `${to}-1`);
    await c.stop();
    await local.close();
  });

  it('stop() leaves no LISTEN, timer or loop behind; start again works', async () => {
    const local = createHerald({ connectionString: db.url, poolSize: 2 });
    try {
      const to = dest('stop');
      const seen: string[] = [];
      const c = local.mailbox.consume(to, (m) => void seen.push(m.id));
      await local.mailbox.send({ to, payload: 'x', id: `${to}-1` });
      await waitFor(() => seen.length === 1);
      await local.mailbox.stop();
      assert.ok(c.stopped);
      assert.deepEqual(local.notifier.channels(), []);
      await local.mailbox.stop(); // idempotent
      // Subscribing again while the UNLISTEN of the previous subscription may still be in
      // flight: the channel must end up LISTENed (a notifier race, fixed in this branch).
      local.mailbox.consume(to, (m) => void seen.push(m.id));
      await waitFor(async () => (await local.notifier.serverChannels()).includes(local.mailbox.channel));
      await local.mailbox.send({ to, payload: 'y', id: `${to}-2` });
      await waitFor(() => seen.length === 2);
    } finally {
      await local.close();
    }
    assert.deepEqual(local.notifier.channels(), []);
  });

  it('a take that rolls back while another loop is taking does not strand the loops waiting on that take', { timeout: 60_000 }, async () => {
    // Pool of 2: the failing take holds one connection, the test holds the other, so the
    // next loop's take waits for a connection (its take begun) while the first one rolls back.
    const localPool = new pg.Pool({ connectionString: db.url, max: 2 });
    const local = createHerald({ pool: localPool, mailbox: { retryDelayMs: 10, maxRetryDelayMs: 10 } });
    const hold = deferred();
    const failNow = deferred();
    try {
      const to = dest('strand');
      const consumed: string[] = [];
      const problems: Error[] = [];
      local.mailbox.on('message:problem', (err) => problems.push(err));
      let failed = false;
      const c = local.mailbox.consume(
        to,
        async (m) => {
          if (m.id === `${to}-bad` && !failed) {
            failed = true;
            await failNow.promise;
            throw new Error('first attempt fails');
          }
          consumed.push(m.id);
        },
        { concurrency: 3 },
      );
      await local.mailbox.start();
      await local.mailbox.send({ to, payload: 'bad', id: `${to}-bad` });
      // On a timeout, say what the consumer reported meanwhile (a take that failed and why).
      const context = () => `; takes ${c.takes}, failures ${c.failures}, problems: ${JSON.stringify(problems.map((e) => e.message))}`;
      await waitFor(() => failed, { what: 'the first take runs the failing handler' }).catch((e: Error) => {
        throw new Error(e.message + context(), { cause: e });
      });
      const held = deferred();
      const holding = local.driver.transaction(async () => {
        held.resolve();
        await hold.promise;
      });
      await held.promise; // the pool's other connection
      // Sent from another Herald: its wake-up starts a take that must wait for a connection.
      await herald.mailbox.send({ to, payload: 'ok', id: `${to}-ok` });
      // A take begun after the pool's last connection was held waits for one. A wake-up that
      // came late (the poll, the NOTIFY of the first send) may have begun that take before
      // this send: then the pool already has its waiter and this wake-up joins it.
      await waitFor(() => localPool.waitingCount > 0, { what: 'another loop begins its take (waiting for a connection)' });
      failNow.resolve(); // the first take rolls back now, with the second take still waiting
      await waitFor(() => c.failures === 1, { what: 'the failure recorded' });
      // The rollback freed a connection, the waiting take got it and took 'bad' again
      // (ready, first in line) before the failure could be recorded. That take now waits
      // for a connection for its take row, holding 'bad': the failure record gets the
      // connection freed here, and must not wait for the row lock of 'bad' (each would
      // wait for the other until the take row's deadline failed that take: a 10-second
      // stall, reported as a TIMEOUT problem).
      hold.resolve();
      await holding;
      await waitFor(() => problems.length > 0 || (consumed.includes(`${to}-ok`) && consumed.includes(`${to}-bad`)), { what: 'both messages consumed' });
      assert.deepEqual(problems.map((e) => e.message), []);
      // Every loop must still take: more messages than one take holds, each consumed once.
      await local.mailbox.sendMany(Array.from({ length: 20 }, (_, i) => ({ to, payload: i, id: `${to}-${i}` })));
      await waitFor(() => consumed.length === 22, { what: 'every message consumed' }).catch((e: Error) => {
        throw new Error(e.message + context(), { cause: e });
      });
      await c.stop(); // hung for ever before the fix: a loop waited on a take nobody released
      assert.equal(new Set(consumed).size, 22);
      assert.deepEqual(problems.map((e) => e.message), []);
    } finally {
      hold.resolve();
      failNow.resolve();
      await local.close();
      await localPool.end();
    }
  });
});

describe('retention and stats', () => {
  it('purge deletes consumed messages past retentionMs; ready ones stay', async () => {
    const local = createHerald({ connectionString: db.url, poolSize: 2, mailbox: { retentionMs: 0, retentionIntervalMs: 0 } });
    const to = dest('retain');
    await local.mailbox.sendMany([{ to, payload: '1' }, { to, payload: '2' }]);
    await local.mailbox.receive(to);
    const purged = await local.mailbox.purge();
    assert.ok(purged.consumed >= 1);
    const [s] = await local.mailbox.stats(to);
    assert.deepEqual([s.ready, s.consumed], [1, 0]);
    await local.close();
  });

  it('the maintenance leader purges on the schedule of retentionIntervalMs', async () => {
    // Its own schema: its own maintenance leadership (the file's Herald leads in `herald`).
    const local = createHerald({ connectionString: db.url, schema: 'mailbox_sweep', poolSize: 2, mailbox: { retentionMs: 0, retentionIntervalMs: 50 } });
    try {
      await local.migrate();
      const to = dest('sweep');
      const purged = new Promise((resolve) => local.mailbox.once('message:purged', resolve));
      await local.mailbox.send({ to, payload: '1' });
      await local.mailbox.receive(to);
      await purged;
      await waitFor(async () => (await local.mailbox.stats(to)).length === 0, { what: 'the consumed message to be purged' });
      assert.equal(local.maintenance.options.tasks.mailboxRetention.intervalMs, 50);
    } finally {
      await local.close();
    }
  });
});

describe('postgres.js driver', () => {
  it('sends in a postgres.js transaction and consumes with it', async () => {
    const sql = postgres(db.url, { max: 3, onnotice: () => {} });
    const local = createHerald({ sql });
    const to = dest('pgjs');
    await sql.begin(async (tx) => {
      await local.mailbox.send({ to, payload: { a: 1 }, id: `${to}-1` }, { tx });
    });
    const got = deferred<MailboxMessage>();
    const c = local.mailbox.consume(to, async (m, tx) => {
      await tx.query('INSERT INTO ledger (message_id) VALUES ($1)', [m.id]);
      got.resolve(m);
    });
    assert.deepEqual((await got.promise).payload, { a: 1 });
    await c.stop();
    assert.equal((await pool.query('SELECT count(*)::int AS c FROM ledger WHERE message_id = $1', [`${to}-1`])).rows[0].c, 1);
    await local.close();
    await sql.end();
  });
});

function randomText(bytes: number): string {
  // Mixed ASCII and multi-byte characters, so byte-exactness is really tested.
  const parts: string[] = [];
  let size = 0;
  const alphabet = ['a', 'Z', '0', ' ', '\n', '"', '\\', 'ü', '€', '😀', "'", '\t'];
  const rnd = randomBytes(bytes);
  for (let i = 0; size < bytes; i++) {
    const ch = alphabet[rnd[i % rnd.length] % alphabet.length];
    parts.push(ch);
    size += Buffer.byteLength(ch);
  }
  return parts.join('');
}
