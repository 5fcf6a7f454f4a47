import type { IncomingMessage, ServerResponse } from 'node:http';
import { isIP, type Socket } from 'node:net';
import { InvalidOptionError } from '../errors.js';
import { DASHBOARD_PATH } from './assets/dashboard.js';
import { HttpError, type Router } from './http.js';

/**
 * What a web page on another site may ask of the server (see docs/server.md, "Security").
 * Part of {@link ServerOptions}.
 */
export interface GuardOptions {
  /**
   * Origins (`https://app.example.com`, scheme + host + port, no path) whose pages may
   * open WebSockets, send writes and read responses (CORS) from another site; an app
   * scheme's origin (`tauri://localhost`) is compared as given. The server's own origin
   * is always allowed. `'*'` allows every origin and is refused
   * without credentials. @defaultValue [] (only the server's own pages)
   */
  allowedOrigins?: string[];
  /**
   * Extra `Host` names (hostnames, any port; `herald.internal`) served besides the
   * loopback names. Without credentials only `localhost`, `127.0.0.1`, `[::1]` and the
   * bound 127.x address with the bound port are served (DNS rebinding); with
   * credentials, setting this turns the same check on. @defaultValue [] (open mode:
   * loopback names only; credentialed mode: any Host)
   */
  allowedHosts?: string[];
}

/** Sent on every response: no MIME sniffing, no framing, nothing loaded by an API response rendered as a page. */
const COMMON_HEADERS: [string, string][] = [
  ['x-content-type-options', 'nosniff'],
  ['x-frame-options', 'DENY'],
  ['content-security-policy', "default-src 'none'; frame-ancestors 'none'"],
  ['referrer-policy', 'no-referrer'],
];

/** Methods that change state: they need a JSON content type and a same-site (or allowed) origin. */
const WRITES = new Set(['POST', 'PUT', 'PATCH', 'DELETE']);

const JSON_TYPE = /^application\/json\s*(;|$)/i;

/** An origin or Host split into a comparable form. */
interface Authority {
  hostname: string;
  port: number | null;
}

/** `Host` header → hostname (lower case, IPv6 in brackets) and port (null when absent). */
export function parseHost(value: string | undefined): Authority | null {
  if (!value) return null;
  const m = /^(\[[0-9a-f:.]+\]|[^:[\]\s/@]+)(?::(\d{1,5}))?$/i.exec(value.trim());
  if (!m) return null;
  const port = m[2] === undefined ? null : Number(m[2]);
  if (port !== null && port > 65535) return null;
  return { hostname: m[1].toLowerCase(), port };
}

/** An app scheme's origin (`tauri://localhost`, `chrome-extension://<id>`): compared as given, in lower case. */
const APP_ORIGIN = /^[a-z][a-z0-9+.-]*:\/\/[^\s/?#]+$/i;

/** A serialized origin (`http://a.example:8080`) in normal form, or null when it is not one. */
export function normalizeOrigin(value: string): string | null {
  try {
    const u = new URL(value);
    if (u.protocol !== 'http:' && u.protocol !== 'https:') return null;
    if (u.origin !== value.toLowerCase().replace(/\/$/, '')) return null;
    return u.origin;
  } catch {
    return null;
  }
}

function pathOf(req: IncomingMessage): string | null {
  try {
    return new URL(req.url ?? '/', 'http://localhost').pathname;
  } catch {
    return null;
  }
}

function isLoopbackName(hostname: string): boolean {
  if (hostname === 'localhost' || hostname === '[::1]') return true;
  return isIP(hostname) === 4 && hostname.startsWith('127.');
}

/**
 * The browser-facing checks every request and upgrade passes before routing:
 *
 * 1. **Host** (DNS rebinding): without credentials only loopback `Host` values with the
 *    port the request came in on are served, else 421 `HOST_NOT_ALLOWED`; with
 *    credentials, the same check when `allowedHosts` is set.
 * 2. **Origin**: a request is cross-site when its `Origin` is neither the server's own
 *    (same host and port as `Host`) nor allowed, or, without `Origin`, when the browser
 *    says so (`Sec-Fetch-Site: cross-site | same-site`). Cross-site requests are refused
 *    403 `ORIGIN_NOT_ALLOWED`, except navigations (`Sec-Fetch-Mode: navigate`, GET/HEAD)
 *    to the dashboard page (it holds no data; a link from elsewhere opens it). No `Origin` and no `Sec-Fetch-Site` (curl, servers, SDKs): served.
 * 3. **Content type**: POST/PUT/PATCH/DELETE to an existing route need
 *    `content-type: application/json` (parameters allowed), else 415
 *    `UNSUPPORTED_MEDIA_TYPE`: a cross-site HTML form or `no-cors` fetch cannot send it.
 * 4. **CORS** only for allowed origins: `Access-Control-Allow-Origin: <that origin>`
 *    (never `*`), and preflights (`OPTIONS` with `Access-Control-Request-Method`)
 *    answered 204.
 *
 * Every response also gets `x-content-type-options: nosniff`, `x-frame-options: DENY`,
 * a CSP `default-src 'none'; frame-ancestors 'none'` (pages set their own) and
 * `referrer-policy: no-referrer`.
 */
export class RequestGuard {
  readonly #origins: Set<string>;
  readonly #anyOrigin: boolean;
  readonly #hosts: Set<string>;
  readonly #checkHost: boolean;
  readonly #boundHost: string;

  constructor(options: GuardOptions, readonly context: { open: boolean; host: string; router: Router }) {
    const origins = options.allowedOrigins ?? [];
    if (!Array.isArray(origins)) throw new InvalidOptionError('allowedOrigins', origins, 'a list of origins such as https://app.example.com');
    this.#origins = new Set();
    origins.forEach((o, i) => {
      if (o === '*') {
        if (context.open) throw new InvalidOptionError(`allowedOrigins[${i}]`, o, "an origin: '*' needs credentials (any page could drive an open server)");
        return;
      }
      const n = typeof o !== 'string' ? null : /^https?:/i.test(o) ? normalizeOrigin(o) : APP_ORIGIN.test(o) ? o.toLowerCase() : null;
      if (!n) throw new InvalidOptionError(`allowedOrigins[${i}]`, o, 'an origin: http(s)://host[:port] (or an app scheme such as tauri://localhost), no path');
      this.#origins.add(n);
    });
    this.#anyOrigin = origins.includes('*');
    const hosts = options.allowedHosts ?? [];
    if (!Array.isArray(hosts)) throw new InvalidOptionError('allowedHosts', hosts, 'a list of hostnames');
    this.#hosts = new Set(
      hosts.map((h, i) => {
        const a = typeof h === 'string' ? parseHost(h) : null;
        if (!a || a.port !== null) throw new InvalidOptionError(`allowedHosts[${i}]`, h, 'a hostname without port (herald.internal, 10.0.0.5, [fd00::1])');
        return a.hostname;
      }),
    );
    this.#checkHost = context.open || this.#hosts.size > 0;
    this.#boundHost = context.host.includes(':') ? `[${context.host.toLowerCase()}]` : context.host.toLowerCase();
  }

  /**
   * Checks an HTTP request and sets the common and CORS headers. Returns true when it
   * answered the request itself (a CORS preflight); throws {@link HttpError} to refuse.
   */
  check(req: IncomingMessage, res: ServerResponse): boolean {
    for (const [k, v] of COMMON_HEADERS) res.setHeader(k, v);
    this.#host(req);
    const method = req.method ?? 'GET';
    const origin = this.#origin(req);
    if (origin.kind === 'allowed') {
      res.setHeader('access-control-allow-origin', origin.value);
      res.setHeader('vary', 'Origin');
      if (method === 'OPTIONS' && req.headers['access-control-request-method'] !== undefined) {
        res.writeHead(204, {
          'access-control-allow-methods': 'GET, HEAD, POST, PUT, PATCH, DELETE',
          'access-control-allow-headers': 'authorization, content-type, last-event-id',
          'access-control-max-age': '600',
          'content-length': 0,
        });
        res.end();
        return true;
      }
    } else if (origin.kind === 'foreign' && !this.#openNavigation(req, method)) {
      throw new HttpError(403, 'ORIGIN_NOT_ALLOWED', `requests from ${origin.value} are not allowed (allowedOrigins / --allowed-origin)`);
    }
    if (WRITES.has(method) && !JSON_TYPE.test(String(req.headers['content-type'] ?? '')) && this.#routeExists(req, method)) {
      throw new HttpError(415, 'UNSUPPORTED_MEDIA_TYPE', `${method} needs content-type: application/json`);
    }
    return false;
  }

  /**
   * Checks a WebSocket upgrade (Host, then Origin: a browser always sends `Origin` on a
   * WebSocket). Returns false after writing a JSON HTTP refusal and closing the socket.
   */
  upgrade(req: IncomingMessage, socket: Socket, onRefused?: (err: HttpError) => void): boolean {
    try {
      this.#host(req);
      const origin = this.#origin(req);
      if (origin.kind === 'foreign') throw new HttpError(403, 'ORIGIN_NOT_ALLOWED', `WebSocket from ${origin.value} is not allowed (allowedOrigins / --allowed-origin)`);
      return true;
    } catch (err) {
      const e = err instanceof HttpError ? err : new HttpError(400, 'BAD_REQUEST', 'malformed upgrade request');
      onRefused?.(e);
      const body = JSON.stringify({ error: { code: e.code, message: e.message } });
      const reason = e.status === 421 ? 'Misdirected Request' : e.status === 403 ? 'Forbidden' : 'Bad Request';
      // Destroyed once written: a client that never closes its side holds nothing.
      socket.end(
        `HTTP/1.1 ${e.status} ${reason}\r\ncontent-type: application/json; charset=utf-8\r\ncontent-length: ${Buffer.byteLength(body)}\r\n` +
          `x-content-type-options: nosniff\r\nconnection: close\r\n\r\n${body}`,
        () => socket.destroy(),
      );
      return false;
    }
  }

  #host(req: IncomingMessage): void {
    if (!this.#checkHost) return;
    const raw = req.headers.host;
    const host = parseHost(raw);
    if (host && this.#hostAllowed(host, req.socket?.localPort)) return;
    throw new HttpError(421, 'HOST_NOT_ALLOWED', `Host ${JSON.stringify((raw ?? '').slice(0, 100))} is not served here (loopback names only, or allowedHosts / --allowed-host)`);
  }

  #hostAllowed(host: Authority, localPort: number | undefined): boolean {
    if (this.#hosts.has(host.hostname)) return true;
    if (!isLoopbackName(host.hostname)) return false;
    // 127.x other than 127.0.0.1 only when it is the bound address.
    const standard = host.hostname === 'localhost' || host.hostname === '127.0.0.1' || host.hostname === '[::1]';
    if (!standard && host.hostname !== this.#boundHost) return false;
    return (host.port ?? 80) === localPort;
  }

  /** Classifies the request's origin: none (not a browser, or same-origin without Origin), same, allowed, foreign. */
  #origin(req: IncomingMessage): { kind: 'none' | 'same' } | { kind: 'allowed' | 'foreign'; value: string } {
    const raw = req.headers.origin;
    if (raw === undefined) {
      const site = req.headers['sec-fetch-site'];
      return site === 'cross-site' || site === 'same-site' ? { kind: 'foreign', value: `a ${site} page` } : { kind: 'none' };
    }
    const origin = normalizeOrigin(raw);
    if (origin !== null && this.#sameOrigin(origin, req.headers.host)) return { kind: 'same' };
    // An app scheme is compared as sent (lower case); "null" (sandboxed frames, file: pages) and garbage never match.
    const key = origin ?? (APP_ORIGIN.test(raw) ? raw.toLowerCase() : null);
    if (key !== null && (this.#anyOrigin || this.#origins.has(key))) return { kind: 'allowed', value: key };
    return { kind: 'foreign', value: key ?? JSON.stringify(raw.slice(0, 100)) };
  }

  /** Same host and port as the `Host` the request was sent to (any scheme: a TLS proxy may sit in front). */
  #sameOrigin(origin: string, hostHeader: string | undefined): boolean {
    const host = parseHost(hostHeader);
    if (!host) return false;
    const u = new URL(origin);
    const defaultPort = u.protocol === 'https:' ? 443 : 80;
    const originPort = u.port === '' ? defaultPort : Number(u.port);
    return u.hostname === host.hostname && originPort === (host.port ?? defaultPort);
  }

  /** A navigation to the dashboard page (top-level or frame; framing is refused by the page's headers). */
  #openNavigation(req: IncomingMessage, method: string): boolean {
    if ((method !== 'GET' && method !== 'HEAD') || req.headers['sec-fetch-mode'] !== 'navigate') return false;
    const path = pathOf(req);
    return path !== null && DASHBOARD_PATH.test(path);
  }

  #routeExists(req: IncomingMessage, method: string): boolean {
    const path = pathOf(req);
    if (path === null) return false;
    try {
      const found = this.context.router.match(method, path);
      return !!found && 'route' in found;
    } catch {
      return false; // malformed percent-encoding: the router answers 400
    }
  }
}
