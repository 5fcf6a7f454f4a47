import { HeraldError } from '../../errors.js';
import { HttpError, readJson, sendJson } from '../http.js';
import type { HeraldServer } from '../server.js';

/**
 * Outbox and row-change routes:
 * - `GET /outbox` backlog counters;
 * - `GET /outbox/dead?limit=n` dead letters;
 * - `POST /outbox/redrive` `{ "ids": [...] }` or `{ "all": true }`;
 * - `GET /changes/<table>/events` SSE stream of a tracked table's changes (`change` events).
 * Grants: `admin` on `outbox`; `subscribe` on `changes/<table>`.
 */
export function registerOutboxRoutes(server: HeraldServer): void {
  const { herald, router } = server;

  const admin = { action: 'admin', resource: () => 'outbox' } as const;

  router.add('GET', /^\/outbox$/, async (_req, res) => {
    sendJson(res, 200, await herald.outbox.stats());
  }, admin);

  router.add('GET', /^\/outbox\/dead$/, async (_req, res, _params, url) => {
    const raw = url.searchParams.get('limit') ?? '100';
    const limit = Number(raw);
    if (!Number.isInteger(limit) || limit < 1 || limit > 10_000) throw new HttpError(400, 'INVALID_ARGUMENT', 'limit must be an integer from 1 to 10000');
    sendJson(res, 200, { events: await herald.outbox.dead({ limit }) });
  }, admin);

  router.add('POST', /^\/outbox\/redrive$/, async (req, res) => {
    const body = await readJson<{ ids?: unknown; all?: unknown }>(req, server.options.maxBodyBytes, ['ids', 'all']);
    if ((body.all === true) === (body.ids !== undefined)) throw new HttpError(400, 'INVALID_BODY', 'give "ids" (an array of event ids) or "all": true');
    if (body.ids !== undefined && (!Array.isArray(body.ids) || body.ids.some((i) => typeof i !== 'string'))) {
      throw new HttpError(400, 'INVALID_BODY', '"ids" must be an array of event ids');
    }
    try {
      const redriven = await herald.outbox.redrive(body.all === true ? {} : { ids: body.ids as string[] });
      sendJson(res, 200, { redriven });
    } catch (err) {
      if (err instanceof HeraldError && err.code === 'INVALID_OPTION') throw new HttpError(400, 'INVALID_BODY', err.message);
      throw err;
    }
  }, admin);

  router.add('GET', /^\/changes\/([^/]+)\/events$/, async (req, res, [table], _url, principal) => {
    let channel: string;
    try {
      channel = herald.changes.channelFor(table);
    } catch (err) {
      if (err instanceof HeraldError) throw new HttpError(400, err.code, err.message);
      throw err;
    }
    // Admitted like every stream: clients, per-token connections, and this table's channel against maxChannels.
    const stream = server.openStream(req, res, principal!, { key: `changes/${table}`, channels: [channel] });
    const sub = herald.notifier.listen(channel);
    try {
      await sub.established;
    } catch (err) {
      stream.discard();
      await sub.close();
      throw new HttpError(503, 'NOT_LISTENING', `cannot listen: ${(err as Error).message}`);
    }
    void stream.closed.then(() => sub.close());
    stream.ready({ table });
    for await (const n of sub) {
      if (!stream.send('change', n.payload)) break;
    }
    stream.close('subscription ended');
  }, { action: 'subscribe', resource: ([table]) => `changes/${table}` });
}
