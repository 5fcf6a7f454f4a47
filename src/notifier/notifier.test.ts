import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import pg from 'pg';
import { Herald } from '../client.js';
import { HeraldError, InvalidChannelError, InvalidOptionError, PayloadTooLargeError } from '../errors.js';
import { adminQuery, freshDatabase, type TestDatabase } from '../../test/support/db.js';
import { DRIVERS } from '../../test/support/drivers.js';
import { deferred, nextEvent, waitFor } from '../../test/support/wait.js';
import { LISTEN_APPLICATION_NAME } from '../driver/types.js';
import type { Notification } from './types.js';

let db: TestDatabase;
before(async () => {
  db = await freshDatabase();
});
after(async () => db.drop());

const FAST = { healthCheckIntervalMs: 500, queueUsageIntervalMs: 0 };

for (const { name, make } of DRIVERS) {
  describe(`notifier over ${name}`, () => {
    it('delivers a committed notify once, and never one from a rolled-back transaction', async () => {
      const herald = new Herald({ driver: make(db.url), notifier: FAST });
      try {
        const got: string[] = [];
        const marker = deferred();
        const sub = herald.listen('tx-test', (n) => {
          got.push(n.payload);
          if (n.payload === 'marker') marker.resolve();
        });
        await sub.established;
        await assert.rejects(
          herald.transaction(async (tx) => {
            await herald.notify('tx-test', 'rolled-back', { tx });
            throw new Error('rollback');
          }),
          /rollback/,
        );
        await herald.transaction(async (tx) => {
          await herald.notify('tx-test', 'committed', { tx });
        });
        // Notifications of committed transactions arrive in commit order: once the
        // marker (committed last) is here, everything before it has arrived.
        await herald.notify('tx-test', 'marker');
        await marker.promise;
        assert.deepEqual(got, ['committed', 'marker']);
      } finally {
        await herald.close();
      }
    });

    it('treats channel names exactly as given: case, dots, spaces, quotes, Unicode, SQL-looking', async () => {
      const herald = new Herald({ driver: make(db.url), notifier: FAST });
      try {
        const names = ['OrderCreated', 'ordercreated', 'a.b c', 'say "hi"', 'x; DROP TABLE y; --', 'Grüße→北京', 'ü'.repeat(31)];
        const seen = new Map<string, string[]>();
        const subs = names.map((ch) => herald.listen(ch, (n) => seen.set(ch, [...(seen.get(ch) ?? []), n.payload])));
        await Promise.all(subs.map((s) => s.established));
        await herald.notifyMany(names.map((ch) => ({ channel: ch, payload: `to:${ch}` })));
        await waitFor(() => names.every((ch) => seen.get(ch)?.length === 1), { what: 'one delivery per channel' });
        for (const ch of names) assert.deepEqual(seen.get(ch), [`to:${ch}`]);
      } finally {
        await herald.close();
      }
    });
  });
}

describe('notifier', () => {
  it('uses exactly one backend for 500 channels with 3 subscribers each', async () => {
    const herald = new Herald({ connectionString: db.url, notifier: FAST, poolSize: 2 });
    try {
      const subs = [];
      for (let c = 0; c < 500; c++) for (let s = 0; s < 3; s++) subs.push(herald.listen(`ch-${c}`));
      await Promise.all(subs.map((s) => s.established));
      const rows = await adminQuery<{ n: number }>(
        'SELECT count(*)::int AS n FROM pg_stat_activity WHERE datname = $1 AND application_name = $2',
        [db.name, LISTEN_APPLICATION_NAME],
      );
      assert.equal(rows[0].n, 1);
      assert.equal((await herald.notifier.serverChannels()).length, 500);
      const stats = herald.notifier.stats();
      assert.equal(Object.keys(stats.channels).length, 500);
      assert.equal(stats.channels['ch-7'].subscribers, 3);
      // One delivery reaches all three subscribers of its channel.
      const waits = subs.slice(21, 24).map((s) => s.wait({ timeoutMs: 10_000 }));
      await herald.notify('ch-7', 'x');
      for (const n of await Promise.all(waits)) assert.equal(n?.payload, 'x');
    } finally {
      await herald.close();
    }
  });

  it('LISTENs once per channel and UNLISTENs when the last subscriber leaves', async () => {
    const herald = new Herald({ connectionString: db.url, notifier: FAST });
    try {
      const a = herald.listen('shared');
      const b = herald.listen('shared');
      await Promise.all([a.established, b.established]);
      await a.close();
      assert.equal(herald.notifier.stats().channels.shared.subscribers, 1);
      await b.close();
      assert.equal(herald.notifier.stats().channels.shared, undefined);
      // Statements on the session are serialised, so this query runs after the UNLISTEN.
      assert.deepEqual(await herald.notifier.serverChannels(), []);
      const c = herald.listen('other');
      await c.established;
      assert.deepEqual(await herald.notifier.serverChannels(), ['other']);
      // Nothing for "shared" reaches anybody now; "other" still works.
      await herald.notify('shared', 'nobody');
      const n = c.wait({ timeoutMs: 10_000 });
      await herald.notify('other', 'somebody');
      assert.equal((await n)?.payload, 'somebody');
      assert.equal(herald.notifier.stats().channels.shared, undefined);
    } finally {
      await herald.close();
    }
  });

  it('a subscriber that never reads does not delay the others, and its buffer stays at its bound', async () => {
    const herald = new Herald({ connectionString: db.url, notifier: { ...FAST, subscriberBufferSize: 50 } });
    try {
      const stuck = herald.listen('busy', () => new Promise(() => {})); // a handler that never returns
      const idle = herald.listen('busy'); // an iterator nobody reads
      const overflow = nextEvent(herald.notifier, 'notifier:overflow');
      const fast: Notification[] = [];
      const allFast = deferred();
      const total = 2000;
      const quick = herald.listen('busy', (n) => {
        fast.push(n);
        if (fast.length === total) allFast.resolve();
      }, { bufferSize: total });
      await Promise.all([stuck.established, idle.established, quick.established]);
      for (let i = 0; i < total; i += 500) {
        await herald.notifyMany(Array.from({ length: 500 }, (_, k) => ({ channel: 'busy', payload: String(i + k) })));
      }
      await allFast.promise;
      assert.equal(fast.length, total);
      assert.deepEqual(fast.map((n) => Number(n.payload)), Array.from({ length: total }, (_, i) => i));
      assert.equal((await overflow)[0].channel, 'busy');
      assert.equal(idle.buffered, 50);
      assert.equal(idle.dropped, total - 50);
      assert.ok(stuck.buffered <= 50);
      assert.equal(stuck.delivered + stuck.dropped, total);
      const stats = herald.notifier.stats().channels.busy;
      assert.equal(stats.delivered + stats.dropped, 3 * total);
    } finally {
      await herald.close();
    }
  });

  it('notifier:overflow reports the bound of the subscription that filled (its own bufferSize)', async () => {
    const herald = new Herald({ connectionString: db.url, notifier: { ...FAST, subscriberBufferSize: 50 } });
    try {
      const small = herald.listen('small', () => new Promise(() => {}), { bufferSize: 3 }); // never returns
      await small.established;
      const overflow = nextEvent(herald.notifier, 'notifier:overflow');
      await herald.notifyMany(Array.from({ length: 10 }, (_, k) => ({ channel: 'small', payload: String(k) })));
      const [event] = await overflow;
      assert.deepEqual([event.channel, event.bufferSize], ['small', 3]);
      assert.equal(small.bufferSize, 3);
    } finally {
      await herald.close();
    }
  });

  it('a handler that keeps up never drops, even when one socket read holds more notifications than its buffer', async () => {
    const herald = new Herald({ connectionString: db.url, notifier: { ...FAST, subscriberBufferSize: 10 } });
    try {
      const total = 3000; // one statement: the listen socket receives them in a few large reads
      const syncGot: number[] = [];
      const asyncGot: number[] = [];
      let running = 0;
      let overlapped = false;
      const sync = herald.listen('burst', (n) => {
        syncGot.push(Number(n.payload));
      });
      // An async handler runs one notification at a time, in order, and buffers the rest.
      const slow = herald.listen('burst', async (n) => {
        if (running++ > 0) overlapped = true;
        await Promise.resolve();
        running--;
        asyncGot.push(Number(n.payload));
      });
      await Promise.all([sync.established, slow.established]);
      await herald.notifyMany(Array.from({ length: total }, (_, i) => ({ channel: 'burst', payload: String(i) })));
      // Every notification is either handled or counted as dropped.
      await waitFor(() => syncGot.length + sync.dropped === total && asyncGot.length + slow.dropped === total && running === 0);
      assert.equal(sync.dropped, 0);
      assert.deepEqual(syncGot, Array.from({ length: total }, (_, i) => i));
      assert.equal(overlapped, false);
      assert.ok(asyncGot.every((v, i) => i === 0 || v > asyncGot[i - 1]), 'async handler saw notifications out of order');
      assert.equal(slow.delivered + slow.dropped, total);
    } finally {
      await herald.close();
    }
  });

  it('a handler that subscribes again does not receive the notification being dispatched', async () => {
    const herald = new Herald({ connectionString: db.url, notifier: FAST });
    try {
      const seen: string[] = [];
      const second = deferred();
      const inner: Promise<void>[] = [];
      const outer = herald.listen('again', (n) => {
        seen.push(`outer:${n.payload}`);
        if (n.payload === 'first') {
          const sub = herald.listen('again', (m) => {
            seen.push(`inner:${m.payload}`);
            if (m.payload === 'second') second.resolve();
          });
          inner.push(sub.established);
        }
      });
      await outer.established;
      await herald.notify('again', 'first');
      await waitFor(() => inner.length === 1);
      await inner[0];
      await herald.notify('again', 'second');
      await second.promise;
      assert.deepEqual(seen.filter((s) => s.startsWith('inner')), ['inner:second']);
    } finally {
      await herald.close();
    }
  });

  it('gives a typed error for every bad input before any SQL, and the transaction stays usable', async () => {
    const herald = new Herald({ connectionString: db.url, notifier: FAST });
    const client = new pg.Client({ connectionString: db.url });
    client.on('error', () => {});
    await client.connect();
    try {
      await client.query('BEGIN');
      const cases: [string, unknown, (e: unknown) => boolean][] = [
        ['', 'x', (e) => e instanceof InvalidChannelError],
        ['a\0b', 'x', (e) => e instanceof InvalidChannelError],
        ['a'.repeat(64), 'x', (e) => e instanceof InvalidChannelError],
        ['é'.repeat(32), 'x', (e) => e instanceof InvalidChannelError], // 64 bytes in 32 characters
        ['ok', 'a'.repeat(8000), (e) => e instanceof PayloadTooLargeError && e.code === 'PAYLOAD_TOO_LARGE'],
        ['ok', '€'.repeat(2667), (e) => e instanceof PayloadTooLargeError], // 8001 bytes in 2667 characters
        ['ok', 'nul\0', (e) => e instanceof HeraldError && e.code === 'INVALID_PAYLOAD'],
        ['ok', 42, (e) => e instanceof HeraldError && e.code === 'INVALID_PAYLOAD'],
      ];
      for (const [channel, payload, check] of cases) {
        await assert.rejects(herald.notify(channel, payload as string, { tx: client }), check);
        await assert.rejects(herald.notifyMany([{ channel, payload: payload as string }], { tx: client }), check);
      }
      for (const [channel] of cases.slice(0, 4)) assert.throws(() => herald.listen(channel), InvalidChannelError);
      assert.throws(() => herald.listen('ok', { bufferSize: 0 }), InvalidOptionError);
      // The transaction is still usable: no statement failed inside it.
      const { rows } = await client.query('SELECT 1 AS one');
      assert.equal(rows[0].one, 1);
      await client.query('COMMIT');
      // The largest payloads that fit are accepted.
      await herald.notify('ok', 'a'.repeat(7999));
      await herald.notify('ok', '€'.repeat(2666));
      await herald.notify('b'.repeat(63), 'x');
    } finally {
      await client.end();
      await herald.close();
    }
  });

  it('rejects bad options naming the option', () => {
    assert.throws(
      () => new Herald({ connectionString: db.url, notifier: { healthCheckIntervalMs: -1 } }),
      (e: unknown) => e instanceof InvalidOptionError && e.option === 'healthCheckIntervalMs',
    );
    assert.throws(
      () => new Herald({ connectionString: db.url, notifier: { queueUsageWarnThreshold: 2 } }),
      (e: unknown) => e instanceof InvalidOptionError && e.option === 'queueUsageWarnThreshold',
    );
    assert.throws(() => new Herald({ connectionString: db.url, schema: 'bad-name' }), InvalidOptionError);
  });

  it('samples notification-queue usage and warns at the threshold', async () => {
    const herald = new Herald({ connectionString: db.url, notifier: { ...FAST, queueUsageWarnThreshold: 0 } });
    try {
      const warning = nextEvent(herald.notifier, 'notifier:queueWarning');
      const usage = await herald.notifier.sampleQueueUsage();
      assert.ok(usage >= 0 && usage <= 1);
      assert.equal((await warning)[0], usage);
      assert.equal(herald.notifier.stats().queueUsage, usage);
    } finally {
      await herald.close();
    }
  });

  it('stop() leaves no socket, timer or handle behind, and start() works again', async () => {
    const count = () =>
      process.getActiveResourcesInfo().filter((r) => r === 'TCPSocketWrap' || r === 'Timeout' || r === 'TCPWRAP').length;
    const baseline = count();
    const herald = new Herald({ connectionString: db.url, notifier: { healthCheckIntervalMs: 100, queueUsageIntervalMs: 100 } });
    const sub = herald.listen('leak-check');
    await sub.established;
    await nextEvent(herald.notifier, 'notifier:queueUsage');
    assert.ok(count() > baseline);
    await herald.notifier.stop();
    assert.equal(herald.notifier.status, 'stopped');
    assert.equal(sub.closed, true);
    assert.equal(await sub.wait(), null);
    // start again after stop
    const again = herald.listen('leak-check');
    await again.established;
    await herald.close();
    await waitFor(() => count() <= baseline, { what: 'sockets and timers to be released' });
    assert.equal(herald.notifier.status, 'stopped');
  });

  it('emits status changes and reports a listening status', async () => {
    const herald = new Herald({ connectionString: db.url, notifier: FAST });
    try {
      const statuses: string[] = [];
      herald.notifier.on('notifier:status', (s) => statuses.push(s));
      await herald.notifier.start();
      assert.equal(herald.notifier.status, 'listening');
      await herald.close();
      assert.deepEqual(statuses, ['connecting', 'listening', 'stopped']);
    } finally {
      await herald.close();
    }
  });
});
