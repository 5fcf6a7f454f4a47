import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { describe, it } from 'node:test';
import type { Herald } from '../client.js';
import { HeraldServer } from '../server/server.js';
import { cli } from '../../test/support/cli.js';
import { useHerald } from '../../test/support/herald.js';
import type { TestDatabase } from '../../test/support/db.js';

let db: TestDatabase;
let herald: Herald;
useHerald({}, (d, h) => {
  db = d;
  herald = h;
});

const env = () => ({ DATABASE_URL: db.url });
const ids = (stdout: string) => stdout.trim().split('\n').filter(Boolean).map((l) => JSON.parse(l).id as string);
const numericDesc = (list: string[]) => [...list].sort((a, b) => Number(BigInt(b) - BigInt(a)));

describe('job ids are ordered as numbers, not as text (issue 16)', () => {
  it('list, beforeId paging, the CLI and the dashboard panels show 16 jobs newest first', async () => {
    const made: string[] = [];
    for (let i = 0; i < 16; i++) made.push((await herald.queue.enqueue('ordering', { i }, { delayMs: 3_600_000 })).id);
    made.push((await herald.queue.enqueue('ordering-pipeline', {}, { delayMs: 3_600_000, stages: ['a', 'b'] })).id);
    const all = numericDesc(made);
    assert.ok(all.some((id) => id.length !== all[0].length), 'ids of different lengths (10 and more jobs)');

    assert.deepEqual((await herald.queue.list({ limit: 3 })).map((j) => j.id), all.slice(0, 3));
    // Paging with beforeId walks every job once, in order.
    const paged: string[] = [];
    for (let before: string | undefined; ; ) {
      const page = await herald.queue.list({ limit: 5, beforeId: before });
      if (page.length === 0) break;
      paged.push(...page.map((j) => j.id));
      before = page[page.length - 1].id;
    }
    assert.deepEqual(paged, all);

    const first = await cli(['jobs', 'list', '--limit', '3'], env());
    assert.equal(first.code, 0, first.stderr);
    assert.deepEqual(ids(first.stdout), all.slice(0, 3));
    const next = await cli(['jobs', 'list', '--limit', '3', '--before-id', all[2]], env());
    assert.deepEqual(ids(next.stdout), all.slice(3, 6));
    const full = await cli(['jobs', 'list', '--kind', 'ordering', '--json'], env());
    const rows = full.stdout.trim().split('\n').map((l) => JSON.parse(l));
    assert.deepEqual(rows.map((r) => r.id), all.filter((id) => id !== made[16]));
    assert.deepEqual(rows.at(-1).payload, { i: 0 }, '--json gives every field');

    const server = new HeraldServer(herald, { port: 0 });
    const base = await server.start();
    try {
      const snap = await (await fetch(`${base}/api/dashboard`)).json();
      const panel = (id: string) => snap.panels.find((p: { id: string }) => p.id === id).data.map((r: { id: string }) => r.id);
      assert.deepEqual(panel('jobs'), all);
      assert.deepEqual(panel('pipelines'), [made[16]]);
    } finally {
      await server.stop();
    }
  });
});

describe('CLI options and messages (issue 16)', () => {
  it('--version prints the package version', async () => {
    const pkg = JSON.parse(readFileSync(new URL('../../package.json', import.meta.url), 'utf8'));
    const res = await cli(['--version']);
    assert.equal(res.code, 0);
    assert.equal(res.stdout.trim(), pkg.version);
  });

  it('every numeric option is validated with a message naming the option, the range and the value', async () => {
    const cases: [string[], RegExp][] = [
      [['jobs', 'list', '--limit', 'abc'], /--limit must be an integer from 1 to 100000, got "abc"/],
      [['jobs', 'list', '--limit', '0'], /--limit must be an integer from 1 to 100000, got "0"/],
      [['jobs', 'stuck', '--limit', '1.5'], /--limit must be an integer/],
      [['listen', 'somewhere', '--count', 'abc'], /--count must be an integer >= 1, got "abc"/],
      [['jobs', 'watch', '--count', '-1'], /--count must be an integer >= 1/],
      [['topics', 'tail', 't', '--count', 'x'], /--count must be an integer >= 1/],
      [['receive', 'box', '--count', '0'], /--count must be an integer >= 1/],
      [['mailbox', 'dead', 'box', '--limit', '1e3'], /--limit must be an integer/],
      [['outbox', 'dead', '--limit', ''], /--limit must be an integer/],
      [['changes', 'track', 't', '--max-keys', 'many'], /--max-keys must be an integer from 0 to 1000/],
      [['serve', '--port', '70000'], /--port must be an integer from 0 to 65535, got "70000"/],
      [['serve', '--max-channels', 'lots'], /--max-channels must be an integer >= 1, got "lots"/],
    ];
    for (const [argv, message] of cases) {
      const res = await cli(argv, env());
      assert.equal(res.code, 2, `${argv.join(' ')}: ${res.stderr}`);
      assert.match(res.stderr, message, argv.join(' '));
    }
  });

  it('cancel and retry say why for each id they left alone', async () => {
    const waiting = (await herald.queue.enqueue('noop-reasons', {}, { delayMs: 3_600_000 })).id;
    const cancelled = (await herald.queue.enqueue('noop-reasons', {}, { delayMs: 3_600_000 })).id;
    await herald.queue.cancel([cancelled]);
    const missing = '9000000000000000000';
    const res = await cli(['jobs', 'cancel', waiting, cancelled, missing], env());
    assert.equal(res.code, 1);
    assert.deepEqual(res.stdout.trim().split('\n'), [
      `cancelled 1: ${waiting}`,
      `not cancelled ${cancelled}: already cancelled`,
      `not cancelled ${missing}: not found`,
    ]);
    const retried = await cli(['jobs', 'retry', waiting], env());
    assert.equal(retried.code, 0);
    assert.equal(retried.stdout.trim(), `retried 1: ${waiting}`);
    const again = await cli(['jobs', 'retry', waiting, missing, '--json'], env());
    assert.equal(again.code, 1);
    assert.deepEqual(JSON.parse(again.stdout), {
      retried: [],
      skipped: [
        { id: waiting, state: 'available', reason: 'still waiting (available): only dead or cancelled jobs are retried' },
        { id: missing, state: null, reason: 'not found' },
      ],
    });
  });

  it('completion bash completes commands, subcommands and options', async () => {
    const script = await cli(['completion', 'bash']);
    assert.equal(script.code, 0);
    const complete = (...words: string[]) =>
      execFileSync('bash', ['-c', `${script.stdout}\nCOMP_WORDS=("$@"); COMP_CWORD=$(($# - 1)); _herald; echo "\${COMPREPLY[*]}"`, 'bash', 'herald', ...words], { encoding: 'utf8' }).trim();
    assert.equal(complete('jo'), 'jobs');
    assert.equal(complete('jobs', 'l'), 'list limit limits');
    assert.equal(complete('jobs', 'pa'), 'pause paused');
    assert.equal(complete('--data-dir', 'x', 'jobs', 'list', '--limit', '5', '--js'), '--json');
    assert.equal(complete('mailbox', ''), 'stats dead redrive');
    assert.equal((await cli(['completion', 'fish'])).code, 2);
  });

  it('redrive of ids that are not dead letters says so', async () => {
    const sent = await herald.mailbox.send({ to: 'redrive-box', payload: 1 });
    const box = await cli(['mailbox', 'redrive', 'redrive-box', sent.id, 'nope'], env());
    assert.equal(box.code, 1);
    assert.deepEqual(box.stdout.trim().split('\n'), ['redrove 0', 'not redriven 2 of 2: only dead messages of "redrive-box" are (the others are unknown, ready or consumed)']);
    const outbox = await cli(['outbox', 'redrive', '00000000-0000-0000-0000-000000000000'], env());
    assert.equal(outbox.code, 1);
    assert.match(outbox.stdout, /^redriven 0\nnot redriven 1 of 1: only dead-lettered events are/);
  });

  it('a bad database URL is named (password hidden), before and after connecting', async () => {
    const bad = await cli(['jobs', 'list'], { DATABASE_URL: 'not-a-url' });
    assert.equal(bad.code, 2);
    assert.match(bad.stderr, /DATABASE_URL is not a Postgres URL: "not-a-url"/);
    const mysql = await cli(['jobs', 'list', '--database-url', 'mysql://me:hunter2@db/app']);
    assert.equal(mysql.code, 2);
    assert.match(mysql.stderr, /--database-url is not a Postgres URL: "mysql:\/\/me:\*\*\*@db\/app"/);
    assert.doesNotMatch(mysql.stderr, /hunter2/);
    const listen = await cli(['jobs', 'list'], { DATABASE_URL: db.url, HERALD_LISTEN_URL: 'nope' });
    assert.match(listen.stderr, /HERALD_LISTEN_URL is not a Postgres URL/);
    const refused = await cli(['jobs', 'list'], { DATABASE_URL: 'postgres://me:hunter2@127.0.0.1:1/app' });
    assert.equal(refused.code, 1);
    assert.match(refused.stderr, /\(database postgres:\/\/me:\*\*\*@127\.0\.0\.1:1\/app\)/);
    assert.doesNotMatch(refused.stderr, /hunter2/);
  });

  it('--json on every inspecting command', async () => {
    const job = await herald.queue.enqueue('json-out', { x: 1 }, { delayMs: 3_600_000 });
    await herald.mailbox.send({ to: 'json-box', payload: 'hi' });
    await herald.topics.create('json-topic');
    await herald.topics.publish('json-topic', { a: 1 });
    const json = async (argv: string[]) => {
      const res = await cli([...argv, '--json'], env());
      assert.equal(res.code, 0, `${argv.join(' ')}: ${res.stderr}`);
      return res.stdout
        .trim()
        .split('\n')
        .filter(Boolean)
        .map((l) => JSON.parse(l));
    };
    assert.equal((await json(['jobs', 'get', job.id]))[0].payload.x, 1);
    assert.ok((await json(['jobs', 'stats']))[0].some((r: { kind: string }) => r.kind === 'json-out'));
    assert.equal((await json(['jobs', 'list', '--kind', 'json-out']))[0].id, job.id);
    assert.deepEqual(await json(['jobs', 'stuck', '--older-than', '1h']), [], 'nothing stuck');
    assert.equal((await json(['mailbox', 'stats', 'json-box']))[0][0].ready, 1);
    assert.equal(typeof (await json(['outbox', 'stats']))[0].dead, 'number');
    assert.ok((await json(['topics', 'list'])).some((t: { messages: number }) => Number(t.messages) === 1));
    assert.equal((await json(['topics', 'stats', 'json-topic'])).length, 1, 'one line');
    assert.ok((await json(['migrate', 'status'])).every((m: { appliedAt: string | null }) => m.appliedAt));
    assert.equal(typeof (await json(['changes', 'list'])).length, 'number');
    const doctor = (await json(['doctor']))[0];
    assert.equal(doctor.ok, true);
    assert.deepEqual(doctor.checks.map((c: { name: string }) => c.name), ['connect', 'recovery', 'connections', 'listen', 'pooler', 'queue', 'schema']);
    const missing = await cli(['jobs', 'get', '9000000000000000000'], env());
    assert.equal(missing.code, 1);
    assert.match(missing.stderr, /job 9000000000000000000 not found/);
  });
});
