import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { CronSchedule } from './cron.js';

const iso = (d: Date | null) => d?.toISOString() ?? null;

function ticks(c: CronSchedule, from: string, n: number): string[] {
  const out: string[] = [];
  let t: Date | null = new Date(from);
  for (let i = 0; i < n && t; i++) {
    t = c.nextTick(t);
    out.push(iso(t)!);
  }
  return out;
}

describe('cron schedules (croner)', () => {
  test('UTC by default; names, steps and day fields', () => {
    const c = new CronSchedule('*/15 9-17 * * MON-FRI');
    assert.equal(c.timezone, 'UTC');
    assert.equal(c.matches(new Date('2026-11-23T09:15:00Z')), true); // Monday
    assert.equal(c.matches(new Date('2026-11-23T09:16:00Z')), false);
    assert.equal(c.matches(new Date('2026-11-22T09:15:00Z')), false); // Sunday
    assert.equal(iso(c.nextTick(new Date('2026-11-23T17:50:00Z'))), '2026-11-24T09:00:00.000Z');
    assert.equal(iso(new CronSchedule('@daily').nextTick(new Date('2026-11-23T17:50:00Z'))), '2026-11-24T00:00:00.000Z');
    // Both day fields restricted: either one matches (classic cron).
    const either = new CronSchedule('0 0 13 * FRI');
    assert.equal(either.matches(new Date('2026-11-13T00:00:00Z')), true); // the 13th, a Friday
    assert.equal(either.matches(new Date('2026-11-20T00:00:00Z')), true); // a Friday
    assert.equal(either.matches(new Date('2026-12-13T00:00:00Z')), true); // the 13th, a Sunday
  });

  test('latestTick is the last tick at or before now and after the bound', () => {
    const c = new CronSchedule('*/10 * * * * *');
    assert.equal(iso(c.latestTick(new Date('2026-11-23T09:00:25.500Z'), null)), '2026-11-23T09:00:20.000Z');
    assert.equal(iso(c.latestTick(new Date('2026-11-23T09:00:20.000Z'), null)), '2026-11-23T09:00:20.000Z');
    assert.equal(c.latestTick(new Date('2026-11-23T09:00:25Z'), new Date('2026-11-23T09:00:20Z')), null);
  });

  test('time zones: wall-clock ticks across the spring-forward and fall-back changes', () => {
    // Europe/Berlin: CET (UTC+1) until 2026-03-29 02:00, CEST (UTC+2) until 2026-10-25 03:00.
    const nine = new CronSchedule('0 9 * * *', 'Europe/Berlin');
    assert.deepEqual(ticks(nine, '2026-03-27T12:00:00Z', 3), ['2026-03-28T08:00:00.000Z', '2026-03-29T07:00:00.000Z', '2026-03-30T07:00:00.000Z']);
    assert.deepEqual(ticks(nine, '2026-10-23T12:00:00Z', 3), ['2026-10-24T07:00:00.000Z', '2026-10-25T08:00:00.000Z', '2026-10-26T08:00:00.000Z']);
    // 02:30 does not exist on 2026-03-29 in Berlin: that day it runs once, after the change.
    const skipped = ticks(new CronSchedule('30 2 * * *', 'Europe/Berlin'), '2026-03-28T12:00:00Z', 2);
    assert.equal(skipped.length, 2);
    assert.ok(skipped[0] >= '2026-03-29T01:00:00.000Z' && skipped[0] < '2026-03-29T02:00:00.000Z', skipped[0]);
    assert.equal(skipped[1], '2026-03-30T00:30:00.000Z');
    // 02:30 happens twice on 2026-10-25 in Berlin: it runs once that day.
    const repeated = ticks(new CronSchedule('30 2 * * *', 'Europe/Berlin'), '2026-10-24T12:00:00Z', 2);
    assert.equal(repeated.filter((t) => t.startsWith('2026-10-25')).length, 1);
    assert.equal(repeated[1], '2026-10-26T01:30:00.000Z');
  });

  test('bad expressions and zones are typed errors naming the option', () => {
    assert.throws(() => new CronSchedule('61 * * * *'), (e: Error & { code?: string }) => e.code === 'INVALID_OPTION' && /cron/.test(e.message));
    assert.throws(() => new CronSchedule('* * *'), (e: Error & { code?: string }) => e.code === 'INVALID_OPTION');
    assert.throws(() => new CronSchedule('* * * * *', 'Mars/Olympus'), (e: Error & { code?: string }) => e.code === 'INVALID_OPTION' && /tz/.test(e.message));
  });
});
