/** A WebSocket client for tests: collects JSON messages, awaits conditions and the close code. */
import { WebSocket } from 'ws';

export class WsClient {
  readonly messages: Record<string, any>[] = [];
  closeCode: number | undefined;
  closeReason = '';
  readonly closed: Promise<number>;
  #waiters: (() => void)[] = [];

  private constructor(readonly ws: WebSocket) {
    this.closed = new Promise((resolve) => {
      ws.on('close', (code, reason) => {
        this.closeCode = code;
        this.closeReason = reason.toString();
        this.#wake();
        resolve(code);
      });
    });
    ws.on('error', () => {});
    ws.on('message', (data) => {
      try {
        this.messages.push(JSON.parse(data.toString()));
      } catch {
        /* not JSON */
      }
      this.#wake();
    });
  }

  /** Connects to `<base>/ws?...`; resolves when open, or when closed during the handshake. */
  static connect(url: string): Promise<WsClient> {
    const ws = new WebSocket(url.replace(/^http/, 'ws'));
    const client = new WsClient(ws);
    return new Promise((resolve, reject) => {
      ws.once('open', () => resolve(client));
      ws.once('unexpected-response', (_req, res) => reject(new Error(`HTTP ${res.statusCode}`)));
      void client.closed.then(() => resolve(client));
    });
  }

  #wake(): void {
    for (const w of this.#waiters.splice(0)) w();
  }

  send(message: Record<string, unknown>): void {
    this.ws.send(JSON.stringify(message));
  }

  of(type: string): Record<string, any>[] {
    return this.messages.filter((m) => m.type === type);
  }

  async until(check: () => boolean, timeoutMs = 15_000, what = 'WebSocket condition'): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    while (!check()) {
      if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}; got ${JSON.stringify(this.messages.slice(-5))} close=${this.closeCode}`);
      await new Promise<void>((r) => {
        const t = setTimeout(r, Math.max(1, deadline - Date.now()));
        this.#waiters.push(() => {
          clearTimeout(t);
          r();
        });
      });
    }
  }

  /** Sends a request with a `ref` and resolves with the reply carrying it. */
  async request(message: Record<string, unknown>): Promise<Record<string, any>> {
    const ref = Math.random().toString(36).slice(2);
    this.send({ ...message, ref });
    let reply: Record<string, any> | undefined;
    await this.until(() => (reply = this.messages.find((m) => m.ref === ref)) !== undefined, 15_000, `reply to ${JSON.stringify(message)}`);
    return reply!;
  }

  close(): void {
    this.ws.terminate();
  }
}
