import assert from 'node:assert/strict';
import { EventEmitter } from 'node:events';
import { describe, it } from 'node:test';
import { InvalidOptionError } from '../errors.js';
import { backoffDelay, retryDelay, retryDelaySql } from './backoff.js';
import { describeError, ERROR_TEXT_MAX_CHARS } from './describe-error.js';
import { Loop, type Turn } from './loop.js';
import { positiveInteger, numberBetween, resolveOptions } from './options.js';
import { deferred, waitFor } from '../../test/support/wait.js';
import { useHerald } from '../../test/support/herald.js';
import type { Herald } from '../client.js';

const HOUR = 3_600_000;
const timeouts = () => process.getActiveResourcesInfo().filter((r) => r === 'Timeout').length;

/** A reconnect source like the notifier. */
function reconnects(): EventEmitter & { on(e: 'reconnected', l: () => void): unknown } {
  return new EventEmitter();
}

describe('Loop', () => {
  it('a reconnect cuts an error backoff short and the next turn runs at once', async () => {
    const source = reconnects();
    let down = true;
    const errors: unknown[] = [];
    const delivered = deferred();
    const loop = new Loop({
      turn: async () => {
        if (down) throw new Error('database down');
        delivered.resolve();
        return 'idle';
      },
      pollIntervalMs: HOUR,
      onError: (err) => errors.push(err),
      reconnects: source,
      // Without the reconnect this backoff would outlast the test by far.
      backoff: { baseMs: HOUR, maxMs: HOUR, jitter: 0 },
    });
    try {
      loop.start();
      await waitFor(() => errors.length === 1, { what: 'the first error' });
      assert.equal(loop.failures, 1);
      down = false;
      source.emit('notifier:reconnected', { attempts: 1, downtimeMs: 10 });
      await delivered.promise;
      assert.equal(loop.failures, 0);
    } finally {
      await loop.stop();
    }
    assert.equal(source.listenerCount('notifier:reconnected'), 0, 'stop() removes the reconnect listener');
  });

  it('a wake-up during a turn is not lost; an idle loop waits for the next one', async () => {
    let turns = 0;
    let wakeDuring = true;
    const third = deferred();
    const loop: Loop = new Loop({
      turn: async () => {
        turns++;
        loop.dirty = false;
        if (wakeDuring) {
          wakeDuring = false;
          loop.wake(); // arrives while the claim runs
        }
        if (turns === 3) third.resolve();
        return 'idle';
      },
      pollIntervalMs: HOUR,
      onError: () => {},
    });
    try {
      loop.start();
      await waitFor(() => loop.waiting, { what: 'the loop idle' });
      assert.equal(turns, 2, 'the wake-up during the first turn caused a second one');
      loop.wake();
      await third.promise;
    } finally {
      await loop.stop();
    }
  });

  it('stop() ends idle waits, backoff pauses and timers, waits for the turn in flight, and leaves no timer', async () => {
    const before = timeouts();
    const source = reconnects();
    const inTurn = deferred();
    const release = deferred();
    let failing = false;
    const lanes: Loop[] = [];
    // Three loops: one idle, one in backoff, one in a turn.
    const idle: Loop = new Loop({
      turn: async () => {
        idle.dirty = false;
        return 'idle';
      },
      pollIntervalMs: HOUR,
      onError: () => {},
      reconnects: source,
    });
    const backoff = new Loop({
      turn: async () => {
        failing = true;
        throw new Error('x');
      },
      pollIntervalMs: HOUR,
      onError: () => {},
      reconnects: source,
      backoff: { baseMs: HOUR, maxMs: HOUR, jitter: 0 },
    });
    let finished = false;
    const busy: Loop = new Loop({
      turn: async (): Promise<Turn> => {
        busy.dirty = false;
        inTurn.resolve();
        await release.promise;
        finished = true;
        return 'idle';
      },
      pollIntervalMs: HOUR,
      onError: () => {},
      reconnects: source,
    });
    lanes.push(idle, backoff, busy);
    let busyStopped: Promise<void> | undefined;
    try {
      for (const l of lanes) l.start();
      idle.timer(HOUR, () => assert.fail('a cleared timer fired'));
      await inTurn.promise;
      await waitFor(() => failing && idle.waiting, { what: 'one loop idle, one in backoff' });
      await Promise.all([idle.stop(), backoff.stop()]);
      busyStopped = busy.stop();
      assert.equal(busy.stop(), busyStopped, 'stop() is idempotent');
    } finally {
      release.resolve();
      await Promise.all(lanes.map((l) => l.stop()));
    }
    await busyStopped;
    assert.ok(finished, 'the turn in flight ran to its end');
    assert.equal(source.listenerCount('notifier:reconnected'), 0);
    assert.ok(timeouts() <= before, `no timer left behind (${timeouts()} now, ${before} before)`);
  });

  it('stop() with a deadline runs onTimeout when the drain does not end in time', async () => {
    const loop: Loop = new Loop({
      turn: async () => {
        loop.dirty = false;
        return 'idle';
      },
      pollIntervalMs: HOUR,
      onError: () => {},
    });
    loop.start();
    const never = deferred();
    let timedOut = false;
    await loop.stop({ drain: () => never.promise, timeoutMs: 20, onTimeout: () => void (timedOut = true) });
    assert.ok(timedOut);
  });

  it('many lanes share one dirty flag and are all released by a wake-up', async () => {
    let turns = 0;
    const loop: Loop = new Loop({
      turn: async () => {
        turns++;
        loop.dirty = false;
        return 'idle';
      },
      pollIntervalMs: HOUR,
      onError: () => {},
      lanes: 4,
    });
    try {
      loop.start();
      await waitFor(() => turns >= 4 && loop.waiting, { what: 'four lanes idle' });
      const before = turns;
      loop.wake();
      await waitFor(() => turns >= before + 4, { what: 'every lane ran a turn' });
    } finally {
      await loop.stop();
    }
  });
});

describe('retry policy, describeError, option resolver', () => {
  it('one formula: min(max, base * 2^(n-1)) * (1 - jitter * random)', () => {
    const p = { baseMs: 100, maxMs: 1000, jitter: 0.5 };
    assert.deepEqual([1, 2, 3, 4, 5, 40].map((n) => retryDelay(p, n, () => 0)), [100, 200, 400, 800, 1000, 1000]);
    assert.deepEqual([1, 2, 3].map((n) => retryDelay(p, n, () => 0.999999)), [50, 100, 200]);
    assert.equal(retryDelay({ ...p, jitter: 0 }, 3, () => 0.7), 400);
    // The 0-based full-jitter helper kept for the notifier is the same formula.
    assert.equal(backoffDelay(2, 100, 1000, () => 0.25), retryDelay({ baseMs: 100, maxMs: 1000, jitter: 1 }, 3, () => 0.25));
    assert.match(retryDelaySql('m.attempts', '$1', '$2', '$3'), /^\(least\(\$2::float8, \$1::float8 \* power/);
  });

  it('describeError: message or name: message, strings as is, values as JSON; one cap', () => {
    assert.equal(describeError(new TypeError('bad')), 'bad');
    assert.equal(describeError(new TypeError('bad'), true), 'TypeError: bad');
    assert.equal(describeError('plain'), 'plain');
    assert.equal(describeError({ code: 7 }), '{"code":7}');
    assert.equal(describeError(undefined), 'undefined');
    const long = describeError(new Error('x'.repeat(10_000)));
    assert.equal(long.length, ERROR_TEXT_MAX_CHARS);
    assert.ok(long.endsWith('…'));
  });

  it('resolveOptions: defaults, undefined ignored, unknown keys ignored, errors name the option', () => {
    const defaults = { batchSize: 10, jitter: 0.5 };
    const checks = { batchSize: positiveInteger(100), jitter: numberBetween(0, 1) };
    assert.deepEqual(resolveOptions(defaults, { batchSize: undefined, other: 1 } as object, checks), defaults);
    assert.deepEqual(resolveOptions(defaults, { batchSize: 5 }, checks), { batchSize: 5, jitter: 0.5 });
    assert.throws(() => resolveOptions(defaults, { batchSize: 0 }, checks), (e: unknown) => e instanceof InvalidOptionError && e.option === 'batchSize');
    assert.throws(() => resolveOptions(defaults, { jitter: 2 }, checks, 'relay.'), /option relay\.jitter: expected a number from 0 to 1, got 2/);
  });
});

describe('retry policy in SQL', () => {
  let herald: Herald;
  useHerald({}, (_db, h) => {
    herald = h;
  });

  it('the SQL expression gives the JavaScript delays (jitter 0) and stays in the jitter window', async () => {
    const { rows } = await herald.driver.executor.query<{ n: number; exact: number; jittered: number }>(
      `SELECT n, ${retryDelaySql('n', '$1', '$2', '$3')} AS exact, ${retryDelaySql('n', '$1', '$2', '$4')} AS jittered
         FROM generate_series(0, 40) n`,
      [100, 60_000, 0, 0.5],
    );
    for (const r of rows) {
      const ceiling = retryDelay({ baseMs: 100, maxMs: 60_000, jitter: 0 }, r.n);
      assert.equal(Number(r.exact), ceiling, `n = ${r.n}`);
      assert.ok(Number(r.jittered) > ceiling / 2 - 1e-9 && Number(r.jittered) <= ceiling, `n = ${r.n}: ${r.jittered}`);
    }
  });
});
