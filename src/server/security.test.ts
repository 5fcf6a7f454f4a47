import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { SignJWT } from 'jose';
import type { Herald } from '../client.js';
import { serverOptionsFrom } from '../cli/serve.js';
import { InvalidOptionError } from '../errors.js';
import { rawRequest, rawUpgrade, witness } from '../../test/support/raw-http.js';
import { useServer } from '../../test/support/server.js';
import { WsClient } from '../../test/support/ws.js';
import { HeraldServer } from './server.js';

const JSON_TYPE = { 'content-type': 'application/json' };
const SECRET = 'security-test-secret-0123456789';

let herald: Herald;
let server: HeraldServer;
let base: string;
let port: number;
useServer({}, (f) => {
  ({ herald, server, base } = f);
  port = Number(new URL(base).port);
});

async function jobsOf(kind: string): Promise<number> {
  return (await herald.queue.list({ kind })).length;
}

/** Starts another server on the same Herald for one test. */
async function withServer(options: ConstructorParameters<typeof HeraldServer>[1], fn: (url: string, port: number) => Promise<void>): Promise<void> {
  const s = new HeraldServer(herald, { port: 0, ...options });
  const url = await s.start();
  try {
    await fn(url, Number(new URL(url).port));
  } finally {
    await s.stop();
  }
}

describe('open mode: Host check (DNS rebinding)', () => {
  test('loopback Host values with the bound port are served; any other Host is refused 421 HOST_NOT_ALLOWED on every route and on upgrades', async () => {
    for (const host of [`127.0.0.1:${port}`, `localhost:${port}`, `LOCALHOST:${port}`, `[::1]:${port}`]) {
      assert.equal((await rawRequest(base, '/health', { headers: { host } })).status, 200, host);
    }
    const foreign = [`evil.example:${port}`, 'evil.example', `localhost:${port + 1}`, 'localhost', `127.0.0.2:${port}`, `localhost.:${port}`, `127.0.0.1.nip.io:${port}`];
    for (const host of foreign) {
      for (const path of ['/health', '/dashboard', '/api/dashboard', '/client.js', '/nowhere']) {
        const r = await rawRequest(base, path, { headers: { host } });
        assert.equal(r.status, 421, `${host} ${path}`);
        assert.equal(r.json.error.code, 'HOST_NOT_ALLOWED');
        assert.equal(r.headers['access-control-allow-origin'], undefined);
      }
    }
    // A rebinding page's write: same-origin for the browser, JSON and all. Nothing runs.
    const w = await witness(herald, 'rebound');
    try {
      const host = `evil.example:${port}`;
      const headers = { host, origin: `http://${host}`, ...JSON_TYPE };
      assert.equal((await rawRequest(base, '/jobs', { method: 'POST', headers, body: JSON.stringify({ kind: 'rebound' }) })).status, 421);
      assert.equal((await rawRequest(base, '/channels/rebound/notify', { method: 'POST', headers, body: '{"payload":"x"}' })).status, 421);
      const up = await rawUpgrade(base, '/ws?topic=rebound', { host, origin: `http://${host}` });
      assert.equal(up.status, 421);
      assert.equal(up.json.error.code, 'HOST_NOT_ALLOWED');
      assert.equal(await jobsOf('rebound'), 0);
      assert.deepEqual(await w.settle(), []);
    } finally {
      await w.close();
    }
    assert.equal(server.clients, 0);
  });

  test('bound to another 127.x address, that address is served too', async () => {
    await withServer({ host: '127.0.0.3' }, async (url, p) => {
      assert.equal((await rawRequest(url, '/health', { headers: { host: `127.0.0.3:${p}` } })).status, 200);
      assert.equal((await rawRequest(url, '/health', { headers: { host: `localhost:${p}` } })).status, 200);
      assert.equal((await rawRequest(url, '/health', { headers: { host: `127.0.0.4:${p}` } })).status, 421);
    });
  });

  test('allowedHosts adds names (any port)', async () => {
    await withServer({ allowedHosts: ['dev.internal'] }, async (url, p) => {
      assert.equal((await rawRequest(url, '/health', { headers: { host: `dev.internal:${p + 7}` } })).status, 200);
      assert.equal((await rawRequest(url, '/health', { headers: { host: `other.internal:${p}` } })).status, 421);
    });
    assert.throws(() => new HeraldServer(herald, { allowedHosts: ['a.internal:80'] }), InvalidOptionError);
  });
});

describe('Origin and content type', () => {
  test('writes need application/json: 415 UNSUPPORTED_MEDIA_TYPE otherwise, before the body is read', async () => {
    const w = await witness(herald, 'ct');
    try {
      for (const type of ['text/plain', 'text/plain;charset=UTF-8', 'application/x-www-form-urlencoded', 'multipart/form-data; boundary=x', 'application/jsonp', 'application/json-seq', undefined]) {
        const headers: Record<string, string> = type ? { 'content-type': type } : {};
        const job = await rawRequest(base, '/jobs', { method: 'POST', headers, body: '{"kind":"ct"}' });
        assert.equal(job.status, 415, String(type));
        assert.equal(job.json.error.code, 'UNSUPPORTED_MEDIA_TYPE');
        assert.equal((await rawRequest(base, '/channels/ct/notify', { method: 'POST', headers, body: '{"payload":"x"}' })).status, 415);
        assert.equal((await rawRequest(base, '/outbox/redrive', { method: 'POST', headers, body: '{"all":true}' })).status, 415);
        assert.equal((await rawRequest(base, '/api/dashboard/panels/outbox/actions/redrive-all', { method: 'POST', headers, body: '{}' })).status, 415);
      }
      assert.equal(await jobsOf('ct'), 0);
      assert.deepEqual(await w.settle(), []);
      for (const type of ['application/json', 'application/json; charset=utf-8', 'Application/JSON;charset=UTF-8']) {
        assert.equal((await rawRequest(base, '/channels/ct/notify', { method: 'POST', headers: { 'content-type': type }, body: JSON.stringify({ payload: type }) })).status, 202);
      }
      assert.deepEqual(await w.settle(), ['application/json', 'application/json; charset=utf-8', 'Application/JSON;charset=UTF-8']);
    } finally {
      await w.close();
    }
    // No route for the method: still 405 (and 404 for no route at all), whatever the type.
    assert.equal((await rawRequest(base, '/mailbox/e', { method: 'DELETE' })).status, 405);
    assert.equal((await rawRequest(base, '/nowhere', { method: 'POST', headers: { 'content-type': 'text/plain' } })).status, 404);
  });

  test('a foreign Origin is refused 403 ORIGIN_NOT_ALLOWED on writes, reads and upgrades; the own origin and no Origin are served', async () => {
    const w = await witness(herald, 'orig');
    try {
      for (const origin of ['http://evil.example', `http://127.0.0.1:${port + 1}`, `http://localhost:${port + 1}`, `https://127.0.0.2:${port}`, 'null', 'garbage']) {
        const headers = { origin, ...JSON_TYPE };
        const r = await rawRequest(base, '/channels/orig/notify', { method: 'POST', headers, body: JSON.stringify({ payload: origin }) });
        assert.equal(r.status, 403, origin);
        assert.equal(r.json.error.code, 'ORIGIN_NOT_ALLOWED');
        assert.equal(r.headers['access-control-allow-origin'], undefined);
        assert.equal((await rawRequest(base, '/jobs', { method: 'POST', headers, body: '{"kind":"orig"}' })).status, 403);
        assert.equal((await rawRequest(base, '/channels/orig/events', { headers: { origin } })).status, 403, 'a cross-site EventSource');
        assert.equal((await rawRequest(base, '/api/dashboard', { headers: { origin } })).status, 403);
        assert.equal((await rawRequest(base, '/jobs', { method: 'OPTIONS', headers: { origin, 'access-control-request-method': 'POST' } })).status, 403, 'preflight');
        const up = await rawUpgrade(base, '/ws?topic=orig', { origin });
        assert.equal(up.status, 403, origin);
        assert.equal(up.json.error.code, 'ORIGIN_NOT_ALLOWED');
      }
      assert.equal(await jobsOf('orig'), 0);
      assert.deepEqual(await w.settle(), []);
      assert.equal(server.clients, 0);

      const own = { origin: `http://127.0.0.1:${port}`, ...JSON_TYPE };
      const same = await rawRequest(base, '/channels/orig/notify', { method: 'POST', headers: own, body: '{"payload":"own"}' });
      assert.equal(same.status, 202);
      assert.equal(same.headers['access-control-allow-origin'], undefined, 'no CORS header for the own origin');
      assert.equal((await rawRequest(base, '/channels/orig/notify', { method: 'POST', headers: { host: `localhost:${port}`, origin: `http://localhost:${port}`, ...JSON_TYPE }, body: '{"payload":"localhost"}' })).status, 202);
      assert.equal((await rawRequest(base, '/channels/orig/notify', { method: 'POST', headers: JSON_TYPE, body: '{"payload":"curl"}' })).status, 202);
      assert.equal((await rawUpgrade(base, '/ws?topic=orig', { origin: `http://127.0.0.1:${port}` })).status, 101);
      assert.equal((await rawUpgrade(base, '/ws?topic=orig')).status, 101, 'no Origin: not a browser');
      assert.deepEqual(await w.settle(), ['own', 'localhost', 'curl']);
    } finally {
      await w.close();
    }
  });

  test('without Origin, Sec-Fetch-Site cross-site is refused (a no-cors GET that would consume a mailbox message); navigations reach open pages only', async () => {
    await herald.mailbox.send({ to: 'victim', payload: 'keep me' });
    const cross = { 'sec-fetch-site': 'cross-site', 'sec-fetch-mode': 'no-cors' };
    assert.equal((await rawRequest(base, '/mailbox/victim', { headers: cross })).status, 403);
    assert.equal((await rawRequest(base, '/mailbox/victim', { headers: { ...cross, 'sec-fetch-mode': 'navigate' } })).status, 403);
    assert.equal((await rawRequest(base, '/mailbox/victim', { headers: { ...cross, 'sec-fetch-site': 'same-site' } })).status, 403);
    assert.equal((await herald.mailbox.stats('victim'))[0]?.ready, 1, 'nothing consumed');
    const nav = { 'sec-fetch-site': 'cross-site', 'sec-fetch-mode': 'navigate' };
    const page = await rawRequest(base, '/dashboard', { headers: nav });
    assert.equal(page.status, 200, 'a link from elsewhere opens the dashboard page');
    assert.equal((await rawRequest(base, '/', { headers: nav })).status, 200);
    for (const path of ['/api/dashboard', '/events?topic=x', '/channels/x/events', '/health', '/client.js', '/mailbox/victim']) {
      assert.equal((await rawRequest(base, path, { headers: nav })).status, 403, `a navigation to ${path}`);
    }
    assert.equal((await rawRequest(base, '/client.js', { headers: cross })).status, 403);
    for (const site of ['same-origin', 'none']) assert.equal((await rawRequest(base, '/health', { headers: { 'sec-fetch-site': site } })).status, 200);
    const got = await rawRequest(base, '/mailbox/victim', { headers: { 'sec-fetch-site': 'same-origin' } });
    assert.equal(got.json.payload, 'keep me');
  });

  test('allowedOrigins: those origins get CORS (their origin echoed, never *), preflights and WebSockets; others still 403', async () => {
    const app = 'http://app.test:3000';
    await withServer({ allowedOrigins: [app, 'https://other.test/'] }, async (url) => {
      const pre = await rawRequest(url, '/channels/x/notify', { method: 'OPTIONS', headers: { origin: app, 'access-control-request-method': 'POST', 'access-control-request-headers': 'content-type' } });
      assert.equal(pre.status, 204);
      assert.equal(pre.headers['access-control-allow-origin'], app);
      assert.match(String(pre.headers['access-control-allow-headers']), /content-type/);
      assert.match(String(pre.headers['access-control-allow-methods']), /POST/);
      const post = await rawRequest(url, '/channels/x/notify', { method: 'POST', headers: { origin: app, ...JSON_TYPE }, body: '{}' });
      assert.equal(post.status, 202);
      assert.equal(post.headers['access-control-allow-origin'], app);
      assert.equal(post.headers.vary, 'Origin');
      assert.equal((await rawRequest(url, '/health', { headers: { origin: 'https://other.test' } })).headers['access-control-allow-origin'], 'https://other.test');
      assert.equal((await rawRequest(url, '/channels/x/notify', { method: 'POST', headers: { origin: app, 'content-type': 'text/plain' }, body: '{}' })).status, 415, 'still JSON only');
      assert.equal((await rawUpgrade(url, '/ws', { origin: app })).status, 101);
      const evil = await rawRequest(url, '/health', { headers: { origin: 'http://app.test:3001' } });
      assert.equal(evil.status, 403);
      assert.equal(evil.headers['access-control-allow-origin'], undefined);
      assert.equal((await rawUpgrade(url, '/ws', { origin: 'http://app.test:3001' })).status, 403);
    });
    await withServer({ allowedOrigins: ['tauri://localhost'] }, async (url) => {
      const r = await rawRequest(url, '/health', { headers: { origin: 'tauri://localhost' } });
      assert.equal(r.status, 200, 'an app scheme, compared as given');
      assert.equal(r.headers['access-control-allow-origin'], 'tauri://localhost');
      assert.equal((await rawRequest(url, '/health', { headers: { origin: 'tauri://other' } })).status, 403);
      assert.equal((await rawRequest(url, '/health', { headers: { origin: 'null' } })).status, 403);
    });
    assert.throws(() => new HeraldServer(herald, { allowedOrigins: ['*'] }), InvalidOptionError, "'*' needs credentials");
    assert.throws(() => new HeraldServer(herald, { allowedOrigins: ['https://app.test/path'] }), InvalidOptionError);
    assert.throws(() => new HeraldServer(herald, { allowedOrigins: ['app.test'] }), InvalidOptionError);
  });

  test('security headers: nosniff, no framing and a default-src none CSP on every response; the dashboard has its own CSP', async () => {
    for (const [path, status] of [['/health', 200], ['/nowhere', 404], ['/client.js', 200], ['/api/dashboard', 200]] as const) {
      const r = await rawRequest(base, path);
      assert.equal(r.status, status);
      assert.equal(r.headers['x-content-type-options'], 'nosniff', path);
      assert.equal(r.headers['x-frame-options'], 'DENY', path);
      assert.equal(r.headers['access-control-allow-origin'], undefined, path);
      assert.match(String(r.headers['content-security-policy']), /frame-ancestors 'none'/, path);
    }
    const page = await rawRequest(base, '/dashboard');
    assert.equal(page.headers['x-frame-options'], 'DENY');
    const csp = String(page.headers['content-security-policy']);
    assert.match(csp, /frame-ancestors 'none'/);
    assert.match(csp, /script-src 'self'(;|$)/);
    assert.doesNotMatch(csp, /script-src[^;]*unsafe-inline/);
  });
});

describe('credentialed mode', () => {
  const TOKEN = 'security-admin-token-0123';

  test('Origin allow-list applies to upgrades and writes; Host is not checked unless allowedHosts is set', async () => {
    await withServer({ token: TOKEN }, async (url, p) => {
      const auth = { authorization: `Bearer ${TOKEN}` };
      assert.equal((await rawUpgrade(url, `/ws?access_token=${TOKEN}`, { origin: 'http://evil.example' })).status, 403);
      assert.equal((await rawRequest(url, '/channels/x/notify', { method: 'POST', headers: { ...auth, origin: 'http://evil.example', ...JSON_TYPE }, body: '{}' })).status, 403);
      assert.equal((await rawRequest(url, '/channels/x/notify', { method: 'POST', headers: { ...auth, 'content-type': 'text/plain' }, body: '{}' })).status, 415);
      assert.equal((await rawRequest(url, '/health', { headers: { host: `herald.example.com:${p}` } })).status, 200, 'any Host');
      const proxied = await rawRequest(url, '/channels/x/notify', { method: 'POST', headers: { ...auth, host: 'herald.example.com', origin: 'https://herald.example.com', ...JSON_TYPE }, body: '{}' });
      assert.equal(proxied.status, 202, 'the own origin behind a TLS proxy that keeps Host');
    });
    await withServer({ token: TOKEN, allowedHosts: ['herald.example.com'] }, async (url, p) => {
      assert.equal((await rawRequest(url, '/health', { headers: { host: 'herald.example.com' } })).status, 200);
      assert.equal((await rawRequest(url, '/health', { headers: { host: `127.0.0.1:${p}` } })).status, 200, 'loopback names still served');
      const r = await rawRequest(url, '/health', { headers: { host: `evil.example:${p}` } });
      assert.equal(r.status, 421);
      assert.equal(r.json.error.code, 'HOST_NOT_ALLOWED');
      assert.equal((await rawUpgrade(url, `/ws?access_token=${TOKEN}`, { host: `evil.example:${p}` })).status, 421);
    });
    await withServer({ token: TOKEN, allowedOrigins: ['*'] }, async (url) => {
      const r = await rawRequest(url, '/channels/x/notify', { method: 'POST', headers: { authorization: `Bearer ${TOKEN}`, origin: 'https://any.example', ...JSON_TYPE }, body: '{}' });
      assert.equal(r.status, 202);
      assert.equal(r.headers['access-control-allow-origin'], 'https://any.example');
    });
  });

  test('Bearer is matched case-insensitively (RFC 7235)', async () => {
    await withServer({ token: TOKEN }, async (url) => {
      for (const header of [`Bearer ${TOKEN}`, `bearer ${TOKEN}`, `BEARER ${TOKEN}`, `Bearer   ${TOKEN}  `, `bEaReR\t${TOKEN}`]) {
        assert.equal((await rawRequest(url, '/api/dashboard', { headers: { authorization: header } })).status, 200, header);
      }
      for (const header of [`Basic ${TOKEN}`, `Bearer${TOKEN}`, `Bearer ${TOKEN} extra`, 'Bearer ']) {
        const r = await rawRequest(url, '/api/dashboard', { headers: { authorization: header } });
        assert.equal(r.status, 401, header);
        assert.equal(r.json.error.code, 'UNAUTHORIZED');
      }
    });
  });

  test('requireExp (default on): a JWT without exp is refused 401 TOKEN_EXP_REQUIRED (HTTP and WebSocket); requireExp: false accepts it', async () => {
    const key = new TextEncoder().encode(SECRET);
    const forever = await new SignJWT({ sub: 'forever', grants: { admin: ['*'] } }).setProtectedHeader({ alg: 'HS256' }).sign(key);
    const dated = await new SignJWT({ sub: 'dated', grants: { admin: ['*'] } }).setProtectedHeader({ alg: 'HS256' }).setExpirationTime('10m').sign(key);
    await withServer({ jwtSecret: SECRET }, async (url) => {
      const r = await rawRequest(url, '/api/dashboard', { headers: { authorization: `Bearer ${forever}` } });
      assert.equal(r.status, 401);
      assert.equal(r.json.error.code, 'TOKEN_EXP_REQUIRED');
      assert.equal((await rawRequest(url, '/api/dashboard', { headers: { authorization: `Bearer ${dated}` } })).status, 200);
      const ws = await WsClient.connect(`${url}/ws?access_token=${forever}`);
      assert.equal(await ws.closed, 4401);
      assert.match(ws.closeReason, /TOKEN_EXP_REQUIRED/);
    });
    await withServer({ jwtSecret: SECRET, requireExp: false }, async (url) => {
      assert.equal((await rawRequest(url, '/api/dashboard', { headers: { authorization: `Bearer ${forever}` } })).status, 200);
    });
    assert.throws(() => new HeraldServer(herald, { jwtSecret: SECRET, requireExp: 'no' as never }), InvalidOptionError);
  });
});

test('CLI: --allowed-origin / --allowed-host (repeatable) win over HERALD_ALLOWED_ORIGINS / HERALD_ALLOWED_HOSTS (comma-separated); --no-require-exp and HERALD_REQUIRE_EXP', () => {
  const env = { HERALD_ALLOWED_ORIGINS: 'https://a.test, https://b.test', HERALD_ALLOWED_HOSTS: 'h1.internal,h2.internal', HERALD_REQUIRE_EXP: 'false' };
  const fromEnv = serverOptionsFrom({}, env);
  assert.deepEqual([fromEnv.allowedOrigins, fromEnv.allowedHosts, fromEnv.requireExp], [['https://a.test', 'https://b.test'], ['h1.internal', 'h2.internal'], false]);
  const fromFlags = serverOptionsFrom({ allowedOrigin: ['https://c.test'], allowedHost: ['h3.internal'], requireExp: true }, env);
  assert.deepEqual([fromFlags.allowedOrigins, fromFlags.allowedHosts, fromFlags.requireExp], [['https://c.test'], ['h3.internal'], true]);
  const none = serverOptionsFrom({}, {});
  assert.deepEqual([none.allowedOrigins, none.allowedHosts, none.requireExp], [undefined, undefined, undefined]);
  assert.throws(() => serverOptionsFrom({}, { HERALD_REQUIRE_EXP: 'maybe' }), /HERALD_REQUIRE_EXP must be true or false/);
});
