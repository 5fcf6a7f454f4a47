import type { EnqueueItem } from '../../queue/types.js';
import { HttpError, readJson, sendJson } from '../http.js';
import type { HeraldServer } from '../server.js';

const ENQUEUE_KEYS = ['kind', 'payload', 'queue', 'priority', 'runAt', 'delayMs', 'maxAttempts', 'uniqueKey', 'stages', 'announce'];

/**
 * Job routes: `POST /jobs` (enqueue), `GET /jobs/<id>` (status), `GET /jobs/events`
 * (transitions as Server-Sent Events), `POST /jobs/pause` and `POST /jobs/resume`
 * (`{ queue?, kind? }`), `GET /jobs/controls` (pauses and limits). Authorization: enqueue
 * needs `publish` on resource `jobs`; status and events need `subscribe` on `jobs`; the
 * control routes need `admin` on `jobs`.
 */
export function registerJobsRoutes(server: HeraldServer): void {
  const queue = server.herald.queue;

  server.router.add('POST', /^\/jobs$/, async (req, res) => {
    const body = await readJson<Record<string, unknown>>(req, server.options.maxBodyBytes, ENQUEUE_KEYS);
    if (typeof body.kind !== 'string') throw new HttpError(400, 'INVALID_ARGUMENT', 'kind must be a string');
    if (body.runAt !== undefined) {
      const d = new Date(body.runAt as string);
      if (typeof body.runAt !== 'string' || Number.isNaN(d.getTime())) throw new HttpError(400, 'INVALID_ARGUMENT', 'runAt must be an ISO 8601 time');
      body.runAt = d;
    }
    const [r] = await queue.enqueueMany([body as unknown as EnqueueItem]);
    sendJson(res, r.inserted ? 201 : 200, r);
  }, { action: 'publish', resource: () => 'jobs' });

  server.router.add('GET', /^\/jobs\/events$/, async (req, res, _params, url, principal) => {
    const only = url.searchParams.get('id');
    // Admitted like every stream (clients, per-token connections, its LISTEN channel against maxChannels).
    const stream = server.openStream(req, res, principal!, { key: 'jobs/events', channels: [queue.channelNames.events] });
    const sub = queue.watch((t) => {
      if (only === null || t.id === only) stream.send('transition', JSON.stringify(t));
    });
    void stream.closed.then(() => sub.close());
    try {
      await sub.established;
    } catch (err) {
      stream.discard();
      await sub.close();
      throw new HttpError(503, 'NOT_LISTENING', `cannot listen: ${(err as Error).message}`);
    }
    stream.ready({ channel: queue.channelNames.events });
  }, { action: 'subscribe', resource: () => 'jobs' });

  // Queue control: admin on resource `jobs`.
  const admin = { action: 'admin', resource: () => 'jobs' } as const;
  const target = (body: Record<string, unknown>) => {
    for (const k of ['queue', 'kind'] as const) {
      if (body[k] !== undefined && typeof body[k] !== 'string') throw new HttpError(400, 'INVALID_ARGUMENT', `${k} must be a string`);
    }
    return { queue: body.queue as string | undefined, kind: body.kind as string | undefined };
  };
  server.router.add('POST', /^\/jobs\/pause$/, async (req, res) => {
    const body = await readJson<Record<string, unknown>>(req, server.options.maxBodyBytes, ['queue', 'kind']);
    sendJson(res, 200, { paused: await queue.pause(target(body)) });
  }, admin);
  server.router.add('POST', /^\/jobs\/resume$/, async (req, res) => {
    const body = await readJson<Record<string, unknown>>(req, server.options.maxBodyBytes, ['queue', 'kind']);
    sendJson(res, 200, { resumed: await queue.resume(target(body)) });
  }, admin);
  server.router.add('GET', /^\/jobs\/controls$/, async (_req, res) => {
    sendJson(res, 200, { paused: await queue.paused(), limits: await queue.limits() });
  }, admin);

  server.router.add('GET', /^\/jobs\/(\d{1,19})$/, async (_req, res, [id]) => {
    const job = await queue.get(id);
    if (!job) throw new HttpError(404, 'NOT_FOUND', `no job ${id}`);
    sendJson(res, 200, job);
  }, { action: 'subscribe', resource: () => 'jobs' });
}
