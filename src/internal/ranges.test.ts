/**
 * Every input that reaches SQL has a range: out of it, the library throws a typed
 * HeraldError (INVALID_ARGUMENT / INVALID_PAYLOAD) before Postgres sees it, never a
 * raw DatabaseError or RangeError.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import type { Herald } from '../client.js';
import { HeraldError, InvalidArgumentError, InvalidPayloadError } from '../errors.js';
import { useHerald } from '../../test/support/herald.js';

let herald: Herald;
useHerald({ notifier: { queueUsageIntervalMs: 0 } }, async (_db, h) => {
  herald = h;
  await herald.migrate();
  await herald.topics.create('ranges');
});

async function refuses(p: Promise<unknown> | (() => unknown), code: 'INVALID_ARGUMENT' | 'INVALID_PAYLOAD', what: string): Promise<void> {
  await assert.rejects(
    async () => (typeof p === 'function' ? p() : p),
    (err: unknown) => {
      assert.ok(err instanceof HeraldError, `${what}: a HeraldError, got ${String(err)}`);
      assert.equal(err.code, code, `${what}: ${err.message}`);
      return true;
    },
  );
}

describe('input ranges in the library', () => {
  it('queue: job fields, ids and limits out of range are INVALID_ARGUMENT, NUL payloads INVALID_PAYLOAD', async () => {
    const q = herald.queue;
    await refuses(q.enqueue('k', {}, { maxAttempts: 1e12 }), 'INVALID_ARGUMENT', 'maxAttempts 1e12');
    await refuses(q.enqueue('k', {}, { maxAttempts: 0 }), 'INVALID_ARGUMENT', 'maxAttempts 0');
    await refuses(q.enqueue('k', {}, { delayMs: 1e20 }), 'INVALID_ARGUMENT', 'delayMs 1e20');
    await refuses(q.enqueue('k', {}, { delayMs: -1 }), 'INVALID_ARGUMENT', 'delayMs -1');
    await refuses(q.enqueue('k', {}, { priority: 40_000 }), 'INVALID_ARGUMENT', 'priority');
    await refuses(q.enqueue('k', {}, { runAt: new Date(8.64e15) }), 'INVALID_ARGUMENT', 'runAt far future');
    await refuses(q.enqueue('k', {}, { runAt: new Date(NaN) }), 'INVALID_ARGUMENT', 'runAt invalid');
    await refuses(q.enqueue('k\0', {}), 'INVALID_ARGUMENT', 'kind with NUL');
    await refuses(q.enqueue('k'.repeat(101), {}), 'INVALID_ARGUMENT', 'kind of 101 bytes');
    await refuses(q.enqueue('k', {}, { uniqueKey: 'u'.repeat(1001) }), 'INVALID_ARGUMENT', 'unique key of 1001 bytes');
    await refuses(q.enqueue('k', {}, { uniqueKey: 'u\0' }), 'INVALID_ARGUMENT', 'unique key with NUL');
    await refuses(q.enqueue('k', { text: 'a\0b' }), 'INVALID_PAYLOAD', 'payload with NUL');
    await assert.rejects(q.enqueue('k', { text: '\0' }), InvalidPayloadError);
    await refuses(q.get('9223372036854775808'), 'INVALID_ARGUMENT', 'job id past bigint');
    await assert.rejects(q.get('99999999999999999999'), InvalidArgumentError);
    assert.equal(await q.get('9223372036854775807'), undefined);
    await refuses(q.cancel(['1', '9223372036854775808']), 'INVALID_ARGUMENT', 'cancel id past bigint');
    await refuses(q.list({ limit: 1e20 }), 'INVALID_ARGUMENT', 'list limit');
    await refuses(q.stuck({ thresholdMs: 1e20 }), 'INVALID_ARGUMENT', 'stuck thresholdMs');
    await refuses(q.prune({ olderThanMs: Infinity }), 'INVALID_ARGUMENT', 'prune olderThanMs');
    // The edges themselves are accepted, and a payload holding the six characters \u0000 is not a NUL.
    const ok = await q.enqueue('k', { text: '\\u0000' }, { maxAttempts: 10_000, priority: -32768, delayMs: 60_000 });
    assert.deepEqual((await q.get(ok.id))?.payload, { text: '\\u0000' });
  });

  it('mailbox: names, limits and waits out of range are INVALID_ARGUMENT or INVALID_OPTION', async () => {
    const m = herald.mailbox;
    await refuses(m.send({ to: 'a\0', payload: 'x' }), 'INVALID_ARGUMENT', 'to with NUL');
    await refuses(m.send({ to: 'a'.repeat(1001), payload: 'x' }), 'INVALID_ARGUMENT', 'to of 1001 bytes');
    await refuses(m.send({ to: 'a', payload: 'x\0' }), 'INVALID_PAYLOAD', 'text payload with NUL');
    await refuses(m.deadLetters('a', { limit: 1e20 }), 'INVALID_ARGUMENT', 'dead letters limit');
    await refuses(m.redrive('a', { ids: ['x\0'] }), 'INVALID_ARGUMENT', 'redrive id with NUL');
    await assert.rejects(m.receive('a', { timeoutMs: 1e20 }), { code: 'INVALID_OPTION' });
  });

  it('topics: positions past 64 bits, keys and payloads with NUL are refused with typed errors', async () => {
    const t = herald.topics;
    await refuses(t.publish('ranges', { a: '\0' }), 'INVALID_PAYLOAD', 'payload with NUL');
    await refuses(t.publish('ranges', 1, { key: 'k\0' }), 'INVALID_ARGUMENT', 'key with NUL');
    await refuses(t.publish('ranges', 1, { key: 'k'.repeat(1001) }), 'INVALID_ARGUMENT', 'key of 1001 bytes');
    await refuses(t.resolveAfter('ranges', '99999999999999999999999:1'), 'INVALID_ARGUMENT', 'xid past 64 bits');
    await refuses(t.resolveAfter('ranges', '1:9223372036854775808'), 'INVALID_ARGUMENT', 'id past bigint');
    await refuses(t.resolveAfter('ranges', '9223372036854775808'), 'INVALID_ARGUMENT', 'position past bigint');
    await refuses(t.read('ranges', { after: '18446744073709551616:1' }), 'INVALID_ARGUMENT', 'read after xid past 64 bits');
    const m = await t.publish('ranges', { s: '\\u0000' }, { waitForPosition: true });
    assert.match(m.position ?? '', /^\d+$/);
  });

  it('outbox: types, keys, headers and payloads are bounded and refuse NUL', async () => {
    const o = herald.outbox;
    await refuses(o.add({ type: 't\0' }), 'INVALID_ARGUMENT', 'type with NUL');
    await refuses(o.add({ type: 't'.repeat(201) }), 'INVALID_ARGUMENT', 'type of 201 bytes');
    await refuses(o.add({ type: 't', key: 'k'.repeat(1001) }), 'INVALID_ARGUMENT', 'key of 1001 bytes');
    await refuses(o.add({ type: 't', headers: { h: 'a\0' } }), 'INVALID_ARGUMENT', 'header with NUL');
    await refuses(o.add({ type: 't', payload: { a: '\0' } }), 'INVALID_PAYLOAD', 'payload with NUL');
    await refuses(o.dead({ limit: 1e20 }), 'INVALID_ARGUMENT', 'dead limit');
  });
});
