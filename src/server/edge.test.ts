/**
 * The HTTP edge of `herald serve`: limits on sockets, headers, URLs, names and bodies;
 * input ranges refused with 400 and our own text; internal errors answered with a
 * request id and logged once.
 */
import assert from 'node:assert/strict';
import { connect, type Socket } from 'node:net';
import { describe, it } from 'node:test';
import { useServer, type ServerFixture } from '../../test/support/server.js';
import { waitFor } from '../../test/support/wait.js';
import { WsClient } from '../../test/support/ws.js';
import { serverOptionsFrom } from '../cli/serve.js';
import { HeraldServer, SERVER_DEFAULTS } from './server.js';

let f: ServerFixture;
const logged: { err: unknown; requestId: string }[] = [];
useServer(
  {
    herald: { notifier: { queueUsageIntervalMs: 0 } },
    server: { maxBodyBytes: 4096, onInternalError: (err, c) => logged.push({ err, requestId: c.requestId }) },
  },
  (fixture) => (f = fixture),
);

/** Sends raw bytes and resolves with everything received until the server closes (or `timeoutMs`). */
function raw(port: number, bytes: string | Buffer, timeoutMs = 10_000): Promise<string> {
  return new Promise((resolve, reject) => {
    const s = connect(port, '127.0.0.1');
    const chunks: Buffer[] = [];
    const timer = setTimeout(() => {
      s.destroy();
      reject(new Error(`no close within ${timeoutMs} ms; got ${Buffer.concat(chunks).toString('latin1').slice(0, 200)}`));
    }, timeoutMs);
    s.on('data', (d) => chunks.push(d));
    s.on('error', () => {});
    s.on('close', () => {
      clearTimeout(timer);
      resolve(Buffer.concat(chunks).toString('latin1'));
    });
    s.on('connect', () => {
      s.write(bytes);
      s.end();
    });
  });
}

const status = (text: string) => Number(/^HTTP\/1\.1 (\d{3})/.exec(text)?.[1]);
const bodyOf = (text: string) => JSON.parse(text.slice(text.indexOf('\r\n\r\n') + 4));

async function post(path: string, body: unknown): Promise<{ status: number; body: any }> {
  const res = await fetch(f.base + path, { method: 'POST', headers: { 'content-type': 'application/json' }, body: typeof body === 'string' ? body : JSON.stringify(body) });
  return { status: res.status, body: res.status === 204 ? null : await res.json() };
}

describe('herald serve edge', () => {
  it('answers malformed HTTP, oversize headers and URLs with typed JSON errors, and survives a bad upgrade URL', async () => {
    const port = Number(new URL(f.base).port);
    const host = `Host: 127.0.0.1:${port}`;
    const bad = await raw(port, 'NOT HTTP AT ALL\r\n\r\n');
    assert.equal(status(bad), 400);
    assert.equal(bodyOf(bad).error.code, 'BAD_REQUEST');
    const big = await raw(port, `GET /health HTTP/1.1\r\n${host}\r\nX-Big: ${'a'.repeat(20_000)}\r\n\r\n`);
    assert.equal(status(big), 431);
    assert.equal(bodyOf(big).error.code, 'HEADERS_TOO_LARGE');
    const long = await raw(port, `GET /health?${'x'.repeat(9000)} HTTP/1.1\r\n${host}\r\nconnection: close\r\n\r\n`);
    assert.equal(status(long), 414);
    assert.equal(bodyOf(long).error.code, 'URL_TOO_LONG');
    const badUrl = await raw(port, `GET //[ HTTP/1.1\r\n${host}\r\nconnection: close\r\n\r\n`);
    assert.equal(status(badUrl), 400);
    assert.equal(bodyOf(badUrl).error.code, 'BAD_URL');
    // The crash of issue 12: an upgrade whose URL cannot be parsed.
    const upgrade = await raw(port, `GET //[ HTTP/1.1\r\n${host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n`);
    assert.equal(status(upgrade), 400);
    assert.equal(bodyOf(upgrade).error.code, 'BAD_URL');
    const elsewhere = await raw(port, `GET /health HTTP/1.1\r\n${host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n`);
    assert.equal(status(elsewhere), 404);
    assert.equal((await fetch(`${f.base}/health`)).status, 200);
  });

  it('bounds bodies (chunked too), JSON depth, names in paths, and refuses NUL', async () => {
    const port = Number(new URL(f.base).port);
    const chunk = 'a'.repeat(1000);
    const chunked = await raw(
      port,
      `POST /channels/t/notify HTTP/1.1\r\nHost: 127.0.0.1:${port}\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n` +
        Array.from({ length: 10 }, () => `3e8\r\n${chunk}\r\n`).join('') +
        '0\r\n\r\n',
    );
    assert.equal(status(chunked), 413);
    assert.equal(bodyOf(chunked).error.code, 'BODY_TOO_LARGE');
    const deep = await post('/jobs', '{"kind":"k","payload":' + '['.repeat(65) + ']'.repeat(65) + '}');
    assert.deepEqual([deep.status, deep.body.error.code], [400, 'INVALID_JSON']);
    const fine = await post('/jobs', '{"kind":"k","payload":' + '['.repeat(60) + ']'.repeat(60) + '}');
    assert.equal(fine.status, 201);
    const nulPayload = await post('/mailbox/a', { payload: { x: 'a\u0000' } });
    assert.deepEqual([nulPayload.status, nulPayload.body.error.code], [400, 'INVALID_PAYLOAD']);
    const nulKind = await post('/jobs', { kind: 'k\u0000' });
    assert.deepEqual([nulKind.status, nulKind.body.error.code], [400, 'INVALID_ARGUMENT']);
    const nulPath = await post('/mailbox/a%00b', { payload: 'x' });
    assert.deepEqual([nulPath.status, nulPath.body.error.code], [400, 'BAD_PATH']);
    const longName = await post(`/mailbox/${'m'.repeat(1025)}`, { payload: 'x' });
    assert.deepEqual([longName.status, longName.body.error.code], [400, 'INVALID_NAME']);
    const longTo = await post(`/mailbox/${'m'.repeat(1001)}`, { payload: 'x' });
    assert.deepEqual([longTo.status, longTo.body.error.code], [400, 'INVALID_ARGUMENT']);
  });

  it('refuses numbers out of range with 400 and our own message, never a 500 or Postgres text', async () => {
    for (const [field, value] of [
      ['maxAttempts', 1e12],
      ['delayMs', 1e20],
      ['priority', 1e9],
      ['runAt', '+275760-09-13T00:00:00.000Z'],
      ['uniqueKey', 'u'.repeat(1001)],
      ['stages', 'x'],
    ] as const) {
      const r = await post('/jobs', { kind: 'k', [field]: value });
      assert.deepEqual([r.status, r.body.error.code], [400, 'INVALID_ARGUMENT'], `${field}: ${JSON.stringify(r.body)}`);
      assert.match(r.body.error.message, new RegExp(field));
    }
    const job = await fetch(`${f.base}/jobs/9999999999999999999`);
    assert.equal(job.status, 400);
    assert.equal((await job.json()).error.code, 'INVALID_ARGUMENT');
    await f.herald.topics.create('edge');
    const res = await fetch(`${f.base}/topics/edge/events`, { headers: { 'last-event-id': '99999999999999999999999:1' } });
    assert.equal(res.status, 400);
    const body = await res.json();
    assert.equal(body.error.code, 'INVALID_ARGUMENT');
    assert.doesNotMatch(body.error.message, /out of range for type|bigint|xid8/);
    const redrive = await post('/api/dashboard/panels/jobs/actions/retry', { args: { id: '9223372036854775808' } });
    assert.equal(redrive.status, 400);
    const dead = await fetch(`${f.base}/outbox/dead?limit=1e20`);
    assert.equal(dead.status, 400);
    assert.equal((await dead.json()).error.code, 'INVALID_ARGUMENT');
    const topicDead = await fetch(`${f.base}/topics/edge/dead?limit=0`);
    assert.deepEqual([topicDead.status, (await topicDead.json()).error.code], [400, 'INVALID_ARGUMENT']);
    // ?lastEventId= is read like the header (a malformed one is refused the same way).
    const viaQuery = await fetch(`${f.base}/topics/edge/events?lastEventId=99999999999999999999999:1`);
    assert.deepEqual([viaQuery.status, (await viaQuery.json()).error.code], [400, 'INVALID_ARGUMENT']);
  });

  it('checks the body of PUT /topics/<name> like every JSON body: depth, fields, NUL', async () => {
    const put = async (body: string) => {
      const r = await fetch(`${f.base}/topics/put-checked`, { method: 'PUT', headers: { 'content-type': 'application/json' }, body });
      return [r.status, r.status >= 400 ? (await r.json()).error.code : (await r.json()).created];
    };
    assert.deepEqual(await put('{"partitions":' + '['.repeat(65) + ']'.repeat(65) + '}'), [400, 'INVALID_JSON']);
    assert.deepEqual(await put('{"nope":1}'), [400, 'UNKNOWN_FIELD']);
    assert.deepEqual(await put('{"partitions":"a\\u0000"}'), [400, 'INVALID_ARGUMENT']);
    assert.deepEqual(await put(''), [201, true]);
  });

  it('answers an internal error with a request id (body and x-request-id), logs it once, and maps Postgres data errors to 400', async () => {
    f.server.router.add('GET', /^\/test\/boom$/, () => {
      throw Object.assign(new Error('relation "secret_table" does not exist'), { code: '42P01' });
    }, { open: true });
    f.server.router.add('GET', /^\/test\/data$/, () => {
      throw Object.assign(new Error('value "99999999999999999999" is out of range for type bigint'), { code: '22003' });
    }, { open: true });
    const boom = await fetch(`${f.base}/test/boom`);
    assert.equal(boom.status, 500);
    const id = boom.headers.get('x-request-id');
    assert.ok(id);
    const body = await boom.json();
    assert.equal(body.error.code, 'INTERNAL');
    assert.equal(body.error.requestId, id);
    assert.doesNotMatch(JSON.stringify(body), /secret_table/);
    assert.deepEqual(logged.map((l) => l.requestId), [id]);
    const data = await fetch(`${f.base}/test/data`);
    assert.equal(data.status, 400);
    const d = await data.json();
    assert.equal(d.error.code, 'INVALID_ARGUMENT');
    assert.doesNotMatch(d.error.message, /bigint/);
    assert.equal(logged.length, 1, 'a client mistake is not logged as an internal error');
  });

  it('a WebSocket request that fails inside gets INTERNAL with a request id, logged once, without the database text', async () => {
    const ws = await WsClient.connect(f.base.replace('http', 'ws') + '/ws');
    const notify = f.herald.notify;
    (f.herald as { notify: unknown }).notify = async () => {
      throw Object.assign(new Error('permission denied for secret_schema'), { code: '42501' });
    };
    try {
      const before = logged.length;
      const reply = await ws.request({ type: 'publish', topic: 'x', payload: 'p', ref: 1 });
      assert.equal(reply.code, 'INTERNAL');
      assert.equal(reply.status, 500);
      assert.ok(reply.requestId);
      assert.doesNotMatch(JSON.stringify(reply), /secret_schema/);
      assert.deepEqual(logged.slice(before).map((l) => l.requestId), [reply.requestId]);
    } finally {
      (f.herald as { notify: unknown }).notify = notify;
      ws.close();
    }
  });

  it('closes a socket that sends no headers within headersTimeoutMs with 408', async () => {
    const server = new HeraldServer(f.herald, { port: 0, headersTimeoutMs: 300, requestTimeoutMs: 300 });
    const url = await server.start();
    try {
      const port = Number(new URL(url).port);
      const s = connect(port, '127.0.0.1');
      const chunks: Buffer[] = [];
      s.on('data', (d) => chunks.push(d));
      s.write('GET /health HTTP/1.1\r\n'); // and never the end of the headers
      await new Promise((r) => s.on('close', r));
      assert.equal(status(Buffer.concat(chunks).toString('latin1')), 408);
    } finally {
      await server.stop();
    }
  });

  it('herald serve takes --max-connections (or HERALD_MAX_CONNECTIONS); options are validated', () => {
    assert.equal(serverOptionsFrom({ maxConnections: '50' }, {}).maxConnections, 50);
    assert.equal(serverOptionsFrom({}, { HERALD_MAX_CONNECTIONS: '70' }).maxConnections, 70);
    assert.equal(serverOptionsFrom({}, {}).maxConnections, undefined);
    assert.equal(SERVER_DEFAULTS.maxConnections, 21_000);
    assert.throws(() => new HeraldServer(f.herald, { maxConnections: 0 }), { code: 'INVALID_OPTION' });
    assert.throws(() => new HeraldServer(f.herald, { headersTimeoutMs: 5000, requestTimeoutMs: 1000 }), { code: 'INVALID_OPTION' });
  });

  it('caps open sockets: a flood of idle sockets past maxConnections does not stop /health and /livez', async () => {
    const cap = 50;
    const server = new HeraldServer(f.herald, { port: 0, maxConnections: cap });
    const url = await server.start();
    const flood: Socket[] = [];
    try {
      const port = Number(new URL(url).port);
      let open = 0;
      let closed = 0;
      await Promise.all(
        Array.from({ length: 200 }, () => new Promise<void>((resolve) => {
          const s = connect(port, '127.0.0.1');
          flood.push(s);
          s.on('error', () => {});
          s.on('close', () => {
            closed++;
            resolve();
          });
          s.on('connect', () => {
            open++;
            resolve();
          });
        })),
      );
      // Past the cap, sockets are closed by the server (refused or evicted), never queued.
      await waitFor(() => flood.filter((s) => !s.destroyed && !s.readableEnded).length <= cap, { what: `at most ${cap} flood sockets open` });
      assert.ok(closed + open >= 200);
      for (const path of ['/health', '/livez', '/health']) {
        const res = await fetch(url + path, { headers: { connection: 'close' } });
        assert.equal(res.status, 200, path);
        await res.arrayBuffer();
      }
    } finally {
      for (const s of flood) s.destroy();
      await server.stop();
    }
  });
});
