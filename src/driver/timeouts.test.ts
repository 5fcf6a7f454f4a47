import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { HeraldError } from '../errors.js';
import { freshDatabase, type TestDatabase } from '../../test/support/db.js';
import { TcpProxy } from '../../test/support/proxy.js';
import { silentServer } from '../../test/support/silent.js';
import { waitFor } from '../../test/support/wait.js';
import { pgDriver } from './pg.js';
import { postgresJsDriver } from './postgres-js.js';
import type { Driver } from './types.js';

const MAKERS: { name: string; make(url: string, connectTimeoutMs?: number): Driver }[] = [
  { name: 'pg', make: (url, connectTimeoutMs) => pgDriver({ connectionString: url, max: 2, connectTimeoutMs }) },
  { name: 'postgres', make: (url, connectTimeoutMs) => postgresJsDriver({ connectionString: url, max: 2, connectTimeoutMs }) },
];

const isTimeout = (e: unknown) => e instanceof HeraldError && e.code === 'TIMEOUT';

let db: TestDatabase;
before(async () => {
  db = await freshDatabase();
});
after(async () => db.drop());

for (const { name, make } of MAKERS) {
  describe(`driver timeouts over ${name}`, () => {
    it('a pool connection to an address that accepts and never answers fails after connectTimeoutMs with a clear TIMEOUT', async () => {
      const silent = await silentServer();
      const driver = make(silent.url, 300);
      try {
        await assert.rejects(driver.executor.query('SELECT 1'), (e: Error) => {
          assert.ok(isTimeout(e), `${e.name}: ${e.message}`);
          assert.match(e.message, /could not connect to PostgreSQL .*within 300 ms/);
          return true;
        });
        assert.ok(silent.accepted() >= 1);
      } finally {
        await driver.end();
        await silent.close();
      }
    });

    it('opening a listen session to such an address fails after connectTimeoutMs with a TIMEOUT', async () => {
      const silent = await silentServer();
      const driver = make(silent.url, 300);
      try {
        await assert.rejects(driver.openListenSession(), (e: Error) => isTimeout(e) && /within 300 ms/.test(e.message));
      } finally {
        await driver.end();
        await silent.close();
      }
    });

    it('a statement with timeoutMs on a black-holed pooled connection fails with TIMEOUT; the pool goes on without it', async () => {
      const proxy = await TcpProxy.start(db.url);
      const driver = make(proxy.url(db.url));
      try {
        await driver.executor.query('SELECT 1'); // an idle pooled connection now exists
        proxy.blackhole();
        await assert.rejects(driver.executor.query('SELECT 1', [], { timeoutMs: 300 }), isTimeout);
        proxy.pass();
        const { rows } = await driver.executor.query<{ n: number }>('SELECT 2 AS n', [], { timeoutMs: 10_000 });
        assert.equal(rows[0].n, 2);
        const plain = await driver.executor.query<{ n: number }>('SELECT 3 AS n');
        assert.equal(plain.rows[0].n, 3);
      } finally {
        await driver.end();
        await proxy.close();
      }
    });
  });
}

describe('driver timeouts over pg: discarding', () => {
  it('a pool of one: after a statement timed out, the next statement gets a new connection instead of the dead one', async () => {
    const proxy = await TcpProxy.start(db.url);
    const driver = pgDriver({ connectionString: proxy.url(db.url), max: 1 });
    try {
      await driver.executor.query('SELECT 1');
      proxy.blackhole();
      await assert.rejects(driver.executor.query('SELECT 1', [], { timeoutMs: 300 }), isTimeout);
      proxy.pass();
      const { rows } = await driver.executor.query<{ n: number }>('SELECT 4 AS n', [], { timeoutMs: 10_000 });
      assert.equal(rows[0].n, 4);
    } finally {
      await driver.end();
      await proxy.close();
    }
  });

  it('end() returns while a pooled connection is black-holed mid-statement', async () => {
    const proxy = await TcpProxy.start(db.url);
    const driver = pgDriver({ connectionString: proxy.url(db.url), max: 2 });
    try {
      await driver.executor.query('SELECT 1');
      proxy.blackhole();
      const stuck = driver.executor.query('SELECT 1').catch(() => {});
      await waitFor(() => proxy.swallowed > 0, { what: 'the statement to go into the black hole' });
      await driver.end({ timeoutMs: 200 });
      await stuck;
    } finally {
      await proxy.close();
    }
  });
});
