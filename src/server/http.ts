import type { IncomingMessage, ServerResponse } from 'node:http';
import { HeraldError } from '../errors.js';

/** A JSON error with a stable code. */
export class HttpError extends Error {
  constructor(readonly status: number, readonly code: string, message: string) {
    super(message);
  }
}

export type Handler = (req: IncomingMessage, res: ServerResponse, params: string[], url: URL) => Promise<void> | void;

interface Route {
  method: string;
  pattern: RegExp;
  handler: Handler;
  /** Routes without auth (health probes). */
  open: boolean;
}

/** A tiny router: each part adds its routes; path segments captured by the pattern are URI-decoded. */
export class Router {
  readonly #routes: Route[] = [];
  add(method: string, pattern: RegExp, handler: Handler, options: { open?: boolean } = {}): void {
    this.#routes.push({ method, pattern, handler, open: options.open ?? false });
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
        params = m.slice(1).map((p) => decodeURIComponent(p));
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

/** Sends an error as `{ error: { code, message } }`. */
export function sendError(res: ServerResponse, err: unknown): void {
  if (res.headersSent) {
    res.destroy();
    return;
  }
  if (err instanceof HttpError) return sendJson(res, err.status, { error: { code: err.code, message: err.message } });
  if (err instanceof HeraldError) {
    const status = err.code === 'NOT_FOUND' ? 404 : err.code === 'CONFLICT' ? 409 : err.code === 'PAYLOAD_TOO_LARGE' ? 413 : 400;
    return sendJson(res, status, { error: { code: err.code, message: err.message } });
  }
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
