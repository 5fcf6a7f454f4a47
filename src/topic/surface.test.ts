/** The CLI commands and the server routes of topics, against a real Postgres. */
import assert from 'node:assert/strict';
import { PassThrough } from 'node:stream';
import { test } from 'node:test';
import { runCli } from '../cli/main.js';
import type { Herald } from '../index.js';
import { HeraldServer } from '../server/server.js';
import type { TestDatabase } from '../../test/support/db.js';
import { useHerald } from '../../test/support/herald.js';
import { waitFor } from '../../test/support/wait.js';

let db: TestDatabase;
let herald: Herald;
// topics: a cluster of the file's own (a test here holds transactions open on purpose; see freshDatabase)
useHerald({}, (d, h) => {
  db = d;
  herald = h;
}, { isolated: true });

async function cli(...argv: string[]): Promise<{ code: number; out: string; err: string }> {
  const out = new PassThrough();
  const err = new PassThrough();
  let o = '';
  let e = '';
  out.on('data', (d) => (o += d));
  err.on('data', (d) => (e += d));
  const code = await runCli(['--database-url', db.url, ...argv], { stdout: out, stderr: err, env: {}, interrupted: new Promise(() => {}) });
  return { code, out: o, err: e };
}

test('herald topics create, publish, list, tail, stats, reset', async () => {
  const made = await cli('topics', 'create', 'cli', '--partitions', '8', '--retention-ms', '86400000');
  assert.equal(made.code, 0, made.err);
  assert.deepEqual(JSON.parse(made.out), { topic: 'cli', created: true });
  assert.deepEqual(JSON.parse((await cli('topics', 'create', 'cli')).out), { topic: 'cli', created: false });
  const badCreate = await cli('topics', 'create', 'cli2', '--partitions', '0');
  assert.notEqual(badCreate.code, 0);
  const p1 = await cli('topics', 'publish', 'cli', '{"n":1}', '--key', 'k');
  assert.equal(p1.code, 0, p1.err);
  const first = JSON.parse(p1.out);
  assert.match(first.position, /^\d+$/);
  assert.equal((await cli('topics', 'publish', 'cli', 'plain text')).code, 0);
  const list = await cli('topics', 'list');
  assert.match(list.out, /^cli\tpartitions=8\tmessages=2\t/m);
  const tail = await cli('topics', 'tail', 'cli', '--from', 'earliest', '--count', '2');
  assert.equal(tail.code, 0, tail.err);
  const lines = tail.out.trim().split('\n').map((l) => JSON.parse(l));
  assert.deepEqual(lines.map((l) => l.payload), [{ n: 1 }, 'plain text']);
  assert.equal(lines[0].key, 'k');
  const resumed = await cli('topics', 'tail', 'cli', '--from', first.position, '--count', '1');
  assert.equal(JSON.parse(resumed.out).payload, 'plain text');
  await herald.topics.createGroup('cli', 'g', 'latest');
  const reset = await cli('topics', 'reset', 'cli', 'g', '--to', 'earliest');
  assert.equal(reset.code, 0, reset.err);
  assert.match(reset.out, /moved 8 partitions/);
  const stats = JSON.parse((await cli('topics', 'stats', 'cli')).out);
  assert.equal(stats.messages, 2);
  assert.equal(stats.groups[0].name, 'g');
  assert.equal(stats.groups[0].lag, 2);
  const missing = await cli('topics', 'reset', 'cli', 'nope', '--to', 'latest');
  assert.equal(missing.code, 1);
});

/** Reads SSE events from a fetch response until `n` events of type `type` arrived. */
async function readEvents(res: Response, n: number, type = 'message'): Promise<{ id?: string; event: string; data: string }[]> {
  const reader = res.body!.getReader();
  const decoder = new TextDecoder();
  let buf = '';
  const events: { id?: string; event: string; data: string }[] = [];
  while (events.filter((e) => e.event === type).length < n) {
    const { value, done } = await reader.read();
    if (done) break;
    buf += decoder.decode(value, { stream: true });
    let i;
    while ((i = buf.indexOf('\n\n')) >= 0) {
      const frame = buf.slice(0, i);
      buf = buf.slice(i + 2);
      const ev: { id?: string; event: string; data: string } = { event: 'message', data: '' };
      for (const line of frame.split('\n')) {
        if (line.startsWith('id: ')) ev.id = line.slice(4);
        else if (line.startsWith('event: ')) ev.event = line.slice(7);
        else if (line.startsWith('data: ')) ev.data += line.slice(6);
      }
      if (!frame.startsWith(':')) events.push(ev);
    }
  }
  await reader.cancel();
  return events;
}

test('SSE subscription to a topic resumes after Last-Event-ID; publish endpoint', async () => {
  const server = new HeraldServer(herald, { port: 0 });
  const base = await server.start();
  try {
    // Publishing never creates a topic over HTTP: PUT /topics/<name> does (admin in open mode).
    const created = await fetch(`${base}/topics/sse`, { method: 'PUT', headers: { 'content-type': 'application/json' }, body: '{}' });
    assert.equal(created.status, 201);
    await created.body?.cancel();
    const pub = await fetch(`${base}/topics/sse/publish`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ payload: { n: 1 }, key: 'a' }) });
    assert.equal(pub.status, 202);
    const m1 = (await pub.json()) as { position: string };
    await herald.topics.publish('sse', { n: 2 });
    const all = await readEvents(await fetch(`${base}/topics/sse/events?from=earliest`), 2);
    assert.equal(all[0].event, 'ready');
    const msgs = all.filter((e) => e.event === 'message');
    assert.equal(msgs[0].id, m1.position);
    assert.deepEqual(JSON.parse(msgs[0].data).payload, { n: 1 });
    // Reconnect as EventSource does: Last-Event-ID wins over ?from.
    const live = fetch(`${base}/topics/sse/events?from=earliest`, { headers: { 'last-event-id': m1.position } });
    const res = await live;
    const pending = readEvents(res, 2);
    await herald.topics.publish('sse', { n: 3 }); // arrives live
    const resumed = (await pending).filter((e) => e.event === 'message').map((e) => JSON.parse(e.data).payload.n);
    assert.deepEqual(resumed, [2, 3]);
    const missing = await fetch(`${base}/topics/none/events`);
    assert.equal(missing.status, 404);
    await missing.body?.cancel();
    const bad = await fetch(`${base}/topics/sse/events?from=garbage`);
    assert.equal(bad.status, 400);
    await bad.body?.cancel();
  } finally {
    await server.stop();
  }
});

test('dead letters over the CLI and HTTP: list, redrive', async () => {
  await herald.topics.create('dl', { partitions: 1 });
  let heal = false;
  const c = herald.topics.consumer<number>('dl', 'g', ({ messages }) => {
    if (!heal && messages.some((m) => m.payload === 2)) throw new Error('no 2');
  }, { maxAttempts: 1, retryDelayMs: 10 });
  const dead: unknown[] = [];
  c.on('topic:dead', (d) => dead.push(d));
  let delivered = 0;
  c.on('topic:batch', (b) => (delivered += b.count));
  await c.start();
  const server = new HeraldServer(herald, { port: 0 });
  const base = await server.start();
  try {
    await herald.topics.publishMany('dl', [1, 2, 3].map((payload) => ({ payload })));
    await waitFor(() => dead.length === 1 && delivered === 2, { what: 'one dead letter, two delivered' });
    const listed = await cli('topics', 'dead', 'dl', '--group', 'g');
    assert.equal(listed.code, 0, listed.err);
    const letter = JSON.parse(listed.out.trim());
    assert.deepEqual([letter.group, letter.payload, letter.attempts, letter.redriving], ['g', 2, 1, false]);
    assert.match(letter.lastError, /no 2/);
    const http = await fetch(`${base}/topics/dl/dead?group=g`);
    assert.equal(http.status, 200);
    const body = (await http.json()) as { letters: { position: string }[] };
    assert.deepEqual(body.letters.map((l) => l.position), [letter.position]);
    const badLimit = await fetch(`${base}/topics/dl/dead?limit=0`);
    assert.equal(badLimit.status, 400);
    await badLimit.body?.cancel();
    const none = await cli('topics', 'redrive', 'dl', 'g', '999999');
    assert.equal(none.code, 1);
    heal = true;
    const redrive = await fetch(`${base}/topics/dl/groups/g/redrive`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ positions: [letter.position] }) });
    assert.equal(redrive.status, 200);
    assert.deepEqual(await redrive.json(), { redriven: 1 });
    await waitFor(() => delivered === 3, { what: 'the redriven letter' });
    assert.deepEqual(await herald.topics.deadLetters('dl'), []);
    const badBody = await fetch(`${base}/topics/dl/groups/g/redrive`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: '{}' });
    assert.equal(badBody.status, 400);
    await badBody.body?.cancel();
  } finally {
    await server.stop();
    await c.stop();
  }
});
