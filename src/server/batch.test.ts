import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import type { Principal } from './auth.js';
import { Connection, FrameBatch, type CloseReason } from './connection.js';

/**
 * The ordering rules of shared topic batches, on connections whose writes are kept in
 * memory (no socket, no database): a batch is the bytes of a round's events, queued on
 * every connection of the topic; a frame queued behind it on one connection (a gap, a
 * replay) seals it for all, so a later event cannot overtake that frame.
 */
class MemoryConnection extends Connection {
  readonly written: string[] = [];
  ended: CloseReason | undefined;
  constructor(maxBufferedBytes = 1 << 20) {
    super('sse', 'sse', { id: 'anonymous', kind: 'anonymous', grants: {} as Principal['grants'], expiresAt: null }, maxBufferedBytes, () => {});
  }
  wire(payload: Buffer): Buffer {
    return payload;
  }
  protected socketBuffered(): number {
    return 0;
  }
  protected writeWire(bytes: Buffer): void {
    this.written.push(bytes.toString());
  }
  protected socket() {
    return null;
  }
  protected end(reason: CloseReason): void {
    this.ended = reason;
  }
  protected destroy(): void {
    this.ended = 'client_gone';
  }
}

/** What the gateway does for one event of a topic: append to the open batch, or open a new one on every connection. */
function publish(state: { batch?: FrameBatch }, conns: MemoryConnection[], event: string): void {
  if (!state.batch || state.batch.sealed) {
    state.batch = new FrameBatch();
    for (const c of conns) c.enqueueBatch(state.batch);
  }
  state.batch.add('sse', Buffer.from(event));
  state.batch.countEvent();
}

describe('shared frame batches', () => {
  test('a round of events is one write of one shared buffer on every connection', () => {
    const conns = [new MemoryConnection(), new MemoryConnection()];
    const topic = {};
    for (const e of ['e1 ', 'e2 ', 'e3 ']) publish(topic, conns, e);
    assert.deepEqual(conns.map((c) => c.flush()), [3, 3], 'each connection counts the three events as delivered');
    for (const c of conns) assert.deepEqual(c.written, ['e1 e2 e3 ']);
  });

  test('a gap queued on one connection behind an open batch seals it: later events follow the gap there, and stay in order elsewhere', () => {
    const a = new MemoryConnection();
    const b = new MemoryConnection();
    const topic: { batch?: FrameBatch } = {};
    publish(topic, [a, b], 'e1 ');
    assert.equal(b.enqueue(Buffer.from('GAP ')), true);
    assert.equal(topic.batch!.sealed, true, 'the ordered frame sealed the shared batch');
    publish(topic, [a, b], 'e2 ');
    assert.equal(b.flush(), 2);
    assert.equal(a.flush(), 2);
    assert.equal(b.written.join(''), 'e1 GAP e2 ', 'e2 may not pass the gap');
    assert.equal(a.written.join(''), 'e1 e2 ');
  });

  test('a keep-alive (unordered) does not seal the batch', () => {
    const a = new MemoryConnection();
    const topic: { batch?: FrameBatch } = {};
    publish(topic, [a], 'e1 ');
    a.enqueue(Buffer.from(': ka '), false);
    publish(topic, [a], 'e2 ');
    assert.equal(topic.batch!.sealed, false);
    assert.equal(a.flush(), 2);
    assert.equal(a.written.join(''), 'e1 e2 : ka ');
  });

  test('a connection that joins while a batch is open gets only the events after it joined', () => {
    const a = new MemoryConnection();
    const late = new MemoryConnection();
    const topic: { batch?: FrameBatch } = {};
    publish(topic, [a], 'e1 ');
    // What the gateway does when a client joins a topic: the open batch takes no more events.
    topic.batch!.sealed = true;
    publish(topic, [a, late], 'e2 ');
    assert.equal(a.flush(), 2);
    assert.equal(late.flush(), 1);
    assert.equal(a.written.join(''), 'e1 e2 ');
    assert.equal(late.written.join(''), 'e2 ');
  });

  test('a flush seals the batch it wrote: events after the write open a new batch and reach every connection once', () => {
    const a = new MemoryConnection();
    const b = new MemoryConnection();
    const topic: { batch?: FrameBatch } = {};
    publish(topic, [a, b], 'e1 ');
    assert.equal(a.flush(), 1); // a's write took the batch as it was
    publish(topic, [a, b], 'e2 ');
    assert.equal(a.flush(), 1);
    assert.equal(b.flush(), 2);
    assert.equal(a.written.join(''), 'e1 e2 ');
    assert.equal(b.written.join(''), 'e1 e2 ');
  });

  test('queued batch bytes count toward the buffer bound: a client that does not read is cut as a slow consumer', () => {
    const a = new MemoryConnection(10);
    const topic: { batch?: FrameBatch } = {};
    publish(topic, [a], '0123456789ABC');
    assert.equal(a.flush(), 0);
    assert.equal(a.ended, 'slow_consumer');
    assert.deepEqual(a.written, []);
  });
});
