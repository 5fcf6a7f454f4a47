/**
 * Recovery of the four consumers built on the internal Loop (issue 14, point 3b): when
 * the listen connection comes back (`reconnected`), every consumer's error backoff is
 * cut short and it catches up at once; no listener or timer grows per reconnect.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { createHerald, type Herald } from '../client.js';
import { LISTEN_APPLICATION_NAME } from '../driver/types.js';
import { setDefaultLoopBackoff } from './loop.js';
import { privateCluster, type PrivateCluster } from '../../test/support/cluster.js';
import { terminateBackends } from '../../test/support/db.js';
import { nextEvent, waitFor } from '../../test/support/wait.js';

const HOUR = 3_600_000;
const POLL_MS = 100;

interface Running {
  seen: Set<string>;
  problems: Record<'queue' | 'mailbox' | 'relay' | 'topic', number>;
  stop(): Promise<void>;
}

/** Starts a queue worker, a mailbox consumer, an outbox relay and a topic consumer, each recording what it got. */
async function startConsumers(herald: Herald): Promise<Running> {
  const seen = new Set<string>();
  const problems = { queue: 0, mailbox: 0, relay: 0, topic: 0 };
  herald.queue.on('job:problem', () => problems.queue++);
  herald.mailbox.on('message:problem', () => problems.mailbox++);
  const worker = herald.queue.work('recover', (job) => void seen.add(`job:${(job.payload as { tag: string }).tag}`));
  const consumer = herald.mailbox.consume('recover', (m) => void seen.add(`message:${(m.payload as { tag: string }).tag}`));
  const relay = herald.outbox.relay({ sink: (e) => void seen.add(`event:${(e.payload as { tag: string }).tag}`), pollIntervalMs: POLL_MS });
  relay.on('relay:problem', () => problems.relay++);
  relay.start();
  await herald.topics.create('recover', { partitions: 1 });
  const topic = herald.topics.consumer<{ tag: string }>('recover', 'g', ({ messages }) => void messages.forEach((m) => seen.add(`topic:${m.payload.tag}`)), {
    pollIntervalMs: POLL_MS,
  });
  topic.on('topic:problem', () => problems.topic++);
  await topic.start();
  return {
    seen,
    problems,
    async stop() {
      await Promise.all([worker.stop(), consumer.stop(), relay.stop(), topic.stop()]);
    },
  };
}

/** Sends one of each (job, message, event, topic message) tagged `tag` and waits until all four arrived. */
async function deliverAll(herald: Herald, running: Running, tag: string): Promise<void> {
  await herald.queue.enqueue('recover', { tag });
  await herald.mailbox.send({ to: 'recover', payload: { tag } });
  await herald.outbox.add({ type: 'recover', payload: { tag } });
  await herald.topics.publish('recover', { tag });
  const want = ['job', 'message', 'event', 'topic'].map((k) => `${k}:${tag}`);
  await waitFor(() => want.every((w) => running.seen.has(w)), {
    timeoutMs: 60_000,
    what: `${tag} delivered by every consumer (missing: ${want.filter((w) => !running.seen.has(w)).join(', ')})`,
  });
}

describe('consumers recover at once when the listen connection comes back (private cluster)', () => {
  let pc: PrivateCluster;
  let herald: Herald;
  let running: Running | undefined;

  before(async () => {
    pc = await privateCluster();
    herald = createHerald({
      connectionString: pc.url,
      notifier: { reconnectBaseDelayMs: 10, reconnectMaxDelayMs: 200, queueUsageIntervalMs: 0 },
      queue: { pollIntervalMs: POLL_MS },
      mailbox: { pollIntervalMs: POLL_MS },
    });
    herald.notifier.on('notifier:problem', () => {});
  });
  after(async () => {
    setDefaultLoopBackoff(undefined);
    await running?.stop();
    await herald?.close();
    await pc?.dispose();
  });

  it('consumers in an hour-long error backoff after a server restart deliver as soon as the notifier reconnects', async () => {
    // Every loop created now backs off for an hour after a database error: only the
    // reconnect can end that backoff within this test's deadlines.
    setDefaultLoopBackoff({ baseMs: HOUR, maxMs: HOUR, jitter: 0 });
    running = await startConsumers(herald);
    await deliverAll(herald, running, 'before');

    const lost = nextEvent(herald.notifier, 'notifier:lost', 60_000);
    await pc.cluster.stop();
    await lost;
    // Each loop polls every 100 ms: its next look fails and it enters the backoff.
    const p = running.problems;
    await waitFor(() => p.queue > 0 && p.mailbox > 0 && p.relay > 0 && p.topic > 0, { timeoutMs: 60_000, what: 'every consumer failing' });
    const failed = { ...p };

    const reconnected = nextEvent(herald.notifier, 'notifier:reconnected', 120_000);
    await pc.cluster.restart();
    await reconnected;
    await deliverAll(herald, running, 'after');
    // One failure each (then the backoff held them) — not a retry every poll.
    assert.ok(p.relay <= failed.relay + 1 && p.topic <= failed.topic + 1, `problems before the restart ${JSON.stringify(failed)}, after ${JSON.stringify(p)}`);
  });

  it('50 reconnects grow no listener and no timer; the consumers still deliver', async () => {
    setDefaultLoopBackoff(undefined);
    running ??= await startConsumers(herald);
    await deliverAll(herald, running, 'warm');
    const events = ['notifier:reconnected', 'notifier:connected', 'notifier:lost', 'notifier:status', 'notifier:problem', 'notifier:overflow', 'notifier:handlerError', 'notifier:queueUsage', 'notifier:queueWarning'] as const;
    const listeners = () => Object.fromEntries(events.map((e) => [e, herald.notifier.listenerCount(e)]));
    const timers = () => process.getActiveResourcesInfo().filter((r) => r === 'Timeout').length;
    const listenersBefore = listeners();
    const timersBefore = timers();
    const database = new URL(pc.url).pathname.slice(1) || 'postgres';
    for (let i = 0; i < 50; i++) {
      const reconnected = nextEvent(herald.notifier, 'notifier:reconnected', 60_000);
      const n = await terminateBackends(database, { applicationName: LISTEN_APPLICATION_NAME }, pc.url);
      assert.equal(n, 1, `reconnect ${i + 1}: one listen session terminated`);
      await reconnected;
    }
    await deliverAll(herald, running, 'after-50');
    assert.deepEqual(listeners(), listenersBefore, 'notifier listeners per event');
    // A few timers come and go with the work in flight (a pool's idle timer, a poll, a
    // backoff): wait for the count to come back near where it was. A leak would add at
    // least one per reconnect (50), and the count would never come back.
    await waitFor(() => timers() <= timersBefore + 5, { what: `timers back near ${timersBefore} after 50 reconnects (a leak adds one per reconnect)` });
  });
});
