import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { chmodSync, existsSync, mkdtempSync, readFileSync, readdirSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import pg from 'pg';
import { cli, cliProcess } from '../../test/support/cli.js';
import { waitFor } from '../../test/support/wait.js';
import { serverOptionsFrom } from './serve.js';
import { isAlive } from './state.js';

interface Serve {
  child: ChildProcess;
  url: string;
  stderr: () => string;
  exited: Promise<number | null>;
}

/** Reads a started `herald serve`'s URL from its stdout; rejects with its stderr when it exits first. */
function served(child: ChildProcess): Promise<Serve> {
  let out = '';
  let err = '';
  child.stderr!.on('data', (c) => (err += c));
  const exited = new Promise<number | null>((r) => child.once('exit', (c) => r(c)));
  return new Promise((resolve, reject) => {
    child.stdout!.on('data', (c) => {
      out += c;
      const m = /herald serving on (http:\/\/\S+)/.exec(out);
      if (m) resolve({ child, url: m[1], stderr: () => err, exited });
    });
    void exited.then((code) => reject(new Error(`serve exited ${code}: ${err}`)));
  });
}

function serve(dir: string, args: string[] = [], env: Record<string, string> = {}): Promise<Serve> {
  return served(cliProcess(['serve', '--port', '0', '--data-dir', dir, ...args], { DATABASE_URL: '', ...env }));
}

/** Runs `herald <argv>` as a process to its end. */
function run(argv: string[], env: Record<string, string> = {}): Promise<{ code: number | null; stderr: string }> {
  const child = cliProcess(argv, { DATABASE_URL: '', ...env });
  let stderr = '';
  child.stderr!.on('data', (c) => (stderr += c));
  child.stdout!.resume();
  return new Promise((r) => child.once('exit', (code) => r({ code, stderr })));
}

function portFree(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const srv = createServer();
    srv.once('error', () => resolve(false));
    srv.listen(port, '127.0.0.1', () => srv.close(() => resolve(true)));
  });
}

const state = (dir: string) => JSON.parse(readFileSync(join(dir, 'herald.json'), 'utf8'));
const credentials = (dir: string) => JSON.parse(readFileSync(join(dir, 'credentials.json'), 'utf8'));

async function query<R>(url: string, text: string): Promise<R[]> {
  const c = new pg.Client({ connectionString: url });
  await c.connect();
  try {
    return (await c.query(text)).rows as R[];
  } finally {
    await c.end();
  }
}

function tmpFolder(): string {
  const tmp = mkdtempSync(join(tmpdir(), 'pgherald-serve-'));
  chmodSync(tmp, 0o755); // Postgres runs as an unprivileged user when we are root
  return tmp;
}

describe('herald serve on its embedded Postgres (issues 12 and 16)', () => {
  it('hides the password, connects as a non-superuser, keeps its port, is found by the CLI, refuses a second server at once, stops on SIGTERM', async () => {
    const tmp = tmpFolder();
    const dir = join(tmp, 'herald');
    const running: Serve[] = [];
    try {
      const first = await serve(dir);
      running.push(first);
      const creds = credentials(dir);
      const s1 = state(dir);
      // The printed URL names the non-superuser role and hides its password.
      assert.match(first.stderr(), new RegExp(`DATABASE_URL=postgres://herald:\\*\\*\\*@127\\.0\\.0\\.1:${s1.port}/herald`));
      for (const secret of [creds.password, creds.appPassword]) assert.ok(!first.stderr().includes(secret), 'no password printed');
      // State and credentials: 0600; the state holds no secret.
      for (const f of ['herald.json', 'credentials.json']) assert.equal(statSync(join(dir, f)).mode & 0o777, 0o600, f);
      assert.deepEqual([s1.user, s1.database, s1.serverUrl], ['herald', 'herald', first.url]);
      assert.ok(!JSON.stringify(s1).includes(creds.appPassword));

      // Every session of the server is the role `herald`, which is no superuser.
      const admin = `postgres://postgres:${encodeURIComponent(creds.password)}@127.0.0.1:${s1.port}/postgres`;
      const users = await query<{ usename: string }>(admin, `SELECT DISTINCT usename FROM pg_stat_activity WHERE datname = 'herald' AND backend_type = 'client backend'`);
      assert.deepEqual(users.map((u) => u.usename), ['herald']);
      const app = `postgres://herald:${encodeURIComponent(creds.appPassword)}@127.0.0.1:${s1.port}/herald`;
      const [role] = await query<{ rolsuper: boolean }>(app, 'SELECT rolsuper FROM pg_roles WHERE rolname = current_user');
      assert.equal(role.rolsuper, false);
      const [owner] = await query<{ owner: string }>(app, `SELECT nspowner::regrole::text AS owner FROM pg_namespace WHERE nspname = 'herald'`);
      assert.equal(owner.owner, 'herald', 'the role owns the schema');

      // The CLI in the same folder finds the running database without a URL.
      const found = await cli(['jobs', 'list'], { HERALD_DATA_DIR: dir });
      assert.equal(found.code, 0, found.stderr);
      const doctor = await cli(['--data-dir', dir, 'doctor', '--json']);
      assert.equal(JSON.parse(doctor.stdout).ok, true, doctor.stdout + doctor.stderr);

      // A second server on the locked folder fails with a clear message.
      const second = await run(['serve', '--port', '0', '--data-dir', dir]);
      assert.equal(second.code, 1);
      assert.match(second.stderr, /data folder .* is in use by another herald serve .*--data-dir/);

      // SIGTERM: the server and its Postgres stop, the port is free, the state says "not running".
      first.child.kill('SIGTERM');
      assert.equal(await first.exited, 0);
      running.pop();
      assert.equal(isAlive(s1.postgresPid), false, 'Postgres is gone');
      assert.equal(await portFree(s1.port), true, 'its port is free');
      assert.equal(state(dir).pid, undefined);
      const stopped = await cli(['jobs', 'list'], { HERALD_DATA_DIR: dir });
      assert.equal(stopped.code, 1);
      assert.match(stopped.stderr, /embedded Postgres of .* is not running .*herald serve --data-dir/);

      // Restart: the same port (so a URL printed before still works); --show-secrets prints the password.
      const again = await serve(dir, ['--show-secrets']);
      running.push(again);
      assert.equal(state(dir).port, s1.port);
      assert.ok(again.stderr().includes(`DATABASE_URL=postgres://herald:${creds.appPassword}@127.0.0.1:${s1.port}/herald`));
      assert.doesNotMatch(again.stderr(), /applied migrations/);
      again.child.kill('SIGINT');
      assert.equal(await again.exited, 0);
      running.pop();
    } finally {
      for (const s of running) s.child.kill('SIGKILL');
      rmSync(tmp, { recursive: true, force: true });
    }
  });

  it('SIGTERM to an npm script (which passes it to its shell only) stops the server and its Postgres', async () => {
    const tmp = tmpFolder();
    const dir = join(tmp, 'herald');
    const root = new URL('../..', import.meta.url).pathname;
    // What `npm start` runs: a shell that does not pass SIGTERM on to its command.
    const shell = spawn('sh', ['-c', `"${process.execPath}" --import tsx test/support/herald-cli.ts serve --port 0 --data-dir "${dir}"; echo done`], {
      cwd: root,
      env: { ...process.env, DATABASE_URL: '', npm_lifecycle_event: 'start' },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    try {
      await served(shell);
      const { pid, postgresPid, port } = state(dir);
      shell.kill('SIGTERM');
      await waitFor(() => !isAlive(pid) && !isAlive(postgresPid), { timeoutMs: 90_000, what: 'the server and its Postgres to stop' });
      assert.equal(await portFree(port), true);
    } finally {
      shell.kill('SIGKILL');
      const s = existsSync(join(dir, 'herald.json')) ? state(dir) : {};
      if (isAlive(s.pid)) process.kill(s.pid, 'SIGKILL');
      rmSync(tmp, { recursive: true, force: true });
    }
  });

  it('as root, a data folder the Postgres user cannot reach is refused naming --data-dir, leaving no password file', async () => {
    const tmp = mkdtempSync(join(tmpdir(), 'pgherald-closed-')); // 0700: closed to other users
    const dir = join(tmp, 'herald');
    try {
      const res = await run(['serve', '--port', '0', '--data-dir', dir]);
      if (process.getuid?.() === 0) {
        assert.equal(res.code, 1);
        assert.match(res.stderr, /cannot reach .*--data-dir/);
        assert.equal(existsSync(join(dir, 'credentials.json')), false, 'no credentials left');
        assert.deepEqual(readdirSync(tmp).filter((f) => f.startsWith('.pwfile')), [], 'no initdb password file left');
        assert.deepEqual(readdirSync(dir).filter((f) => f.startsWith('.pwfile')), []);
      } else {
        // Not root: Postgres runs as this user, who can reach the folder; nothing to refuse.
        assert.notEqual(res.code, null);
      }
    } finally {
      rmSync(tmp, { recursive: true, force: true });
    }
  });
});

describe('herald serve secrets from files (issue 12)', () => {
  it('--token-file / --jwt-secret-file and their variables, trailing newline trimmed; clear errors', async () => {
    const tmp = mkdtempSync(join(tmpdir(), 'pgherald-secrets-'));
    try {
      const token = join(tmp, 'token');
      const secret = join(tmp, 'secret');
      const empty = join(tmp, 'empty');
      writeFileSync(token, 'admin-token-123\n');
      writeFileSync(secret, 'a-jwt-secret-of-some-length\r\n');
      writeFileSync(empty, '\n');
      assert.equal(serverOptionsFrom({ tokenFile: token }, {}).token, 'admin-token-123');
      assert.equal(serverOptionsFrom({}, { HERALD_TOKEN_FILE: token }).token, 'admin-token-123');
      assert.equal(serverOptionsFrom({ jwtSecretFile: secret }, {}).jwtSecret, 'a-jwt-secret-of-some-length');
      assert.equal(serverOptionsFrom({}, { HERALD_JWT_SECRET_FILE: secret }).jwtSecret, 'a-jwt-secret-of-some-length');
      assert.equal(serverOptionsFrom({}, { HERALD_TOKEN: 'from-env', HERALD_TOKEN_FILE: token }).token, 'from-env');
      assert.throws(() => serverOptionsFrom({ tokenFile: empty }, {}), /--token-file .*empty: the file is empty/);
      assert.throws(() => serverOptionsFrom({ token: 'x', tokenFile: token }, {}), /give --token or --token-file, not both/);
      assert.throws(() => serverOptionsFrom({}, { HERALD_JWT_SECRET_FILE: join(tmp, 'missing') }), /HERALD_JWT_SECRET_FILE .*missing: cannot read it \(ENOENT\)/);
      assert.throws(() => serverOptionsFrom({ jwtPublicKey: join(tmp, 'missing') }, {}), /--jwt-public-key .*missing: cannot read it \(ENOENT\)/);
      assert.throws(() => serverOptionsFrom({}, { HERALD_JWT_PUBLIC_KEY_FILE: join(tmp, 'missing') }), (e: any) => e.exitCode === 2 && /HERALD_JWT_PUBLIC_KEY_FILE .*missing: cannot read it/.test(e.message));
      const res = await cli(['serve', '--token-file', join(tmp, 'missing')], {});
      assert.equal(res.code, 2);
      assert.match(res.stderr, /--token-file .*missing: cannot read it/);
    } finally {
      rmSync(tmp, { recursive: true, force: true });
    }
  });
});
