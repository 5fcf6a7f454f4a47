import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { Herald } from '../client.js';
import { runCli } from '../cli/main.js';
import { HeraldServer } from '../server/server.js';
import { freshDatabase, type TestDatabase } from '../../test/support/db.js';
import { waitFor } from '../../test/support/wait.js';

let db: TestDatabase;
before(async () => {
  db = await freshDatabase();
});
after(async () => {
  await db.drop();
});

async function cli(argv: string[]): Promise<{ code: number; out: string }> {
  let out = '';
  const io = {
    stdout: { write: (s: string) => ((out += s), true) },
    stderr: { write: () => true },
    env: { DATABASE_URL: db.url },
    interrupted: new Promise<void>(() => {}),
  };
  const code = await runCli(argv, io as never);
  return { code, out };
}

describe('queue CLI and HTTP routes', () => {
  test('herald jobs list|stats|cancel|retry|stuck', async () => {
    const h = new Herald({ connectionString: db.url, poolSize: 2 });
    try {
      const { id } = await h.queue.enqueue('cli', { a: 1 }, { delayMs: 3_600_000 });
      const list = await cli(['jobs', 'list', '--kind', 'cli']);
      assert.equal(list.code, 0);
      assert.equal(JSON.parse(list.out.trim()).id, id);
      assert.match((await cli(['jobs', 'stats'])).out, /cli\s+scheduled\s+1/);
      assert.equal((await cli(['jobs', 'stuck', '--older-than', '1h'])).code, 0);
      assert.match((await cli(['jobs', 'cancel', id])).out, new RegExp(`cancelled 1: ${id}`));
      assert.match((await cli(['jobs', 'retry', id])).out, new RegExp(`retried 1: ${id}`));
      // Due for two hours (a job counts as stuck from when it became due).
      await h.driver.executor.query(`UPDATE herald.jobs SET stage_entered_at = now() - interval '2 hours', run_at = now() - interval '2 hours' WHERE id = $1`, [id]);
      const stuck = await cli(['jobs', 'stuck', '--older-than', '1h']);
      assert.equal(stuck.code, 1);
      assert.equal(JSON.parse(stuck.out.trim()).id, id);
    } finally {
      await h.close();
    }
  });

  test('POST /jobs, GET /jobs/<id>, and transitions on GET /jobs/events', async () => {
    const h = new Herald({ connectionString: db.url, poolSize: 3 });
    const server = new HeraldServer(h, { port: 0 });
    const url = await server.start();
    const ac = new AbortController();
    try {
      const res = await fetch(`${url}/jobs/events`, { signal: ac.signal });
      const reader = res.body!.getReader();
      let text = '';
      const pump = (async () => {
        for (;;) {
          const { value, done } = await reader.read().catch(() => ({ value: undefined, done: true }));
          if (done) return;
          text += new TextDecoder().decode(value);
        }
      })();
      await waitFor(() => text.includes('event: ready'));
      const post = await fetch(`${url}/jobs`, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({ kind: 'http', payload: { n: 1 }, stages: ['one', 'two'] }),
      });
      assert.equal(post.status, 201);
      const { id } = (await post.json()) as { id: string };
      const w1 = h.queue.work('http', () => {}, { stage: 'one' });
      const w2 = h.queue.work('http', () => {}, { stage: 'two' });
      await waitFor(() => text.includes('"state":"completed"'));
      const events = text.split('\n').filter((l) => l.startsWith('data: {"id"')).map((l) => JSON.parse(l.slice(6)));
      assert.deepEqual(
        events.filter((e) => e.id === id).map((e) => `${e.stage}:${e.state}`),
        ['one:available', 'one:running', 'two:available', 'two:running', 'two:completed'],
      );
      const got = await fetch(`${url}/jobs/${id}`);
      assert.equal(got.status, 200);
      assert.equal(((await got.json()) as { state: string }).state, 'completed');
      assert.equal((await fetch(`${url}/jobs/999999`)).status, 404);
      await Promise.all([w1.stop(), w2.stop()]);
      ac.abort();
      await pump;
    } finally {
      await server.stop();
      await h.close();
    }
  });
});
