import assert from 'node:assert/strict';
import { createServer } from 'node:http';
import { after, before, describe, test } from 'node:test';
import { exportJWK, exportSPKI, generateKeyPair, SignJWT } from 'jose';
import { createHerald, type Herald } from '../client.js';
import { freshDatabase, type TestDatabase } from '../../test/support/db.js';
import { SseClient } from '../../test/support/sse.js';
import { WsClient } from '../../test/support/ws.js';
import { allows, grantsFromClaims } from './auth.js';
import { HeraldServer } from './server.js';

const SECRET = 'a-test-secret-of-sufficient-length';
const ADMIN = 'admin-token-0123456789';
const TENANT = 'tenant42-key-0123456789';

function hs256(claims: Record<string, unknown>, expSeconds = 600): Promise<string> {
  return new SignJWT(claims).setProtectedHeader({ alg: 'HS256' }).setIssuedAt().setExpirationTime(Math.floor(Date.now() / 1000) + expSeconds).sign(new TextEncoder().encode(SECRET));
}

async function post(url: string, body: unknown, token?: string): Promise<{ status: number; body: any }> {
  const res = await fetch(url, { method: 'POST', headers: { 'content-type': 'application/json', ...(token ? { authorization: `Bearer ${token}` } : {}) }, body: JSON.stringify(body) });
  return { status: res.status, body: await res.json() };
}

test('grant patterns: * matches any run, admin implies every action, scope strings parse', () => {
  const g = { subscribe: ['tenant:42:*'], publish: ['tenant:42:chat'] };
  assert.equal(allows(g, 'subscribe', 'tenant:42:orders'), true);
  assert.equal(allows(g, 'subscribe', 'tenant:42:a:b'), true);
  assert.equal(allows(g, 'subscribe', 'tenant:420:orders'), false);
  assert.equal(allows(g, 'subscribe', 'tenant:4'), false);
  assert.equal(allows(g, 'publish', 'tenant:42:orders'), false);
  assert.equal(allows(g, 'publish', 'tenant:42:chat'), true);
  assert.equal(allows(g, 'admin', 'tenant:42:chat'), false);
  assert.equal(allows({ admin: ['tenant:*'] }, 'publish', 'tenant:1'), true);
  assert.equal(allows({ subscribe: ['a.b'] }, 'subscribe', 'aXb'), false, 'dots are literal');
  assert.deepEqual(grantsFromClaims({ scope: 'subscribe:t:* publish:t:x openid', grants: { admin: ['ops'] } }), { admin: ['ops'], subscribe: ['t:*'], publish: ['t:x'] });
});

describe('authentication and grants', () => {
  let db: TestDatabase;
  let herald: Herald;
  let server: HeraldServer;
  let base: string;
  let jwks: ReturnType<typeof createServer>;
  let rsPrivate: CryptoKey;
  let pemPrivate: CryptoKey;

  before(async () => {
    db = await freshDatabase();
    herald = createHerald({ connectionString: db.url });
    const pair = await generateKeyPair('RS256', { extractable: true });
    rsPrivate = pair.privateKey;
    const jwk = { ...(await exportJWK(pair.publicKey)), kid: 'k1', alg: 'RS256', use: 'sig' };
    jwks = createServer((_req, res) => {
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end(JSON.stringify({ keys: [jwk] }));
    });
    await new Promise<void>((r) => jwks.listen(0, '127.0.0.1', () => r()));
    const other = await generateKeyPair('RS256', { extractable: true });
    pemPrivate = other.privateKey;
    server = new HeraldServer(herald, {
      channelPrefix: 'gw.',
      port: 0,
      token: ADMIN,
      apiKeys: [{ name: 'tenant42', key: TENANT, grants: { subscribe: ['tenant:42:*'], publish: ['tenant:42:chat'] } }],
      jwtSecret: SECRET,
      jwtPublicKey: await exportSPKI(other.publicKey),
      jwksUrl: `http://127.0.0.1:${(jwks.address() as { port: number }).port}/jwks.json`,
      maxConnectionsPerToken: 2,
      maxSubscriptionsPerConnection: 2,
      maxMessageBytes: 100,
      publishPerSecond: 5,
      maxChannels: 4,
    });
    base = await server.start();
  });

  after(async () => {
    await server.stop();
    await herald.close();
    await new Promise((r) => jwks.close(r));
    await db.drop();
  });

  test('no credentials: 401 for subscribe and publish, WebSocket closed with 4401', async () => {
    const sse = await SseClient.open(`${base}/channels/tenant:42:orders/events`);
    assert.equal(sse.status, 401);
    await sse.done;
    assert.equal(JSON.parse(sse.body).error.code, 'UNAUTHORIZED');
    const p = await post(`${base}/channels/tenant:42:orders/notify`, { payload: 'x' });
    assert.equal(p.status, 401);
    const bad = await post(`${base}/channels/tenant:42:orders/notify`, { payload: 'x' }, 'wrong-token-123456');
    assert.equal(bad.status, 401);
    const ws = await WsClient.connect(`${base}/ws?topic=tenant:42:orders`);
    assert.equal(await ws.closed, 4401);
  });

  test('a token without a grant is refused: 403 for subscribe and publish, WebSocket 4403 and error frames', async () => {
    const h = { authorization: `Bearer ${TENANT}` };
    const other = await SseClient.open(`${base}/channels/tenant:43:orders/events`, h);
    assert.equal(other.status, 403);
    await other.done;
    assert.equal(JSON.parse(other.body).error.code, 'FORBIDDEN');
    assert.equal((await post(`${base}/channels/tenant:42:orders/notify`, { payload: 'x' }, TENANT)).status, 403, 'subscribe grant is not publish');
    assert.equal((await post(`${base}/channels/tenant:43:chat/notify`, { payload: 'x' }, TENANT)).status, 403);
    const multi = await SseClient.open(`${base}/events?topic=tenant:42:orders&topic=tenant:43:orders`, h);
    assert.equal(multi.status, 403);
    await multi.done;

    const ws = await WsClient.connect(`${base}/ws?access_token=${TENANT}&topic=tenant:43:x`);
    assert.equal(await ws.closed, 4403);
    const ok = await WsClient.connect(`${base}/ws?access_token=${TENANT}`);
    const refused = await ok.request({ type: 'subscribe', topic: 'tenant:43:x' });
    assert.equal(refused.type, 'error');
    assert.equal(refused.code, 'FORBIDDEN');
    const pub = await ok.request({ type: 'publish', topic: 'tenant:42:orders', payload: 'x' });
    assert.equal(pub.code, 'FORBIDDEN');
    assert.equal((await ok.request({ type: 'subscribe', topic: 'tenant:42:orders' })).type, 'subscribed');
    assert.equal((await ok.request({ type: 'publish', topic: 'tenant:42:chat', payload: 'hi' })).type, 'published');
    // the admin key publishes anywhere; the tenant client receives only what it was granted
    assert.equal((await post(`${base}/channels/tenant:42:orders/notify`, { payload: 'o1' }, ADMIN)).status, 202);
    await ok.until(() => ok.of('event').some((e) => e.data === 'o1'));
    assert.deepEqual(ok.of('event').map((e) => e.topic), ['tenant:42:orders']);
    ok.close();
  });

  test('JWTs: HS256 secret, RS256 PEM public key, JWKS URL (RS256) and scope claims are honoured; a wrong signature is not', async () => {
    const hs = await hs256({ sub: 'u1', grants: { subscribe: ['tenant:7:*'] } });
    const a = await SseClient.open(`${base}/channels/tenant:7:feed/events?access_token=${hs}`);
    assert.equal(a.status, 200);
    await a.until(() => a.named('ready').length === 1);
    const denied = await SseClient.open(`${base}/channels/tenant:8:feed/events?access_token=${hs}`);
    assert.equal(denied.status, 403);
    await denied.done;

    const rs = await new SignJWT({ sub: 'u2', scope: 'subscribe:tenant:7:* publish:tenant:7:feed' }).setProtectedHeader({ alg: 'RS256', kid: 'k1' }).setExpirationTime('10m').sign(rsPrivate);
    assert.equal((await post(`${base}/channels/tenant:7:feed/notify`, { payload: 'from-rs' }, rs)).status, 202);
    await a.until(() => a.named('notification').some((e) => e.data === 'from-rs'));

    const pem = await new SignJWT({ grants: { publish: ['tenant:7:*'] } }).setProtectedHeader({ alg: 'RS256' }).setExpirationTime('10m').sign(pemPrivate);
    assert.equal((await post(`${base}/channels/tenant:7:feed/notify`, { payload: 'from-pem' }, pem)).status, 202, 'RS256 with the configured PEM public key');
    await a.until(() => a.named('notification').some((e) => e.data === 'from-pem'));
    const wrongAlg = await hs256({ grants: { admin: ['*'] } });
    assert.equal((await post(`${base}/channels/tenant:7:feed/notify`, { payload: 'x' }, wrongAlg + 'x')).status, 401);

    const forged = await new SignJWT({ sub: 'x', grants: { admin: ['*'] } }).setProtectedHeader({ alg: 'HS256' }).setExpirationTime('10m').sign(new TextEncoder().encode('another-secret-of-enough-length'));
    assert.equal((await post(`${base}/channels/tenant:7:feed/notify`, { payload: 'x' }, forged)).status, 401);
    a.close();
  });

  test('an expired token is refused, and a token that expires cuts its SSE and WebSocket subscriptions', async () => {
    const expired = await hs256({ sub: 'late', grants: { subscribe: ['*'] } }, -5);
    const r = await SseClient.open(`${base}/channels/x/events?access_token=${expired}`);
    assert.equal(r.status, 401);
    await r.done;
    assert.equal(JSON.parse(r.body).error.code, 'TOKEN_EXPIRED');
    const wsRefused = await WsClient.connect(`${base}/ws?access_token=${expired}`);
    assert.equal(await wsRefused.closed, 4408);

    const short = await hs256({ sub: 'short', grants: { subscribe: ['exp:*'] } }, 2);
    const sse = await SseClient.open(`${base}/channels/exp:a/events?access_token=${short}`);
    assert.equal(sse.status, 200);
    const ws = await WsClient.connect(`${base}/ws?access_token=${short}&topic=exp:b`);
    await ws.until(() => ws.of('subscribed').length === 1);
    await sse.done;
    const close = sse.named('close')[0];
    assert.ok(close, 'SSE got a close event');
    assert.equal(JSON.parse(close.data).code, 'TOKEN_EXPIRED');
    assert.equal(await ws.closed, 4408);
  });

  test('limits: connections per token, subscriptions per connection, message size, publish rate, topic cap, topic names', async () => {
    const h = { authorization: `Bearer ${TENANT}` };
    const c1 = await SseClient.open(`${base}/channels/tenant:42:l1/events`, h);
    const c2 = await SseClient.open(`${base}/channels/tenant:42:l2/events`, h);
    assert.equal(c1.status, 200);
    assert.equal(c2.status, 200);
    const c3 = await SseClient.open(`${base}/channels/tenant:42:l3/events`, h);
    assert.equal(c3.status, 429);
    await c3.done;
    assert.equal(JSON.parse(c3.body).error.code, 'TOO_MANY_CONNECTIONS');
    const w3 = await WsClient.connect(`${base}/ws?access_token=${TENANT}`);
    assert.equal(await w3.closed, 4429);
    c1.close();
    c2.close();
    await c1.done;
    await c2.done;

    const ws = await WsClient.connect(`${base}/ws?access_token=${ADMIN}`);
    await ws.until(() => server.connections().some((c) => c.principal.id === 'key:admin'));
    assert.equal((await ws.request({ type: 'subscribe', topic: 's1' })).type, 'subscribed');
    assert.equal((await ws.request({ type: 'subscribe', topic: 's2' })).type, 'subscribed');
    assert.equal((await ws.request({ type: 'subscribe', topic: 's3' })).code, 'TOO_MANY_SUBSCRIPTIONS');
    assert.equal((await ws.request({ type: 'publish', topic: 's1', payload: 'x'.repeat(101) })).code, 'PAYLOAD_TOO_LARGE');
    assert.equal((await post(`${base}/channels/s1/notify`, { payload: 'x'.repeat(101) }, ADMIN)).status, 413);
    ws.close();

    const codes: number[] = [];
    for (let i = 0; i < 12; i++) codes.push((await post(`${base}/channels/tenant:42:chat/notify`, { payload: 'r' }, TENANT)).status);
    assert.ok(codes.includes(429), `publish rate limited: ${codes}`);
    assert.ok(codes.filter((c) => c === 202).length >= 5);

    // Topic cap: the gateway listens on at most maxChannels (4) topics at once.
    // (one token each: the per-token connection limit is 2 here)
    const holders = await Promise.all(['t1', 't2', 't3', 't4'].map(async (t) => SseClient.open(`${base}/channels/${t}/events?access_token=${await hs256({ sub: t, grants: { subscribe: ['*'] } })}`)));
    for (const c of holders) await c.until(() => c.named('ready').length === 1);
    const fifth = await SseClient.open(`${base}/channels/t5/events?access_token=${ADMIN}`);
    assert.equal(fifth.status, 503);
    await fifth.done;
    assert.equal(JSON.parse(fifth.body).error.code, 'TOO_MANY_CHANNELS');
    // Client topics become channels the server controls: prefix + topic, nothing else.
    const listening = herald.notifier.channels();
    assert.ok(listening.includes('gw.t1'));
    assert.ok(listening.every((c) => c.startsWith('gw.')), String(listening));
    const invalid = await SseClient.open(`${base}/channels/${encodeURIComponent('a\nb')}/events?access_token=${ADMIN}`);
    assert.equal(invalid.status, 400);
    await invalid.done;
    for (const c of holders) c.close();
  });

  test('the legacy single --token works as an admin API key; /metrics needs it', async () => {
    assert.equal((await fetch(`${base}/metrics`)).status, 401);
    const m = await fetch(`${base}/metrics`, { headers: { authorization: `Bearer ${ADMIN}` } });
    assert.equal(m.status, 200);
    const text = await m.text();
    assert.match(text, /herald_gateway_refused_total\{status="403",code="FORBIDDEN"\} \d+/);
    assert.match(text, /herald_gateway_disconnects_total\{transport="sse",reason="token_expired"\} 1/);
    assert.match(text, /herald_notification_queue_usage \d/);
    assert.match(text, /herald_pg_in_recovery 0/);
    assert.match(text, /herald_pg_connections\{kind="max"\} \d+/);
    assert.equal((await fetch(`${base}/livez`)).status, 200);
    assert.equal((await fetch(`${base}/readyz`)).status, 200);
  });
});
