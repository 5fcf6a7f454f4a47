import { HeraldError } from '../../errors.js';
import { TopicRetentionError } from '../../topic/types.js';
import type { TopicOptions } from '../../topic/types.js';
import { allows } from '../auth.js';
import { HttpError, parseJsonObject, publicError, readBody, readJson, sendJson, statusOf } from '../http.js';
import type { HeraldServer } from '../server.js';
import { lastEventIdOf } from './channels.js';

/** Fields of the `PUT /topics/<name>` body: the topic options fixed at creation. */
const TOPIC_OPTION_KEYS = ['partitions', 'segmentSize', 'retentionMs', 'retentionBytes'];

/**
 * Topic routes:
 * - `GET /topics/<name>/events`: SSE of every message after `Last-Event-ID` (header) or
 *   `?from=earliest|latest|<position>` (default latest). Each event is
 *   `id: <position>`, `event: message`, `data: {"id","key","partition","payload","publishedAt"}`,
 *   so a reconnecting EventSource resumes where it stopped. Behind retention:
 *   `event: behind` with the oldest retained position, then the stream ends.
 * - `PUT /topics/<name>`: creates a durable topic (grant `create` or `admin` on
 *   `topic/<name>`), body optional `{ partitions?, segmentSize?, retentionMs?, retentionBytes? }`;
 *   201 `{ topic, created: true }`, or 200 `{ topic, created: false }` when it exists.
 * - `POST /topics/<name>/publish`: body `{ "payload": <JSON>, "key"?: "<text>" }`; 202 `{ id, position }`.
 *   A missing topic is 404 `NOT_FOUND`, unless `autoCreateTopics` and a `create` grant.
 * - `GET /topics/<name>/dead?group=&limit=` (grant `admin` on `topic/<name>`): the dead
 *   letters, `{ letters: [...] }` (each as `herald.topics.deadLetters` returns it).
 * - `POST /topics/<name>/groups/<group>/redrive` (grant `admin` on `topic/<name>`), body
 *   `{ "all": true }` or `{ "positions": ["<position>", ...] }`: `{ redriven: n }`.
 */
export function registerTopicsRoutes(server: HeraldServer): void {
  const herald = server.herald;

  server.router.add('PUT', /^\/topics\/([^/]+)$/, async (req, res, [topic]) => {
    const text = (await readBody(req, server.options.maxBodyBytes)).toString('utf8');
    // An empty body: the defaults. Otherwise the checks of every JSON body (depth, fields, NUL).
    const body = text.trim() === '' ? {} : parseJsonObject(text, TOPIC_OPTION_KEYS);
    const created = await herald.topics.create(topic, body as TopicOptions);
    sendJson(res, created ? 201 : 200, { topic, created });
  }, { action: 'create', resource: ([topic]) => `topic/${topic}` });

  server.router.add('POST', /^\/topics\/([^/]+)\/publish$/, async (req, res, [topic], _url, principal) => {
    const body = await readJson<{ payload?: unknown; key?: unknown }>(req, server.options.maxBodyBytes, ['payload', 'key']);
    if (body.payload === undefined) throw new HttpError(400, 'INVALID_PAYLOAD', 'payload is required (any JSON value)');
    if (body.key !== undefined && body.key !== null && typeof body.key !== 'string') throw new HttpError(400, 'INVALID_ARGUMENT', 'key must be a string');
    // Publishing never creates a topic (DDL) unless the server allows it and the caller may create.
    const autoCreate = server.options.autoCreateTopics && allows(principal!.grants, 'create', `topic/${topic}`);
    try {
      const m = await herald.topics.publish(topic, body.payload, { key: (body.key as string | null | undefined) ?? null, autoCreate, waitForPosition: true });
      sendJson(res, 202, { topic, id: m.id, position: m.position });
    } catch (err) {
      if (err instanceof HeraldError && err.code === 'NOT_FOUND') {
        const how = server.options.autoCreateTopics ? 'a publish creates it only for a caller with create on topic/<name>' : 'create it with PUT /topics/<name>';
        throw new HttpError(404, 'NOT_FOUND', `no topic ${JSON.stringify(topic)}: ${how}`);
      }
      throw err;
    }
  }, { action: 'publish', resource: ([topic]) => `topic/${topic}` });

  server.router.add('GET', /^\/topics\/([^/]+)\/events$/, async (req, res, [topic], url, principal) => {
    // Where to start: Last-Event-ID (the header, or ?lastEventId= as for every SSE route), else ?from=, else latest.
    const from = lastEventIdOf(req, url)?.trim() || url.searchParams.get('from') || 'latest';
    let after: string;
    try {
      after = await herald.topics.resolveAfter(topic, from);
    } catch (err) {
      if (err instanceof HeraldError && err.code === 'NOT_FOUND') throw new HttpError(404, 'NOT_FOUND', err.message);
      if (err instanceof HeraldError && err.code === 'INVALID_ARGUMENT') throw new HttpError(400, 'INVALID_ARGUMENT', err.message);
      throw err;
    }
    // Admitted like every stream: clients, per-token connections, the topics' wake-up channel against maxChannels.
    const stream = server.openStream(req, res, principal!, { key: `topic/${topic}`, channels: [herald.topics.channel] });
    const abort = new AbortController();
    void stream.closed.then(() => abort.abort());
    stream.ready({ topic, after });
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

  const topicAdmin = { action: 'admin', resource: ([topic]: string[]) => `topic/${topic}` } as const;

  server.router.add('GET', /^\/topics\/([^/]+)\/dead$/, async (_req, res, [topic], url) => {
    const raw = url.searchParams.get('limit') ?? '100';
    const limit = Number(raw);
    if (!Number.isInteger(limit) || limit < 1 || limit > 10_000) throw new HttpError(400, 'INVALID_ARGUMENT', 'limit must be an integer from 1 to 10000');
    const group = url.searchParams.get('group') ?? undefined;
    sendJson(res, 200, { letters: await topicCall(() => herald.topics.deadLetters(topic, { group, limit })) });
  }, topicAdmin);

  server.router.add('POST', /^\/topics\/([^/]+)\/groups\/([^/]+)\/redrive$/, async (req, res, [topic, group]) => {
    const body = await readJson<{ positions?: unknown; all?: unknown }>(req, server.options.maxBodyBytes, ['positions', 'all']);
    if ((body.all === true) === (body.positions !== undefined)) throw new HttpError(400, 'INVALID_BODY', 'give "positions" (an array of positions) or "all": true');
    if (body.positions !== undefined && (!Array.isArray(body.positions) || body.positions.some((p) => typeof p !== 'string'))) {
      throw new HttpError(400, 'INVALID_BODY', '"positions" must be an array of positions (strings)');
    }
    const redriven = await topicCall(() => herald.topics.redrive(topic, group, body.all === true ? {} : { positions: body.positions as string[] }));
    sendJson(res, 200, { redriven });
  }, topicAdmin);
}

/** Maps the library's typed errors of a topic call to HTTP errors. */
async function topicCall<T>(fn: () => Promise<T>): Promise<T> {
  try {
    return await fn();
  } catch (err) {
    if (err instanceof HeraldError && err.code === 'NOT_FOUND') throw new HttpError(404, 'NOT_FOUND', err.message);
    if (err instanceof HeraldError && (err.code === 'INVALID_ARGUMENT' || err.code === 'INVALID_OPTION')) throw new HttpError(400, err.code, err.message);
    throw err;
  }
}
