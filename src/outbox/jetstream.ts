import type { NatsConnection } from '@nats-io/transport-node';
import type { JetStreamClient } from '@nats-io/jetstream';
import { InvalidOptionError } from '../errors.js';
import { importPeer } from '../internal/peer.js';
import type { OutboxEvent, OutboxSink } from './sinks.js';

type Transport = typeof import('@nats-io/transport-node');
type JetStream = typeof import('@nats-io/jetstream');

/** Options of {@link jetstreamSink}. */
export interface JetStreamSinkOptions {
  /** NATS server URL(s); the sink connects and closes the connection itself. */
  servers?: string | string[];
  /** An open connection instead (not closed by the sink). */
  connection?: NatsConnection;
  /** Subject of an event. @defaultValue `herald.<type>` */
  subject?: (event: OutboxEvent) => string;
  /** Time to wait for the stream's acknowledgement. @defaultValue 5000 */
  timeoutMs?: number;
}

/**
 * Publishes to NATS JetStream with the event id as the JetStream message id
 * (`Nats-Msg-Id`), so the stream drops a republished event within its
 * `duplicate_window`. The body is the JSON payload; the event's headers travel as
 * NATS headers, plus `Herald-Event-Type` and `Herald-Event-Key`. A subject that no
 * stream captures fails the attempt. Needs the optional packages `@nats-io/transport-node`
 * and `@nats-io/jetstream` (loaded on first publish; `MISSING_DEPENDENCY` names them).
 */
export function jetstreamSink(options: JetStreamSinkOptions): OutboxSink & { readonly duplicates: number } {
  if (!options.servers && !options.connection) throw new InvalidOptionError('servers', options.servers, 'NATS server URL(s) or a connection');
  const timeoutMs = options.timeoutMs ?? 5000;
  const subject = options.subject ?? ((e: OutboxEvent) => `herald.${e.type}`);
  let conn: Promise<{ nc: NatsConnection; js: JetStreamClient }> | undefined;
  let duplicates = 0;
  let headers: Transport['headers'] | undefined;
  const open = () => {
    conn ??= (async () => {
      const [nats, jsm] = await Promise.all([
        importPeer<Transport>('@nats-io/transport-node', 'jetstreamSink'),
        importPeer<JetStream>('@nats-io/jetstream', 'jetstreamSink'),
      ]);
      headers = nats.headers;
      const nc = options.connection ?? (await nats.connect({ servers: options.servers, maxReconnectAttempts: -1 }));
      return { nc, js: jsm.jetstream(nc) };
    })();
    conn.catch(() => (conn = undefined));
    return conn;
  };
  return {
    get duplicates() {
      return duplicates;
    },
    async publish(event) {
      const { js } = await open();
      const h = headers!();
      for (const [k, v] of Object.entries(event.headers ?? {})) h.set(k, String(v));
      h.set('Herald-Event-Type', event.type);
      if (event.key !== null) h.set('Herald-Event-Key', event.key);
      const ack = await js.publish(subject(event), JSON.stringify(event.payload ?? null), { msgID: event.id, timeout: timeoutMs, headers: h });
      if (ack.duplicate) duplicates++;
    },
    async close() {
      const c = conn;
      conn = undefined;
      if (!c || options.connection) return;
      const { nc } = await c.catch(() => ({ nc: undefined }));
      await nc?.drain().catch(() => nc?.close());
    },
  };
}
