import assert from 'node:assert/strict';
import type { ChildProcess } from 'node:child_process';
import { after, before, describe, it } from 'node:test';
import { cli, cliProcess } from '../../test/support/cli.js';
import { freshDatabase, type TestDatabase } from '../../test/support/db.js';
import { silentServer } from '../../test/support/silent.js';
import { waitFor } from '../../test/support/wait.js';
import { INTERRUPTED_EXIT_CODE } from './main.js';

let db: TestDatabase;
before(async () => {
  db = await freshDatabase();
});
after(async () => db.drop());

/** Collects a child's output and resolves with its exit code. */
function watch(child: ChildProcess): { exited: Promise<number | null>; stdout: () => string; stderr: () => string } {
  let out = '';
  let err = '';
  child.stdout?.on('data', (d) => (out += d));
  child.stderr?.on('data', (d) => (err += d));
  const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
  return { exited, stdout: () => out, stderr: () => err };
}

const CONNECT_FAILED = /could not (connect to PostgreSQL at 127\.0\.0\.1:\d+|open the listen connection) within 300 ms \(connectTimeoutMs\)/;

describe('herald CLI against an address that accepts and never answers', () => {
  it('notify exits 1 with a clear message after --connect-timeout', async () => {
    const silent = await silentServer();
    try {
      const res = await cli(['--connect-timeout', '300', 'notify', 'ch', 'p'], { DATABASE_URL: silent.url });
      assert.equal(res.code, 1, res.stdout + res.stderr);
      assert.match(res.stderr, CONNECT_FAILED);
      assert.match(res.stderr, /TIMEOUT/);
    } finally {
      await silent.close();
    }
  });

  it('doctor reports the connect check failed and exits 1 (HERALD_CONNECT_TIMEOUT_MS)', async () => {
    const silent = await silentServer();
    try {
      const res = await cli(['doctor'], { DATABASE_URL: silent.url, HERALD_CONNECT_TIMEOUT_MS: '300' });
      assert.equal(res.code, 1, res.stdout + res.stderr);
      assert.match(res.stdout, /^FAIL connect\s+could not connect to PostgreSQL at 127\.0\.0\.1:\d+ within 300 ms/m);
    } finally {
      await silent.close();
    }
  });

  it('listen exits 1 when its listen connection cannot be opened', async () => {
    const silent = await silentServer();
    try {
      const res = await cli(['--connect-timeout', '300', 'listen', 'ch'], { DATABASE_URL: silent.url });
      assert.equal(res.code, 1, res.stdout + res.stderr);
      assert.match(res.stderr, CONNECT_FAILED);
    } finally {
      await silent.close();
    }
  });

  it('rejects a --connect-timeout that is not a positive number with exit code 2', async () => {
    const res = await cli(['--connect-timeout', 'soon', 'notify', 'ch'], { DATABASE_URL: db.url });
    assert.equal(res.code, 2);
    assert.match(res.stderr, /--connect-timeout/);
  });

  for (const argv of [['notify', 'ch', 'p'], ['listen', 'ch'], ['doctor']]) {
    it(`one SIGINT ends \`herald ${argv[0]}\` while it hangs on connect`, async () => {
      const silent = await silentServer();
      // The default connect timeout (10 s): the command is still waiting when the signal comes.
      const child = cliProcess(argv, { DATABASE_URL: silent.url, HERALD_CONNECT_TIMEOUT_MS: '' });
      const run = watch(child);
      try {
        await waitFor(() => silent.accepted() >= 1, { what: 'the CLI to connect', timeoutMs: 30_000 });
        child.kill('SIGINT');
        const code = await run.exited;
        assert.equal(code, INTERRUPTED_EXIT_CODE, run.stderr());
        assert.match(run.stderr(), /herald: interrupted/);
      } finally {
        child.kill('SIGKILL');
        await silent.close();
      }
    });
  }

  it('SIGINT still ends `herald listen` cleanly (exit 0) when it is listening', async () => {
    const child = cliProcess(['listen', 'ch'], { DATABASE_URL: db.url });
    const run = watch(child);
    try {
      await waitFor(() => run.stderr().includes('listening on'), { what: 'listening', timeoutMs: 30_000 });
      child.kill('SIGINT');
      assert.equal(await run.exited, 0, run.stderr());
    } finally {
      child.kill('SIGKILL');
    }
  });
});
