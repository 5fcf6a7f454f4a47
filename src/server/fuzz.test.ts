/**
 * `herald serve` under hostile clients: thousands of generated malformed requests,
 * upgrades and WebSocket frames over raw sockets (node:net), from a seeded generator
 * (set HERALD_FUZZ_SEED to replay a run; the seed is printed). What must hold: the
 * process keeps serving (`/health` answers 200 during and after the run), and no
 * client mistake is answered with a 5xx.
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { connect } from 'node:net';
import { describe, it } from 'node:test';
import { scaled } from '../../test/support/scale.js';
import { useServer, type ServerFixture } from '../../test/support/server.js';

let f: ServerFixture;
const internalErrors: unknown[] = [];
useServer(
  {
    herald: { notifier: { queueUsageIntervalMs: 0 } },
    server: {
      maxBodyBytes: 64 * 1024,
      maxMessageBytes: 1000,
      headersTimeoutMs: 2000,
      requestTimeoutMs: 3000,
      wsMessagesPerSecond: 10_000,
      maxConnectionsPerToken: 10_000,
      onInternalError: (err) => internalErrors.push(err),
    },
  },
  (fixture) => (f = fixture),
);

// ---- a small seeded generator (mulberry32) ----
function rng(seed: number) {
  let a = seed >>> 0;
  const next = () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
  const int = (n: number) => Math.floor(next() * n);
  const pick = <T>(xs: readonly T[]): T => xs[int(xs.length)];
  const bytes = (n: number) => Buffer.from(Array.from({ length: n }, () => int(256)));
  const ascii = (n: number) => Array.from({ length: n }, () => String.fromCharCode(32 + int(95))).join('');
  return { next, int, pick, bytes, ascii };
}
type Rng = ReturnType<typeof rng>;

const NAMES = ['t', 'orders', 'Straße', '%00', '%ff', '%E0%A4%A', '%', 'a%2Fb', '..', '%2e%2e', 'x'.repeat(70), 'y'.repeat(1100), '%F0%9F%98%80', '%C0%AF', '%uD800', ''];
const POST_ROUTES = (r: Rng) => [
  `/channels/${r.pick(NAMES)}/notify`,
  '/jobs',
  `/mailbox/${r.pick(NAMES)}`,
  `/topics/${r.pick(['fuzz', 'fuzz', r.pick(NAMES)])}/publish`,
  '/outbox/redrive',
  `/api/dashboard/panels/${r.pick(['jobs', 'outbox', 'mailbox', r.pick(NAMES)])}/actions/${r.pick(['retry', 'cancel', 'redrive', r.pick(NAMES)])}`,
];
const GET_ROUTES = (r: Rng) => [
  '/health',
  '/livez',
  '/readyz',
  '/metrics',
  '/client.js',
  '/',
  '/api/dashboard',
  `/jobs/${r.pick(['1', '0', '9223372036854775807', '9223372036854775808', '99999999999999999999', '-1', 'abc', '1e3'])}`,
  `/jobs/events?id=${r.pick(NAMES)}`,
  `/mailbox/${r.pick(NAMES)}?wait=${r.pick(['0', '-1', 'NaN', '1e309', 'abc', '', '0.0001'])}&topic=${r.pick(NAMES)}`,
  `/topics/${r.pick(['fuzz', r.pick(NAMES)])}/events?from=${r.pick(['earliest', 'latest', '1:1', '99999999999999999999999:1', '1:99999999999999999999', 'x', '%00', '18446744073709551616:1'])}`,
  `/outbox/dead?limit=${r.pick(['1', '0', '-5', '1e20', 'abc', '10001', '1.5'])}`,
  '/outbox',
  `/changes/${r.pick(NAMES)}/events`,
  `/events?topic=${r.pick(NAMES)}&stream=${r.pick(['topic/fuzz', 'x', '/', 'nope/x', 'topic/', `topic/${r.pick(NAMES)}`])}`,
  `/streams/${r.pick(['topic', 'nope', '%'])}/${r.pick(NAMES)}/events`,
  `/channels/${r.pick(NAMES)}/events`,
  `/${r.ascii(r.int(40))}`,
];

const JSON_BODIES = (r: Rng): string[] => [
  '',
  '{',
  '}',
  'null',
  '[]',
  '42',
  '"str"',
  'true',
  '{"payload":',
  '['.repeat(r.pick([65, 100, 5000, 60_000])),
  '{"a":'.repeat(r.pick([65, 200, 10_000])) + '1' + '}'.repeat(10),
  JSON.stringify({ payload: '\u0000' }),
  JSON.stringify({ payload: { deep: '\u0000' } }),
  JSON.stringify({ payload: 'x'.repeat(r.pick([10, 1001, 7999, 70_000])) }),
  JSON.stringify({ kind: 'k\u0000', payload: {} }),
  JSON.stringify({ kind: 'k', payload: {}, maxAttempts: r.pick([0, -1, 1e12, 1.5, 'x', null, 1e308]) }),
  JSON.stringify({ kind: 'k', delayMs: r.pick([1e20, -1, 'x', 1e308]) }),
  JSON.stringify({ kind: 'k', priority: r.pick([1e9, -1e9, 0.5, 'x']) }),
  JSON.stringify({ kind: 'k', runAt: r.pick(['x', '+275760-09-13T00:00:00.000Z', '0001-01-01', '-271821-04-20T00:00:00Z', 42]) }),
  JSON.stringify({ kind: 'k', stages: r.pick(['x', [], [1], ['a', 'a'], [''.padEnd(200, 's')]]) }),
  JSON.stringify({ kind: 'k', uniqueKey: r.pick(['', 'u'.repeat(2000), 5, 'u\u0000']) }),
  JSON.stringify({ kind: 'k'.repeat(r.pick([100, 101, 5000])), queue: r.pick(['', 'q'.repeat(200), 7]) }),
  JSON.stringify({ kind: 'k', announce: 'yes' }),
  JSON.stringify({ ids: r.pick([[1], 'x', ['not-a-uuid'], [], null]), all: r.pick([true, 'yes', undefined]) }),
  JSON.stringify({ all: true }),
  JSON.stringify({ args: r.pick([null, 'x', 5, { id: '99999999999999999999' }, { id: '9223372036854775808' }, { id: 'x' }, { id: '1' }, { to: '\u0000', id: 'x' }]) }),
  JSON.stringify({ payload: 1, key: r.pick([5, 'k\u0000', 'k'.repeat(2000), null]) }),
  JSON.stringify({ payload: 1, topic: r.pick([5, '', 't\u0000', 'x'.repeat(2000)]), id: r.pick([5, '', 'i\u0000', 'x'.repeat(2000)]) }),
  JSON.stringify({ payload: 1, unknown: 1, ['x'.repeat(5000)]: 2 }),
  '{"payload":"\\ud800"}',
  '{"payload":"\\u0000"}',
  '{"__proto__":{"admin":true},"payload":"p"}',
  '{"payload":1e999999}',
  '{"payload":"a"' + ',"payload":"b"'.repeat(100) + '}',
  r.bytes(r.int(200)).toString('latin1'),
];

const crlf = (lines: string[]) => lines.join('\r\n') + '\r\n\r\n';

/** One generated HTTP case: the byte chunks a client writes (then it half-closes). */
function httpCase(r: Rng, host: string): Buffer[] {
  const k = r.int(11);
  const b = (s: string | Buffer) => (typeof s === 'string' ? Buffer.from(s, 'latin1') : s);
  switch (k) {
    case 0: // garbage request lines
      return [
        b(
          r.pick([
            () => r.bytes(1 + r.int(300)),
            () => b(`${r.ascii(r.int(20))}\r\n\r\n`),
            () => b(`GET\r\n\r\n`),
            () => b(`GET / HTTP/9.9\r\nHost: ${host}\r\n\r\n`),
            () => b(`GET  /health  HTTP/1.1\r\n\r\n`),
            () => b(`${'G'.repeat(5000)} / HTTP/1.1\r\n\r\n`),
            () => b('PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n'),
            () => b(`GET /health HTTP/1.1\nHost: ${host}\n\n`),
            () => b(`GET /health HTTP/1.0\r\n\r\n`),
            () => b(`\r\n\r\n\r\nGET /livez HTTP/1.1\r\nHost: ${host}\r\n\r\n`),
          ])(),
        ),
      ];
    case 1: { // bad percent-encoding / odd targets
      const target = r.pick([
        `/channels/${r.pick(NAMES)}/events`,
        `/mailbox/%E0%A4%A`,
        `/jobs/%zz`,
        '//[',
        'http://[::1',
        'http://a:b@[/x',
        '*',
        `/${'%'.repeat(r.int(50))}`,
        `/?${'a=%&'.repeat(r.int(200))}`,
        `/health?${'x'.repeat(r.pick([100, 9000, 20_000]))}`,
        `/events?topic=%ff%fe&stream=%`,
        `http://evil.example/health`,
        `/health#frag`,
        `/\u00ff\u00fe`,
      ]);
      return [b(crlf([`${r.pick(['GET', 'POST', 'DELETE'])} ${target} HTTP/1.1`, `Host: ${host}`, 'content-length: 0']))];
    }
    case 2: { // huge or odd headers
      const route = r.pick(GET_ROUTES(r));
      const headers = r.pick([
        () => [`X-Big: ${'a'.repeat(r.pick([1000, 17_000, 70_000]))}`],
        () => Array.from({ length: r.pick([100, 3000]) }, (_, i) => `X-H${i}: v`),
        () => ['X-NoColon'],
        () => ['X-Nul: a\u0000b'],
        () => [' X-Leading-Space: v'],
        () => ['X-Fold: a', ' continued'],
        () => [`Authorization: Bearer ${r.ascii(r.int(300))}`],
        () => [`Authorization: ${r.pick(['Basic x', 'Bearer', 'bearer  ', '\u00ff\u00fe'])}`],
        () => [`Last-Event-ID: ${r.pick(['99999999999999999999999:1', '1:99999999999999999999', '\u00ff', 'x'.repeat(5000), '-1'])}`],
        () => [`Cookie: ${'c=1; '.repeat(2000)}`],
        () => [`Host: ${r.pick(['', '[', 'a b', '\u00ff'])}`, `Host: second`],
        () => [`Content-Type: ${r.ascii(50)}`],
      ])();
      const hasHost = headers.some((h) => /^host:/i.test(h));
      return [b(crlf([`GET ${route} HTTP/1.1`, ...(hasHost ? [] : [`Host: ${host}`]), ...headers]))];
    }
    case 3: { // bad methods
      const m = r.pick(['FOO', 'get', 'G E T', 'CONNECT 127.0.0.1:1', 'TRACE', 'OPTIONS *', 'PATCH', 'PUT', 'DELETE', 'HEAD', 'M-SEARCH', r.ascii(8)]);
      const target = m.includes(' ') && (m.startsWith('CONNECT') || m.startsWith('OPTIONS')) ? '' : ` ${r.pick([...GET_ROUTES(r), ...POST_ROUTES(r)])}`;
      return [b(crlf([`${m}${target} HTTP/1.1`, `Host: ${host}`, 'content-length: 0']))];
    }
    case 4: { // absurd content-lengths
      const cl = r.pick(['99999999999999999999', '-1', 'abc', '1e3', '18446744073709551616', '100, 200', ' 5', '0x10', String(64 * 1024 + 1), '9007199254740993']);
      const extra = r.next() < 0.3 ? ['Content-Length: 3'] : [];
      return [b(crlf([`POST ${r.pick(POST_ROUTES(r))} HTTP/1.1`, `Host: ${host}`, 'content-type: application/json', `Content-Length: ${cl}`, ...extra]) + '{"payload":"x"}')];
    }
    case 5: { // chunked garbage
      const route = r.pick(POST_ROUTES(r));
      const head = crlf([`POST ${route} HTTP/1.1`, `Host: ${host}`, 'content-type: application/json', 'Transfer-Encoding: chunked', ...(r.next() < 0.2 ? ['Content-Length: 10'] : [])]);
      const body = r.pick([
        () => 'zz\r\n{}\r\n0\r\n\r\n',
        () => 'FFFFFFFFFFFFFFFF\r\n{}\r\n',
        () => '2\r\n{}0\r\n\r\n',
        () => '2;ext=\u0001\r\n{}\r\n0\r\n\r\n',
        () => '-2\r\n{}\r\n0\r\n\r\n',
        () => { // over maxBodyBytes in many chunks
          const chunk = 'a'.repeat(8192);
          return Array.from({ length: 10 }, () => `2000\r\n${chunk}\r\n`).join('') + '0\r\n\r\n';
        },
        () => '5\r\n{"pay\r\n5\r\nload"\r\n5\r\n:"x"}\r\n0\r\n\r\n',
        () => '2\r\n{}\r\n0\r\nTrailer: \u0000\r\n\r\n',
        () => r.bytes(100).toString('latin1'),
      ])();
      return [b(head + body)];
    }
    case 6: { // truncated bodies
      const body = r.pick(JSON_BODIES(r));
      const declared = Buffer.byteLength(body) + 1 + r.int(1000);
      return [b(crlf([`POST ${r.pick(POST_ROUTES(r))} HTTP/1.1`, `Host: ${host}`, 'content-type: application/json', `Content-Length: ${declared}`])), Buffer.from(body)];
    }
    case 7:
    case 8: { // bad JSON to every POST route
      const body = Buffer.from(r.pick(JSON_BODIES(r)));
      return [b(crlf([`POST ${r.pick(POST_ROUTES(r))} HTTP/1.1`, `Host: ${host}`, `content-type: ${r.pick(['application/json', 'application/json; charset=utf-8', 'text/plain'])}`, `Content-Length: ${body.length}`])), body];
    }
    case 9: { // pipelined requests, some bad
      const one = () => r.pick([`GET /livez HTTP/1.1\r\nHost: ${host}\r\n\r\n`, `GET /jobs/abc HTTP/1.1\r\nHost: ${host}\r\n\r\n`, `${r.ascii(10)}\r\n\r\n`]);
      return [b(one() + one() + one())];
    }
    default: { // bad upgrades
      const target = r.pick(['/ws', '/ws?topic=%ff', '/ws?topic=' + 'x'.repeat(100), '/ws?stream=%', '/ws?stream=topic/nope', '//[', '/health', '/channels/x/events', '/ws?lastEventId=99999999999999999999999', '/' + 'w'.repeat(9000)]);
      const key = r.pick([randomBytes(16).toString('base64'), '', 'short', 'x'.repeat(100), '\u00ff']);
      const version = r.pick(['13', '8', '', 'abc', '13, 8']);
      const upgrade = r.pick(['websocket', 'WebSocket', 'h2c', 'foo', '']);
      const lines = [`GET ${target} HTTP/1.1`, `Host: ${host}`, `Upgrade: ${upgrade}`, 'Connection: Upgrade'];
      if (key || r.next() < 0.5) lines.push(`Sec-WebSocket-Key: ${key}`);
      if (version) lines.push(`Sec-WebSocket-Version: ${version}`);
      return [b(crlf(lines)), r.bytes(r.int(64))];
    }
  }
}

/** A WebSocket frame as a client could write it (masked unless told otherwise). */
function frame(opcode: number, payload: Buffer, o: { fin?: boolean; rsv?: number; mask?: boolean; length?: bigint } = {}): Buffer {
  const mask = o.mask ?? true;
  const len = o.length ?? BigInt(payload.length);
  const head: number[] = [((o.fin ?? true) ? 0x80 : 0) | ((o.rsv ?? 0) << 4) | opcode];
  if (len < 126n) head.push((mask ? 0x80 : 0) | Number(len));
  else if (len < 65536n) head.push((mask ? 0x80 : 0) | 126, Number(len >> 8n) & 255, Number(len) & 255);
  else {
    head.push((mask ? 0x80 : 0) | 127);
    for (let i = 7; i >= 0; i--) head.push(Number((len >> BigInt(i * 8)) & 255n));
  }
  const key = mask ? randomBytes(4) : Buffer.alloc(0);
  const body = Buffer.from(payload);
  if (mask) for (let i = 0; i < body.length; i++) body[i] ^= key[i % 4];
  return Buffer.concat([Buffer.from(head), key, body]);
}

/** Frames sent after a valid handshake: protocol garbage and hostile JSON messages. */
function wsFrames(r: Rng): Buffer[] {
  const json = (v: unknown) => frame(1, Buffer.from(JSON.stringify(v)));
  const out: Buffer[] = [];
  const n = 1 + r.int(6);
  for (let i = 0; i < n; i++) {
    out.push(
      r.pick([
        () => frame(r.pick([3, 4, 5, 6, 7, 0xb, 0xc, 0xd, 0xe, 0xf]), r.bytes(r.int(20))),
        () => frame(1, Buffer.from('{}'), { rsv: 1 + r.int(7) }),
        () => frame(1, Buffer.from('{"type":"ping"}'), { mask: false }),
        () => frame(2, r.bytes(r.int(100)), { length: r.pick([2n ** 63n - 1n, 2n ** 40n, 100_000n, 2n ** 64n - 1n]) }),
        () => frame(1, Buffer.from([0xff, 0xfe, 0xc3, 0x28, 0xe2, 0x82])),
        () => frame(0, r.bytes(10)),
        () => Buffer.concat([frame(1, Buffer.from('{"type":'), { fin: false }), frame(1, Buffer.from('"ping"}'))]),
        () => Buffer.concat([frame(1, Buffer.from('{"ty'), { fin: false }), frame(9, Buffer.from('p'), { fin: false }), frame(0, Buffer.from('pe":"ping"}'))]),
        () => frame(9, r.bytes(126 + r.int(100))),
        () => frame(8, Buffer.from([0x03, 0xe7, 0xff])), // close code 999 + bad UTF-8 reason
        () => frame(8, Buffer.from([0x01])),
        () => frame(1, Buffer.from('x'.repeat(2100))), // over maxMessageBytes + 1024
        () => r.bytes(1 + r.int(50)),
        () => frame(1, Buffer.from(r.pick(['{', '[]', 'null', '"x"', '['.repeat(1500)]))),
        () => json({ type: 'subscribe', topic: r.pick(NAMES.map(decodeURIComponentSafe)), lastEventId: r.pick(['x', '999999999999999999999', 5, null]) }),
        () => json({ type: 'subscribe', stream: r.pick(['topic/fuzz', 'topic/nope', 'x', 'nope/x', `topic/${'\u0000'}`]), lastEventId: r.pick(['1:1', '99999999999999999999999:1', '1:99999999999999999999', 'x']) }),
        () => json({ type: 'unsubscribe', topic: r.pick(['t', 5, null]), stream: r.pick([undefined, 'x', 'topic/fuzz']) }),
        () => json({ type: 'publish', topic: r.pick(['t', '', 't\u0000', 'x'.repeat(100), 5]), payload: r.pick(['p', '\u0000', 5, { a: 1 }, 'x'.repeat(2000)]) }),
        () => json({ type: r.pick(['nope', 5, null, '']), ref: r.pick([1, 'x', { a: [1] }]) }),
        () => json({ type: 'subscribe', topic: 'é'.repeat(60) }),
      ])(),
    );
  }
  return out;
}

function decodeURIComponentSafe(s: string): string {
  try {
    return decodeURIComponent(s);
  } catch {
    return s;
  }
}

interface Outcome {
  statuses: number[];
  timedOut: boolean;
}

/** Writes `chunks` on a raw socket (one write each), half-closes, and collects the status lines of what comes back. */
function exchange(port: number, chunks: Buffer[], options: { ws?: Buffer[]; timeoutMs: number }): Promise<Outcome> {
  return new Promise((resolve) => {
    const socket = connect(port, '127.0.0.1');
    let data = Buffer.alloc(0);
    let settled = false;
    let upgraded = false;
    const done = (timedOut: boolean) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      socket.destroy();
      const text = data.toString('latin1');
      const statuses = [...text.matchAll(/(?:^|\r\n)HTTP\/1\.[01] (\d{3}) /g)].map((m) => Number(m[1]));
      resolve({ statuses, timedOut });
    };
    const timer = setTimeout(() => done(true), options.timeoutMs);
    socket.on('error', () => done(false));
    socket.on('close', () => done(false));
    socket.on('data', (d: Buffer) => {
      data = Buffer.concat([data, d]).subarray(0, 64 * 1024);
      const text = data.toString('latin1');
      // A stream (SSE) or an open WebSocket does not end on its own: its status is all we need.
      if (!options.ws && /\r\n\r\n/.test(text) && /content-type: text\/event-stream/i.test(text)) return done(false);
      if (options.ws && !upgraded && text.startsWith('HTTP/1.1 101') && text.includes('\r\n\r\n')) {
        upgraded = true;
        for (const c of options.ws) socket.write(c);
        socket.end();
      }
    });
    socket.on('connect', () => {
      for (const c of chunks) socket.write(c);
      if (!options.ws) socket.end();
    });
  });
}

async function health(base: string): Promise<number> {
  const res = await fetch(`${base}/health`);
  await res.arrayBuffer();
  return res.status;
}

describe('herald serve survives any client', () => {
  it('answers thousands of malformed requests, upgrades and WebSocket frames without a 5xx, and keeps serving /health', async () => {
    const seed = Number(process.env.HERALD_FUZZ_SEED ?? Math.floor(Math.random() * 2 ** 31));
    console.log(`fuzz seed ${seed} (replay with HERALD_FUZZ_SEED=${seed})`);
    const r = rng(seed);
    const { base, herald, server } = f;
    await herald.notifier.start();
    await herald.topics.create('fuzz');
    await herald.topics.publish('fuzz', { hello: 1 });
    const port = Number(new URL(base).port);
    const host = `127.0.0.1:${port}`;
    const total = scaled(2000, 300);
    const concurrency = 16;
    const handshake = () =>
      Buffer.from(crlf(['GET /ws?topic=t HTTP/1.1', `Host: ${host}`, 'Upgrade: websocket', 'Connection: Upgrade', `Sec-WebSocket-Key: ${randomBytes(16).toString('base64')}`, 'Sec-WebSocket-Version: 13']));

    const fivexx: string[] = [];
    let done = 0;
    let timeouts = 0;
    const cases = Array.from({ length: total }, (_, i) => {
      if (r.next() < 0.15) return { i, chunks: [handshake()], ws: wsFrames(r) };
      return { i, chunks: httpCase(r, host), ws: undefined };
    });
    let next = 0;
    const worker = async () => {
      while (next < cases.length) {
        const c = cases[next++];
        const out = await exchange(port, c.chunks, { ws: c.ws, timeoutMs: 8000 });
        if (out.timedOut) timeouts++;
        for (const s of out.statuses) {
          if (s >= 500) fivexx.push(`case ${c.i} (${s}): ${JSON.stringify(Buffer.concat(c.chunks).toString('latin1').slice(0, 160))}`);
        }
        if (++done % 250 === 0) assert.equal(await health(base), 200, `/health after ${done} cases`);
      }
    };
    await Promise.all(Array.from({ length: concurrency }, worker));
    console.log(`fuzz: ${done} cases, ${timeouts} ran into the client timeout`);
    assert.equal(await health(base), 200);
    const livez = await fetch(`${base}/livez`);
    assert.equal(livez.status, 200);
    assert.deepEqual(fivexx, [], `5xx answers to client mistakes (seed ${seed})`);
    assert.deepEqual(internalErrors.map(String), [], 'internal errors logged');
    // The server still does real work after the run.
    const res = await fetch(`${base}/channels/after/notify`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: '{"payload":"ok"}' });
    assert.equal(res.status, 202);
    assert.ok(server.clients >= 0);
  });
});
