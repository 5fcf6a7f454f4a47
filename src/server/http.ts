import type { IncomingMessage, ServerResponse } from 'node:http';
import { HeraldError } from '../errors.js';
import { jsonHasNul } from '../internal/validate.js';
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

/** Deepest nesting of arrays and objects accepted in a JSON request body (400 `INVALID_JSON` past it). */
export const MAX_JSON_DEPTH = 64;

/**
 * Longest name a URL path segment may carry once decoded (UTF-8 bytes): 400
 * `INVALID_NAME` past it. A backstop over every part's own, smaller, limit.
 */
export const MAX_PATH_NAME_BYTES = 1024;

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
      for (const p of params) {
        if (p.includes('\0')) throw new HttpError(400, 'BAD_PATH', 'a name in the path holds a NUL character');
        if (Buffer.byteLength(p) > MAX_PATH_NAME_BYTES) throw new HttpError(400, 'INVALID_NAME', `a name in the path is longer than ${MAX_PATH_NAME_BYTES} bytes`);
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

/** HeraldError codes that are the server's trouble, not the client's (503). */
const UNAVAILABLE = new Set(['CONNECTION', 'TIMEOUT', 'STOPPED', 'NOT_STARTED', 'LISTEN_NOT_SESSION', 'MIGRATION']);

/**
 * The SQLSTATE of a Postgres error (on the error or its `cause`) when it is of class 22
 * (data exception: a value out of range, malformed, or with a character the encoding
 * refuses): the client sent a value the database cannot take.
 */
function dataException(err: unknown): string | undefined {
  for (let e = err, i = 0; e && typeof e === 'object' && i < 3; e = (e as { cause?: unknown }).cause, i++) {
    const code = (e as { code?: unknown }).code;
    if (typeof code === 'string' && /^22[0-9A-Z]{3}$/.test(code)) return code;
  }
  return undefined;
}

/**
 * The HTTP status of an error: HttpError's own; HeraldError codes mapped (404, 409,
 * 413, 503 for the server's own trouble, else 400); a Postgres data exception (SQLSTATE
 * class 22) is 400; anything else 500.
 */
export function statusOf(err: unknown): number {
  if (err instanceof HttpError) return err.status;
  if (err instanceof HeraldError) {
    // NOTIFY_QUEUE_FULL: the server cannot queue a notification now (a stalled listener); retry later.
    if (UNAVAILABLE.has(err.code) || err.code === 'NOTIFY_QUEUE_FULL') return 503;
    return err.code === 'NOT_FOUND' ? 404 : err.code === 'CONFLICT' ? 409 : err.code === 'PAYLOAD_TOO_LARGE' ? 413 : 400;
  }
  if (dataException(err)) return 400;
  return 500;
}

/**
 * What a client is told about an error: our own code and message, never a driver's or
 * Postgres' text (a data exception becomes `INVALID_ARGUMENT`; anything unexpected
 * `INTERNAL`, with the request id when there is one).
 */
export function publicError(err: unknown, requestId?: string): { status: number; code: string; message: string; requestId?: string } {
  const status = statusOf(err);
  if (err instanceof HttpError || err instanceof HeraldError) return { status, code: err.code, message: err.message };
  if (status === 400) return { status, code: 'INVALID_ARGUMENT', message: 'a value is out of range or malformed for the database' };
  return { status, code: 'INTERNAL', message: requestId ? `internal error (request ${requestId})` : 'internal error', requestId };
}

/**
 * Sends an error as `{ error: { code, message } }` (plus `requestId` for a 5xx). A
 * request whose body was not read to the end gets `connection: close`, so a refused
 * upload is not drained.
 */
export function sendError(res: ServerResponse, err: unknown, requestId?: string): void {
  if (res.headersSent) {
    res.destroy();
    return;
  }
  const e = publicError(err, requestId);
  if (e.status === 401) res.setHeader('www-authenticate', 'Bearer');
  if (res.req && !res.req.complete) res.setHeader('connection', 'close');
  const body: { code: string; message: string; requestId?: string } = { code: e.code, message: e.message };
  if (e.status >= 500 && requestId) body.requestId = requestId;
  sendJson(res, e.status, { error: body });
}

/** Nesting depth of a JSON text (arrays and objects), scanning at most until it passes `max`. */
export function jsonDepthOver(text: string, max: number): boolean {
  let depth = 0;
  let inString = false;
  for (let i = 0; i < text.length; i++) {
    const c = text.charCodeAt(i);
    if (inString) {
      if (c === 92) i++; // backslash: skip the escaped character
      else if (c === 34) inString = false;
    } else if (c === 34) inString = true;
    else if (c === 91 || c === 123) {
      if (++depth > max) return true;
    } else if (c === 93 || c === 125) depth--;
  }
  return false;
}

/** Whether a parsed JSON value holds a NUL in any string or key (to depth {@link MAX_JSON_DEPTH}). */
function fieldWithNul(value: unknown, depth = 0): boolean {
  if (typeof value === 'string') return value.includes('\0');
  if (value === null || typeof value !== 'object' || depth > MAX_JSON_DEPTH) return false;
  for (const [k, v] of Object.entries(value)) if (k.includes('\0') || fieldWithNul(v, depth + 1)) return true;
  return false;
}

/** Reads a body up to `limitBytes`; a larger one is a 413 before it is all buffered. */
export async function readBody(req: IncomingMessage, limitBytes: number): Promise<Buffer> {
  const declared = Number(req.headers['content-length'] ?? 0);
  if (!(declared <= limitBytes)) throw new HttpError(413, 'BODY_TOO_LARGE', `body over ${limitBytes} bytes`);
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
  return parseJsonObject<T>((await readBody(req, limitBytes)).toString('utf8'), allowed);
}

/** The checks of {@link readJson} on a body already read: a JSON object, not too deep, only `allowed` fields, no NUL. */
export function parseJsonObject<T extends Record<string, unknown>>(text: string, allowed?: readonly string[]): T {
  // Depth first, on the text: parsing a megabyte of '[' takes seconds.
  if (jsonDepthOver(text, MAX_JSON_DEPTH)) throw new HttpError(400, 'INVALID_JSON', `JSON nested deeper than ${MAX_JSON_DEPTH} levels`);
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch {
    throw new HttpError(400, 'INVALID_JSON', 'body is not valid JSON');
  }
  if (value === null || typeof value !== 'object' || Array.isArray(value)) throw new HttpError(400, 'INVALID_BODY', 'body must be a JSON object');
  if (allowed) {
    const unknown = Object.keys(value).filter((k) => !allowed.includes(k));
    if (unknown.length) throw new HttpError(400, 'UNKNOWN_FIELD', `unknown field(s): ${unknown.join(', ').slice(0, 200)}`);
  }
  // A NUL can only arrive as the escape \u0000 (raw control characters are not JSON).
  // Postgres text and jsonb cannot hold it: refuse it here, naming the field.
  if (jsonHasNul(text)) {
    for (const [k, v] of Object.entries(value)) {
      if (k.includes('\0') || fieldWithNul(v)) {
        throw new HttpError(400, k === 'payload' ? 'INVALID_PAYLOAD' : 'INVALID_ARGUMENT', `${k === 'payload' ? 'payload' : `field ${JSON.stringify(k)}`} holds a NUL character (\\u0000)`);
      }
    }
  }
  return value as T;
}

/** `text` cut to at most `maxBytes` UTF-8 bytes, never inside a character (WebSocket close reasons: 123 bytes). */
export function truncateUtf8(text: string, maxBytes: number): string {
  if (Buffer.byteLength(text) <= maxBytes) return text;
  let out = Buffer.from(text).subarray(0, maxBytes).toString('utf8');
  // A cut character decodes as U+FFFD (3 bytes): drop it until the text fits.
  while (Buffer.byteLength(out) > maxBytes) out = out.slice(0, -1);
  return out;
}
