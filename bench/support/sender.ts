/**
 * The notification sender of bench/notifier.ts, run in a worker thread so that it
 * has its own event loop (and may use the other core) and never queues behind the
 * listener being measured. It talks to Postgres over its own connections.
 *
 * Commands (posted by the main thread, answered with `{ done: true, sent }`):
 * - `paced`: one `SELECT pg_notify($1, $2)` per notification at `rate` per second;
 *   the payload is `<seq>:<process.hrtime in ns>` (seq from `from`) (CLOCK_MONOTONIC, the same clock in
 *   every thread of the machine), so the listener can compute notify-to-handler latency.
 * - `burst`: `count` notifications as fast as possible from `connections` connections,
 *   `batch` per statement (each a distinct payload `<seq>`, seq from `from`, so Postgres
 *   does not fold them).
 */
import { parentPort } from 'node:worker_threads';
import pg from 'pg';

export type SenderCommand =
  | { cmd: 'paced'; url: string; channel: string; rate: number; from: number; count: number }
  | { cmd: 'burst'; url: string; channel: string; from: number; count: number; batch: number; connections: number };

async function connect(url: string): Promise<pg.Client> {
  const client = new pg.Client({ connectionString: url });
  client.on('error', () => {});
  await client.connect();
  return client;
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

async function paced(c: Extract<SenderCommand, { cmd: 'paced' }>): Promise<number> {
  const client = await connect(c.url);
  try {
    const intervalNs = 1e9 / c.rate;
    const start = process.hrtime.bigint();
    let i = 0;
    while (i < c.count) {
      const elapsed = Number(process.hrtime.bigint() - start);
      const due = Math.min(c.count, Math.floor(elapsed / intervalNs) + 1);
      while (i < due) {
        await client.query('SELECT pg_notify($1, $2)', [c.channel, `${c.from + i}:${process.hrtime.bigint()}`]);
        i++;
      }
      const nextNs = i * intervalNs - Number(process.hrtime.bigint() - start);
      if (nextNs > 0) await sleep(Math.max(0, Math.floor(nextNs / 1e6)));
    }
    return i;
  } finally {
    await client.end().catch(() => {});
  }
}

async function burst(c: Extract<SenderCommand, { cmd: 'burst' }>): Promise<number> {
  const clients = await Promise.all(Array.from({ length: c.connections }, () => connect(c.url)));
  let next = 0;
  let sent = 0;
  try {
    await Promise.all(
      clients.map(async (client) => {
        while (next < c.count) {
          const from = next;
          const to = Math.min(c.count, from + c.batch) - 1;
          next = to + 1;
          // One statement (one transaction) per batch; distinct payloads are never merged.
          await client.query('SELECT pg_notify($1, s::text) FROM generate_series($2::int, $3::int) AS s', [c.channel, c.from + from, c.from + to]);
          sent += to - from + 1;
        }
      }),
    );
    return sent;
  } finally {
    await Promise.all(clients.map((cl) => cl.end().catch(() => {})));
  }
}

parentPort!.on('message', (c: SenderCommand) => {
  const run = c.cmd === 'paced' ? paced(c) : burst(c);
  run.then(
    (sent) => parentPort!.postMessage({ done: true, sent }),
    (err: Error) => parentPort!.postMessage({ done: true, sent: -1, error: String(err?.stack ?? err) }),
  );
});
