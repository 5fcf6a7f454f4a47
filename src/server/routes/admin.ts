import type { JobState } from '../../queue/types.js';
import { HttpError, readJson, sendJson } from '../http.js';
import type { Principal } from '../auth.js';
import type { HeraldServer } from '../server.js';

const JOB_STATES: readonly JobState[] = ['waiting', 'available', 'running', 'completed', 'dead', 'cancelled'];
const JOB_ID = /^\d{1,19}$/;
const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;
/** Most ids one bulk action takes. */
export const BULK_MAX_IDS = 1000;
/** Largest page of a dashboard list. */
export const LIST_PAGE_MAX = 500;

function limitOf(url: URL, fallback = 50): number {
  const v = url.searchParams.get('limit');
  if (v === null || v === '') return fallback;
  const n = Number(v);
  if (!Number.isInteger(n) || n < 1 || n > LIST_PAGE_MAX) throw new HttpError(400, 'INVALID_ARGUMENT', `limit must be an integer from 1 to ${LIST_PAGE_MAX}`);
  return n;
}

function timeOf(url: URL, key: string): Date | undefined {
  const v = url.searchParams.get(key);
  if (v === null || v === '') return undefined;
  const d = new Date(v);
  if (Number.isNaN(d.getTime())) throw new HttpError(400, 'INVALID_ARGUMENT', `${key} must be an ISO 8601 time`);
  return d;
}

function param(url: URL, key: string): string | undefined {
  const v = url.searchParams.get(key);
  return v === null || v === '' ? undefined : v;
}

function idsOf(body: Record<string, unknown>, check: RegExp, what: string): string[] {
  const ids = body.ids;
  if (!Array.isArray(ids) || ids.length === 0 || ids.length > BULK_MAX_IDS || ids.some((id) => typeof id !== 'string' || !check.test(id))) {
    throw new HttpError(400, 'INVALID_ARGUMENT', `ids must be an array of 1 to ${BULK_MAX_IDS} ${what}`);
  }
  return ids as string[];
}

/**
 * The dashboard's admin API, under `/api/` (every route needs `admin` on `dashboard`,
 * like `/api/dashboard`): the charts' series, detail reads of a job, a mailbox message,
 * an outbox event and a topic group, the job list with filters and keyset paging, and
 * the control actions — bulk retry and cancel of jobs, redrive of dead mailbox messages
 * and outbox events, reset of a topic group — each recorded in the audit log
 * (`server.audit`, event `dashboard:audit`).
 */
export function registerAdminRoutes(server: HeraldServer): void {
  const { router, herald } = server;
  const admin = { action: 'admin' as const, resource: () => 'dashboard' };
  const who = (p: Principal | undefined) => p?.id ?? 'anonymous';
  const body = (req: Parameters<typeof readJson>[0], keys: string[]) => readJson<Record<string, unknown>>(req, server.options.maxBodyBytes, keys);
  /** Runs an action through the audit log; the panels' next read goes to the database. */
  const audited = async <T>(principal: Principal | undefined, action: string, target: unknown, fn: () => Promise<T>): Promise<T> => {
    try {
      return await server.audit.record(who(principal), action, target, fn);
    } finally {
      server.dashboard.invalidate();
    }
  };

  router.add('GET', /^\/api\/dashboard\/series$/, (_req, res) => sendJson(res, 200, server.series.columns()), admin);
  router.add('GET', /^\/api\/dashboard\/audit$/, (_req, res, _p, url) => sendJson(res, 200, server.audit.entries().slice(0, limitOf(url, 100))), admin);
  // What the page needs to know about the token it holds (controls are shown to admins only;
  // every route here needs admin, so reaching this says so).
  router.add('GET', /^\/api\/dashboard\/whoami$/, (_req, res, _p, _u, principal) => sendJson(res, 200, { principal: who(principal), admin: true, queuePause: typeof (herald.queue as { pause?: unknown }).pause === 'function' }), admin);

  // Jobs: newest first, filters, search by id or unique key, keyset paging (beforeId).
  router.add('GET', /^\/api\/jobs$/, async (_req, res, _p, url) => {
    const limit = limitOf(url);
    const q = param(url, 'q');
    if (q !== undefined) {
      const byId = JOB_ID.test(q) ? await herald.queue.get(q) : undefined;
      const jobs = byId ? [byId] : await herald.queue.list({ uniqueKey: q, limit });
      sendJson(res, 200, { jobs, nextBeforeId: null });
      return;
    }
    const state = param(url, 'state') as JobState | undefined;
    if (state !== undefined && !JOB_STATES.includes(state)) throw new HttpError(400, 'INVALID_ARGUMENT', `state must be one of ${JOB_STATES.join(', ')}`);
    const beforeId = param(url, 'beforeId');
    if (beforeId !== undefined && !JOB_ID.test(beforeId)) throw new HttpError(400, 'INVALID_ARGUMENT', 'beforeId must be a job id');
    const jobs = await herald.queue.list({
      state,
      queue: param(url, 'queue'),
      kind: param(url, 'kind'),
      createdAfter: timeOf(url, 'from'),
      createdBefore: timeOf(url, 'to'),
      beforeId,
      limit,
    });
    sendJson(res, 200, { jobs, nextBeforeId: jobs.length === limit ? jobs[jobs.length - 1].id : null });
  }, admin);

  router.add('GET', /^\/api\/jobs\/(\d{1,19})$/, async (_req, res, [id]) => {
    const job = await herald.queue.get(id);
    if (!job) throw new HttpError(404, 'NOT_FOUND', `no job ${id}`);
    sendJson(res, 200, job);
  }, admin);

  router.add('POST', /^\/api\/jobs\/actions\/(retry|cancel)$/, async (req, res, [action], _u, principal) => {
    const ids = idsOf(await body(req, ['ids']), JOB_ID, 'job ids');
    const done = await audited(principal, `job.${action}`, ids, async () => {
      const changed = action === 'retry' ? await herald.queue.retry(ids) : await herald.queue.cancel(ids);
      return { [action === 'retry' ? 'retried' : 'cancelled']: changed };
    });
    sendJson(res, 200, done);
  }, admin);

  // Mailbox: one message; dead letters of a destination; redrive.
  router.add('GET', /^\/api\/mailbox\/messages\/([^/]+)$/, async (_req, res, [id]) => {
    const m = await herald.mailbox.get(id);
    if (!m) throw new HttpError(404, 'NOT_FOUND', `no message ${id}`);
    sendJson(res, 200, m);
  }, admin);
  router.add('GET', /^\/api\/mailbox\/([^/]+)\/dead$/, async (_req, res, [to], url) => {
    sendJson(res, 200, await herald.mailbox.deadLetters(to, { limit: limitOf(url) }));
  }, admin);
  router.add('POST', /^\/api\/mailbox\/([^/]+)\/redrive$/, async (req, res, [to], _u, principal) => {
    const b = await body(req, ['ids', 'all']);
    if (b.all !== true && b.ids === undefined) throw new HttpError(400, 'INVALID_ARGUMENT', 'give ids, or all: true');
    const ids = b.all === true ? undefined : idsOf(b, /^[^\0]{1,1024}$/, 'message ids');
    const done = await audited(principal, 'mailbox.redrive', { to, ids: ids ?? 'all' }, async () => ({ redriven: await herald.mailbox.redrive(to, ids ? { ids } : {}) }));
    sendJson(res, 200, done);
  }, admin);

  // Outbox: one event; redrive.
  router.add('GET', /^\/api\/outbox\/events\/([^/]+)$/, async (_req, res, [id]) => {
    if (!UUID.test(id)) throw new HttpError(400, 'INVALID_ARGUMENT', 'an outbox event id is a UUID');
    const e = await herald.outbox.get(id);
    if (!e) throw new HttpError(404, 'NOT_FOUND', `no event ${id}`);
    sendJson(res, 200, e);
  }, admin);
  router.add('POST', /^\/api\/outbox\/redrive$/, async (req, res, _p, _u, principal) => {
    const b = await body(req, ['ids', 'all']);
    if (b.all !== true && b.ids === undefined) throw new HttpError(400, 'INVALID_ARGUMENT', 'give ids, or all: true');
    const ids = b.all === true ? undefined : idsOf(b, UUID, 'event ids (UUIDs)');
    const done = await audited(principal, 'outbox.redrive', ids ?? 'all', async () => ({ redriven: await herald.outbox.redrive(ids ? { ids } : {}) }));
    sendJson(res, 200, done);
  }, admin);

  // Topics: every topic with its groups; one group with its partitions; reset.
  router.add('GET', /^\/api\/topics$/, async (_req, res) => {
    const out = [];
    for (const name of await herald.topics.list()) {
      const s = await herald.topics.stats(name).catch(() => null);
      if (s) out.push({ name, partitions: s.partitions, messages: s.messages, bytes: s.bytes, newestAt: s.newestAt, groups: s.groups.map((g) => ({ name: g.name, lag: g.lag })) });
    }
    sendJson(res, 200, out);
  }, admin);
  router.add('GET', /^\/api\/topics\/([^/]+)\/groups\/([^/]+)$/, async (_req, res, [topic, group]) => {
    const s = await herald.topics.stats(topic);
    const g = s.groups.find((x) => x.name === group);
    if (!g) throw new HttpError(404, 'NOT_FOUND', `no group ${group} on topic ${topic}`);
    sendJson(res, 200, { topic, group, lag: g.lag, partitions: g.partitions, topicMessages: s.messages, newestAt: s.newestAt });
  }, admin);
  router.add('POST', /^\/api\/topics\/([^/]+)\/groups\/([^/]+)\/reset$/, async (req, res, [topic, group], _u, principal) => {
    const b = await body(req, ['to']);
    let to: 'earliest' | 'latest' | Date;
    if (b.to === 'earliest' || b.to === 'latest') to = b.to;
    else if (typeof b.to === 'string' && !Number.isNaN(new Date(b.to).getTime())) to = new Date(b.to);
    else throw new HttpError(400, 'INVALID_ARGUMENT', 'to must be "earliest", "latest" or an ISO 8601 time');
    const done = await audited(principal, 'group.reset', { topic, group, to: b.to }, async () => {
      const moved = await herald.topics.resetGroup(topic, group, to);
      if (moved === 0) throw new HttpError(404, 'NOT_FOUND', `no group ${group} on topic ${topic}`);
      return { moved };
    });
    sendJson(res, 200, done);
  }, admin);

  // Queue pause/resume are the `queues` panel's row actions (panels.ts): they go through
  // POST /api/dashboard/panels/queues/actions/(pause|resume), audited as panel.queues.*.
}
