import type { IncomingMessage, ServerResponse } from 'node:http';
import { withSpan } from '../../internal/tracing.js';
import { assertAllowed, type Principal } from '../auth.js';
import type { SseConnection } from '../connection.js';
import { HttpError, readJson, sendJson } from '../http.js';
import type { HeraldServer } from '../server.js';

/** `Last-Event-ID` header (what EventSource sends on reconnect), else `?lastEventId=`. */
export function lastEventIdOf(req: IncomingMessage, url: URL): string | null {
  const h = req.headers['last-event-id'];
  const v = (Array.isArray(h) ? h[0] : h) ?? url.searchParams.get('lastEventId');
  return v ? String(v) : null;
}

/** Splits `<kind>/<name>` (the name may hold further slashes). */
export function splitStream(label: string): [kind: string, name: string] {
  const i = label.indexOf('/');
  if (i <= 0 || i === label.length - 1) throw new HttpError(400, 'INVALID_STREAM', 'stream must be <kind>/<name>');
  return [label.slice(0, i), label.slice(i + 1)];
}

/** Publishes `payload` on `topic` for `principal`: rate limit, size limit, then NOTIFY on the topic's channel. */
export async function publish(server: HeraldServer, principal: Principal, topic: string, payload: unknown): Promise<void> {
  if (typeof payload !== 'string') throw new HttpError(400, 'INVALID_PAYLOAD', 'payload must be a string');
  const channel = server.gateway.channelOf(topic);
  const bytes = Buffer.byteLength(payload);
  if (bytes > server.options.maxMessageBytes) {
    throw new HttpError(413, 'PAYLOAD_TOO_LARGE', `payload is ${bytes} bytes; the limit is ${server.options.maxMessageBytes}`);
  }
  if (payload.includes('\0')) throw new HttpError(400, 'INVALID_PAYLOAD', 'payload must not contain a NUL character');
  if (principal.kind !== 'anonymous') server.limits.takePublish(principal.id);
  await withSpan('herald.gateway.publish', { 'herald.topic': topic, 'herald.principal': principal.id }, () => server.herald.notify(channel, payload));
}

async function runSse(
  server: HeraldServer,
  req: IncomingMessage,
  res: ServerResponse,
  principal: Principal,
  format: 'sse' | 'sse-json',
  setup: (conn: SseConnection) => Promise<Record<string, unknown>>,
): Promise<void> {
  const conn = server.openSse(req, res, principal, format);
  let ready: Record<string, unknown>;
  try {
    ready = await setup(conn);
  } catch (err) {
    conn.discard();
    throw err;
  }
  conn.open(ready);
}

/**
 * The gateway's own routes: publish to a topic, and SSE streams of topics and of
 * durable streams. WebSocket is served on `/ws` (see ws.ts).
 */
export function registerChannelRoutes(server: HeraldServer): void {
  const gw = server.gateway;

  server.router.add(
    'POST',
    /^\/channels\/([^/]+)\/notify$/,
    async (req, res, [topic], _url, principal) => {
      const body = await readJson<{ payload?: unknown }>(req, server.options.maxBodyBytes, ['payload']);
      await publish(server, principal!, topic, body.payload ?? '');
      sendJson(res, 202, { topic, sent: true });
    },
    // channelOf: a reserved topic is refused (403 RESERVED_TOPIC) before the grant is checked.
    { action: 'publish', resource: ([topic]) => (server.gateway.channelOf(topic), topic) },
  );

  server.router.add(
    'GET',
    /^\/channels\/([^/]+)\/events$/,
    async (req, res, [topic], url, principal) => {
      const channel = gw.channelOf(topic); // 400 before the stream opens
      const after = lastEventIdOf(req, url);
      await runSse(server, req, res, principal!, 'sse', async (conn) => {
        await gw.subscribeTopic(conn, topic, after);
        return { topic, channel };
      });
    },
    { action: 'subscribe', resource: ([topic]) => (server.gateway.channelOf(topic), topic) },
  );

  // Several topics (and durable streams) on one SSE connection; data is JSON with the topic.
  server.router.add(
    'GET',
    /^\/events$/,
    async (req, res, _params, url) => {
      const principal = await server.authenticate(req);
      const topics = url.searchParams.getAll('topic');
      const streams = url.searchParams.getAll('stream').map(splitStream);
      if (topics.length + streams.length === 0) throw new HttpError(400, 'NO_SUBSCRIPTION', 'give ?topic=<name> and/or ?stream=<kind>/<name>');
      if (topics.length + streams.length > server.options.maxSubscriptionsPerConnection) {
        throw new HttpError(429, 'TOO_MANY_SUBSCRIPTIONS', `a connection may hold ${server.options.maxSubscriptionsPerConnection} subscriptions`);
      }
      for (const t of topics) {
        gw.channelOf(t);
        assertAllowed(principal, 'subscribe', t);
      }
      for (const [kind, name] of streams) assertAllowed(principal, 'subscribe', gw.source(kind).resource(name));
      const after = lastEventIdOf(req, url);
      await runSse(server, req, res, principal, 'sse-json', async (conn) => {
        for (const t of topics) await gw.subscribeTopic(conn, t, after);
        for (const [kind, name] of streams) await gw.subscribeStream(conn, kind, name, null);
        return { topics, streams: streams.map(([k, n]) => `${k}/${n}`) };
      });
    },
    { open: true }, // authenticated and authorized per topic above
  );

  server.router.add(
    'GET',
    /^\/streams\/([^/]+)\/(.+)\/events$/,
    async (req, res, [kind, name], url) => {
      const principal = await server.authenticate(req);
      assertAllowed(principal, 'subscribe', gw.source(kind).resource(name));
      const after = lastEventIdOf(req, url);
      await runSse(server, req, res, principal, 'sse', async (conn) => {
        await gw.subscribeStream(conn, kind, name, after);
        return { stream: `${kind}/${name}` };
      });
    },
    { open: true }, // the resource comes from the stream's source, checked above
  );
}
