import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import pg from 'pg';
import { freshDatabase, type TestDatabase } from '../../test/support/db.js';
import { DRIVERS } from '../../test/support/drivers.js';
import { deferred } from '../../test/support/wait.js';
import { pgDriver, toExecutor } from './index.js';
import { REPLAN_AT } from './pg.js';
import type { RawNotification } from './types.js';

let db: TestDatabase;
before(async () => {
  db = await freshDatabase();
});
after(async () => db.drop());

for (const { name, make } of DRIVERS) {
  describe(`driver conformance: ${name}`, () => {
    it('runs parameterised statements and reports rows and rowCount', async () => {
      const driver = make(db.url);
      try {
        const { rows } = await driver.executor.query<{ a: number; b: string }>('SELECT $1::int AS a, $2::text AS b', [7, 'x']);
        assert.deepEqual(rows, [{ a: 7, b: 'x' }]);
        await driver.executor.query(`CREATE TABLE IF NOT EXISTS conf_${name} (v int)`);
        const ins = await driver.executor.query(`INSERT INTO conf_${name} SELECT generate_series(1, 3)`);
        assert.equal(ins.rowCount, 3);
      } finally {
        await driver.end();
      }
    });

    it('reports the pool size it was made with (maxConnections)', async () => {
      const driver = make(db.url);
      try {
        assert.equal(driver.maxConnections, 4);
      } finally {
        await driver.end();
      }
    });

    it('calls onSent once a statement has left the process, no later than its result', async () => {
      const driver = make(db.url);
      try {
        let sentAt = 0;
        const order: string[] = [];
        const res = await driver.executor.query<{ v: number }>('SELECT $1::int AS v', [5], { onSent: () => (order.push('sent'), sentAt++) }).then((r) => (order.push('result'), r));
        assert.deepEqual(res.rows, [{ v: 5 }]);
        assert.deepEqual(order, ['sent', 'result']);
        assert.equal(sentAt, 1, 'once');
      } finally {
        await driver.end();
      }
    });

    it('commits a transaction that resolves and rolls back one that throws', async () => {
      const driver = make(db.url);
      try {
        await driver.executor.query(`CREATE TABLE IF NOT EXISTS tx_${name} (v int)`);
        await driver.transaction(async (tx) => {
          await tx.query(`INSERT INTO tx_${name} VALUES ($1)`, [1]);
        });
        await assert.rejects(
          driver.transaction(async (tx) => {
            await tx.query(`INSERT INTO tx_${name} VALUES ($1)`, [2]);
            throw new Error('boom');
          }),
          /boom/,
        );
        const { rows } = await driver.executor.query<{ v: number }>(`SELECT v FROM tx_${name} ORDER BY v`);
        assert.deepEqual(rows.map((r) => r.v), [1]);
      } finally {
        await driver.end();
      }
    });

    it('a transaction opened with { prepare: true } runs statements marked prepare as prepared statements; without it, unprepared', async () => {
      const driver = make(db.url);
      try {
        const text = `SELECT $1::int + 1 AS n, (SELECT count(*)::int FROM pg_prepared_statements WHERE statement LIKE '%conf_prepared_${name}%') AS prepared`;
        const run = (prepare: boolean) =>
          driver.transaction(async (tx) => {
            const first = (await tx.query<{ n: number; prepared: number }>(text, [1], { prepare: true })).rows[0];
            // The same text again, on the same connection: a prepared statement is there now.
            const again = (await tx.query<{ n: number; prepared: number }>(text, [2], { prepare: true })).rows[0];
            return { first, again };
          }, { prepare });
        const plain = await run(false);
        assert.deepEqual(plain, { first: { n: 2, prepared: 0 }, again: { n: 3, prepared: 0 } });
        const prepared = await run(true);
        assert.equal(prepared.again.n, 3);
        assert.equal(prepared.again.prepared, 1, 'the statement is prepared on the transaction connection');
      } finally {
        await driver.end();
      }
    });

    it('every statement of a transaction runs inside it: the first, and ones issued without waiting for it', async () => {
      const driver = make(db.url);
      try {
        await driver.executor.query(`CREATE TABLE IF NOT EXISTS inside_${name} (v int)`);
        const xids = new Set<string>();
        await assert.rejects(
          driver.transaction(async (tx) => {
            const ins = (v: number, prepare: boolean) =>
              tx.query<{ x: string }>(`INSERT INTO inside_${name} VALUES ($1) RETURNING pg_current_xact_id()::text AS x`, [v], { prepare }).then((r) => xids.add(r.rows[0].x));
            await Promise.all([ins(1, true), ins(2, false), ins(3, true)]);
            await ins(4, false);
            throw new Error('undo');
          }, { prepare: true }),
          /undo/,
        );
        assert.equal(xids.size, 1, 'one transaction');
        const { rows } = await driver.executor.query<{ n: number }>(`SELECT count(*)::int AS n FROM inside_${name}`);
        assert.equal(rows[0].n, 0, 'all rolled back');
      } finally {
        await driver.end();
      }
    });

    it('toExecutor accepts the transaction object of the driver', async () => {
      const driver = make(db.url);
      try {
        const n = await driver.transaction(async (tx) => {
          const { rows } = await toExecutor(tx).query<{ n: number }>('SELECT 41 + $1::int AS n', [1]);
          return rows[0].n;
        });
        assert.equal(n, 42);
      } finally {
        await driver.end();
      }
    });

    it('a listen session receives notifications and reports its death', async () => {
      const driver = make(db.url);
      const session = await driver.openListenSession();
      try {
        const got = deferred<RawNotification>();
        const closed = deferred<Error | undefined>();
        session.onNotification((n) => got.resolve(n));
        session.onClose((err) => closed.resolve(err));
        await session.query('LISTEN "Conf Channel"');
        await driver.executor.query('SELECT pg_notify($1, $2)', ['Conf Channel', 'hello']);
        const n = await got.promise;
        assert.equal(n.channel, 'Conf Channel');
        assert.equal(n.payload, 'hello');
        const { rows } = await session.query<{ pid: number }>('SELECT pg_backend_pid() AS pid');
        await driver.executor.query('SELECT pg_terminate_backend($1)', [rows[0].pid]);
        await closed.promise; // resolves: the death was reported
      } finally {
        await session.close();
        await driver.end();
      }
    });
  });
}

describe('pg driver: BEGIN goes out with the first statement', () => {
  it('a transaction of one parameterised statement takes two round trips (statement with BEGIN, COMMIT), prepared or not', async () => {
    const pool = new pg.Pool({ connectionString: db.url, max: 1 });
    let ready = 0;
    pool.on('connect', (client) => (client as unknown as { connection: { on(e: string, f: () => void): void } }).connection.on('readyForQuery', () => ready++));
    const driver = pgDriver({ pool });
    try {
      await driver.executor.query('SELECT 1'); // connect first
      // The first prepared run parses its statement on the connection: BEGIN goes alone then.
      for (const [prepare, trips] of [[false, 2], [true, 3], [true, 2]] as const) {
        ready = 0;
        const n = await driver.transaction(async (tx) => (await tx.query<{ n: number }>('SELECT $1::int + 1 AS n', [1], { prepare: true })).rows[0].n, { prepare });
        assert.equal(n, 2);
        assert.equal(ready, trips, `round trips (prepare ${prepare})`);
      }
      ready = 0;
      await driver.transaction(async (tx) => void (await tx.query('SELECT 1')));
      assert.equal(ready, 3, 'a statement without parameters runs in the simple protocol: BEGIN before it');
    } finally {
      await driver.end();
      await pool.end();
    }
  });

  it('a BEGIN that fails fails the first statement, which does not run; the connection is usable after', async () => {
    const pool = new pg.Pool({ connectionString: db.url, max: 1 });
    const driver = pgDriver({ pool });
    try {
      await driver.executor.query('CREATE TABLE IF NOT EXISTS begin_fails (v int)');
      // Leave the pool's one connection in an aborted transaction: its next BEGIN fails (25P02).
      const c = await pool.connect();
      await c.query('BEGIN');
      await c.query('SELECT 1/0').catch(() => {});
      c.release();
      await assert.rejects(
        driver.transaction(async (tx) => void (await tx.query('INSERT INTO begin_fails VALUES ($1)', [1]))),
        (err: { code?: string }) => err.code === '25P02',
      );
      await driver.transaction(async (tx) => void (await tx.query('INSERT INTO begin_fails VALUES ($1)', [2])));
      const { rows } = await driver.executor.query<{ v: number }>('SELECT v FROM begin_fails ORDER BY v');
      assert.deepEqual(rows.map((r) => r.v), [2]);
    } finally {
      await driver.end();
      await pool.end();
    }
  });
});

describe('pg driver: prepared statements', () => {
  it('a prepared statement is prepared (and planned) again on the connection at 16 and 256 uses', async () => {
    const driver = pgDriver({ connectionString: db.url, max: 1 });
    try {
      const text = `SELECT $1::int AS n /* replan probe */`;
      const versions = async () =>
        (await driver.executor.query<{ n: number }>(`SELECT count(*)::int AS n FROM pg_prepared_statements WHERE statement = $1`, [text])).rows[0].n;
      for (let i = 1; i <= 300; i++) {
        assert.equal((await driver.executor.query<{ n: number }>(text, [i], { prepare: true })).rows[0].n, i);
        if (i === 15) assert.equal(await versions(), 1);
        if (i === 16) assert.equal(await versions(), 2);
      }
      assert.equal(await versions(), 3);
      assert.deepEqual([...REPLAN_AT].slice(0, 2), [16, 256]);
    } finally {
      await driver.end();
    }
  });
});
