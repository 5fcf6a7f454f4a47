/**
 * A real PgBouncer in front of the test server, in session or transaction mode.
 * Tests that need it skip (saying why) when the binary is missing; `.ci/run`
 * installs it.
 */
import { existsSync, mkdtempSync, rmSync, writeFileSync, chmodSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { ChildProcess } from 'node:child_process';
import { canConnect, freePort, postgresOsUser, spawnTiedToParent } from '../../src/embedded/cluster.js';
import { waitFor } from './wait.js';

/** Path of the pgbouncer binary, or undefined. */
export function pgbouncerBinary(): string | undefined {
  const dirs = [...(process.env.PATH ?? '').split(':'), '/usr/sbin', '/usr/local/sbin'];
  return dirs.map((d) => join(d, 'pgbouncer')).find((p) => existsSync(p));
}

export interface PgBouncer {
  /** `url` (a database URL on the real server) rewritten to go through PgBouncer. */
  url(url: string): string;
  stop(): Promise<void>;
}

export async function startPgBouncer(targetUrl: string, mode: 'session' | 'transaction'): Promise<PgBouncer> {
  const binary = pgbouncerBinary();
  if (!binary) throw new Error('pgbouncer is not installed');
  const target = new URL(targetUrl);
  const port = await freePort();
  const dir = mkdtempSync(join(tmpdir(), 'pgherald-bouncer-'));
  chmodSync(dir, 0o777);
  const ini = join(dir, 'pgbouncer.ini');
  writeFileSync(
    ini,
    [
      '[databases]',
      `* = host=${target.hostname} port=${target.port} user=${decodeURIComponent(target.username || "postgres")}`,
      '[pgbouncer]',
      `listen_addr = 127.0.0.1`,
      `listen_port = ${port}`,
      'unix_socket_dir =',
      'auth_type = any',
      `pool_mode = ${mode}`,
      'default_pool_size = 4',
      'max_client_conn = 200',
      'ignore_startup_parameters = extra_float_digits,options,application_name',
      `logfile = ${join(dir, 'pgbouncer.log')}`,
      '',
    ].join('\n'),
  );
  chmodSync(ini, 0o644);
  // PgBouncer refuses to run as root, like Postgres.
  const child: ChildProcess = spawnTiedToParent(binary, [ini], postgresOsUser());
  let exited = false;
  const exit = new Promise<void>((r) => child.once('exit', () => ((exited = true), r())));
  const via = (url: string) => {
    const u = new URL(url);
    u.hostname = '127.0.0.1';
    u.port = String(port);
    return u.toString();
  };
  await waitFor(
    async () => {
      if (exited) throw new Error('pgbouncer exited at start');
      return canConnect(via(targetUrl), 2000);
    },
    { what: 'pgbouncer to accept connections' },
  );
  return {
    url: via,
    async stop() {
      child.stdin?.end('\n');
      await exit;
      rmSync(dir, { recursive: true, force: true });
    },
  };
}
