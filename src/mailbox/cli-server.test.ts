/** `herald send|receive|mailbox ...` and `POST/GET /mailbox/<to>`, on a real Postgres. */
import assert from 'node:assert/strict';
import { Readable } from 'node:stream';
import { describe, it } from 'node:test';
import type { Herald } from '../client.js';
import { runCli } from '../cli/main.js';
import type { TestDatabase } from '../../test/support/db.js';
import { useServer } from '../../test/support/server.js';
import { waitFor } from '../../test/support/wait.js';

let db: TestDatabase;
let herald: Herald;
let base: string;
useServer({ herald: { poolSize: 6 } }, (f) => ({ db, herald, base } = f));

async function cli(args: string[], stdin?: string): Promise<{ code: number; out: string; err: string }> {
  let out = '';
  let err = '';
  const code = await runCli(['--database-url', db.url, ...args], {
    stdout: { write: (s: string) => ((out += s), true) },
    stderr: { write: (s: string) => ((err += s), true) },
    env: {},
    interrupted: new Promise(() => {}),
    stdin: stdin === undefined ? undefined : Readable.from([Buffer.from(stdin)]),
  });
  return { code, out, err };
}

describe('CLI', () => {
  it('send, receive, stats, dead, redrive', async () => {
    const sent = await cli(['send', 'cli-box', 'hello', '--id', 'cli-1', '--topic', 't']);
    assert.equal(sent.code, 0, sent.err);
    assert.deepEqual(JSON.parse(sent.out), { id: 'cli-1', created: true });
    assert.deepEqual(JSON.parse((await cli(['send', 'cli-box', 'again', '--id', 'cli-1'])).out), { id: 'cli-1', created: false });
    assert.equal((await cli(['send', 'cli-box', '{"a":[1,2]}', '--json', '--id', 'cli-2'])).code, 0);
    assert.equal((await cli(['send', 'cli-box', '--id', 'cli-3'], 'from stdin\n')).code, 0);
    assert.equal((await cli(['send', 'cli-box', '{bad', '--json'])).code, 2);

    const stats = await cli(['mailbox', 'stats', 'cli-box', '--json']);
    assert.equal(JSON.parse(stats.out)[0].ready, 3);

    const got = await cli(['receive', 'cli-box', '--count', '3']);
    assert.equal(got.code, 0, got.err);
    const lines = got.out.trim().split('\n').map((l) => JSON.parse(l));
    assert.deepEqual(
      lines.map((l) => [l.id, l.payload, l.topic]),
      [
        ['cli-1', 'hello', 't'],
        ['cli-2', { a: [1, 2] }, null],
        ['cli-3', 'from stdin\n', null],
      ],
    );
    const none = await cli(['receive', 'cli-box', '--wait', '0.05']);
    assert.equal(none.code, 3);
    assert.equal(none.out, '');
    assert.equal((await cli(['receive', 'cli-box', '--wait', 'soon'])).code, 2);

    const table = await cli(['mailbox', 'stats']);
    assert.match(table.out, /^destination\tready\tdelayed\tconsumed\tdead/);
    assert.match(table.out, /\ncli-box\t0\t0\t3\t0\t-/);

    // a dead message, listed and redriven
    await herald.mailbox.send({ to: 'cli-dead', payload: 'x', id: 'cli-d1' });
    const c = herald.mailbox.consume('cli-dead', () => {
      throw new Error('nope');
    }, { maxAttempts: 1 });
    await waitFor(async () => (await herald.mailbox.stats('cli-dead'))[0]?.dead === 1);
    await c.stop();
    const dead = await cli(['mailbox', 'dead', 'cli-dead']);
    assert.equal(JSON.parse(dead.out).lastError, 'nope');
    assert.equal((await cli(['mailbox', 'redrive', 'cli-dead'])).out.trim(), 'redrove 1');
  });
});

describe('server', () => {
  const post = (to: string, body: unknown, raw?: string) =>
    fetch(`${base}/mailbox/${encodeURIComponent(to)}`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: raw ?? JSON.stringify(body),
    });

  it('POST sends (201 created, 200 for a known id); GET receives; 204 at the timeout', async () => {
    const first = await post('http box', { payload: { n: 1 }, id: 'h-1', topic: 'x' });
    assert.equal(first.status, 201);
    assert.deepEqual(await first.json(), { id: 'h-1', to: 'http box', created: true });
    const again = await post('http box', { payload: 'other', id: 'h-1' });
    assert.equal(again.status, 200);
    assert.equal((await again.json()).created, false);

    const got = await fetch(`${base}/mailbox/http%20box`);
    assert.equal(got.status, 200);
    const m = await got.json();
    assert.deepEqual([m.id, m.to, m.topic, m.payload, m.attempts], ['h-1', 'http box', 'x', { n: 1 }, 1]);
    assert.ok(!Number.isNaN(Date.parse(m.createdAt)));

    const empty = await fetch(`${base}/mailbox/http%20box?wait=0.05`);
    assert.equal(empty.status, 204);
  });

  it('GET ?wait= long-polls and is woken by a send', async () => {
    const waiting = fetch(`${base}/mailbox/longpoll?wait=30`);
    await waitFor(() => herald.mailbox.waiting === 1);
    assert.equal((await post('longpoll', { payload: 'woken', id: 'lp-1' })).status, 201);
    const res = await waiting;
    assert.equal(res.status, 200);
    assert.equal((await res.json()).payload, 'woken');
  });

  it('1 MB payloads round-trip byte-exact over HTTP', async () => {
    const text = 'ü€😀abc\n'.repeat(65_536).slice(0, 500_000);
    assert.equal((await post('big', { payload: text, id: 'big-1' })).status, 201);
    const m = await (await fetch(`${base}/mailbox/big`)).json();
    assert.ok(Buffer.from(m.payload).equals(Buffer.from(text)));
  });

  it('clear errors for bad input', async () => {
    const cases: [Promise<Response>, number, string][] = [
      [post('e', null, '{"payload": '), 400, 'INVALID_JSON'],
      [post('e', { payload: 'x', extra: 1 }), 400, 'UNKNOWN_FIELD'],
      [post('e', { topic: 't' }), 400, 'INVALID_PAYLOAD'],
      [post('e', { payload: 'x', id: 5 }), 400, 'INVALID_ARGUMENT'],
      [post('e', { payload: 'x', id: '' }), 400, 'INVALID_ARGUMENT'],
      [post('e', { payload: 'a'.repeat(1024 * 1024 + 10) }), 413, 'BODY_TOO_LARGE'],
      [post('e', [1, 2]), 400, 'INVALID_BODY'],
      [fetch(`${base}/mailbox/e?wait=-1`), 400, 'INVALID_ARGUMENT'],
      [fetch(`${base}/mailbox/e?wait=abc`), 400, 'INVALID_ARGUMENT'],
      [fetch(`${base}/mailbox/e?wait=301`), 400, 'INVALID_ARGUMENT'],
      [fetch(`${base}/mailbox/e?nope=1`), 400, 'UNKNOWN_FIELD'],
      [fetch(`${base}/mailbox/e`, { method: 'DELETE' }), 405, 'METHOD_NOT_ALLOWED'],
    ];
    for (const [res, status, code] of cases) {
      const r = await res;
      assert.equal(r.status, status, code);
      assert.equal((await r.json()).error.code, code);
    }
  });

  it('a long poll whose client goes away consumes nothing', async () => {
    const ac = new AbortController();
    const waiting = fetch(`${base}/mailbox/gone?wait=30`, { signal: ac.signal }).catch(() => null);
    await waitFor(() => herald.mailbox.waiting === 1);
    ac.abort();
    await waiting;
    await waitFor(() => herald.mailbox.waiting === 0);
    assert.equal((await post('gone', { payload: 'stays', id: 'gone-1' })).status, 201);
    const m = await herald.mailbox.receive('gone', { timeoutMs: 5000 });
    assert.equal(m?.id, 'gone-1');
  });
});
