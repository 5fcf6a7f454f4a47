/**
 * A relay in its own process, for the outbox's crash tests. Its sink reports each
 * event to the parent over IPC and waits for the parent's ack before acknowledging, so
 * the parent can SIGKILL it exactly between publish and mark.
 *
 * env: HERALD_URL, RELAY_BATCH, RELAY_CONCURRENCY, RELAY_LEASE_MS (optional).
 */
import { createHerald } from '../../src/client.js';

const send = (m: unknown) => process.send!(m);
const acks = new Map<string, () => void>();
process.on('message', (m: { t: string; id?: string }) => {
  if (m.t === 'ack') {
    acks.get(m.id!)?.();
    acks.delete(m.id!);
  } else if (m.t === 'stop') {
    void stop();
  }
});

const herald = createHerald({ connectionString: process.env.HERALD_URL!, poolSize: 2, notifier: { queueUsageIntervalMs: 0 } });
const relay = herald.outbox.relay({
  batchSize: Number(process.env.RELAY_BATCH ?? 20),
  concurrency: Number(process.env.RELAY_CONCURRENCY ?? 1),
  pollIntervalMs: 200,
  leaseMs: process.env.RELAY_LEASE_MS ? Number(process.env.RELAY_LEASE_MS) : undefined,
  sink: (e) =>
    new Promise<void>((resolve) => {
      acks.set(e.id, resolve);
      send({ t: 'pub', id: e.id, key: e.key, seq: e.seq });
    }),
});
relay.on('relay:published', (events) => send({ t: 'marked', n: events.length }));
relay.on('relay:problem', (err) => send({ t: 'problem', message: err.message }));
// Published, then refused by the fence (the lease ran out meanwhile and another relay took
// the events again): each such event is published twice by design.
relay.on('relay:fenced', ({ published }) => send({ t: 'fenced', published: published.length }));
send({ t: 'ready', pid: process.pid });

async function stop(): Promise<void> {
  await herald.close();
  send({ t: 'stopped' });
  process.disconnect();
}
