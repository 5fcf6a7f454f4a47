/**
 * A real NATS server with JetStream for tests: `nats-server -js` on a free port with a
 * throwaway store, killed on dispose. Returns null (the test skips with the reason)
 * when the binary is not installed.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { createConnection } from 'node:net';
import { tmpdir } from 'node:os';
import { delimiter, join } from 'node:path';
import { freePort } from '../../src/embedded/cluster.js';
import { waitFor } from './wait.js';

export interface NatsServer {
  url: string;
  dispose(): Promise<void>;
}

/** Path of nats-server, or null. */
export function natsServerBinary(): string | null {
  const dirs = [...(process.env.PATH ?? '').split(delimiter), '/usr/bin', '/usr/sbin', '/usr/local/bin'];
  for (const d of dirs) if (d && existsSync(join(d, 'nats-server'))) return join(d, 'nats-server');
  return null;
}

export async function startNatsServer(): Promise<NatsServer | null> {
  const bin = natsServerBinary();
  if (!bin) return null;
  const port = await freePort();
  const store = mkdtempSync(join(tmpdir(), 'pgherald-nats-'));
  const child: ChildProcess = spawn(bin, ['-js', '-a', '127.0.0.1', '-p', String(port), '-sd', store], { stdio: 'ignore' });
  const exited = new Promise<void>((r) => child.once('exit', () => r()));
  await waitFor(
    () =>
      new Promise<boolean>((resolve) => {
        const s = createConnection({ host: '127.0.0.1', port }, () => {
          s.destroy();
          resolve(true);
        });
        s.on('error', () => resolve(false));
      }),
    { timeoutMs: 15_000, what: 'nats-server to accept connections' },
  );
  return {
    url: `nats://127.0.0.1:${port}`,
    async dispose() {
      child.kill('SIGKILL');
      await exited;
      rmSync(store, { recursive: true, force: true });
    },
  };
}
