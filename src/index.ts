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
