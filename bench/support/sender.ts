/**
 * The notification sender of bench/notifier.ts, run in a worker thread so that it
 * has its own event loop (and may use the other core) and never queues behind the
 * listener being measured. It talks to Postgres over its own connections.
 *
 * Commands (posted by the main thread, answered with `{ done: true, sent }`):
 * - `rotating`: one `SELECT pg_notify($1, $2)` per notification at a steady `rate` per
 *   second; the payload is `<seq>:<process.hrtime in ns>` (CLOCK_MONOTONIC, the same
 *   clock in every thread of the machine), so the listener can compute
 *   notify-to-handler latency. The stream's destination moves to the
 *   next of `channels` every `slice` notifications (starting at `offset`), until each
 *   channel got `perChannel` (sequence numbers 0.. per channel). Each listener sees the
 *   full rate while it is fed, and noise on the machine is spread over all of them.
 * - `burst`: `count` notifications as fast as possible from `connections` connections,
 *   `batch` per statement (each a distinct payload `<seq>`, seq from `from`, so Postgres
 *   does not fold them).
 */
import { parentPort } from 'node:worker_threads';
import pg from 'pg';

export type SenderCommand =
  | { cmd: 'rotating'; url: string; channels: string[]; rate: number; perChannel: number; slice: number; offset: number }
  | { cmd: 'burst'; url: string; channel: string; from: number; count: number; batch: number; connections: number };

async function connect(url: string): Promise<pg.Client> {
  const client = new pg.Client({ connectionString: url });
  client.on('error', () => {});
  await client.connect();
  return client;
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

async function rotating(c: Extract<SenderCommand, { cmd: 'rotating' }>): Promise<number> {
  const client = await connect(c.url);
  try {
    const n = c.channels.length;
    const total = n * c.perChannel;
    const intervalNs = 1e9 / c.rate;
    const start = process.hrtime.bigint();
    let g = 0;
    while (g < total) {
      const elapsed = Number(process.hrtime.bigint() - start);
      const due = Math.min(total, Math.floor(elapsed / intervalNs) + 1);
      while (g < due) {
        const sliceNo = Math.floor(g / c.slice);
        const channel = c.channels[(sliceNo + c.offset) % n];
        const seq = Math.floor(sliceNo / n) * c.slice + (g % c.slice);
        await client.query('SELECT pg_notify($1, $2)', [channel, `${seq}:${process.hrtime.bigint()}`]);
        g++;
      }
      const nextNs = g * intervalNs - Number(process.hrtime.bigint() - start);
      if (nextNs > 0) await sleep(Math.max(0, Math.floor(nextNs / 1e6)));
    }
    return g;
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
  const run = c.cmd === 'rotating' ? rotating(c) : burst(c);
  run.then(
    (sent) => parentPort!.postMessage({ done: true, sent }),
    (err: Error) => parentPort!.postMessage({ done: true, sent: -1, error: String(err?.stack ?? err) }),
  );
});
