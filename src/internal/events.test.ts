import assert from 'node:assert/strict';
import { once } from 'node:events';
import { describe, it } from 'node:test';
import { TypedEmitter } from './events.js';

class Part extends TypedEmitter<{ 'part:done': [n: number] }> {
  fire(n: number): void {
    this.emit('part:done', n);
  }
}

describe('TypedEmitter', () => {
  it('a throwing listener is reported as listener:error and the other listeners still run', () => {
    const part = new Part();
    const seen: number[] = [];
    const reported: { event: string; error: unknown }[] = [];
    part.on('part:done', () => {
      throw new Error('boom');
    });
    part.on('part:done', (n) => seen.push(n));
    part.on('listener:error', (info) => reported.push(info));
    part.fire(1);
    part.fire(2);
    assert.deepEqual(seen, [1, 2]);
    assert.equal(reported.length, 2);
    assert.equal(reported[0].event, 'part:done');
    assert.equal((reported[0].error as Error).message, 'boom');
  });

  it('with nobody listening to listener:error, a throwing listener becomes one process warning per event name', async () => {
    const part = new Part();
    part.on('part:done', () => {
      throw new Error('unheard');
    });
    const warnings: Error[] = [];
    const onWarning = (w: Error) => {
      if (w.name === 'HeraldListenerError') warnings.push(w);
    };
    process.on('warning', onWarning);
    try {
      const first = once(process, 'warning');
      part.fire(1);
      part.fire(2);
      await first;
      // A third warning would be queued by now if one were emitted for the second throw.
      await new Promise((r) => setImmediate(r));
      assert.equal(warnings.length, 1);
      assert.match(warnings[0].message, /a listener of 'part:done' threw: unheard/);
    } finally {
      process.off('warning', onWarning);
    }
  });
});
