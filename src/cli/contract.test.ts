/**
 * The CLI as docs/cli.md describes it: outputs, --json, numbers and usage errors
 * (exit 2) where the docs and the code differed.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import type { Herald } from '../client.js';
import { cli } from '../../test/support/cli.js';
import { useHerald } from '../../test/support/herald.js';
import type { TestDatabase } from '../../test/support/db.js';

let db: TestDatabase;
let herald: Herald;
// No maintenance service in this file: the database has no maintenance leader.
useHerald({ maintenance: { enabled: false } }, (d, h) => {
  db = d;
  herald = h;
});

const env = () => ({ DATABASE_URL: db.url });

describe('herald maintenance without a leader', () => {
  it('status prints leader=- and run records the process own settings of the task', async () => {
    const before = await cli(['maintenance', 'status'], env());
    assert.equal(before.code, 0, before.stderr);
    for (const l of before.stdout.trim().split('\n')) assert.match(l, / leader=-$/);

    const ran = await cli(['maintenance', 'run', 'deadLetterRetention'], env());
    assert.equal(ran.code, 0, ran.stderr);
    assert.match(ran.stdout, /^deadLetterRetention rows=0\n$/);
    const out = await cli(['maintenance', 'run', 'outboxRetention'], env());
    assert.equal(out.code, 0, out.stderr);

    const text = await cli(['maintenance', 'status'], env());
    const dead = text.stdout.split('\n').find((l) => l.startsWith('deadLetterRetention '))!;
    assert.match(dead, /^deadLetterRetention +off +last=\d{4}-\S+ rows=0 took=\d+ms next=- runs=1 errors=0 leader=-$/, 'off by default, even after a run');
    const json = await cli(['maintenance', 'status', '--json'], env());
    const tasks = JSON.parse(json.stdout).tasks as { task: string; enabled: boolean; retentionMs: number | null; intervalMs: number; runs: number }[];
    const by = (t: string) => tasks.find((x) => x.task === t)!;
    assert.deepEqual(
      [by('outboxRetention').enabled, by('outboxRetention').retentionMs, by('outboxRetention').intervalMs, by('outboxRetention').runs],
      [true, 604_800_000, 60_000, 1],
    );
    assert.deepEqual([by('deadLetterRetention').enabled, by('deadLetterRetention').retentionMs], [false, 2_592_000_000]);
    assert.equal(JSON.parse(json.stdout).leader, null);
  });
});
