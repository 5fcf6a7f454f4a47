import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { createHerald, type Herald } from '../client.js';
import { HeraldServer } from '../server/server.js';
import { freshDatabase, type TestDatabase } from '../../test/support/db.js';
import { waitFor } from '../../test/support/wait.js';
import { runCli } from './main.js';

const JSON_TYPE = { 'content-type': 'application/json' };

let db: TestDatabase;
let herald: Herald;

before(async () => {
  db = await freshDatabase();
  herald = createHerald({ connectionString: db.url, notifier: { queueUsageIntervalMs: 0 } });
  await herald.driver.executor.query(`CREATE TABLE items (id int PRIMARY KEY, tenant text, v int)`);
});
after(async () => {
  await herald.close();
  await db.drop();
});

async function cli(...argv: string[]): Promise<{ code: number; out: string; err: string }> {
  let out = '';
  let err = '';
  const code = await runCli(['--database-url', db.url, ...argv], {
    stdout: { write: (s: string) => ((out += s), true) },
    stderr: { write: (s: string) => ((err += s), true) },
    env: {},
    interrupted: new Promise(() => {}),
  });
  return { code, out, err };
}

/** Dead-letters one event with a relay whose sink always fails. */
async function deadLetter(type: string): Promise<string> {
  const id = await herald.outbox.add({ type, key: type });
  const relay = herald.outbox.relay({ sink: () => Promise.reject(new Error('down')), maxAttempts: 1, pollIntervalMs: 50 });
  await waitFor(async () => (await herald.outbox.dead()).some((d) => d.id === id), { what: 'a dead letter' });
  await relay.stop();
  return id;
}

test('herald outbox stats|dead|redrive', async () => {
  const id = await deadLetter('cli.poison');
  const stats = await cli('outbox', 'stats', '--json');
  assert.equal(stats.code, 0, stats.err);
  assert.equal(JSON.parse(stats.out).dead, 1);
  const dead = await cli('outbox', 'dead');
  assert.match(dead.out, new RegExp(`^${id} cli.poison key=cli.poison attempts=1 .* error="down"\\n$`));
  assert.equal((await cli('outbox', 'redrive')).code, 2);
  const redrive = await cli('outbox', 'redrive', id);
  assert.equal(redrive.out, 'redriven 1\n');
  assert.equal((await herald.outbox.stats()).dead, 0);
});

test('herald changes track|list|untrack', async () => {
  const track = await cli('changes', 'track', 'items', '--columns', 'tenant,id', '--max-keys', '5');
  assert.equal(track.code, 0, track.err);
  assert.equal(track.out, 'tracking public.items (tenant, id) on channel "herald.changes:public.items"\n');
  const list = await cli('changes', 'list', '--json');
  const t = JSON.parse(list.out.trim());
  assert.deepEqual([t.table, t.columns, t.maxKeys], ['public.items', ['tenant', 'id'], 5]);
  assert.equal((await cli('changes', 'untrack', 'items')).out, 'untracked items\n');
  assert.equal((await cli('changes', 'list')).out, '');
  const missing = await cli('changes', 'track', 'nope');
  assert.equal(missing.code, 1);
  assert.match(missing.err, /does not exist \(NOT_FOUND\)/);
});

test('server: outbox backlog and dead letters over HTTP, row changes on SSE', async () => {
  const server = new HeraldServer(herald, { port: 0 });
  const base = await server.start();
  try {
    const id = await deadLetter('http.poison');
    const stats = await (await fetch(`${base}/outbox`)).json();
    // The first test's redriven event died again with this relay: two dead letters.
    assert.equal(stats.dead, 2);
    const dead = await (await fetch(`${base}/outbox/dead?limit=10`)).json();
    assert.ok(dead.events.some((e: { id: string; type: string }) => e.id === id && e.type === 'http.poison'));
    assert.equal((await fetch(`${base}/outbox/dead?limit=0`)).status, 400);
    assert.equal((await fetch(`${base}/outbox/redrive`, { method: 'POST', headers: JSON_TYPE, body: '{}' })).status, 400);
    const redrive = await fetch(`${base}/outbox/redrive`, { method: 'POST', headers: JSON_TYPE, body: JSON.stringify({ ids: [id] }) });
    assert.deepEqual(await redrive.json(), { redriven: 1 });

    await herald.changes.track('items');
    const ac = new AbortController();
    const res = await fetch(`${base}/changes/public.items/events`, { signal: ac.signal });
    assert.equal(res.headers.get('content-type'), 'text/event-stream; charset=utf-8');
    const reader = res.body!.getReader();
    let text = '';
    const readUntil = async (needle: string) => {
      while (!text.includes(needle)) {
        const { value, done } = await reader.read();
        if (done) throw new Error('stream ended');
        text += new TextDecoder().decode(value);
      }
    };
    await readUntil('event: ready');
    await herald.driver.executor.query(`INSERT INTO items (id) VALUES (42)`);
    await readUntil('event: change');
    await readUntil('\n\n');
    const data = text.slice(text.indexOf('event: change')).split('\n')[1].slice('data: '.length);
    assert.deepEqual(JSON.parse(data), { table: 'public.items', op: 'INSERT', count: 1, keys: [{ id: 42 }], many: false });
    ac.abort();
  } finally {
    await server.stop();
  }
});
