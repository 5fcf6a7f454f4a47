import type { Mailbox } from '../mailbox/mailbox.js';
import type { MailboxOptions } from '../mailbox/types.js';
import type { Outbox } from '../outbox/outbox.js';
import type { Queue } from '../queue/queue.js';
import type { QueueOptions } from '../queue/types.js';
import type { Topics } from '../topic/topics.js';
import type { TopicsOptions } from '../topic/types.js';
import type { MaintenanceRunner } from './maintenance.js';
import type { MaintenanceTask, MaintenanceTaskOptions } from './types.js';

/** The parts whose periodic work the service runs. */
export interface MaintainedParts {
  queue: Queue;
  mailbox: Mailbox;
  outbox: Outbox;
  topics: Topics;
}

/**
 * The body of every task: each calls the part's own public operation (which keeps
 * emitting the part's event: `job:rescued`, `job:retentionSwept`, `message:purged`).
 */
export function maintenanceRunners(p: MaintainedParts): Record<MaintenanceTask, MaintenanceRunner> {
  return {
    queueRescue: () => p.queue.rescue(),
    queueRetention: (t) => p.queue.prune({ olderThanMs: t.retentionMs! }),
    completedJobRetention: (t) => p.queue.prune({ olderThanMs: t.retentionMs!, states: ['completed'] }),
    mailboxRetention: async (t, batchSize) => (await p.mailbox.purge({ batchSize, consumedOlderThanMs: t.retentionMs!, deadOlderThanMs: null })).consumed,
    outboxRetention: (t, batchSize) => p.outbox.prune({ olderThanMs: t.retentionMs!, batchSize }),
    deadLetterRetention: async (t, batchSize) => {
      const mailbox = await p.mailbox.purge({ batchSize, consumedOlderThanMs: null, deadOlderThanMs: t.retentionMs! });
      return mailbox.dead + (await p.outbox.pruneDead({ olderThanMs: t.retentionMs!, batchSize }));
    },
    // Each topic's own retention (retentionMs / retentionBytes of the topic): src/topic owns it.
    topicRetention: () => p.topics.maintain(),
  };
}

/**
 * The task options implied by the older per-part options the user gave (only those
 * given: the defaults of the service stay its own).
 */
export function partFallbacks(o: { queue?: QueueOptions; mailbox?: MailboxOptions; topics?: TopicsOptions }): Partial<Record<MaintenanceTask, MaintenanceTaskOptions>> {
  const q = o.queue ?? {};
  const m = o.mailbox ?? {};
  const out: Partial<Record<MaintenanceTask, MaintenanceTaskOptions>> = {};
  if (q.rescueIntervalMs !== undefined) out.queueRescue = { intervalMs: q.rescueIntervalMs };
  out.queueRetention = {
    intervalMs: q.retentionIntervalMs,
    ...(q.retentionMs === 0 ? { enabled: false } : { retentionMs: q.retentionMs }),
  };
  if (q.completedRetentionMs !== undefined) out.completedJobRetention = q.completedRetentionMs === 0 ? { enabled: false } : { retentionMs: q.completedRetentionMs };
  out.mailboxRetention = {
    retentionMs: m.retentionMs,
    ...(m.retentionIntervalMs === 0 ? { enabled: false } : { intervalMs: m.retentionIntervalMs }),
  };
  if (m.deadRetentionMs !== undefined && m.deadRetentionMs > 0) out.deadLetterRetention = { enabled: true, retentionMs: m.deadRetentionMs };
  if (o.topics?.maintenanceIntervalMs !== undefined) out.topicRetention = { intervalMs: o.topics.maintenanceIntervalMs };
  return out;
}
