import type { IncomingMessage, ServerResponse } from 'node:http';
import { HeraldError } from '../errors.js';
import type { Action, Principal } from './auth.js';

/** A JSON error with a stable code. */
export class HttpError extends Error {
  constructor(readonly status: number, readonly code: string, message: string) {
    super(message);
  }
}

/**
 * A route handler. `principal` is who the request authenticated as (for open routes:
 * the anonymous principal when the server has no credentials, else undefined).
 */
export type Handler = (req: IncomingMessage, res: ServerResponse, params: string[], url: URL, principal?: Principal) => Promise<void> | void;

/** How a route is authorized. */
export interface RouteOptions {
  /** No authentication at all (health probes, static assets). @defaultValue false */
  open?: boolean;
  /**
   * The action the route needs. The router authenticates the request and checks the
   * grant before the handler runs (401/403 otherwise). @defaultValue 'admin'
   */
  action?: Action;
  /** The resource the action applies to, from the decoded path params and URL. @defaultValue () => '*' */
  resource?: (params: string[], url: URL) => string;
}

/** A registered route. */
export interface Route {
  method: string;
  pattern: RegExp;
  handler: Handler;
  open: boolean;
  action: Action;
  resource: (params: string[], url: URL) => string;
}

const ANY = () => '*';

/**
 * A tiny router: each part adds its routes; path segments captured by the pattern are
 * URI-decoded. Every route is authorized by the server before its handler runs: a
 * route declares its `action` and `resource` (default: `admin` on `*`), or `open`.
 *
 * @example
 * server.router.add('POST', /^\/queues\/([^/]+)\/jobs$/, handler, { action: 'publish', resource: ([q]) => `queue/${q}` });
 */
export class Router {
  readonly #routes: Route[] = [];
  add(method: string, pattern: RegExp, handler: Handler, options: RouteOptions = {}): void {
    this.#routes.push({
      method,
      pattern,
      handler,
      open: options.open ?? false,
      action: options.action ?? 'admin',
      resource: options.resource ?? ANY,
    });
  }
  match(method: string, path: string): { route: Route; params: string[] } | { allowed: string[] } | undefined {
    const allowed: string[] = [];
    for (const route of this.#routes) {
      const m = route.pattern.exec(path);
      if (!m) continue;
      if (route.method !== method && !(method === 'HEAD' && route.method === 'GET')) {
        allowed.push(route.method);
        continue;
      }
      let params: string[];
      try {
        params = m.slice(1).map((p) => (p === undefined ? '' : decodeURIComponent(p)));
      } catch {
        throw new HttpError(400, 'BAD_PATH', 'malformed percent-encoding in path');
      }
      return { route, params };
    }
    return allowed.length ? { allowed } : undefined;
  }
}

/** Sends a JSON body. */
export function sendJson(res: ServerResponse, status: number, body: unknown): void {
  const text = JSON.stringify(body);
  res.writeHead(status, { 'content-type': 'application/json; charset=utf-8', 'content-length': Buffer.byteLength(text), 'cache-control': 'no-store' });
  res.end(text);
}

/** Sends a text body with a content type. */
export function sendText(res: ServerResponse, status: number, contentType: string, body: string): void {
  res.writeHead(status, { 'content-type': contentType, 'content-length': Buffer.byteLength(body), 'cache-control': 'no-cache' });
  res.end(body);
}

/** The HTTP status of an error (HttpError's own; HeraldError codes mapped; else 500). */
export function statusOf(err: unknown): number {
  if (err instanceof HttpError) return err.status;
  // NOTIFY_QUEUE_FULL: the server cannot queue a notification now (a stalled listener); retry later.
  if (err instanceof HeraldError && err.code === 'NOTIFY_QUEUE_FULL') return 503;
  if (err instanceof HeraldError) return err.code === 'NOT_FOUND' ? 404 : err.code === 'CONFLICT' ? 409 : err.code === 'PAYLOAD_TOO_LARGE' ? 413 : 400;
  return 500;
}

/** Sends an error as `{ error: { code, message } }`. */
export function sendError(res: ServerResponse, err: unknown): void {
  if (res.headersSent) {
    res.destroy();
    return;
  }
  if (err instanceof HttpError) {
    if (err.status === 401) res.setHeader('www-authenticate', 'Bearer');
    return sendJson(res, err.status, { error: { code: err.code, message: err.message } });
  }
  if (err instanceof HeraldError) return sendJson(res, statusOf(err), { error: { code: err.code, message: err.message } });
  sendJson(res, 500, { error: { code: 'INTERNAL', message: 'internal error' } });
}

/** Reads a body up to `limitBytes`; a larger one is a 413 before it is all buffered. */
export async function readBody(req: IncomingMessage, limitBytes: number): Promise<Buffer> {
  const declared = Number(req.headers['content-length'] ?? 0);
  if (declared > limitBytes) throw new HttpError(413, 'BODY_TOO_LARGE', `body over ${limitBytes} bytes`);
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of req) {
    size += (chunk as Buffer).length;
    if (size > limitBytes) throw new HttpError(413, 'BODY_TOO_LARGE', `body over ${limitBytes} bytes`);
    chunks.push(chunk as Buffer);
  }
  return Buffer.concat(chunks);
}

/** Reads a JSON object body, rejecting keys outside `allowed`. */
export async function readJson<T extends Record<string, unknown>>(req: IncomingMessage, limitBytes: number, allowed?: readonly string[]): Promise<T> {
  const body = await readBody(req, limitBytes);
  let value: unknown;
  try {
    value = JSON.parse(body.toString('utf8'));
  } catch {
    throw new HttpError(400, 'INVALID_JSON', 'body is not valid JSON');
  }
  if (value === null || typeof value !== 'object' || Array.isArray(value)) throw new HttpError(400, 'INVALID_BODY', 'body must be a JSON object');
  if (allowed) {
    const unknown = Object.keys(value).filter((k) => !allowed.includes(k));
    if (unknown.length) throw new HttpError(400, 'UNKNOWN_FIELD', `unknown field(s): ${unknown.join(', ')}`);
  }
  return value as T;
}
