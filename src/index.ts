/**
 * pgherald: Postgres-native messaging for TypeScript.
 * @packageDocumentation
 */
export { Herald, createHerald, type HeraldOptions } from './client.js';
export * from './errors.js';
export {
  pgDriver,
  postgresJsDriver,
  toExecutor,
  type Driver,
  type Executor,
  type ListenSession,
  type QueryResult,
  type TxLike,
  type PgDriverOptions,
  type PostgresJsDriverOptions,
} from './driver/index.js';
export { Notifier, NOTIFIER_DEFAULTS, type ListenOptions } from './notifier/notifier.js';
export { Subscription } from './notifier/subscription.js';
export type { OutgoingNotification } from './notifier/notify.js';
export type { Notification, NotifierEvents, NotifierOptions, NotifierStats, NotifierStatus, ChannelStats } from './notifier/types.js';
export { MAX_CHANNEL_BYTES, PAYLOAD_LIMIT_BYTES } from './notifier/validate.js';
export { migrate, migrations, migrationScript, migrationStatus, type Migration, type MigrationStatus } from './schema/migrator.js';
export { PostgresCluster, embeddedBinDir, freePort, type ClusterOptions } from './embedded/cluster.js';
export { Queue, type CronHandle } from './queue/queue.js';
export { Worker as QueueWorker } from './queue/worker.js';
export { CronSchedule } from './queue/cron.js';
export {
  QUEUE_DEFAULTS,
  snooze,
  discard,
  type QueueOptions,
  type QueueEvents,
  type EnqueueOptions,
  type EnqueueItem,
  type EnqueueResult,
  type Job,
  type JobHandler,
  type JobInfo,
  type JobState,
  type JobTransition,
  type JobOutcome,
  type WorkOptions,
} from './queue/types.js';
