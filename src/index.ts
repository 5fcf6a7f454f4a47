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
  type JobState,
  type JobTransition,
  type JobOutcome,
  type WorkOptions,
} from './queue/types.js';
export { Mailbox, MAILBOX_DEFAULTS, MAX_NAME_BYTES } from './mailbox/mailbox.js';
export { MailboxConsumer } from './mailbox/consumer.js';
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
  DestinationStats,
  MailboxEvents,
} from './mailbox/types.js';
export { Outbox, type NewOutboxEvent, type OutboxStats, type DeadOutboxEvent } from './outbox/outbox.js';
export { Relay, RELAY_DEFAULTS, type RelayOptions, type RelayEvents, type RelayStats } from './outbox/relay.js';
export {
  callbackSink,
  webhookSink,
  jetstreamSink,
  webhookSignature,
  verifyWebhookSignature,
  type OutboxEvent,
  type OutboxSink,
  type WebhookSinkOptions,
  type WebhookBody,
  type JetStreamSinkOptions,
} from './outbox/sinks.js';
export { Changes, CHANGES_DEFAULTS, parseChange, parseTableName, type RowChange, type TrackOptions, type TrackedTable } from './change/changes.js';
export { HeraldServer, SERVER_DEFAULTS, isLoopback, type ServerOptions } from './server/server.js';
export { Router, HttpError, readJson, sendJson, type Handler, type RouteOptions } from './server/http.js';
export { allows, type Action, type ApiKey, type AuthOptions, type Grants, type Principal } from './server/auth.js';
export type { DurableStreamSource, StreamEvent, StreamSink } from './server/stream.js';
export type { DashboardAction, DashboardPanel } from './server/dashboard.js';
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
