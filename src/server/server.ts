import { randomBytes } from 'node:crypto';
import { createServer, STATUS_CODES, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import { isIP, type Socket } from 'node:net';
import type { WebSocketServer } from 'ws';
import type { Herald } from '../client.js';
import { HeraldError, InvalidOptionError } from '../errors.js';
import { loadPeer, requirePeers } from '../internal/peer.js';
import { boolean, integerBetween, numberBetween, positiveInteger, positiveNumber, resolveOptions, stringOfBytes } from '../internal/options.js';
import { PAYLOAD_LIMIT_BYTES } from '../notifier/validate.js';
import { assertAllowed, Authenticator, credentialOf, type Action, type ApiKey, type AuthOptions, type Principal } from './auth.js';
import { SseConnection, type Connection } from './connection.js';
import { Dashboard } from './dashboard.js';
import { Gateway } from './gateway.js';
import { RequestGuard, type GuardOptions } from './guard.js';
import { HttpError, Router, sendError, sendJson, statusOf } from './http.js';
import { TokenLimits } from './limits.js';
import { ServerMetrics } from './metrics.js';
import { registerChannelRoutes } from './routes/channels.js';
import { registerSiteRoutes } from './routes/site.js';
import { PartStream } from './sse.js';
import { handleUpgrade } from './ws.js';
import { registerTopicsRoutes } from './routes/topics.js';
import { registerJobsRoutes } from './routes/jobs.js';
import { registerMailboxRoutes } from './routes/mailbox.js';
import { topicStreamSource } from './streams/topics.js';
import { registerOutboxRoutes } from './routes/outbox.js';
import { registerDashboardPanels } from './panels.js';
import { registerAdminRoutes } from './routes/admin.js';
import { SeriesSampler } from './series.js';
import { AuditLog } from './audit.js';

/** Options of {@link HeraldServer}; every one has a default (see {@link SERVER_DEFAULTS}). */
export interface ServerOptions extends AuthOptions, GuardOptions {
  /** Address to bind. A non-loopback address requires credentials (`token`, `apiKeys` or a JWT key). @defaultValue '127.0.0.1' */
  host?: string;
  /** Port; 0 picks a free one. @defaultValue 8080 */
  port?: number;
  /** A single admin API key (the `--token` of `herald serve`): grants `admin` on `*`. @defaultValue none */
  token?: string;
  /** Largest accepted request body. @defaultValue 1048576 */
  maxBodyBytes?: number;
  /** Bytes a streaming client may leave unread (queued + in the socket) before it is disconnected as a slow consumer. @defaultValue 1048576 */
  maxBufferedBytes?: number;
  /** SSE keep-alive comment interval. @defaultValue 15000 */
  sseHeartbeatMs?: number;
  /** Concurrent streaming clients (SSE + WebSocket) in all. @defaultValue 20000 */
  maxClients?: number;
  /** Concurrent streaming connections per token (principal id). @defaultValue 100 */
  maxConnectionsPerToken?: number;
  /** Subscriptions per connection. @defaultValue 100 */
  maxSubscriptionsPerConnection?: number;
  /** Largest publish payload in UTF-8 bytes (at most 7999, Postgres' NOTIFY limit). @defaultValue 7999 */
  maxMessageBytes?: number;
  /** Publishes per second per token (token bucket, burst of the same size). @defaultValue 100 */
  publishPerSecond?: number;
  /** WebSocket messages per second per connection (subscribe, publish, ping...). @defaultValue 50 */
  wsMessagesPerSecond?: number;
  /** Prefix of the Postgres channel behind each topic (`gw.` keeps browser topics in their own namespace). @defaultValue '' */
  channelPrefix?: string;
  /** Distinct topics listened on at once. @defaultValue 1000 */
  maxChannels?: number;
  /** Notifications kept per topic for `Last-Event-ID` resume. @defaultValue 1000 */
  historySize?: number;
  /** Serve /metrics without credentials (for a scraper on a private network). @defaultValue false */
  publicMetrics?: boolean;
  /** Extra wait (ms) so frames for a client are written together; 0 = at the end of the event-loop turn. @defaultValue 0 */
  flushIntervalMs?: number;
  /** The longest the dashboard's panel reads are reused: every open tab shares one read of the database per period. @defaultValue 2000 */
  dashboardRefreshMs?: number;
  /** Time between two samples of the dashboard's charts (one sampler per server, whatever the number of tabs); 0 turns sampling off (the charts stay empty). @defaultValue 5000 */
  dashboardSampleIntervalMs?: number;
  /**
   * How long before each sample its throughput window ends: the completed, dead and
   * started counts of a sample cover the interval ending this long before it, so the
   * work of transactions that were still open at the read (a job's finish time is its
   * transaction's start) is counted by the next sample instead of never. Longer than the
   * completion transactions; the throughput chart is this much behind the others.
   * @defaultValue 5000
   */
  dashboardSampleLagMs?: number;
  /** How far back the charts go: the ring keeps `dashboardSampleRetentionMs / dashboardSampleIntervalMs` samples, in memory. @defaultValue 3600000 (1 hour) */
  dashboardSampleRetentionMs?: number;
  /** Dashboard actions kept in the audit ring (`GET /api/dashboard/audit`; each is also emitted as `dashboard:audit`). @defaultValue 1000 */
  dashboardAuditSize?: number;
  /**
   * `POST /topics/<name>/publish` to a missing durable topic creates it (with the
   * Herald's `topicDefaults`) when the caller holds `create` (or `admin`) on
   * `topic/<name>`. Off: such a publish is 404 `NOT_FOUND`, and topics are created by
   * `PUT /topics/<name>` (or the library / CLI). @defaultValue false
   */
  autoCreateTopics?: boolean;
  /**
   * Open sockets at most (node's `server.maxConnections`): past it a new socket is
   * closed at once, never queued. When the cap is reached, the oldest socket with no
   * request in flight (idle keep-alive, or one that has not sent a whole request yet) is
   * closed to keep a slot free, so a flood of idle sockets cannot lock out `/health`.
   * Keep it above `maxClients` (streams hold their socket). @defaultValue 21000
   */
  maxConnections?: number;
  /** Time a client has to send a request's headers, from the moment its socket opens (408, then closed). @defaultValue 10000 */
  headersTimeoutMs?: number;
  /** Time a client has to send a whole request, body included (408, then closed); at least `headersTimeoutMs`. @defaultValue 30000 */
  requestTimeoutMs?: number;
  /** Longest request target (path and query) in bytes: 414 `URL_TOO_LONG` past it. @defaultValue 8192 */
  maxUrlBytes?: number;
  /** Largest request line plus headers in bytes (node's `maxHeaderSize`): 431 `HEADERS_TOO_LARGE` past it. @defaultValue 16384 */
  maxHeaderBytes?: number;
  /**
   * Called once for each internal error (a 5xx that is not a deliberate refusal) with
   * the request id also sent to the client (`x-request-id`, `error.requestId`).
   * @defaultValue one line on stderr
   */
  onInternalError?: (err: unknown, context: { requestId: string; method: string; path: string }) => void;
}

type Resolved = Required<Omit<ServerOptions, keyof AuthOptions | keyof GuardOptions | 'token' | 'onInternalError'>> & { token?: string };

/** Defaults of {@link ServerOptions}; the option table of docs/server.md is this object. */
export const SERVER_DEFAULTS: Resolved = {
  host: '127.0.0.1',
  port: 8080,
  maxBodyBytes: 1024 * 1024,
  maxBufferedBytes: 1024 * 1024,
  sseHeartbeatMs: 15_000,
  maxClients: 20_000,
  maxConnectionsPerToken: 100,
  maxSubscriptionsPerConnection: 100,
  maxMessageBytes: PAYLOAD_LIMIT_BYTES - 1,
  publishPerSecond: 100,
  wsMessagesPerSecond: 50,
  channelPrefix: '',
  maxChannels: 1000,
  historySize: 1000,
  publicMetrics: false,
  flushIntervalMs: 0,
  dashboardRefreshMs: 2000,
  dashboardSampleIntervalMs: 5000,
  dashboardSampleRetentionMs: 3_600_000,
  dashboardSampleLagMs: 5000,
  dashboardAuditSize: 1000,
  autoCreateTopics: false,
  maxConnections: 21_000,
  headersTimeoutMs: 10_000,
  requestTimeoutMs: 30_000,
  maxUrlBytes: 8192,
  maxHeaderBytes: 16_384,
};

/** How often node checks `headersTimeoutMs` / `requestTimeoutMs` (node's `connectionsCheckingInterval`), at most. */
const TIMEOUT_CHECK_MS = 1000;

const LOOPBACK = new Set(['127.0.0.1', '::1', 'localhost']);

/** Loopback addresses (127.0.0.0/8, ::1, localhost). */
export function isLoopback(host: string): boolean {
  return LOOPBACK.has(host) || (isIP(host) === 4 && host.startsWith('127.'));
}

function resolveServerOptions(options: ServerOptions): Resolved {
  const o = resolveOptions<Resolved>(SERVER_DEFAULTS, options, {
    port: integerBetween(0, 65535),
    maxBodyBytes: positiveNumber,
    maxBufferedBytes: positiveNumber,
    sseHeartbeatMs: positiveNumber,
    maxClients: positiveNumber,
    maxConnectionsPerToken: positiveNumber,
    maxSubscriptionsPerConnection: positiveNumber,
    publishPerSecond: positiveNumber,
    wsMessagesPerSecond: positiveNumber,
    maxChannels: positiveNumber,
    headersTimeoutMs: positiveNumber,
    requestTimeoutMs: positiveNumber,
    maxMessageBytes: integerBetween(1, PAYLOAD_LIMIT_BYTES - 1),
    maxConnections: positiveInteger(),
    maxUrlBytes: positiveInteger(),
    maxHeaderBytes: positiveInteger(),
    flushIntervalMs: numberBetween(0, 1000),
    dashboardRefreshMs: integerBetween(0, 60_000),
    dashboardSampleIntervalMs: integerBetween(0, 3_600_000),
    dashboardSampleRetentionMs: integerBetween(1000, 7 * 86_400_000),
    dashboardSampleLagMs: integerBetween(0, 3_600_000),
    dashboardAuditSize: integerBetween(1, 1_000_000),
    autoCreateTopics: boolean,
    publicMetrics: boolean,
    historySize: integerBetween(0, Number.MAX_SAFE_INTEGER),
    channelPrefix: stringOfBytes(55),
  });
  o.token = options.token || undefined;
  if (o.dashboardSampleRetentionMs < o.dashboardSampleIntervalMs) {
    throw new InvalidOptionError('dashboardSampleRetentionMs', o.dashboardSampleRetentionMs, `at least dashboardSampleIntervalMs (${o.dashboardSampleIntervalMs})`);
  }
  if (o.requestTimeoutMs < o.headersTimeoutMs) throw new InvalidOptionError('requestTimeoutMs', o.requestTimeoutMs, `at least headersTimeoutMs (${o.headersTimeoutMs})`);
  return o;
}

/** A non-loopback address needs credentials. */
function requireCredentialsOffLoopback(host: string, credentials: boolean): void {
  if (!isLoopback(host) && !credentials) {
    throw new InvalidOptionError('host', host, 'a loopback address unless credentials are configured (--token, --api-keys, --jwt-secret, --jwt-public-key or --jwks-url)');
  }
}

/**
 * Checks server options as the constructor does, without a Herald (`herald serve`
 * checks them before it connects): throws the constructor's `INVALID_OPTION` error.
 */
export function checkServerOptions(options: ServerOptions = {}): void {
  const o = resolveServerOptions(options);
  const apiKeys: ApiKey[] = [...(options.apiKeys ?? [])];
  if (o.token) apiKeys.push({ name: 'admin', key: o.token, grants: { admin: ['*'] } });
  requireCredentialsOffLoopback(o.host, new Authenticator({ ...options, apiKeys }).enabled);
}

/**
 * The server of `herald serve`: the realtime gateway (SSE and WebSocket fan-out of
 * topics and durable streams from the process's one listen connection), the HTTP API
 * the parts add routes to, authentication and grants, /metrics, probes, the browser
 * client and the dashboard.
 *
 * @example
 * const server = new HeraldServer(herald, { port: 0, jwtSecret: process.env.JWT_SECRET });
 * await server.start();
 */
export class HeraldServer {
  readonly router = new Router();
  readonly options: Resolved;
  readonly auth: Authenticator;
  readonly limits: TokenLimits;
  readonly gateway: Gateway;
  readonly metrics: ServerMetrics;
  readonly dashboard: Dashboard;
  /** The dashboard charts' sampler (one per server; runs while the server is started). */
  readonly series: SeriesSampler;
  /** Dashboard actions taken (ring + `dashboard:audit` events). */
  readonly audit: AuditLog;
  /** Host, Origin and content-type checks of every request and upgrade (see guard.ts). */
  readonly guard: RequestGuard;
  readonly #http: Server;
  readonly #wss: WebSocketServer;
  readonly #connections = new Set<Connection>();
  readonly #principals = new WeakMap<IncomingMessage, Promise<Principal>>();
  readonly #sockets = new Set<Socket>();
  /** Requests in flight per socket, and upgraded (WebSocket) sockets: neither is evicted at the connection cap. */
  readonly #busy = new Map<Socket, number>();
  readonly #upgraded = new Set<Socket>();
  readonly #onInternalError: NonNullable<ServerOptions['onInternalError']>;
  readonly #bootId = randomBytes(4).toString('hex');
  #requests = 0;
  /** Long polls (`GET /mailbox/<to>?wait=`) waiting now: held like streams, admitted like them. */
  #longPolls = 0;
  #url: string | undefined;
  #stopping = false;

  constructor(readonly herald: Herald, options: ServerOptions = {}) {
    requirePeers(['ws', 'prom-client'], 'HeraldServer');
    this.options = resolveServerOptions(options);
    const apiKeys: ApiKey[] = [...(options.apiKeys ?? [])];
    if (this.options.token) apiKeys.push({ name: 'admin', key: this.options.token, grants: { admin: ['*'] } });
    this.auth = new Authenticator({ ...options, apiKeys });
    requireCredentialsOffLoopback(this.options.host, this.auth.enabled);
    this.guard = new RequestGuard(options, { open: !this.auth.enabled, host: this.options.host, router: this.router });
    this.limits = new TokenLimits(this.options.maxConnectionsPerToken, this.options.publishPerSecond);
    this.gateway = new Gateway(herald, {
      channelPrefix: this.options.channelPrefix,
      maxChannels: this.options.maxChannels,
      historySize: this.options.historySize,
      maxSubscriptionsPerConnection: this.options.maxSubscriptionsPerConnection,
      flushIntervalMs: this.options.flushIntervalMs,
    });
    this.metrics = new ServerMetrics(herald, this.gateway, (t) => this.clientCount(t));
    this.dashboard = new Dashboard(this, this.options.dashboardRefreshMs);
    this.series = new SeriesSampler(herald, this.options.dashboardSampleIntervalMs, this.options.dashboardSampleRetentionMs, this.options.dashboardSampleLagMs);
    this.audit = new AuditLog(this.options.dashboardAuditSize);
    const { WebSocketServer: Wss } = loadPeer<typeof import('ws')>('ws', 'HeraldServer (WebSocket)');
    this.#wss = new Wss({ noServer: true, maxPayload: this.options.maxMessageBytes + 1024, perMessageDeflate: false });
    this.#onInternalError =
      options.onInternalError ??
      ((err, c) => console.error(`herald serve: internal error, request ${c.requestId} (${c.method} ${c.path.slice(0, 200)}):`, err instanceof Error ? (err.stack ?? err.message) : err));
    this.#http = createServer(
      {
        maxHeaderSize: this.options.maxHeaderBytes,
        headersTimeout: this.options.headersTimeoutMs,
        requestTimeout: this.options.requestTimeoutMs,
        connectionsCheckingInterval: Math.min(TIMEOUT_CHECK_MS, this.options.headersTimeoutMs),
      },
      (req, res) => void this.#handle(req, res),
    );
    this.#http.keepAliveTimeout = 5000;
    this.#http.maxConnections = this.options.maxConnections;
    this.#http.on('connection', (s: Socket) => this.#onConnection(s));
    this.#http.on('clientError', (err: Error & { code?: string }, socket: Socket) => this.#onClientError(err, socket));
    this.#http.on('upgrade', (req: IncomingMessage, socket: Socket, head: Buffer) => {
      this.#upgraded.add(socket);
      const requestId = this.#nextRequestId();
      handleUpgrade(this, this.#wss, req, socket, head).catch((err) => {
        this.#internalError(err, requestId, req);
        socket.destroy();
      });
    });
    this.#routes();
  }

  /** The base URL once listening. */
  get url(): string {
    if (!this.#url) throw new HeraldError('NOT_STARTED', 'server is not listening');
    return this.#url;
  }

  /** Streaming clients connected now (SSE, WebSocket, and long polls waiting). */
  get clients(): number {
    return this.#connections.size + this.#longPolls;
  }

  /** Streaming clients of one transport. */
  clientCount(transport: 'sse' | 'ws'): number {
    let n = 0;
    for (const c of this.#connections) if (c.transport === transport) n++;
    return n;
  }

  /** Every streaming connection now (the dashboard and tests read it). */
  connections(): Connection[] {
    return [...this.#connections];
  }

  /**
   * Starts listening; resolves with the base URL. Also starts the Herald's notifier
   * (without waiting: /readyz reports 503 until LISTEN is live).
   */
  async start(): Promise<string> {
    if (this.#url) return this.#url;
    this.#stopping = false;
    await this.auth.ready();
    this.herald.notifier.start().catch(() => {});
    // An HTTP-only process runs the maintenance service too (it may be the fleet's only process).
    this.herald.maintenance.start();
    await new Promise<void>((resolve, reject) => {
      this.#http.once('error', reject);
      this.#http.listen(this.options.port, this.options.host, () => {
        this.#http.off('error', reject);
        resolve();
      });
    });
    this.series.start();
    const addr = this.#http.address() as { port: number };
    const host = this.options.host.includes(':') ? `[${this.options.host}]` : this.options.host;
    this.#url = `http://${host}:${addr.port}`;
    return this.#url;
  }

  /** Closes every stream (`shutdown`), the topics' subscriptions and the listening socket. Idempotent. */
  async stop(): Promise<void> {
    this.#stopping = true;
    for (const c of [...this.#connections]) c.close('shutdown', 'server shutting down');
    await this.gateway.stop();
    await this.series.stop();
    this.#url = undefined;
    if (!this.#http.listening) return;
    const closed = new Promise<void>((resolve) => this.#http.close(() => resolve()));
    // Give the goodbyes (SSE close event, WebSocket close frame) up to 500 ms to leave,
    // then destroy whatever is still open.
    this.#http.closeIdleConnections();
    const deadline = Date.now() + 500;
    while (this.#sockets.size > 0 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 10));
    this.#http.closeAllConnections();
    for (const s of this.#sockets) s.destroy();
    await closed;
  }

  /**
   * Authenticates a request (once per request; cached) and checks that its principal
   * may do `action` on `resource`. Throws {@link HttpError} 401 (`UNAUTHORIZED`,
   * `TOKEN_EXPIRED`) or 403 (`FORBIDDEN`). The hook for every part's routes.
   */
  async authorize(req: IncomingMessage, action: Action, resource: string): Promise<Principal> {
    const principal = await this.authenticate(req);
    assertAllowed(principal, action, resource);
    return principal;
  }

  /** Authenticates a request without checking a grant (cached per request). */
  authenticate(req: IncomingMessage): Promise<Principal> {
    let p = this.#principals.get(req);
    if (!p) {
      let url: URL;
      try {
        url = new URL(req.url ?? '/', 'http://localhost');
      } catch {
        return Promise.reject(new HttpError(400, 'BAD_URL', 'the request target is not a valid URL'));
      }
      p = this.auth.authenticate(credentialOf(req, url));
      this.#principals.set(req, p);
    }
    return p;
  }

  /**
   * Registers a streaming connection: counts it against `maxClients` (503
   * `TOO_MANY_CLIENTS`) and its token's `maxConnectionsPerToken` (429
   * `TOO_MANY_CONNECTIONS`); releases both when it closes.
   */
  admit(principal: Principal, transport: 'sse' | 'ws' | 'poll'): () => void {
    if (this.#stopping) throw new HttpError(503, 'SHUTTING_DOWN', 'server is shutting down');
    if (this.clients >= this.options.maxClients) throw new HttpError(503, 'TOO_MANY_CLIENTS', 'client limit reached');
    // Per-token limits count tokens; the open (credential-less, loopback) mode has none.
    const release = principal.kind === 'anonymous' ? () => {} : this.limits.acquireConnection(principal.id);
    this.metrics.connections.inc({ transport });
    return release;
  }

  /**
   * Admits a long poll (a request that holds its connection while it waits) like a
   * stream: it counts against `maxClients` and the principal's `maxConnectionsPerToken`
   * until the returned release runs (idempotent).
   */
  admitLongPoll(principal: Principal): () => void {
    const release = this.admit(principal, 'poll');
    this.#longPolls++;
    let done = false;
    return () => {
      if (done) return;
      done = true;
      this.#longPolls--;
      release();
    };
  }

  /** Tracks an open connection until it closes. */
  track(conn: Connection, release: () => void): void {
    this.#connections.add(conn);
    conn.onClose = (reason) => {
      this.#connections.delete(conn);
      release();
      this.metrics.disconnects.inc({ transport: conn.transport, reason });
    };
  }

  /** Opens a gateway SSE connection for an authorized request. */
  openSse(req: IncomingMessage, res: ServerResponse, principal: Principal, format: 'sse' | 'sse-json'): SseConnection {
    const release = this.admit(principal, 'sse');
    const conn = new SseConnection(req, res, format, principal, this.options.maxBufferedBytes, this.gateway.scheduleFlush, this.options.sseHeartbeatMs);
    this.track(conn, release);
    return conn;
  }

  /**
   * Opens the SSE stream of a part's own streaming route (`/jobs/events`,
   * `/topics/<name>/events`, `/changes/<table>/events`...) through the one admission
   * path of every stream: `maxClients` (503 `TOO_MANY_CLIENTS`), the principal's
   * connections (429 `TOO_MANY_CONNECTIONS`), and every Postgres channel the stream will
   * LISTEN on (`channels`) against `maxChannels` (503 `TOO_MANY_CHANNELS`). The stream
   * holds one subscription (`stream:<key>`), bounded and cut like every other stream.
   * Throws before anything is written, so the route answers with a JSON error; call
   * `ready(...)` once set up (or `discard()` and throw when the setup failed).
   */
  openStream(req: IncomingMessage, res: ServerResponse, principal: Principal, options: { key: string; channels: readonly string[] }): PartStream {
    const conn = this.openSse(req, res, principal, 'sse');
    try {
      const release = this.gateway.reserveChannels(options.channels);
      conn.subscriptions.set(`stream:${options.key}`, release);
    } catch (err) {
      conn.discard();
      throw err;
    }
    return new PartStream(conn);
  }

  /** Counts a refusal for /metrics. */
  refused(err: unknown): void {
    const status = statusOf(err);
    if (status >= 400 && status < 500) {
      this.metrics.refused.inc({ status: String(status), code: err instanceof HttpError || err instanceof HeraldError ? err.code : 'UNKNOWN' });
    }
  }

  #routes(): void {
    this.router.add(
      'GET',
      /^\/health$/,
      async (_req, res) => {
        const database = await this.#databaseOk();
        const notifier = this.herald.notifier.status;
        const ok = database === 'ok' && notifier !== 'failed';
        sendJson(res, ok ? 200 : 503, { status: ok ? 'ok' : 'degraded', database, notifier, clients: this.clients });
      },
      { open: true },
    );
    this.router.add('GET', /^\/livez$/, (_req, res) => sendJson(res, 200, { status: 'ok' }), { open: true });
    this.router.add(
      'GET',
      /^\/readyz$/,
      async (_req, res) => {
        const database = await this.#databaseOk();
        const notifier = this.herald.notifier.status;
        const ok = database === 'ok' && notifier === 'listening' && !this.#stopping;
        sendJson(res, ok ? 200 : 503, { status: ok ? 'ready' : 'not ready', database, notifier });
      },
      { open: true },
    );
    this.router.add(
      'GET',
      /^\/metrics$/,
      async (_req, res) => {
        const text = await this.metrics.registry.metrics();
        res.writeHead(200, { 'content-type': this.metrics.registry.contentType, 'cache-control': 'no-store' });
        res.end(text);
      },
      this.options.publicMetrics ? { open: true } : { action: 'admin', resource: () => 'metrics' },
    );
    registerChannelRoutes(this);
    registerSiteRoutes(this);
    registerTopicsRoutes(this);
    registerJobsRoutes(this);
    registerMailboxRoutes(this);
    registerOutboxRoutes(this);
    registerDashboardPanels(this);
    registerAdminRoutes(this);
    this.gateway.registerStream('topic', topicStreamSource(this.herald));
  }

  async #databaseOk(): Promise<'ok' | 'unreachable'> {
    try {
      await this.herald.driver.executor.query('SELECT 1');
      return 'ok';
    } catch {
      return 'unreachable';
    }
  }

  /**
   * Parses a request target, refusing what cannot be served: 414 `URL_TOO_LONG` past
   * `maxUrlBytes`, 400 `BAD_URL` for a target `URL` cannot parse.
   */
  parseUrl(req: IncomingMessage): URL {
    const target = req.url ?? '/';
    if (target.length > this.options.maxUrlBytes) throw new HttpError(414, 'URL_TOO_LONG', `the request target is over ${this.options.maxUrlBytes} bytes`);
    try {
      return new URL(target, 'http://localhost');
    } catch {
      throw new HttpError(400, 'BAD_URL', 'the request target is not a valid URL');
    }
  }

  #nextRequestId(): string {
    return `${this.#bootId}-${(++this.#requests).toString(36)}`;
  }

  /**
   * Reports an internal error (not a deliberate refusal) once to `onInternalError`,
   * under a new request id unless one is given; returns the id to show the client.
   * Never throws. WebSocket messages use it with `method: 'WS'`.
   */
  reportInternalError(err: unknown, context: { method: string; path: string; requestId?: string }): string {
    const requestId = context.requestId ?? this.#nextRequestId();
    try {
      this.#onInternalError(err, { requestId, method: context.method, path: context.path });
    } catch {
      // a logger that throws must not take the request path with it
    }
    return requestId;
  }

  #internalError(err: unknown, requestId: string, req: IncomingMessage): void {
    this.reportInternalError(err, { requestId, method: String(req.method), path: String(req.url ?? '').split('?')[0] });
  }

  #onConnection(s: Socket): void {
    this.#sockets.add(s);
    s.on('close', () => {
      this.#sockets.delete(s);
      this.#busy.delete(s);
      this.#upgraded.delete(s);
    });
    // At the cap, close the oldest socket that has nothing in flight so the next client
    // (a probe, say) finds a slot; node refuses sockets past the cap.
    if (this.#sockets.size >= this.options.maxConnections) {
      for (const old of this.#sockets) {
        if (old !== s && !this.#busy.has(old) && !this.#upgraded.has(old)) {
          old.destroy();
          break;
        }
      }
    }
  }

  /** Malformed HTTP (node's parser refused it), header overflow, timeouts: a JSON answer and close. */
  #onClientError(err: Error & { code?: string }, socket: Socket): void {
    const code = err.code ?? '';
    if (code === 'ECONNRESET' || code === 'EPIPE' || !socket.writable || (socket as Socket & { _httpMessage?: { headersSent?: boolean } })._httpMessage?.headersSent) {
      socket.destroy();
      return;
    }
    const [status, errorCode, message] =
      code === 'HPE_HEADER_OVERFLOW'
        ? [431, 'HEADERS_TOO_LARGE', `request line and headers are over ${this.options.maxHeaderBytes} bytes`]
        : code === 'HPE_URI_TOO_LONG'
          ? [414, 'URL_TOO_LONG', 'the request target is too long']
          : code === 'ERR_HTTP_REQUEST_TIMEOUT'
            ? [408, 'REQUEST_TIMEOUT', 'the request was not received in time']
            : [400, 'BAD_REQUEST', 'malformed HTTP request'];
    this.refused(new HttpError(status, errorCode, message));
    const body = JSON.stringify({ error: { code: errorCode, message } });
    socket.end(
      `HTTP/1.1 ${status} ${STATUS_CODES[status]}\r\ncontent-type: application/json; charset=utf-8\r\ncontent-length: ${Buffer.byteLength(body)}\r\nconnection: close\r\n\r\n${body}`,
    );
    // A peer that does not read its answer does not keep the socket.
    const timer = setTimeout(() => socket.destroy(), 1000).unref();
    socket.once('close', () => clearTimeout(timer));
  }

  async #handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const requestId = this.#nextRequestId();
    const socket = req.socket;
    this.#busy.set(socket, (this.#busy.get(socket) ?? 0) + 1);
    res.once('close', () => {
      const n = (this.#busy.get(socket) ?? 1) - 1;
      if (n > 0) this.#busy.set(socket, n);
      else this.#busy.delete(socket);
    });
    try {
      res.setHeader('x-request-id', requestId);
      if (this.guard.check(req, res)) return; // Host, Origin, content type (guard.ts); true: a preflight, answered
      const url = this.parseUrl(req);
      const found = this.router.match(req.method ?? 'GET', url.pathname);
      if (!found) throw new HttpError(404, 'NOT_FOUND', `no route for ${url.pathname.slice(0, 200)}`);
      if ('allowed' in found) {
        res.setHeader('allow', found.allowed.join(', '));
        throw new HttpError(405, 'METHOD_NOT_ALLOWED', `use ${found.allowed.join(' or ')}`);
      }
      const { route, params } = found;
      // Authenticated first (401 before anything else), then the resource (which may refuse
      // on its own: a reserved topic is 403 RESERVED_TOPIC whatever the grants), then the grant.
      let principal: Principal | undefined;
      if (!route.open) {
        await this.authenticate(req); // cached for the request: authorize reuses it
        principal = await this.authorize(req, route.action, route.resource(params, url));
      }
      await route.handler(req, res, params, url, principal);
    } catch (err) {
      try {
        // The client went away (a truncated body, a reset): nobody to answer, nothing to log.
        if (req.socket?.destroyed || res.destroyed) {
          res.destroy();
          return;
        }
        this.refused(err);
        if (!(err instanceof HttpError) && statusOf(err) >= 500) this.#internalError(err, requestId, req);
        sendError(res, err, requestId);
      } catch {
        res.destroy();
      }
    }
  }
}
