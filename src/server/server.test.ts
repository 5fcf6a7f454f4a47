import assert from 'node:assert/strict';
import { mkdtempSync, chmodSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { Herald } from '../client.js';
import { InvalidOptionError } from '../errors.js';
import { cliProcess } from '../../test/support/cli.js';
import { freshDatabase, type TestDatabase } from '../../test/support/db.js';
import { readSse } from '../../test/support/sse.js';
import { HeraldServer } from './server.js';

let db: TestDatabase;
let herald: Herald;
before(async () => {
  db = await freshDatabase();
  herald = new Herald({ connectionString: db.url, notifier: { queueUsageIntervalMs: 0 } });
});
after(async () => {
  await herald.close();
  await db.drop();
});

describe('herald server', () => {
  it('by default streams the channel named in the path, exactly as given', async () => {
    const server = new HeraldServer(herald, { port: 0 });
    const url = await server.start();
    try {
      const res = await fetch(`${url}/channels/${encodeURIComponent('Straße Orders')}/events`);
      const events = readSse(res);
      const ready = (await events.next()).value!;
      assert.equal(ready.event, 'ready');
      assert.equal(JSON.parse(ready.data).channel, 'Straße Orders');
      await herald.notify('straße orders', 'other channel: case matters');
      await herald.notify('Straße Orders', 'from the library');
      const got = (await events.next()).value!;
      assert.deepEqual([got.event, got.data], ['notification', 'from the library']);
      await events.return(undefined);
    } finally {
      await server.stop();
    }
  });

  it('serves health and a live SSE stream of a topic (channel gw.<topic>), fed by POST notify', async () => {
    const server = new HeraldServer(herald, { port: 0, channelPrefix: 'gw.' });
    const url = await server.start();
    try {
      const health = await fetch(`${url}/health`);
      assert.equal(health.status, 200);
      assert.equal((await health.json()).database, 'ok');
      const res = await fetch(`${url}/channels/Order.Events/events`);
      assert.equal(res.headers.get('content-type'), 'text/event-stream; charset=utf-8');
      const events = readSse(res);
      assert.deepEqual((await events.next()).value, { event: 'ready', data: '{"topic":"Order.Events","channel":"gw.Order.Events"}' });
      const sent = await fetch(`${url}/channels/Order.Events/notify`, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({ payload: 'line 1\nline 2' }),
      });
      assert.equal(sent.status, 202);
      await herald.notify('gw.Order.Events', 'second');
      const strip = (e: { event: string; data: string; id?: string }) => ({ event: e.event, data: e.data, hasId: typeof e.id === 'string' });
      assert.deepEqual(strip((await events.next()).value!), { event: 'notification', data: 'line 1\nline 2', hasId: true });
      assert.deepEqual(strip((await events.next()).value!), { event: 'notification', data: 'second', hasId: true });
      await events.return(undefined);
    } finally {
      await server.stop();
    }
  });

  it('answers bad requests with JSON errors and stable codes', async () => {
    const server = new HeraldServer(herald, { port: 0, maxBodyBytes: 100 });
    const url = await server.start();
    try {
      const post = (path: string, body: string) => fetch(url + path, { method: 'POST', headers: { 'content-type': 'application/json' }, body });
      const cases: [Promise<Response>, number, string][] = [
        [fetch(`${url}/nowhere`), 404, 'NOT_FOUND'],
        [fetch(`${url}/channels/x/notify`), 405, 'METHOD_NOT_ALLOWED'],
        [post('/channels/x/notify', '{'), 400, 'INVALID_JSON'],
        [post('/channels/x/notify', '{"payload":"a","extra":1}'), 400, 'UNKNOWN_FIELD'],
        [post('/channels/x/notify', JSON.stringify({ payload: 'a'.repeat(200) })), 413, 'BODY_TOO_LARGE'],
        [post('/channels/x/notify', '{"payload":5}'), 400, 'INVALID_PAYLOAD'],
        [post(`/channels/${'y'.repeat(64)}/notify`, '{"payload":"a"}'), 400, 'INVALID_TOPIC'],
        [post(`/channels/${encodeURIComponent('a\nb')}/notify`, '{"payload":"a"}'), 400, 'INVALID_TOPIC'],
      ];
      for (const [res, status, code] of cases) {
        const r = await res;
        assert.equal(r.status, status, code);
        assert.equal((await r.json()).error.code, code);
      }
    } finally {
      await server.stop();
    }
  });

  it('requires the access token when one is configured, and refuses a non-local address without one', async () => {
    assert.throws(() => new HeraldServer(herald, { host: '0.0.0.0' }), InvalidOptionError);
    const server = new HeraldServer(herald, { port: 0, token: 's3cret' });
    const url = await server.start();
    try {
      assert.equal((await fetch(`${url}/health`)).status, 200); // probes need no token
      const denied = await fetch(`${url}/channels/x/events`);
      assert.equal(denied.status, 401);
      assert.equal((await denied.json()).error.code, 'UNAUTHORIZED');
      assert.equal((await fetch(`${url}/channels/x/events`, { headers: { authorization: 'Bearer wrong' } })).status, 401);
      const ok = await fetch(`${url}/channels/x/events?access_token=s3cret`);
      assert.equal(ok.status, 200);
      await ok.body?.cancel();
      const notify = await fetch(`${url}/channels/x/notify`, { method: 'POST', headers: { authorization: 'Bearer s3cret', 'content-type': 'application/json' }, body: '{}' });
      assert.equal(notify.status, 202);
    } finally {
      await server.stop();
    }
  });
});

describe('herald serve (the main job)', () => {
  it('starts an embedded Postgres when no DATABASE_URL is given, keeps its data, and serves', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'pgherald-serve-'));
    chmodSync(dir, 0o755);
    const run = async () => {
      const child = cliProcess(['serve', '--port', '0', '--data-dir', join(dir, 'herald')], { DATABASE_URL: '' });
      let out = '';
      let err = '';
      child.stderr!.on('data', (c) => (err += c));
      const url = await new Promise<string>((resolve, reject) => {
        child.stdout!.on('data', (c) => {
          out += c;
          const m = /herald serving on (http:\/\/\S+)/.exec(out);
          if (m) resolve(m[1]);
        });
        child.once('exit', (code) => reject(new Error(`serve exited ${code}: ${err}`)));
      });
      const exited = new Promise<number | null>((r) => child.once('exit', (c) => r(c)));
      return { child, url, exited, stderr: () => err };
    };
    try {
      const first = await run();
      const health = await (await fetch(`${first.url}/health`)).json();
      assert.deepEqual([health.status, health.database, health.notifier], ['ok', 'ok', 'listening']);
      assert.match(first.stderr(), /applied migrations 1/);
      first.child.kill('SIGINT');
      assert.equal(await first.exited, 0);
      // Second run: same data folder, nothing left to migrate.
      const second = await run();
      assert.equal((await fetch(`${second.url}/health`)).status, 200);
      assert.doesNotMatch(second.stderr(), /applied migrations/);
      second.child.kill('SIGINT');
      assert.equal(await second.exited, 0);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
