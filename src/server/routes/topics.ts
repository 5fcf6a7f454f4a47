import { HeraldError } from '../../errors.js';
import { TopicRetentionError } from '../../topic/types.js';
import { HttpError, publicError, readJson, sendJson, statusOf } from '../http.js';
import type { HeraldServer } from '../server.js';

/**
 * Topic routes:
 * - `GET /topics/<name>/events`: SSE of every message after `Last-Event-ID` (header) or
 *   `?from=earliest|latest|<position>` (default latest). Each event is
 *   `id: <position>`, `event: message`, `data: {"id","key","partition","payload","publishedAt"}`,
 *   so a reconnecting EventSource resumes where it stopped. Behind retention:
 *   `event: behind` with the oldest retained position, then the stream ends.
 * - `POST /topics/<name>/publish`: body `{ "payload": <JSON>, "key"?: "<text>" }`; 202 `{ id, position }`.
 */
export function registerTopicsRoutes(server: HeraldServer): void {
  const herald = server.herald;

  server.router.add('POST', /^\/topics\/([^/]+)\/publish$/, async (req, res, [topic]) => {
    const body = await readJson<{ payload?: unknown; key?: unknown }>(req, server.options.maxBodyBytes, ['payload', 'key']);
    if (body.payload === undefined) throw new HttpError(400, 'INVALID_PAYLOAD', 'payload is required (any JSON value)');
    if (body.key !== undefined && body.key !== null && typeof body.key !== 'string') throw new HttpError(400, 'INVALID_ARGUMENT', 'key must be a string');
    const m = await herald.topics.publish(topic, body.payload, { key: (body.key as string | null | undefined) ?? null });
    sendJson(res, 202, { topic, id: m.id, position: m.position });
  }, { action: 'publish', resource: ([topic]) => `topic/${topic}` });

  server.router.add('GET', /^\/topics\/([^/]+)\/events$/, async (req, res, [topic], url) => {
    const header = req.headers['last-event-id'];
    const from = (typeof header === 'string' && header.trim()) || url.searchParams.get('from') || 'latest';
    let after: string;
    try {
      after = await herald.topics.resolveAfter(topic, from);
    } catch (err) {
      if (err instanceof HeraldError && err.code === 'NOT_FOUND') throw new HttpError(404, 'NOT_FOUND', err.message);
      if (err instanceof HeraldError && err.code === 'INVALID_ARGUMENT') throw new HttpError(400, 'INVALID_ARGUMENT', err.message);
      throw err;
    }
    const stream = server.openStream(req, res);
    const abort = new AbortController();
    void stream.closed.then(() => abort.abort());
    stream.send('ready', JSON.stringify({ topic, after }));
    try {
      for await (const m of herald.topics.tail(topic, { after, signal: abort.signal })) {
        const data = JSON.stringify({ id: m.id, key: m.key, partition: m.partition, payload: m.payload, publishedAt: m.publishedAt });
        if (!stream.send('message', data, m.position)) break;
      }
    } catch (err) {
      if (err instanceof TopicRetentionError) {
        stream.send('behind', JSON.stringify({ position: err.info.position, oldestPosition: err.info.oldestPosition, message: err.message }));
        stream.close('behind retention');
        return;
      }
      if (!stream.isClosed) {
        const requestId = statusOf(err) >= 500 ? server.reportInternalError(err, { method: 'GET', path: `/topics/${topic}/events` }) : undefined;
        stream.close('error: ' + publicError(err, requestId).message);
      }
      return;
    }
    stream.close('subscription ended');
  }, { action: 'subscribe', resource: ([topic]) => `topic/${topic}` });
}
