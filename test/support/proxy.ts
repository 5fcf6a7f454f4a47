/**
 * A TCP proxy in front of Postgres for fault tests. It can cut every connection
 * (RST-like destroy), black-hole them (sockets stay open, nothing passes either way,
 * as a dead network path looks), and delay every chunk.
 */
import { createConnection, createServer, type Server, type Socket } from 'node:net';

export type ProxyMode = 'pass' | 'blackhole';

export class TcpProxy {
  readonly #server: Server;
  readonly #pairs = new Set<[Socket, Socket]>();
  #mode: ProxyMode = 'pass';
  #delayMs = 0;
  port = 0;
  /** Chunks swallowed by the black hole so far: a test awaits it to know a statement went into the hole. */
  swallowed = 0;

  private constructor(public targetHost: string, public targetPort: number) {
    this.#server = createServer((client) => this.#accept(client));
  }

  /** Starts a proxy on a free loopback port forwarding to `target` (a postgres:// URL or host:port). */
  static async start(target: string): Promise<TcpProxy> {
    const u = new URL(target.includes('://') ? target : `tcp://${target}`);
    const proxy = new TcpProxy(u.hostname, Number(u.port || 5432));
    await new Promise<void>((resolve) => proxy.#server.listen(0, '127.0.0.1', () => resolve()));
    proxy.port = (proxy.#server.address() as { port: number }).port;
    return proxy;
  }

  /** `url` with its host and port replaced by the proxy's. */
  url(url: string): string {
    const u = new URL(url);
    u.hostname = '127.0.0.1';
    u.port = String(this.port);
    return u.toString();
  }

  /** Open connection pairs. */
  get connections(): number {
    return this.#pairs.size;
  }

  #accept(client: Socket): void {
    const upstream = createConnection({ host: this.targetHost, port: this.targetPort });
    const pair: [Socket, Socket] = [client, upstream];
    this.#pairs.add(pair);
    const close = () => {
      this.#pairs.delete(pair);
      client.destroy();
      upstream.destroy();
    };
    client.on('error', close).on('close', close);
    upstream.on('error', close).on('close', close);
    this.#pipe(client, upstream);
    this.#pipe(upstream, client);
  }

  #pipe(from: Socket, to: Socket): void {
    from.on('data', (chunk) => {
      if (this.#mode === 'blackhole') {
        this.swallowed++;
        return; // swallowed: the peer waits forever
      }
      if (this.#delayMs > 0) setTimeout(() => to.writable && to.write(chunk), this.#delayMs);
      else if (to.writable) to.write(chunk);
    });
  }

  /**
   * Points new connections at another server (a VIP or DNS record moving to a new
   * primary) and cuts the open ones, as the old server's going away would.
   */
  retarget(target: string): void {
    const u = new URL(target.includes('://') ? target : `tcp://${target}`);
    this.targetHost = u.hostname;
    this.targetPort = Number(u.port || 5432);
    this.cut();
  }

  /** Destroys every open connection (new ones are still accepted). */
  cut(): void {
    for (const [a, b] of this.#pairs) {
      a.destroy();
      b.destroy();
    }
    this.#pairs.clear();
  }

  /** From now on nothing passes, in either direction; sockets stay open. */
  blackhole(): void {
    this.#mode = 'blackhole';
  }

  /** Back to passing traffic (what was swallowed stays lost). */
  pass(): void {
    this.#mode = 'pass';
  }

  /** Delays every chunk by `ms` (0 for none). */
  delay(ms: number): void {
    this.#delayMs = ms;
  }

  async close(): Promise<void> {
    this.cut();
    await new Promise<void>((resolve) => this.#server.close(() => resolve()));
  }
}
