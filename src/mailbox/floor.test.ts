/**
 * The mailbox floor (migration 028): while a transaction is held open anywhere in the
 * cluster, consumed messages leave their entries in the ready index (nothing can clean
 * them up before it ends). Takes and `receive` start at the process's floor for the
 * destination, so the entries they read stay bounded however many messages were
 * consumed meanwhile; the floor never passes a message whose sender has not committed
 * yet, and a redriven message is placed above every floor. Counted with the index's
 * transaction statistics, not with a clock.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import pg from 'pg';
import { createHerald, type Herald } from '../index.js';
import type { Driver } from '../driver/types.js';
import { heldWriteTransaction, type TestDatabase } from '../../test/support/db.js';
import { useHerald } from '../../test/support/herald.js';
import { measuringDriver, tuplesReturned } from '../../test/support/measuring-driver.js';
import { EventEmitter } from 'node:events';
import { waitFor, waitForCount } from '../../test/support/wait.js';
import { Floors } from './floor.js';
import { mailboxFloors, type FloorWait } from './queries.js';

let db: TestDatabase;
let herald: Herald;
// A cluster of the file's own: the held transaction is a cluster-wide fact.
useHerald({}, (d, h) => {
  db = d;
  herald = h;
}, { isolated: true });

/** Entries of the ready index returned to the scans of a transaction so far. */
const readyEntriesRead = tuplesReturned('herald.mailbox_messages_ready');

const seqOf = async (id: string) =>
  (await herald.driver.executor.query<{ seq: string }>('SELECT seq::text AS seq FROM herald.mailbox_messages WHERE id = $1', [id])).rows[0].seq;
/** One look for one destination, from `from`; and what the next look waits for. */
async function look(to: string, from: string, wait: FloorWait | null = null): Promise<{ floor: string; wait: FloorWait | null }> {
  const r = await mailboxFloors(herald.driver.executor, '"herald"', [{ to, floor: from }], wait);
  return { floor: r.floors.get(to)!, wait: r.wait };
}
const floor = async (to: string, from: string) => (await look(to, from)).floor;

test('the floor never passes a message whose sender has not committed; a redriven message gets a seq above every floor', async () => {
  const ex = herald.driver.executor;
  // A message that died first: the lowest seq of the destination.
  await herald.mailbox.send({ to: 'fl', id: 'fl-dead', payload: 'dead' });
  await ex.query(`UPDATE herald.mailbox_messages SET state = 'dead', dead_at = now() WHERE id = 'fl-dead'`);
  await herald.mailbox.sendMany(['a', 'b', 'c'].map((id) => ({ to: 'fl', id: `fl-${id}`, payload: id })));
  assert.equal(await floor('fl', '0'), await seqOf('fl-a'), 'the first ready message');

  const late = new pg.Client({ connectionString: db.url });
  await late.connect();
  try {
    await late.query('BEGIN');
    await herald.mailbox.send({ to: 'fl', id: 'fl-late', payload: 'late' }, { tx: late });
    await herald.mailbox.send({ to: 'fl', id: 'fl-after', payload: 'after' });
    for (const id of ['fl-a', 'fl-b', 'fl-c', 'fl-after']) assert.equal((await herald.mailbox.receive('fl'))?.id, id);
    // Nothing committed is ready, but a sender is still open: the floor stays.
    const held = await seqOf('fl-a');
    assert.equal(await floor('fl', held), held);
    await late.query('COMMIT');
  } finally {
    await late.end();
  }
  const lateSeq = await seqOf('fl-late');
  assert.ok(BigInt(lateSeq) < BigInt(await seqOf('fl-after')), 'the late message has the smaller seq');
  assert.equal(await floor('fl', await seqOf('fl-a')), lateSeq, 'once it committed, the floor stops at it');
  assert.equal((await herald.mailbox.receive('fl'))?.id, 'fl-late');
  const empty = await floor('fl', lateSeq);
  assert.ok(BigInt(empty) > BigInt(await seqOf('fl-after')), `nothing ready: the floor passes every seq handed out (${empty})`);

  // The dead message is far below the floor: redrive puts it back above it.
  assert.ok(BigInt(await seqOf('fl-dead')) < BigInt(empty));
  assert.equal(await herald.mailbox.redrive('fl', { ids: ['fl-dead'] }), 1);
  assert.ok(BigInt(await seqOf('fl-dead')) >= BigInt(empty), 'the redriven message is at or above the floor');
  assert.equal(await floor('fl', empty), await seqOf('fl-dead'));
  const redrivenSeq = await seqOf('fl-dead');
  assert.equal((await herald.mailbox.receive('fl'))?.id, 'fl-dead');

  // Senders that come and go: a look that finds sender A open waits for A only; the next
  // look, with A gone and B open, settles what was handed out before B and stops there.
  const a = new pg.Client({ connectionString: db.url });
  const b = new pg.Client({ connectionString: db.url });
  await a.connect();
  await b.connect();
  try {
    await a.query('BEGIN');
    await herald.mailbox.send({ to: 'fl', id: 'fl-a2', payload: 'a' }, { tx: a });
    const start = await floor('fl', redrivenSeq);
    const first = await look('fl', start);
    assert.equal(first.floor, start, 'A is open: nothing settled');
    assert.ok(first.wait, 'the look waits for A');
    await a.query('COMMIT');
    assert.equal((await herald.mailbox.receive('fl'))?.id, 'fl-a2');
    await b.query('BEGIN');
    await herald.mailbox.send({ to: 'fl', id: 'fl-b2', payload: 'b' }, { tx: b });
    const second = await look('fl', first.floor, first.wait);
    assert.equal(second.floor, String(BigInt(first.wait.last) + 1n), 'A ended: what was handed out before the first look is settled');
    const bSeq = (await b.query<{ seq: string }>(`SELECT seq::text AS seq FROM herald.mailbox_messages WHERE id = 'fl-b2'`)).rows[0].seq;
    assert.ok(BigInt(second.floor) <= BigInt(bSeq), `the floor (${second.floor}) stays at or below B's message (${bSeq})`);
    await b.query('COMMIT');
    assert.equal((await herald.mailbox.receive('fl'))?.id, 'fl-b2');
  } finally {
    await a.end();
    await b.end();
  }
});

test('takes read a bounded part of the ready index while a transaction is held open elsewhere; every message once', async () => {
  const hold = await heldWriteTransaction(db.url);
  const other = hold.client;
  const takes: number[] = [];
  const receives: number[] = [];
  const measured = measuringDriver(db.url, readyEntriesRead, (t) => t.includes('.mailbox_next('), receives, (t) => t.includes('.mailbox_next('), takes);
  // The highest floor the consumer's looks have found so far.
  let floorFound = 0n;
  const driver: Driver = {
    ...measured,
    executor: {
      async query(text, values, opts) {
        const r = await measured.executor.query(text, values, opts);
        if (text.includes('.mailbox_floors(')) {
          for (const row of r.rows as { destination: string; floor: string }[]) {
            if (row.destination === 'held' && BigInt(row.floor) > floorFound) floorFound = BigInt(row.floor);
          }
        }
        return r as never;
      },
    },
  };
  const h = createHerald({ driver });
  const seen = new Map<string, number>();
  const consumer = h.mailbox.consume('held', (m) => void seen.set(m.id, (seen.get(m.id) ?? 0) + 1), { batchSize: 100 });
  try {
    // 3,000 messages consumed while the transaction is open: 3,000 dead ready entries.
    const CONSUMED = 3000;
    for (let i = 0; i < CONSUMED; i += 100) {
      await h.mailbox.sendMany(Array.from({ length: 100 }, (_, j) => ({ to: 'held', id: `h${i + j}`, payload: i + j })));
    }
    await waitForCount(() => seen.size, CONSUMED, { what: 'the first messages' });
    const walked = await herald.driver.transaction(async (tx) => {
      await tx.query(`SELECT count(*) FROM herald.mailbox_next('held', NULL, 1000, 0)`);
      return readyEntriesRead(tx);
    });
    assert.ok(walked >= CONSUMED, `a take from the start reads the consumed messages' entries: ${walked}`);

    // Then small rounds until a look for the floor (in the background, now and then) has
    // moved it past every consumed message; at most 500 rounds.
    const consumedMax = BigInt(await seqOf(`h${CONSUMED - 1}`));
    let sent = CONSUMED;
    const round = async () => {
      const from = takes.length;
      await h.mailbox.sendMany(Array.from({ length: 20 }, (_, j) => ({ to: 'held', id: `h${sent + j}`, payload: sent + j })));
      sent += 20;
      await waitForCount(() => seen.size, sent, { what: 'a round' });
      return takes.slice(from);
    };
    for (let rounds = 0; floorFound <= consumedMax; rounds++) {
      assert.ok(rounds < 500, `the floor did not pass the consumed messages in ${rounds} rounds (found ${floorFound}, last consumed ${consumedMax})`);
      await round();
    }
    // From then on every take reads about what it takes (20 per round, a few more).
    for (let r = 0; r < 5; r++) {
      const read = await round();
      assert.ok(read.length > 0 && read.every((n) => n <= 200), `takes after the floor moved: ${read.join(', ')} entries`);
    }
    assert.equal(seen.size, sent);
    assert.ok([...seen.values()].every((n) => n === 1), 'every message once');
    // receive (no consumer state between calls) starts at the process's floor too.
    await consumer.stop();
    await h.mailbox.sendMany(Array.from({ length: 5 }, (_, j) => ({ to: 'held', id: `r${j}`, payload: j })));
    for (let j = 0; j < 5; j++) assert.equal((await h.mailbox.receive('held'))?.id, `r${j}`);
    assert.ok(receives.length === 5 && receives.every((n) => n <= 200), `receives: ${receives.join(', ')} entries`);
  } finally {
    await consumer.stop();
    await h.close();
    await hold.release();
  }
});

test('every floor goes back to 0 when the notifier reconnects (a new primary may hand out seqs below it)', async () => {
  await herald.mailbox.sendMany([1, 2, 3].map((i) => ({ to: 'fo', id: `fo-${i}`, payload: i })));
  for (let i = 1; i <= 3; i++) assert.equal((await herald.mailbox.receive('fo'))?.id, `fo-${i}`);
  const notifier = new EventEmitter();
  const floors = new Floors(herald.driver.executor, '"herald"', notifier, (err) => assert.fail(String(err)));
  try {
    // Reading starts a look (in the background); once it answered, the floor is past the three.
    const found = await waitFor(() => (floors.floor('fo') !== '0' ? floors.floor('fo') : null), { what: 'a look to raise the floor' });
    assert.ok(BigInt(found) > BigInt(await seqOf('fo-3')));
    assert.equal(notifier.listenerCount('notifier:reconnected'), 1);
    notifier.emit('notifier:reconnected');
    assert.equal(floors.floor('fo'), '0');
  } finally {
    await floors.close();
  }
  assert.equal(notifier.listenerCount('notifier:reconnected'), 0, 'close stops watching');
});
