/**
 * The CLI as docs/cli.md describes it: outputs, --json, numbers and usage errors
 * (exit 2) where the docs and the code differed.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import type { Herald } from '../client.js';
import type { ChildProcess } from 'node:child_process';
import { cli, cliProcess } from '../../test/support/cli.js';
import { waitFor } from '../../test/support/wait.js';
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

describe('--json and --limit on every list', () => {
  it('jobs paused, jobs limits and topics dead take --json (they print JSON lines already)', async () => {
    await herald.queue.pause({ queue: 'json-paused' });
    await herald.queue.setLimit({ queue: 'json-limited', concurrency: 2 });
    await herald.topics.create('json-dead');
    try {
      for (const argv of [['jobs', 'paused'], ['jobs', 'limits'], ['topics', 'dead', 'json-dead']]) {
        const plain = await cli(argv, env());
        const json = await cli([...argv, '--json'], env());
        assert.equal(json.code, 0, `${argv.join(' ')} --json: ${json.stderr}`);
        assert.equal(json.stdout, plain.stdout, argv.join(' '));
        for (const l of json.stdout.split('\n').filter(Boolean)) JSON.parse(l);
      }
      assert.equal(JSON.parse((await cli(['jobs', 'paused', '--json'], env())).stdout).queue, 'json-paused');
      assert.equal(JSON.parse((await cli(['jobs', 'limits', '--json'], env())).stdout).concurrency, 2);
    } finally {
      await herald.queue.resume({ queue: 'json-paused' });
      await herald.queue.removeLimit({ queue: 'json-limited' });
    }
  });

  it('--limit is 1 to 100000 on every list, also past the library s 10000 per call', async () => {
    await herald.topics.create('limit-dead');
    for (const argv of [['topics', 'dead', 'limit-dead'], ['mailbox', 'dead', 'box'], ['outbox', 'dead'], ['jobs', 'list'], ['jobs', 'stuck']]) {
      const over = await cli([...argv, '--limit', '100001'], env());
      assert.equal(over.code, 2, argv.join(' '));
      assert.match(over.stderr, /--limit must be an integer from 1 to 100000, got "100001"/);
      const big = await cli([...argv, '--limit', '100000'], env());
      assert.equal(big.code, 0, `${argv.join(' ')}: ${big.stderr}`);
    }
  });

  it('jobs list pages past 10000 jobs', async () => {
    await herald.driver.executor.query(
      `INSERT INTO herald.jobs (queue, kind, payload, run_at) SELECT 'paging', 'paging', '{}'::jsonb, now() + interval '1 day' FROM generate_series(1, 10005)`,
    );
    const res = await cli(['jobs', 'list', '--kind', 'paging', '--limit', '10003'], env());
    assert.equal(res.code, 0, res.stderr);
    const ids = res.stdout.trim().split('\n').map((l) => BigInt(JSON.parse(l).id as string));
    assert.equal(ids.length, 10003);
    assert.ok(ids.every((id, i) => i === 0 || id < ids[i - 1]), 'newest first, each once');
    const all = await cli(['jobs', 'list', '--kind', 'paging', '--limit', '20000'], env());
    assert.equal(all.stdout.trim().split('\n').length, 10005);
  });
});

describe('numbers are decimal integers, named by where they came from', () => {
  it('topics create checks its numbers with the library s ranges', async () => {
    const cases: [string[], RegExp][] = [
      [['--partitions', 'abc'], /--partitions must be an integer from 1 to 1024, got "abc"/],
      [['--partitions', '5000'], /--partitions must be an integer from 1 to 1024, got "5000"/],
      [['--partitions', '1.5'], /--partitions must be an integer from 1 to 1024, got "1.5"/],
      [['--segment-size', '0'], /--segment-size must be an integer >= 1, got "0"/],
      [['--retention-ms', '1e3'], /--retention-ms must be an integer >= 0, got "1e3"/],
      [['--retention-bytes', '-1'], /--retention-bytes must be an integer >= 0, got "-1"/],
    ];
    for (const [opts, message] of cases) {
      const res = await cli(['topics', 'create', 'numbers', ...opts], env());
      assert.equal(res.code, 2, `${opts.join(' ')}: ${res.stderr}`);
      assert.match(res.stderr, message);
    }
    assert.deepEqual(await herald.topics.list().then((l) => l.includes('numbers')), false, 'nothing created');
    const ok = await cli(['topics', 'create', 'numbers', '--partitions', '4', '--segment-size', '1000', '--retention-ms', '0', '--retention-bytes', '100000'], env());
    assert.equal(ok.code, 0, ok.stderr);
    assert.deepEqual(JSON.parse(ok.stdout), { topic: 'numbers', created: true });
    const s = await herald.topics.stats('numbers');
    assert.deepEqual([s.partitions, s.segmentSize, s.retentionMs, s.retentionBytes], [4, 1000, 0, 100000]);
  });

  it('--connect-timeout and HERALD_CONNECT_TIMEOUT_MS are integers >= 1, each named', async () => {
    for (const v of ['1.5', '1e3', '0', 'abc']) {
      const flag = await cli(['jobs', 'list', '--connect-timeout', v], env());
      assert.equal(flag.code, 2, v);
      assert.match(flag.stderr, new RegExp(`--connect-timeout must be an integer from 1 to 2147483647, got "${v.replace('.', '\\.')}"`));
      const variable = await cli(['jobs', 'list'], { ...env(), HERALD_CONNECT_TIMEOUT_MS: v });
      assert.equal(variable.code, 2, v);
      assert.match(variable.stderr, new RegExp(`^herald: HERALD_CONNECT_TIMEOUT_MS must be an integer from 1 to 2147483647, got "${v.replace('.', '\\.')}"`));
    }
    const ok = await cli(['jobs', 'list', '--connect-timeout', '5000'], { ...env(), HERALD_CONNECT_TIMEOUT_MS: 'ignored when the flag is given' });
    assert.equal(ok.code, 0, ok.stderr);
  });

  it('herald serve names HERALD_MAX_CONNECTIONS when the bad value came from it', async () => {
    const fromEnv = await cli(['serve', '--port', '0'], { ...env(), HERALD_MAX_CONNECTIONS: '0' });
    assert.equal(fromEnv.code, 2);
    assert.match(fromEnv.stderr, /^herald: HERALD_MAX_CONNECTIONS must be an integer >= 1, got "0"/);
    const fromFlag = await cli(['serve', '--port', '0', '--max-connections', '0'], { ...env(), HERALD_MAX_CONNECTIONS: '5' });
    assert.equal(fromFlag.code, 2);
    assert.match(fromFlag.stderr, /^herald: --max-connections must be an integer >= 1, got "0"/);
  });
});

describe('a bad value is a usage error (exit 2) naming the argument, before anything runs', () => {
  it('job ids, --state and --before-id', async () => {
    const job = (await herald.queue.enqueue('usage-errors', {}, { delayMs: 3_600_000 })).id;
    const cases: [string[], RegExp][] = [
      [['jobs', 'list', '--state', 'bogus'], /^herald: --state must be one of waiting, available, running, completed, dead, cancelled, got "bogus"$/],
      [['jobs', 'list', '--before-id', 'abc'], /^herald: --before-id must be a decimal integer from 0 to 9223372036854775807, got "abc"$/],
      [['jobs', 'get', 'abc'], /^herald: job id must be a decimal integer from 0 to 9223372036854775807, got "abc"$/],
      [['jobs', 'get', '9223372036854775808'], /^herald: job id must be a decimal integer/],
      [['jobs', 'retry', job, 'abc'], /^herald: job id must be a decimal integer from 0 to 9223372036854775807, got "abc"$/],
      [['jobs', 'cancel', job, 'abc'], /^herald: job id must be a decimal integer from 0 to 9223372036854775807, got "abc"$/],
      [['jobs', 'watch', '--id', 'x'], /^herald: --id must be a decimal integer/],
      [['outbox', 'redrive', 'not-a-uuid'], /^herald: event id must be a UUID, got "not-a-uuid"$/],
      [['topics', 'redrive', 't', 'g', 'abc'], /^herald: position must be a topic position \(a decimal integer from 0 to 9223372036854775807\), got "abc"$/],
    ];
    for (const [argv, message] of cases) {
      const res = await cli(argv, env());
      assert.equal(res.code, 2, `${argv.join(' ')}: ${res.stderr}`);
      assert.match(res.stderr.trim(), message, argv.join(' '));
      assert.equal(res.stdout, '', argv.join(' '));
    }
    assert.equal((await herald.queue.get(job))!.state, 'available', 'the cancel with a malformed id cancelled nothing');
    // A well-formed id of no job is reported per id, as before.
    const missing = await cli(['jobs', 'cancel', '9000000000000000001'], env());
    assert.equal(missing.code, 1);
    assert.equal(missing.stdout, 'cancelled 0\nnot cancelled 9000000000000000001: not found\n');
  });

  it('a value the library refuses is exit 2 too (INVALID_ARGUMENT), other failures stay exit 1', async () => {
    const empty = await cli(['send', '', 'x'], env());
    assert.equal(empty.code, 2, empty.stderr);
    assert.match(empty.stderr, /INVALID_ARGUMENT/);
    const partition = await cli(['jobs', 'limit', '--concurrency', '1', '--partition-by', ''], env());
    assert.equal(partition.code, 2, partition.stderr);
    const missing = await cli(['topics', 'stats', 'no-such-topic'], env());
    assert.equal(missing.code, 1);
    assert.match(missing.stderr, /NOT_FOUND/);
  });

  it('a maintenance task that fails is exit 1, not a usage error', async () => {
    await herald.driver.executor.query('ALTER TABLE herald.outbox_events RENAME TO outbox_events_away');
    try {
      const res = await cli(['maintenance', 'run', 'outboxRetention'], env());
      assert.equal(res.code, 1, res.stderr);
      assert.match(res.stderr, /outbox_events/);
    } finally {
      await herald.driver.executor.query('ALTER TABLE herald.outbox_events_away RENAME TO outbox_events');
    }
  });

  it('herald serve checks its options before connecting (the database here is unreachable)', async () => {
    const nowhere = { DATABASE_URL: 'postgres://nobody@127.0.0.1:1/none' };
    const open = await cli(['serve', '--host', '0.0.0.0', '--port', '0'], nowhere);
    assert.equal(open.code, 2, open.stderr);
    assert.match(open.stderr, /^herald: --host 0\.0\.0\.0 is not a loopback address: serving on it needs credentials \(--token/);
    const fromEnv = await cli(['serve', '--port', '0'], { ...nowhere, HERALD_HOST: '0.0.0.0' });
    assert.equal(fromEnv.code, 2, fromEnv.stderr);
    assert.match(fromEnv.stderr, /^herald: HERALD_HOST 0\.0\.0\.0 is not a loopback address/);
    const bytes = await cli(['serve', '--port', '0', '--max-message-bytes', '9000'], nowhere);
    assert.equal(bytes.code, 2, bytes.stderr);
    assert.match(bytes.stderr, /^herald: --max-message-bytes must be an integer from 1 to 7999, got "9000"/);
    const secret = await cli(['serve', '--port', '0', '--jwt-secret', 'short'], nowhere);
    assert.equal(secret.code, 2, secret.stderr);
    assert.match(secret.stderr, /^herald: herald serve: option jwtSecret: expected a secret of 16 characters or more/);
    for (const r of [open, fromEnv, bytes, secret]) assert.doesNotMatch(r.stderr, /connect|127\.0\.0\.1:1/);
  });
});

describe('messages', () => {
  it('a bad database URL is echoed as given, only its password masked', async () => {
    const cases: [Record<string, string>, string[], string][] = [
      [{ DATABASE_URL: 'http://x' }, [], 'DATABASE_URL is not a Postgres URL: "http://x" '],
      [{ DATABASE_URL: 'HTTP://Me:hunter2@Host:80' }, [], 'DATABASE_URL is not a Postgres URL: "HTTP://Me:***@Host:80" '],
      [{}, ['--database-url', 'host=db password=hunter2'], '--database-url is not a Postgres URL: "host=db password=***" '],
      [{ DATABASE_URL: db.url, HERALD_LISTEN_URL: 'redis://u:hunter2@cache' }, [], 'HERALD_LISTEN_URL is not a Postgres URL: "redis://u:***@cache" '],
    ];
    for (const [vars, flags, message] of cases) {
      const res = await cli([...flags, 'jobs', 'stats'], vars);
      assert.equal(res.code, 2, res.stderr);
      assert.ok(res.stderr.startsWith(`herald: ${message}`), res.stderr);
      assert.doesNotMatch(res.stderr, /hunter2/);
    }
  });
});

describe('stdout closed by its reader (herald ... | head)', () => {
  /** Spawns the CLI, closes its stdout after the first chunk, resolves with its exit code and stderr. */
  function closeAfterFirstChunk(child: ChildProcess): { exited: Promise<number | null>; stderr: () => string; chunk: Promise<void> } {
    let err = '';
    child.stderr!.on('data', (d) => (err += d));
    const chunk = new Promise<void>((resolve) =>
      child.stdout!.once('data', () => {
        child.stdout!.destroy();
        resolve();
      }),
    );
    const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
    return { exited, stderr: () => err, chunk };
  }

  it('migrate sql ends quietly with exit 0', async () => {
    const child = cliProcess(['migrate', 'sql']);
    try {
      const run = closeAfterFirstChunk(child);
      const code = await run.exited;
      assert.equal(code, 0, run.stderr());
      assert.equal(run.stderr(), '');
    } finally {
      if (child.exitCode === null) child.kill('SIGKILL');
    }
  });

  it('listen stops as after Ctrl-C when its stdout goes, exit 0', async () => {
    const child = cliProcess(['listen', 'epipe-channel'], { DATABASE_URL: db.url });
    try {
      const run = closeAfterFirstChunk(child);
      // A process start (node, tsx, a connection): the suite's 60 s window for a step that has no count to follow.
      await waitFor(() => run.stderr().includes('listening on'), { what: 'LISTEN established', timeoutMs: 60_000 });
      await herald.notify('epipe-channel', 'first');
      await run.chunk;
      // The next line finds stdout closed (the read end is gone once the first chunk came).
      await herald.notify('epipe-channel', 'more');
      assert.equal(await run.exited, 0, run.stderr());
      assert.doesNotMatch(run.stderr(), /EPIPE|Error/);
    } finally {
      if (child.exitCode === null) child.kill('SIGKILL');
    }
  });
});

describe('outputs as docs/cli.md shows them', () => {
  it('receive --wait and doctor --connection-headroom take decimals, nothing else', async () => {
    const got = await cli(['receive', 'wait-box', '--wait', '0.2'], env());
    assert.equal(got.code, 3, got.stderr);
    for (const v of ['1e3', '-1', 'abc', '', '315360001']) {
      const res = await cli(['receive', 'wait-box', '--wait', v], env());
      assert.equal(res.code, 2, v);
      assert.match(res.stderr, new RegExp(`^herald: --wait must be a number of seconds from 0 to 315360000 \\(a decimal, fractions allowed\\), got ${JSON.stringify(v)}`));
    }
    for (const v of ['2', '1e-1', '', '-0.5']) {
      const res = await cli(['doctor', '--connection-headroom', v], env());
      assert.equal(res.code, 2, v);
      assert.match(res.stderr, /^herald: --connection-headroom must be a number from 0 to 1 \(a decimal, fractions allowed\), got /);
    }
  });

  it('jobs pause/resume/limit/unlimit, changes track/untrack, topics reset, outbox stats', async () => {
    const pause = await cli(['jobs', 'pause', '--queue', 'outputs', '--kind', 'k', '--json'], env());
    assert.deepEqual(Object.keys(JSON.parse(pause.stdout)), ['queue', 'kind', 'pausedAt']);
    assert.equal((await cli(['jobs', 'resume', '--queue', 'outputs', '--kind', 'k'], env())).stdout, 'resumed queue outputs, kind k\n');
    const again = await cli(['jobs', 'resume', '--queue', 'outputs', '--kind', 'k'], env());
    assert.deepEqual([again.code, again.stdout], [1, 'not paused: queue outputs, kind k (see herald jobs paused)\n']);
    const json = await cli(['jobs', 'resume', '--json'], env());
    assert.deepEqual([json.code, json.stdout], [1, '{"resumed":false}\n']);
    assert.equal((await cli(['jobs', 'limit', '--queue', 'outputs', '--concurrency', '2'], env())).stdout, 'limited queue outputs\n');
    assert.equal((await cli(['jobs', 'unlimit', '--queue', 'outputs'], env())).stdout, 'unlimited queue outputs\n');
    const none = await cli(['jobs', 'unlimit', '--queue', 'outputs'], env());
    assert.deepEqual([none.code, none.stdout], [1, 'no limit on queue outputs\n']);

    await herald.driver.executor.query('CREATE TABLE public.tracked_outputs (id int PRIMARY KEY)');
    const track = await cli(['changes', 'track', 'tracked_outputs'], env());
    assert.equal(track.code, 0, track.stderr);
    assert.match(track.stdout, /^tracking public\.tracked_outputs \(id\) on channel "[^"]+"\n$/);
    assert.deepEqual(await cli(['changes', 'untrack', 'tracked_outputs'], env()).then((r) => [r.code, r.stdout]), [0, 'untracked tracked_outputs\n']);
    assert.deepEqual(await cli(['changes', 'untrack', 'tracked_outputs'], env()).then((r) => [r.code, r.stdout]), [0, 'tracked_outputs was not tracked\n']);

    await herald.topics.create('reset-outputs', { partitions: 2 });
    await herald.topics.createGroup('reset-outputs', 'g');
    assert.equal((await cli(['topics', 'reset', 'reset-outputs', 'g', '--to', 'earliest'], env())).stdout, 'moved 2 partitions of group g\n');

    const stats = JSON.parse((await cli(['outbox', 'stats', '--json'], env())).stdout);
    assert.deepEqual(Object.keys(stats).sort(), ['dead', 'due', 'oldestPendingAgeMs', 'pending', 'published', 'publishedEstimated', 'retrying']);
    assert.match((await cli(['outbox', 'stats'], env())).stdout, /^publishedEstimated +(true|false)$/m);
  });

  it('herald alone prints the help to stderr and exits 2; -d and $HERALD_SCHEMA', async () => {
    const bare = await cli([]);
    assert.equal(bare.code, 2);
    assert.equal(bare.stdout, '');
    assert.match(bare.stderr, /^Usage: herald /);
    const short = await cli(['-d', db.url, 'jobs', 'stats', '--json']);
    assert.equal(short.code, 0, short.stderr);
    const schema = await cli(['migrate', 'sql'], { HERALD_SCHEMA: 'other_schema' });
    assert.match(schema.stdout, /CREATE SCHEMA IF NOT EXISTS "other_schema"/);
  });
});
