/**
 * A minimal Server-Sent Events client for tests and benchmarks: one HTTP request per
 * client (no agent pooling), events parsed as they arrive.
 */
import { request, type IncomingMessage } from 'node:http';

export interface SseEvent {
  event: string;
  data: string;
  id?: string;
}

export class SseClient {
  readonly events: SseEvent[] = [];
  status = 0;
  body = '';
  #buf = '';
  #res: IncomingMessage | undefined;
  #waiters: (() => void)[] = [];
  ended = false;
  readonly done: Promise<void>;
  #resolveDone!: () => void;

  private constructor(readonly onEvent?: (e: SseEvent) => void) {
    this.done = new Promise((r) => (this.#resolveDone = r));
  }

  /** Opens `url`; resolves once the response headers arrived (check `status`). */
  static open(url: string, headers: Record<string, string> = {}, onEvent?: (e: SseEvent) => void): Promise<SseClient> {
    const client = new SseClient(onEvent);
    return new Promise((resolve, reject) => {
      const req = request(url, { agent: false, headers: { accept: 'text/event-stream', ...headers } }, (res) => {
        client.#res = res;
        client.status = res.statusCode ?? 0;
        res.setEncoding('utf8');
        res.on('data', (chunk: string) => client.#feed(chunk));
        const end = () => {
          client.ended = true;
          client.#resolveDone();
          client.#wake();
        };
        res.on('end', end);
        res.on('close', end);
        res.on('error', end);
        resolve(client);
      });
      req.on('error', (err) => {
        if (client.status) {
          client.ended = true;
          client.#resolveDone();
          client.#wake();
        } else reject(err);
      });
      req.end();
    });
  }

  #feed(chunk: string): void {
    if (this.status !== 200) {
      this.body += chunk;
      return;
    }
    this.#buf += chunk;
    let i: number;
    while ((i = this.#buf.indexOf('\n\n')) >= 0) {
      const block = this.#buf.slice(0, i);
      this.#buf = this.#buf.slice(i + 2);
      const e: SseEvent = { event: 'message', data: '' };
      const data: string[] = [];
      let any = false;
      for (const line of block.split('\n')) {
        if (line.startsWith(':')) continue;
        const c = line.indexOf(':');
        const field = c < 0 ? line : line.slice(0, c);
        const value = c < 0 ? '' : line.slice(c + 1).replace(/^ /, '');
        if (field === 'event') e.event = value;
        else if (field === 'data') data.push(value);
        else if (field === 'id') e.id = value;
        else continue;
        any = true;
      }
      if (!any) continue;
      e.data = data.join('\n');
      this.events.push(e);
      this.onEvent?.(e);
    }
    this.#wake();
  }

  #wake(): void {
    for (const w of this.#waiters.splice(0)) w();
  }

  /** Events named `name`. */
  named(name: string): SseEvent[] {
    return this.events.filter((e) => e.event === name);
  }

  /** Resolves when `check()` holds (re-checked on every chunk), or rejects after `timeoutMs`. */
  async until(check: () => boolean, timeoutMs = 15_000, what = 'SSE condition'): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    while (!check()) {
      if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}; got ${JSON.stringify(this.events.slice(-5))}`);
      await new Promise<void>((r) => {
        const t = setTimeout(r, Math.max(1, deadline - Date.now()));
        this.#waiters.push(() => {
          clearTimeout(t);
          r();
        });
      });
    }
  }

  /** Stops reading (the kernel buffers fill; the server sees a slow consumer). */
  pause(): void {
    this.#res?.socket.pause();
    this.#res?.pause();
  }

  close(): void {
    this.#res?.destroy();
  }
}

/** An SSE reader over a fetch response: yields parsed events. */

export async function* readSse(res: Response): AsyncGenerator<SseEvent> {
  const reader = res.body!.getReader();
  const decoder = new TextDecoder();
  let buffer = '';
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += decoder.decode(value, { stream: true });
    let cut: number;
    while ((cut = buffer.indexOf('\n\n')) >= 0) {
      const block = buffer.slice(0, cut);
      buffer = buffer.slice(cut + 2);
      const ev: SseEvent = { event: 'message', data: '' };
      const data: string[] = [];
      for (const line of block.split('\n')) {
        if (line.startsWith(':')) continue;
        const i = line.indexOf(':');
        const field = i < 0 ? line : line.slice(0, i);
        const value = i < 0 ? '' : line.slice(i + 1).replace(/^ /, '');
        if (field === 'event') ev.event = value;
        else if (field === 'data') data.push(value);
        else if (field === 'id') ev.id = value;
      }
      if (data.length === 0 && ev.event === 'message') continue;
      ev.data = data.join('\n');
      yield ev;
    }
  }
}
