import type { Counter, Gauge, Registry } from 'prom-client';
import { loadPeer } from '../internal/peer.js';
import type { Herald } from '../client.js';
import { serverHealth } from '../internal/server-health.js';
import type { MaintenanceTaskMetrics } from '../maintenance/types.js';
import type { Gateway } from './gateway.js';

/**
 * The server's Prometheus registry (its own, not prom-client's global one). Parts add
 * their metrics with `server.metrics.registry.registerMetric(...)` or by passing
 * `registers: [server.metrics.registry]` to a prom-client metric.
 */
export class ServerMetrics {
  readonly registry: Registry;
  /** Connections accepted, by transport. */
  readonly connections: Counter<'transport'>;
  /** Connections ended, by transport and reason (`slow_consumer`, `token_expired`, `client_gone`, ...). */
  readonly disconnects: Counter<'transport' | 'reason'>;
  /** Requests refused, by HTTP status and code. */
  readonly refused: Counter<'status' | 'code'>;
  /** Clients connected now, by transport (set by the server). */
  readonly clients: Gauge<'transport'>;

  constructor(herald: Herald, gateway: Gateway, clientCount: (transport: 'sse' | 'ws') => number) {
    const { Counter, Gauge, Registry, collectDefaultMetrics } = loadPeer<typeof import('prom-client')>('prom-client', 'HeraldServer (/metrics)');
    this.registry = new Registry();
    const registers = [this.registry];
    collectDefaultMetrics({ register: this.registry, prefix: 'herald_process_' });
    this.connections = new Counter({ name: 'herald_gateway_connections_total', help: 'Streaming connections accepted', labelNames: ['transport'], registers });
    this.disconnects = new Counter({ name: 'herald_gateway_disconnects_total', help: 'Streaming connections ended, by reason', labelNames: ['transport', 'reason'], registers });
    this.refused = new Counter({ name: 'herald_gateway_refused_total', help: 'Requests refused (401, 403, 429, ...)', labelNames: ['status', 'code'], registers });
    this.clients = new Gauge({
      name: 'herald_gateway_clients',
      help: 'Streaming clients connected now',
      labelNames: ['transport'],
      registers,
      collect() {
        this.set({ transport: 'sse' }, clientCount('sse'));
        this.set({ transport: 'ws' }, clientCount('ws'));
      },
    });
    // The server itself, read at scrape time (one statement, no table read): recovery
    // mode and connection headroom. A failed read leaves the values out of that scrape.
    const readHealth = () => serverHealth(herald.driver.executor, 2000).catch(() => undefined);
    new Gauge({
      name: 'herald_pg_in_recovery',
      help: 'The server is in recovery (a standby): 1, a primary: 0',
      registers,
      async collect() {
        const h = await readHealth();
        if (h) this.set(h.inRecovery ? 1 : 0);
      },
    });
    new Gauge({
      name: 'herald_pg_connections',
      help: 'Server connections: used (client backends), max (max_connections), reserved (superuser and reserved slots)',
      labelNames: ['kind'],
      registers,
      async collect() {
        const h = await readHealth();
        if (!h) return;
        this.set({ kind: 'used' }, h.connections.used);
        this.set({ kind: 'max' }, h.connections.max);
        this.set({ kind: 'reserved' }, h.connections.reserved);
      },
    });
    new Counter({
      name: 'herald_gateway_deliveries_total',
      help: 'Events queued to clients (notifications and stream events)',
      labelNames: ['transport'],
      registers,
      collect() {
        this.reset();
        this.inc({ transport: 'sse' }, gateway.counters.deliveries.sse);
        this.inc({ transport: 'ws' }, gateway.counters.deliveries.ws);
      },
    });
    new Counter({
      name: 'herald_gateway_notifications_total',
      help: 'Notifications received on gateway topics',
      registers,
      collect() {
        this.reset();
        this.inc(gateway.counters.notifications);
      },
    });
    new Counter({
      name: 'herald_gateway_gaps_total',
      help: 'Gap signals sent (events that could not be replayed)',
      registers,
      collect() {
        this.reset();
        this.inc(gateway.counters.gaps);
      },
    });
    new Counter({
      name: 'herald_gateway_resumes_total',
      help: 'Subscriptions that asked to resume from a Last-Event-ID (client reconnects)',
      registers,
      collect() {
        this.reset();
        this.inc(gateway.counters.resumes);
      },
    });
    new Gauge({
      name: 'herald_gateway_topics',
      help: 'Topics the gateway listens on now',
      registers,
      collect() {
        this.set(gateway.topics().length);
      },
    });
    new Counter({
      name: 'herald_notifier_reconnects_total',
      help: 'Reconnects of the listen connection',
      registers,
      collect() {
        this.reset();
        this.inc(herald.notifier.stats().reconnects);
      },
    });
    new Counter({
      name: 'herald_notifier_drops_total',
      help: 'Notifications dropped by full subscriber buffers in this process',
      registers,
      collect() {
        this.reset();
        let n = 0;
        for (const c of Object.values(herald.notifier.stats().channels)) n += c.dropped;
        this.inc(n);
      },
    });
    new Gauge({
      name: 'herald_notifier_listening',
      help: '1 when the listen connection is live',
      registers,
      collect() {
        this.set(herald.notifier.status === 'listening' ? 1 : 0);
      },
    });
    new Gauge({
      name: 'herald_notify_wakeups_paused',
      help: '1 while this process attaches no wake-ups to its writes (the notification queue is full or above queueUsageHighWater)',
      registers,
      collect() {
        this.set(herald.notifier.pressure.paused ? 1 : 0);
      },
    });
    new Counter({
      name: 'herald_notify_queue_full_total',
      help: 'Times this process paused its wake-ups because the notification queue was full or above queueUsageHighWater (queueFull events)',
      registers,
      collect() {
        this.reset();
        this.inc(herald.notifier.stats().queueFullEpisodes);
      },
    });
    // The maintenance service: what this process ran (it runs tasks while it leads).
    const perTask = (name: string, help: string, pick: (m: MaintenanceTaskMetrics) => number) =>
      new Counter({
        name,
        help,
        labelNames: ['task'],
        registers,
        collect() {
          this.reset();
          for (const [task, m] of Object.entries(herald.maintenance.metrics())) this.inc({ task }, pick(m));
        },
      });
    perTask('herald_maintenance_runs_total', 'Maintenance task runs made by this process', (m) => m.runs);
    perTask('herald_maintenance_rows_total', 'Rows changed by maintenance tasks in this process (deleted, rescued, segments dropped)', (m) => m.rows);
    perTask('herald_maintenance_errors_total', 'Maintenance task runs that failed in this process', (m) => m.errors);
    perTask('herald_maintenance_duration_seconds_total', 'Time spent in maintenance task runs in this process', (m) => m.durationMs / 1000);
    new Gauge({
      name: 'herald_maintenance_leader',
      help: '1 while this process is the maintenance leader (runs the periodic tasks)',
      registers,
      collect() {
        this.set(herald.maintenance.isLeader ? 1 : 0);
      },
    });
    new Gauge({
      name: 'herald_notification_queue_usage',
      help: 'pg_notification_queue_usage() (0..1), sampled at scrape time',
      registers,
      async collect() {
        try {
          this.set(await herald.notifier.sampleQueueUsage());
        } catch {
          const last = herald.notifier.stats().queueUsage;
          if (last !== null) this.set(last);
        }
      },
    });
  }
}
