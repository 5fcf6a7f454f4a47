/**
 * pgherald: Postgres-native messaging for TypeScript. The core: driver, notifier,
 * mailbox, queue, outbox, topics and row changes. The server (`pgherald/server`), the
 * NATS JetStream sink (`pgherald/nats`), the embedded Postgres (`pgherald/embedded`)
 * and the throwaway-cluster test helpers (`pgherald/testing`) are subpaths, so an
 * application that only wants a queue loads none of them.
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
export { NotifyPressure, queueTailHolders, type QueueTailHolder, type QueueFullInfo, type QueueResumedInfo } from './notifier/pressure.js';
export type { OutgoingNotification } from './notifier/notify.js';
export type { Notification, NotifierEvents, NotifierOptions, NotifierStats, NotifierStatus, ChannelStats } from './notifier/types.js';
export { MAX_CHANNEL_BYTES, PAYLOAD_LIMIT_BYTES } from './notifier/validate.js';
export { migrate, migrations, migrationScript, migrationStatus, OUTSIDE_SCRIPT_MARKER, type Migration, type MigrationStatus, type MigrateOptions } from './schema/migrator.js';
export { Queue, LIMIT_MAX, TIMEOUT_MAX_MS, type CronHandle } from './queue/queue.js';
export { Worker as QueueWorker } from './queue/worker.js';
export { CronSchedule } from './queue/cron.js';
export { JOB_ERRORS_KEPT } from './queue/queries.js';
export { DB_ERROR_BACKOFF, retryDelay, type RetryPolicy } from './internal/backoff.js';
export { ERROR_TEXT_MAX_CHARS } from './internal/describe-error.js';
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
  type QueueActivity,
  type JobState,
  type JobTransition,
  type JobOutcome,
  type WorkOptions,
  type QueueTarget,
  type QueuePause,
  type QueueLimit,
  type QueueLimitOptions,
  type BatchInfo,
  type DependencyResult,
  type WorkflowFailurePolicy,
  type WorkflowInfo,
  type WorkflowJob,
  type WorkflowTransition,
} from './queue/types.js';
export { Maintenance, MAINTENANCE_ROLE } from './maintenance/maintenance.js';
export { Leadership } from './maintenance/leadership.js';
export {
  MAINTENANCE_DEFAULTS,
  MAINTENANCE_TASKS,
  type MaintenanceOptions,
  type MaintenanceTaskOptions,
  type MaintenanceTask,
  type MaintenanceStatus,
  type MaintenanceTaskStatus,
  type MaintenanceTaskMetrics,
  type MaintenanceEvents,
} from './maintenance/types.js';
export { Mailbox, MAILBOX_DEFAULTS, MAX_NAME_BYTES } from './mailbox/mailbox.js';
export { MailboxConsumer } from './mailbox/consumer.js';
export { TAKE_ROW_TIMEOUT_MS } from './mailbox/takes.js';
export { mailboxChannel } from './mailbox/wakeup.js';
export type {
  MailboxOptions,
  MailboxSend,
  SendResult,
  MailboxMessage,
  ReceiveOptions,
  MailboxHandler,
  ConsumeOptions,
  DeadMessage,
  MessageInfo,
  DestinationStats,
  MailboxEvents,
} from './mailbox/types.js';
export { Outbox, type NewOutboxEvent, type OutboxStats, type DeadOutboxEvent, type OutboxEventInfo } from './outbox/outbox.js';
export { OUTBOX_KEY_LOCK_BUCKETS } from './outbox/queries.js';
export { Relay, RELAY_DEFAULTS, type RelayOptions, type RelayEvents, type RelayStats } from './outbox/relay.js';
export {
  callbackSink,
  webhookSink,
  webhookSignature,
  verifyWebhookSignature,
  type OutboxEvent,
  type OutboxSink,
  type WebhookSinkOptions,
  type WebhookBody,
} from './outbox/sinks.js';
export { Changes, CHANGES_DEFAULTS, parseChange, parseTableName, type RowChange, type TrackOptions, type TrackedTable } from './change/changes.js';
export { Topics, type TopicStats } from './topic/topics.js';
export { TopicConsumer } from './topic/consumer.js';
export {
  TopicRetentionError,
  CONSUMER_DEFAULTS,
  TOPICS_DEFAULTS,
  type TopicMessage,
  type TopicBatch,
  type TopicPosition,
  type TopicOptions,
  type TopicsOptions,
  type ConsumerOptions,
  type ConsumerEvents,
  type GroupStart,
  type BehindInfo,
  type PublishedMessage,
} from './topic/types.js';
