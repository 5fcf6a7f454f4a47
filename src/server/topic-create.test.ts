import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { createHerald, type Herald } from '../client.js';
import { freshDatabase, type TestDatabase } from '../../test/support/db.js';
import { HeraldServer } from './server.js';

const PUB = 'publisher-key-0123456789';
const MAKER = 'creator-key-0123456789';
const ADMIN = 'admin-key-0123456789';
const KEYS = [
  { name: 'pub', key: PUB, grants: { publish: ['topic/*'], subscribe: ['topic/*'] } },
  { name: 'maker', key: MAKER, grants: { create: ['topic/made*'], publish: ['topic/*'] } },
  { name: 'admin', key: ADMIN, grants: { admin: ['*'] } },
];

async function call(method: string, url: string, token: string | undefined, body?: unknown): Promise<{ status: number; body: any }> {
  const res = await fetch(url, {
    method,
    headers: { 'content-type': 'application/json', ...(token ? { authorization: `Bearer ${token}` } : {}) },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await res.text();
  return { status: res.status, body: text ? JSON.parse(text) : undefined };
}

describe('creating a durable topic is explicit', () => {
  let db: TestDatabase;
  let herald: Herald;

  before(async () => {
    db = await freshDatabase();
    herald = createHerald({ connectionString: db.url, notifier: { queueUsageIntervalMs: 0 } });
    await herald.migrate();
  });

  after(async () => {
    await herald.close();
    await db.drop();
  });

  test('library: topics.autoCreate false makes publish, consumers and createGroup on a missing topic NOT_FOUND; create() says whether it created', async () => {
    const strict = createHerald({ connectionString: db.url, notifier: { queueUsageIntervalMs: 0 }, topics: { autoCreate: false } });
    try {
      await assert.rejects(strict.topics.publish('lib-missing', { n: 1 }), { code: 'NOT_FOUND' });
      await assert.rejects(strict.topics.publishMany('lib-missing', [{ payload: 1 }]), { code: 'NOT_FOUND' });
      await assert.rejects(strict.topics.createGroup('lib-missing', 'g'), { code: 'NOT_FOUND' });
      await assert.rejects(strict.topics.consumer('lib-missing', 'g', () => {}).start(), { code: 'NOT_FOUND' });
      assert.ok(!(await strict.topics.list()).includes('lib-missing'), 'nothing was created');
      // One call may still ask for it.
      await strict.topics.publish('lib-explicit', { n: 1 }, { autoCreate: true });
      assert.ok((await strict.topics.list()).includes('lib-explicit'));
      assert.equal(await strict.topics.create('lib-missing', { partitions: 2 }), true);
      assert.equal(await strict.topics.create('lib-missing'), false, 'idempotent');
      await strict.topics.publish('lib-missing', { n: 1 }, { waitForPosition: true });
      assert.equal((await strict.topics.stats('lib-missing')).messages, 1);
      assert.throws(() => createHerald({ connectionString: db.url, topics: { autoCreate: 'yes' as never } }), { code: 'INVALID_OPTION' });
    } finally {
      await strict.close();
    }
    // The default (documented): a first publish creates the topic.
    await herald.topics.publish('lib-default', { n: 1 });
    assert.ok((await herald.topics.list()).includes('lib-default'));
    // A per-call false wins over the default.
    await assert.rejects(herald.topics.publish('lib-default-off', 1, { autoCreate: false }), { code: 'NOT_FOUND' });
  });

  test('HTTP: publish to a missing topic is 404 and creates nothing; PUT /topics/<name> needs create or admin', async () => {
    const server = new HeraldServer(herald, { port: 0, apiKeys: KEYS });
    const base = await server.start();
    try {
      const missing = await call('POST', `${base}/topics/made-1/publish`, ADMIN, { payload: { n: 1 } });
      assert.equal(missing.status, 404);
      assert.equal(missing.body.error.code, 'NOT_FOUND');
      assert.ok(!(await herald.topics.list()).includes('made-1'), 'no DDL ran');
      const denied = await call('PUT', `${base}/topics/made-1`, PUB, {});
      assert.equal(denied.status, 403);
      assert.equal(denied.body.error.code, 'FORBIDDEN');
      const outside = await call('PUT', `${base}/topics/other`, MAKER, {});
      assert.equal(outside.status, 403, 'the create grant is per topic pattern');
      const made = await call('PUT', `${base}/topics/made-1`, MAKER, { partitions: 2, retentionMs: 3_600_000 });
      assert.deepEqual([made.status, made.body], [201, { topic: 'made-1', created: true }]);
      const again = await call('PUT', `${base}/topics/made-1`, MAKER);
      assert.deepEqual([again.status, again.body], [200, { topic: 'made-1', created: false }]);
      const stats = await herald.topics.stats('made-1');
      assert.equal(stats.partitions, 2);
      assert.equal(stats.retentionMs, 3_600_000);
      const published = await call('POST', `${base}/topics/made-1/publish`, PUB, { payload: { n: 1 } });
      assert.equal(published.status, 202);
      const unknown = await call('PUT', `${base}/topics/made-2`, ADMIN, { partitions: 2, colour: 'red' });
      assert.deepEqual([unknown.status, unknown.body.error.code], [400, 'UNKNOWN_FIELD']);
      const bad = await call('PUT', `${base}/topics/made-2`, ADMIN, { partitions: 0 });
      assert.equal(bad.status, 400);
      assert.equal(bad.body.error.code, 'INVALID_OPTION');
      assert.ok(!(await herald.topics.list()).includes('made-2'));
    } finally {
      await server.stop();
    }
  });

  test('HTTP with autoCreateTopics: a publish creates a missing topic for a caller allowed to create it, 404 for others', async () => {
    const server = new HeraldServer(herald, { port: 0, apiKeys: KEYS, autoCreateTopics: true });
    const base = await server.start();
    try {
      const pub = await call('POST', `${base}/topics/made-auto/publish`, PUB, { payload: 1 });
      assert.equal(pub.status, 404);
      assert.ok(!(await herald.topics.list()).includes('made-auto'));
      const maker = await call('POST', `${base}/topics/made-auto/publish`, MAKER, { payload: 2 });
      assert.equal(maker.status, 202);
      assert.equal((await herald.topics.stats('made-auto')).messages, 1);
      assert.equal((await call('POST', `${base}/topics/made-auto/publish`, PUB, { payload: 3 })).status, 202, 'it exists now');
    } finally {
      await server.stop();
    }
    // Open mode (anonymous is admin) with autoCreateTopics creates; without it, 404.
    const open = new HeraldServer(herald, { port: 0, autoCreateTopics: true });
    const url = await open.start();
    try {
      assert.equal((await call('POST', `${url}/topics/open-auto/publish`, undefined, { payload: 1 })).status, 202);
    } finally {
      await open.stop();
    }
    const plain = new HeraldServer(herald, { port: 0 });
    const plainUrl = await plain.start();
    try {
      assert.equal((await call('POST', `${plainUrl}/topics/open-plain/publish`, undefined, { payload: 1 })).status, 404);
    } finally {
      await plain.stop();
    }
    assert.throws(() => new HeraldServer(herald, { port: 0, autoCreateTopics: 1 as never }), { code: 'INVALID_OPTION' });
  });
});
