import type { IncomingMessage } from 'node:http';
import type { Socket } from 'node:net';
import type { RawData, WebSocket, WebSocketServer } from 'ws';
import { assertAllowed, type Principal } from './auth.js';
import { WsConnection, WS_CLOSE, type CloseReason } from './connection.js';
import { HttpError, publicError, statusOf, truncateUtf8 } from './http.js';
import { TokenBucket } from './limits.js';
import { lastEventIdOf, publish, splitStream } from './routes/channels.js';
import type { HeraldServer } from './server.js';

/** After a `RATE_LIMITED` error reply, further dropped messages get no reply for this long. */
export const RATE_LIMIT_WINDOW_MS = 1000;

/** The close reason for an error that refuses a whole connection. */
function closeReasonOf(err: unknown): CloseReason {
  const code = err instanceof HttpError ? err.code : '';
  if (code === 'TOKEN_EXPIRED') return 'token_expired';
  const status = statusOf(err);
  if (status === 401) return 'unauthorized';
  if (status === 403) return 'forbidden';
  if (status === 429 || status === 503) return 'limit';
  return 'bad_message';
}

/** Refuses a WebSocket after the handshake, so browsers see the close code and reason. */
function refuse(wss: WebSocketServer, req: IncomingMessage, socket: Socket, head: Buffer, err: unknown, server: HeraldServer): void {
  server.refused(err);
  wss.handleUpgrade(req, socket, head, (ws) => {
    ws.on('error', () => ws.terminate()); // a bad frame before the close completes must not throw
    const e = publicError(err);
    ws.close(WS_CLOSE[closeReasonOf(err)], truncateUtf8(`${e.code}: ${e.message}`, 123));
  });
}

/** Answers an upgrade request with a plain HTTP error (no handshake) and closes. */
function endUpgrade(socket: Socket, err: HttpError): void {
  const body = JSON.stringify({ error: { code: err.code, message: err.message } });
  const reason = err.status === 404 ? 'Not Found' : err.status === 414 ? 'URI Too Long' : 'Bad Request';
  socket.end(`HTTP/1.1 ${err.status} ${reason}\r\ncontent-type: application/json; charset=utf-8\r\ncontent-length: ${Buffer.byteLength(body)}\r\nconnection: close\r\n\r\n${body}`);
}

/**
 * Handles `GET /ws` upgrades: authenticates (401 → close 4401, expired → 4408),
 * admits (limits → 4429), subscribes the `?topic=` / `?stream=` of the URL (a missing
 * grant → 4403), then serves the JSON protocol:
 *
 * client → server: `{"type":"subscribe","topic"|"stream":..., "lastEventId"?, "ref"?}`,
 * `{"type":"unsubscribe","topic"|"stream":...}`, `{"type":"publish","topic":...,"payload":...}`,
 * `{"type":"ping"}`. Server → client: `event`, `gap`, `end`, `subscribed`,
 * `unsubscribed`, `published`, `pong`, `error` (with `code` and the request's `ref`).
 */
export async function handleUpgrade(server: HeraldServer, wss: WebSocketServer, req: IncomingMessage, socket: Socket, head: Buffer): Promise<void> {
  socket.on('error', () => socket.destroy());
  if (!server.guard.upgrade(req, socket, (err) => server.refused(err))) return; // Host and Origin (guard.ts)
  let url: URL;
  try {
    url = server.parseUrl(req);
  } catch (err) {
    server.refused(err);
    return endUpgrade(socket, err as HttpError);
  }
  if (url.pathname !== '/ws') return endUpgrade(socket, new HttpError(404, 'NOT_FOUND', `no WebSocket endpoint at ${url.pathname.slice(0, 100)}`));
  let principal: Principal;
  let release: () => void;
  const topics = url.searchParams.getAll('topic');
  let streams: [string, string][];
  try {
    principal = await server.authenticate(req);
    streams = url.searchParams.getAll('stream').map(splitStream);
    for (const t of topics) {
      server.gateway.channelOf(t);
      assertAllowed(principal, 'subscribe', t);
    }
    for (const [kind, name] of streams) assertAllowed(principal, 'subscribe', server.gateway.source(kind).resource(name));
    release = server.admit(principal, 'ws');
  } catch (err) {
    return refuse(wss, req, socket, head, err, server);
  }
  wss.handleUpgrade(req, socket, head, (ws: WebSocket) => {
    const conn = new WsConnection(ws, principal, server.options.maxBufferedBytes, server.gateway.scheduleFlush);
    server.track(conn, release);
    const bucket = new TokenBucket(server.options.wsMessagesPerSecond);
    // One RATE_LIMITED reply per window: a flood gets one error, not one per dropped message.
    let quietUntil = 0;
    ws.on('message', (data: RawData, isBinary: boolean) => {
      if (conn.isClosed) return;
      if (!bucket.take()) {
        const now = performance.now();
        if (now >= quietUntil) {
          quietUntil = now + RATE_LIMIT_WINDOW_MS;
          conn.reply({
            type: 'error',
            code: 'RATE_LIMITED',
            status: 429,
            message: `over ${server.options.wsMessagesPerSecond} messages/s: messages are dropped, without further errors for ${RATE_LIMIT_WINDOW_MS} ms`,
          });
        }
        return;
      }
      if (isBinary) return conn.close('bad_message', 'binary messages are not supported');
      void onMessage(server, conn, data.toString()).catch(() => {});
    });
    const after = lastEventIdOf(req, url);
    void (async () => {
      try {
        for (const t of topics) {
          await server.gateway.subscribeTopic(conn, t, after);
          conn.reply({ type: 'subscribed', topic: t });
        }
        for (const [kind, name] of streams) {
          await server.gateway.subscribeStream(conn, kind, name, null);
          conn.reply({ type: 'subscribed', stream: `${kind}/${name}` });
        }
      } catch (err) {
        server.refused(err);
        // As a refusal before the upgrade: the reason starts with the error code.
        const pub = publicError(err);
        conn.close(closeReasonOf(err), `${pub.code}: ${pub.message}`);
      }
    })();
  });
}

async function onMessage(server: HeraldServer, conn: WsConnection, text: string): Promise<unknown> {
  let msg: Record<string, unknown>;
  try {
    msg = JSON.parse(text);
    if (!msg || typeof msg !== 'object' || Array.isArray(msg)) throw new Error();
  } catch {
    return conn.reply({ type: 'error', code: 'INVALID_JSON', status: 400, message: 'messages are JSON objects' });
  }
  const ref = msg.ref;
  const gw = server.gateway;
  try {
    if (conn.principal.expiresAt !== null && conn.principal.expiresAt <= Date.now()) {
      return conn.close('token_expired', 'the token has expired');
    }
    const topic = typeof msg.topic === 'string' ? msg.topic : undefined;
    const stream = typeof msg.stream === 'string' ? splitStream(msg.stream) : undefined;
    const after = typeof msg.lastEventId === 'string' && msg.lastEventId ? msg.lastEventId : null;
    switch (msg.type) {
      case 'ping':
        return conn.reply({ type: 'pong', ref });
      case 'subscribe':
        if (topic !== undefined) {
          gw.channelOf(topic);
          assertAllowed(conn.principal, 'subscribe', topic);
          await gw.subscribeTopic(conn, topic, after);
          return conn.reply({ type: 'subscribed', topic, ref });
        }
        if (stream) {
          assertAllowed(conn.principal, 'subscribe', gw.source(stream[0]).resource(stream[1]));
          await gw.subscribeStream(conn, stream[0], stream[1], after);
          return conn.reply({ type: 'subscribed', stream: msg.stream, ref });
        }
        throw new HttpError(400, 'INVALID_MESSAGE', 'subscribe needs topic or stream');
      case 'unsubscribe': {
        const key = topic !== undefined ? `channel:${topic}` : stream ? `stream:${stream[0]}/${stream[1]}` : undefined;
        if (!key) throw new HttpError(400, 'INVALID_MESSAGE', 'unsubscribe needs topic or stream');
        if (!gw.unsubscribe(conn, key)) throw new HttpError(404, 'NOT_SUBSCRIBED', `not subscribed to ${key}`);
        return conn.reply({ type: 'unsubscribed', topic, stream: msg.stream, ref });
      }
      case 'publish':
        if (topic === undefined) throw new HttpError(400, 'INVALID_MESSAGE', 'publish needs topic');
        gw.channelOf(topic); // a reserved topic: RESERVED_TOPIC whatever the grants
        assertAllowed(conn.principal, 'publish', topic);
        await publish(server, conn.principal, topic, msg.payload ?? '');
        return conn.reply({ type: 'published', topic, ref });
      default:
        throw new HttpError(400, 'INVALID_MESSAGE', 'type must be subscribe, unsubscribe, publish or ping');
    }
  } catch (err) {
    server.refused(err);
    if (err instanceof HttpError && err.code === 'TOKEN_EXPIRED') return conn.close('token_expired', err.message);
    // Our code and message only: never a driver's or Postgres' text. An internal error
    // is logged once, and its id goes to the client.
    const requestId = !(err instanceof HttpError) && statusOf(err) >= 500 ? server.reportInternalError(err, { method: 'WS', path: `/ws ${String(msg.type).slice(0, 20)}` }) : undefined;
    const e = publicError(err, requestId);
    conn.reply({ type: 'error', code: e.code, status: e.status, message: e.message, requestId, topic: msg.topic, stream: msg.stream, ref });
  }
}
