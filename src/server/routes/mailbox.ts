import type { MailboxMessage } from '../../mailbox/types.js';
import { HttpError, readJson, sendJson } from '../http.js';
import type { HeraldServer } from '../server.js';

/** Longest long poll a client may ask for (`?wait=`), in seconds. */
export const MAX_WAIT_SECONDS = 300;

const QUERY_KEYS = new Set(['wait', 'topic', 'access_token']);

/** The JSON shape of a message over HTTP. */
function messageJson(m: MailboxMessage): Record<string, unknown> {
  return { id: m.id, to: m.to, topic: m.topic, payload: m.payload, attempts: m.attempts, createdAt: m.createdAt };
}

/**
 * `POST /mailbox/<to>` sends; `GET /mailbox/<to>?wait=<seconds>` receives by long poll.
 * Thin: the library's send and receive do the work, with the same guarantees.
 */
export function registerMailboxRoutes(server: HeraldServer): void {
  const mailbox = server.herald.mailbox;

  server.router.add('POST', /^\/mailbox\/([^/]+)$/, async (req, res, [to]) => {
    const body = await readJson<{ payload?: unknown; topic?: unknown; id?: unknown }>(req, server.options.maxBodyBytes, ['payload', 'topic', 'id']);
    if (!('payload' in body)) throw new HttpError(400, 'INVALID_PAYLOAD', 'body needs a "payload" (a string is stored as text, any other JSON value as JSON)');
    if (body.topic !== undefined && body.topic !== null && typeof body.topic !== 'string') throw new HttpError(400, 'INVALID_ARGUMENT', 'topic must be a string');
    if (body.id !== undefined && typeof body.id !== 'string') throw new HttpError(400, 'INVALID_ARGUMENT', 'id must be a string');
    const result = await mailbox.send({ to, payload: body.payload, topic: body.topic as string | undefined, id: body.id as string | undefined });
    sendJson(res, result.created ? 201 : 200, { id: result.id, to, created: result.created });
  }, { action: 'publish', resource: ([to]) => `mailbox/${to}` });

  server.router.add('GET', /^\/mailbox\/([^/]+)$/, async (_req, res, [to], url, principal) => {
    const unknown = [...url.searchParams.keys()].filter((k) => !QUERY_KEYS.has(k));
    if (unknown.length) throw new HttpError(400, 'UNKNOWN_FIELD', `unknown query parameter(s): ${unknown.join(', ')}`);
    const waitText = url.searchParams.get('wait') ?? '0';
    const wait = Number(waitText);
    if (waitText.trim() === '' || !Number.isFinite(wait) || wait < 0 || wait > MAX_WAIT_SECONDS) {
      throw new HttpError(400, 'INVALID_ARGUMENT', `wait must be a number of seconds between 0 and ${MAX_WAIT_SECONDS}, got ${JSON.stringify(waitText)}`);
    }
    const topic = url.searchParams.get('topic') ?? undefined;
    // A client that goes away while we wait must not consume a message: the signal makes
    // receive roll back a take that races with the disconnect.
    const gone = new AbortController();
    const onClose = () => gone.abort();
    // A poll that waits holds its connection like a stream: admitted like one (maxClients, per token).
    const release = wait > 0 ? server.admitLongPoll(principal!) : () => {};
    res.once('close', onClose);
    try {
      const m = await mailbox.receive(to, { topic, timeoutMs: Math.round(wait * 1000), signal: gone.signal });
      if (gone.signal.aborted) return;
      if (!m) {
        res.writeHead(204, { 'cache-control': 'no-store' });
        res.end();
        return;
      }
      sendJson(res, 200, messageJson(m));
    } finally {
      res.off('close', onClose);
      release();
    }
  }, { action: 'subscribe', resource: ([to]) => `mailbox/${to}` });
}
