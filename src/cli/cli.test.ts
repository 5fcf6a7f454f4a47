import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { Herald } from '../client.js';
import { cli } from '../../test/support/cli.js';
import { freshDatabase, type TestDatabase } from '../../test/support/db.js';
import { deferred } from '../../test/support/wait.js';

let db: TestDatabase;
before(async () => {
  db = await freshDatabase({ migrated: false });
});
after(async () => db.drop());

describe('herald CLI', () => {
  it('migrate applies, reports status and prints SQL', async () => {
    const sql = await cli(['migrate', 'sql']);
    assert.equal(sql.code, 0);
    assert.match(sql.stdout, /CREATE SCHEMA IF NOT EXISTS "herald"/);
    const before = await cli(['migrate', 'status'], { DATABASE_URL: db.url });
    assert.match(before.stdout, /001 foundation\s+pending/);
    const up = await cli(['migrate'], { DATABASE_URL: db.url });
    assert.equal(up.code, 0, up.stderr);
    assert.match(up.stdout, /^applied 1/);
    const again = await cli(['migrate', 'up', '--database-url', db.url]);
    assert.equal(again.stdout.trim(), 'up to date');
    const status = await cli(['migrate', 'status'], { DATABASE_URL: db.url });
    // No migration in the pending state (a name may contain the word: 023 topic_pending_floor).
    assert.doesNotMatch(status.stdout, /\spending$/m);
    const bad = await cli(['migrate', 'sideways'], { DATABASE_URL: db.url });
    assert.equal(bad.code, 2);
  });

  it('listen prints notifications sent by notify, as JSON lines', async () => {
    const herald = new Herald({ connectionString: db.url });
    try {
      // The listener says "listening on" on stderr once LISTEN is established.
      let stderrSeen = '';
      const ready = deferred();
      const run = (async () => {
        const { runCli } = await import('./main.js');
        let out = '';
        const code = await runCli(['listen', 'CLI Channel', 'other', '--count', '2'], {
          stdout: { write: (s: string) => ((out += s), true) } as never,
          stderr: {
            write: (s: string) => {
              stderrSeen += s;
              if (stderrSeen.includes('listening on')) ready.resolve();
              return true;
            },
          } as never,
          env: { DATABASE_URL: db.url },
          interrupted: new Promise(() => {}),
        });
        return { code, out };
      })();
      await ready.promise;
      const sent = await cli(['notify', 'CLI Channel', 'hello world'], { DATABASE_URL: db.url });
      assert.equal(sent.code, 0, sent.stderr);
      await herald.notify('other', '{"x":1}');
      const { code, out } = await run;
      assert.equal(code, 0);
      const lines = out.trim().split('\n').map((l) => JSON.parse(l));
      assert.deepEqual(lines.map((l) => [l.channel, l.payload]), [
        ['CLI Channel', 'hello world'],
        ['other', '{"x":1}'],
      ]);
    } finally {
      await herald.close();
    }
  });

  it('notify rejects a bad channel with its typed error code and exit code 1', async () => {
    const res = await cli(['notify', 'x'.repeat(64), 'p'], { DATABASE_URL: db.url });
    assert.equal(res.code, 1);
    assert.match(res.stderr, /INVALID_CHANNEL/);
  });

  it('doctor reports connectivity, version, LISTEN round trip, pooler mode and queue usage', async () => {
    const res = await cli(['doctor'], { DATABASE_URL: db.url });
    assert.equal(res.code, 0, res.stdout + res.stderr);
    for (const check of ['connect', 'listen', 'pooler', 'queue', 'schema']) assert.match(res.stdout, new RegExp(`^ok\\s+${check}`, 'm'));
    assert.match(res.stdout, /PostgreSQL \d+/);
  });

  it('doctor fails (exit 1) when the database is unreachable', async () => {
    const res = await cli(['doctor'], { DATABASE_URL: 'postgres://postgres@127.0.0.1:1/none' });
    assert.equal(res.code, 1);
    assert.match(res.stdout, /^FAIL connect/m);
  });

  it('a command without a database says how to give one', async () => {
    const res = await cli(['notify', 'x', 'y'], {});
    assert.equal(res.code, 1);
    assert.match(res.stderr, /DATABASE_URL/);
  });
});
