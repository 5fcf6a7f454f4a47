import type pg from 'pg';
import type postgres from 'postgres';
import { pgDriver, postgresJsDriver } from './driver/index.js';
import type { Driver, Executor, TxLike } from './driver/types.js';
import { HeraldError, InvalidOptionError, NotifyQueueFullError } from './errors.js';
import { schemaIdent } from './internal/ident.js';
import { Notifier, type ListenOptions } from './notifier/notifier.js';
import type { OutgoingNotification } from './notifier/notify.js';
import type { Subscription } from './notifier/subscription.js';
import type { Notification, NotifierOptions } from './notifier/types.js';
import { Queue } from './queue/queue.js';
import type { QueueOptions } from './queue/types.js';
import { Mailbox } from './mailbox/mailbox.js';
import type { MailboxOptions } from './mailbox/types.js';
import { migrate, migrationStatus, type MigrateOptions, type MigrationStatus } from './schema/migrator.js';
import { Outbox } from './outbox/outbox.js';
import { Changes } from './change/changes.js';
import { Topics } from './topic/topics.js';
import type { ConsumerOptions, TopicBatch, TopicsOptions } from './topic/types.js';
import type { TopicConsumer } from './topic/consumer.js';
import { Maintenance } from './maintenance/maintenance.js';
import { maintenanceRunners, partFallbacks } from './maintenance/tasks.js';
import { resolveMaintenanceOptions, type MaintenanceOptions } from './maintenance/types.js';

/** Options of {@link createHerald}. Give one of `connectionString`, `pool`, `sql` or `driver`. */
export interface HeraldOptions {
  /** Postgres connection string; pgherald creates (and closes) a `pg` pool. */
  connectionString?: string;
  /** An existing `pg.Pool` (not closed by pgherald). */
  pool?: pg.Pool;
  /** An existing postgres.js instance (not closed by pgherald). */
  sql?: postgres.Sql<any>;
  /** A ready driver (see `pgDriver`, `postgresJsDriver`). */
  driver?: Driver;
  /**
   * Connection string for the one listen connection, when the pool goes through a
   * transaction-mode pooler: LISTEN needs a direct or session-pooled connection.
   * @defaultValue the pool's
   */
  listenConnectionString?: string;
  /** Pool size when pgherald creates the pool. @defaultValue 10 */
  poolSize?: number;
  /**
   * How long opening a connection may take (TCP connect, TLS, startup,
   * authentication), for the pool pgherald creates and for the listen session
   * (`notifier.connectTimeoutMs` overrides it for the latter). Past it the attempt
   * fails with a `TIMEOUT` `HeraldError` instead of hanging on an address that
   * accepts and never answers. A `pool`, `sql` or `driver` you pass keeps its own
   * settings. @defaultValue 10000
   */
  connectTimeoutMs?: number;
  /**
   * Run hot statements (job claims and completions, plain enqueues, mailbox sends and
   * takes outside a transaction) as named prepared statements. Turn off when the pool goes through a transaction-mode pooler without
   * prepared-statement support (PgBouncer before 1.21 or `max_prepared_statements = 0`);
   * a server error about a missing or duplicate prepared statement also turns them off.
   * @defaultValue true (with `sql`: that instance's `prepare` option)
   */
  preparedStatements?: boolean;
  /** Schema of pgherald's tables. @defaultValue 'herald' */
  schema?: string;
  /** Notifier options (buffers, health checks, reconnect backoff). */
  notifier?: NotifierOptions;
  /** Job queue options (leases, polling, retries, retention, cron leadership). */
  queue?: QueueOptions;
  /** Mailbox options (safety poll, attempts, retry delays, retention). */
  mailbox?: MailboxOptions;
  /** Topics options (defaults of implicitly created topics, maintenance interval). */
  topics?: TopicsOptions;
  /**
   * The maintenance service (`herald.maintenance`): which periodic tasks run, how often,
   * and their retention; leadership lease. See {@link MaintenanceOptions}.
   */
  maintenance?: MaintenanceOptions;
}

/**
 * The facade: one driver, one notifier (one listen connection per process), and the
 * parts built on them.
 *
 * @example
 * const herald = createHerald({ connectionString: process.env.DATABASE_URL });
 * await herald.migrate();
 * const sub = herald.listen('orders', (n) => console.log(n.payload));
 * await sub.established;
 * await herald.notify('orders', 'created:42');
 * await herald.close();
 */
export class Herald {
  readonly driver: Driver;
  readonly notifier: Notifier;
  readonly schema: string;
  /** The job queue. */
  readonly queue: Queue;
  /** Durable point-to-point messages, exactly once (see {@link Mailbox}). */
  readonly mailbox: Mailbox;
  /** The transactional outbox and its relays. */
  readonly outbox: Outbox;
  /** Row-change triggers and their announcements. */
  readonly changes: Changes;
  /** Durable topics: an append-only log with consumer groups and replay. */
  readonly topics: Topics;
  /**
   * The one maintenance service: rescue of expired job leases and the retention of
   * every part, run by one elected process of the fleet. It starts on first use of any
   * part; `status()` reports every task.
   */
  readonly maintenance: Maintenance;
  readonly #ownsDriver: boolean;
  #closed = false;

  constructor(options: HeraldOptions) {
    this.schema = options.schema ?? 'herald';
    schemaIdent(this.schema);
    const given = [options.connectionString, options.pool, options.sql, options.driver].filter((x) => x !== undefined).length;
    if (given !== 1) {
      throw new HeraldError('INVALID_OPTION', 'give exactly one of connectionString, pool, sql or driver');
    }
    const ps = options.poolSize;
    if (ps !== undefined && (typeof ps !== 'number' || !Number.isInteger(ps) || ps < 1 || ps > 10_000)) {
      throw new InvalidOptionError('poolSize', ps, 'an integer from 1 to 10000');
    }
    const ct = options.connectTimeoutMs;
    if (ct !== undefined && (typeof ct !== 'number' || !(ct > 0) || !Number.isFinite(ct))) {
      throw new InvalidOptionError('connectTimeoutMs', ct, 'a positive number');
    }
    this.#ownsDriver = !options.driver;
    this.driver =
      options.driver ??
      (options.sql
        ? postgresJsDriver({
            sql: options.sql,
            listenConnectionString: options.listenConnectionString,
            preparedStatements: options.preparedStatements,
            connectTimeoutMs: options.connectTimeoutMs,
          })
        : pgDriver({
            pool: options.pool,
            connectTimeoutMs: options.connectTimeoutMs,
            connectionString: options.connectionString,
            max: options.poolSize,
            listenConnectionString: options.listenConnectionString,
            preparedStatements: options.preparedStatements,
          }));
    this.notifier = new Notifier(this.driver, { connectTimeoutMs: options.connectTimeoutMs, ...options.notifier });
    // Any part used starts the maintenance service (a send-only process purges too).
    const active = () => this.maintenance.start();
    this.queue = new Queue(this.driver, this.notifier, this.schema, options.queue, active);
    this.mailbox = new Mailbox(this.driver, this.notifier, this.schema, options.mailbox, active);
    this.outbox = new Outbox(this.driver, this.notifier, this.schema, active);
    this.changes = new Changes(this.driver, this.notifier, this.schema);
    this.topics = new MaintainedTopics(this.driver, this.notifier, this.schema, options.topics, active);
    const maintenanceOptions = resolveMaintenanceOptions(options.maintenance, partFallbacks(options));
    this.maintenance = new Maintenance(this.queue.executor, schemaIdent(this.schema), maintenanceRunners(this), maintenanceOptions);
  }

  /** Applies pending migrations (safe from many processes at once). Returns the versions applied. */
  migrate(options: Pick<MigrateOptions, 'lockTimeoutMs' | 'lockRetries'> = {}): Promise<number[]> {
    return migrate(this.driver, this.schema, options);
  }

  /** Every migration with the time it was applied, or null when pending. */
  migrationStatus(): Promise<MigrationStatus[]> {
    return migrationStatus(this.driver.executor, this.schema);
  }

  /** Subscribes to a channel on the process's one listen connection. See {@link Notifier.listen}. */
  listen(channel: string, handler?: (n: Notification) => unknown, options?: ListenOptions): Subscription;
  listen(channel: string, options?: ListenOptions): Subscription;
  listen(channel: string, a?: ((n: Notification) => unknown) | ListenOptions, b?: ListenOptions): Subscription {
    return typeof a === 'function' ? this.notifier.listen(channel, a, b) : this.notifier.listen(channel, a);
  }

  /** Sends a notification; with `{ tx }` only if that transaction commits. See {@link Notifier.notify}. */
  notify(channel: string, payload?: string, options?: { tx?: TxLike }): Promise<void> {
    return this.notifier.notify(channel, payload, options);
  }

  /** Sends a batch of notifications in one round trip. */
  notifyMany(items: readonly OutgoingNotification[], options?: { tx?: TxLike }): Promise<void> {
    return this.notifier.notifyMany(items, options);
  }

  /**
   * Runs `fn` in a transaction; pass the `tx` it gets to any write (`{ tx }`). A commit
   * that fails because the notification queue is full (a wake-up attached before the
   * pressure was known) rejects with {@link NotifyQueueFullError}: nothing committed,
   * wake-ups are now paused, and running the transaction again commits it without them.
   */
  async transaction<T>(fn: (tx: Executor) => Promise<T>): Promise<T> {
    try {
      return await this.driver.transaction(fn);
    } catch (err) {
      if (err instanceof NotifyQueueFullError || !this.notifier.pressure.noteError(err)) throw err;
      throw new NotifyQueueFullError('the transaction did not commit: the notification queue is full (wake-ups are now paused; run it again)', { cause: err });
    }
  }

  /** Stops every part and closes the connections pgherald opened. Idempotent. */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    // First: a task in flight uses the parts and the pool; the leader resigns.
    await this.maintenance.stop();
    await this.queue.stop();
    await this.mailbox.stop();
    await this.outbox.stop();
    await this.topics.stop();
    await this.notifier.stop();
    if (this.#ownsDriver) await this.driver.end();
  }
}

/**
 * The topics of a Herald: publishing or consuming starts the maintenance service, and
 * `start()` starts it instead of a timer of its own (the task `topicRetention` calls
 * `maintain()`).
 */
class MaintainedTopics extends Topics {
  readonly #active: () => void;
  constructor(driver: Driver, notifier: Notifier, schema: string, options: TopicsOptions | undefined, active: () => void) {
    super(driver, notifier, schema, options);
    this.#active = active;
  }
  override publish(...args: Parameters<Topics['publish']>): ReturnType<Topics['publish']> {
    this.#active();
    return super.publish(...args);
  }
  override publishMany(...args: Parameters<Topics['publishMany']>): ReturnType<Topics['publishMany']> {
    this.#active();
    return super.publishMany(...args);
  }
  override consumer<T = unknown>(topic: string, group: string, handler: (batch: TopicBatch<T>) => Promise<void> | void, options?: ConsumerOptions): TopicConsumer<T> {
    this.#active();
    return super.consumer<T>(topic, group, handler, options);
  }
  /** Starts the maintenance service, whose task `topicRetention` runs topic retention. */
  override start(): void {
    this.#active();
  }
}

/** Creates a {@link Herald}. */
export function createHerald(options: HeraldOptions): Herald {
  return new Herald(options);
}
