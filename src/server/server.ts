import { timingSafeEqual } from 'node:crypto';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import { isIP } from 'node:net';
import type { Herald } from '../client.js';
import { HeraldError, InvalidOptionError } from '../errors.js';
import { HttpError, readJson, Router, sendError, sendJson } from './http.js';
import { SseStream, type SseLimits } from './sse.js';
import { registerJobsRoutes } from './routes/jobs.js';

/** Options of {@link HeraldServer}. */
export interface ServerOptions {
  /** Address to bind. A non-loopback address requires `token`. @defaultValue '127.0.0.1' */
  host?: string;
  /** Port; 0 picks a free one. @defaultValue 8080 */
  port?: number;
  /**
   * Access token required from every client (except /health): `Authorization: Bearer <token>`
   * or `?access_token=<token>` (EventSource cannot set headers). @defaultValue none (loopback only)
   */
  token?: string;
  /** Largest accepted request body. @defaultValue 1048576 */
  maxBodyBytes?: number;
  /** Bytes an SSE client may leave unread before it is disconnected. @defaultValue 1048576 */
  sseMaxBufferedBytes?: number;
  /** SSE keep-alive comment interval. @defaultValue 15000 */
  sseHeartbeatMs?: number;
  /** Notifications buffered per SSE subscription before drops. @defaultValue 1000 */
  sseSubscriberBufferSize?: number;
  /** Concurrent streaming clients. @defaultValue 10000 */
  maxClients?: number;
}

const LOOPBACK = new Set(['127.0.0.1', '::1', 'localhost']);

/** Loopback addresses (127.0.0.0/8, ::1, localhost). */
export function isLoopback(host: string): boolean {
  return LOOPBACK.has(host) || (isIP(host) === 4 && host.startsWith('127.'));
}

/**
 * The HTTP server of `herald serve`: health, and a live SSE stream of any channel
 * (`GET /channels/<name>/events`), all on the Herald's one listen connection.
 */
export class HeraldServer {
  readonly router = new Router();
  readonly options: Required<Omit<ServerOptions, 'token'>> & { token?: string };
  readonly #http: Server;
  readonly #streams = new Set<SseStream>();
  #url: string | undefined;

  constructor(readonly herald: Herald, options: ServerOptions = {}) {
    this.options = {
      host: options.host ?? '127.0.0.1',
      port: options.port ?? 8080,
      token: options.token || undefined,
      maxBodyBytes: options.maxBodyBytes ?? 1024 * 1024,
      sseMaxBufferedBytes: options.sseMaxBufferedBytes ?? 1024 * 1024,
      sseHeartbeatMs: options.sseHeartbeatMs ?? 15_000,
      sseSubscriberBufferSize: options.sseSubscriberBufferSize ?? 1000,
      maxClients: options.maxClients ?? 10_000,
    };
    if (!isLoopback(this.options.host) && !this.options.token) {
      throw new InvalidOptionError('host', this.options.host, 'a loopback address unless an access token is configured (--token or HERALD_TOKEN)');
    }
    if (!Number.isInteger(this.options.port) || this.options.port < 0 || this.options.port > 65535) {
      throw new InvalidOptionError('port', this.options.port, 'an integer between 0 and 65535');
    }
    this.#http = createServer((req, res) => void this.#handle(req, res));
    this.#http.keepAliveTimeout = 5000;
    this.#routes();
  }

  /** The base URL once listening. */
  get url(): string {
    if (!this.#url) throw new HeraldError('NOT_STARTED', 'server is not listening');
    return this.#url;
  }

  /** Streaming clients connected now. */
  get clients(): number {
    return this.#streams.size;
  }

  /** Starts listening; resolves with the base URL. */
  async start(): Promise<string> {
    await new Promise<void>((resolve, reject) => {
      this.#http.once('error', reject);
      this.#http.listen(this.options.port, this.options.host, () => resolve());
    });
    const addr = this.#http.address() as { port: number };
    const host = this.options.host.includes(':') ? `[${this.options.host}]` : this.options.host;
    this.#url = `http://${host}:${addr.port}`;
    return this.#url;
  }

  /** Closes every stream and the listening socket. Idempotent. */
  async stop(): Promise<void> {
    for (const s of this.#streams) s.close('server shutting down');
    this.#streams.clear();
    if (!this.#http.listening) return;
    await new Promise<void>((resolve) => {
      this.#http.close(() => resolve());
      this.#http.closeAllConnections();
    });
  }

  /** Opens an SSE stream for a request (used by every streaming route). */
  openStream(req: IncomingMessage, res: ServerResponse): SseStream {
    if (this.#streams.size >= this.options.maxClients) throw new HttpError(503, 'TOO_MANY_CLIENTS', 'client limit reached');
    const limits: SseLimits = { maxBufferedBytes: this.options.sseMaxBufferedBytes, heartbeatMs: this.options.sseHeartbeatMs };
    const stream = new SseStream(req, res, limits);
    this.#streams.add(stream);
    void stream.closed.then(() => this.#streams.delete(stream));
    return stream;
  }

  #routes(): void {
    this.router.add(
      'GET',
      /^\/health$/,
      async (_req, res) => {
        let database = 'ok';
        try {
          await this.herald.driver.executor.query('SELECT 1');
        } catch {
          database = 'unreachable';
        }
        const notifier = this.herald.notifier.status;
        const ok = database === 'ok' && notifier !== 'failed';
        sendJson(res, ok ? 200 : 503, { status: ok ? 'ok' : 'degraded', database, notifier, clients: this.#streams.size });
      },
      { open: true },
    );

    this.#notifyRoute();
    registerJobsRoutes(this);
    this.router.add('GET', /^\/channels\/([^/]+)\/events$/, async (req, res, [channel]) => {
      const sub = this.herald.listen(channel, { bufferSize: this.options.sseSubscriberBufferSize });
      try {
        await sub.established;
      } catch (err) {
        await sub.close();
        throw err;
      }
      const stream = this.openStream(req, res);
      stream.send('ready', JSON.stringify({ channel }));
      void stream.closed.then(() => sub.close());
      for await (const n of sub) {
        if (!stream.send('notification', n.payload)) break;
      }
      stream.close('subscription ended');
    });
  }

  #notifyRoute(): void {
    this.router.add('POST', /^\/channels\/([^/]+)\/notify$/, async (req, res, [channel]) => {
      const body = await readJson<{ payload?: unknown }>(req, this.options.maxBodyBytes, ['payload']);
      const payload = body.payload ?? '';
      if (typeof payload !== 'string') throw new HttpError(400, 'INVALID_PAYLOAD', 'payload must be a string');
      await this.herald.notify(channel, payload);
      sendJson(res, 202, { channel, sent: true });
    });
  }

  #authorized(req: IncomingMessage, url: URL): boolean {
    const token = this.options.token;
    if (!token) return true;
    const header = req.headers.authorization;
    const given = header?.startsWith('Bearer ') ? header.slice(7) : url.searchParams.get('access_token') ?? '';
    const a = Buffer.from(given);
    const b = Buffer.from(token);
    return a.length === b.length && timingSafeEqual(a, b);
  }

  async #handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    try {
      const url = new URL(req.url ?? '/', 'http://localhost');
      const found = this.router.match(req.method ?? 'GET', url.pathname);
      if (!found) throw new HttpError(404, 'NOT_FOUND', `no route for ${url.pathname}`);
      if ('allowed' in found) {
        res.setHeader('allow', found.allowed.join(', '));
        throw new HttpError(405, 'METHOD_NOT_ALLOWED', `use ${found.allowed.join(' or ')}`);
      }
      if (!found.route.open && !this.#authorized(req, url)) {
        res.setHeader('www-authenticate', 'Bearer');
        throw new HttpError(401, 'UNAUTHORIZED', 'missing or wrong access token');
      }
      await found.route.handler(req, res, found.params, url);
    } catch (err) {
      sendError(res, err);
    }
  }
}
