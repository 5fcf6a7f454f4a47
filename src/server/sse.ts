import type { IncomingMessage, ServerResponse } from 'node:http';

/** Limits of one SSE client. */
export interface SseLimits {
  /** Bytes the socket may hold unsent before the client counts as stuck and is cut. */
  maxBufferedBytes: number;
  /** Interval of `:` comments that keep proxies from closing an idle stream. */
  heartbeatMs: number;
}

/**
 * One Server-Sent Events stream. Writes never grow memory past `maxBufferedBytes`:
 * a client that stops reading is sent away (closed) with a reason instead.
 */
export class SseStream {
  #closed = false;
  readonly #heartbeat: NodeJS.Timeout;
  readonly closed: Promise<string>;
  #resolveClosed!: (reason: string) => void;

  constructor(req: IncomingMessage, readonly res: ServerResponse, readonly limits: SseLimits) {
    this.closed = new Promise((r) => (this.#resolveClosed = r));
    res.writeHead(200, {
      'content-type': 'text/event-stream; charset=utf-8',
      'cache-control': 'no-store',
      connection: 'keep-alive',
      'x-accel-buffering': 'no',
    });
    res.flushHeaders();
    req.socket.setNoDelay(true);
    this.#heartbeat = setInterval(() => this.comment('keep-alive'), limits.heartbeatMs);
    this.#heartbeat.unref();
    res.on('close', () => this.close('client went away'));
  }

  get isClosed(): boolean {
    return this.#closed;
  }

  /** Sends one event; multi-line data becomes several `data:` lines. Returns false when the client was cut. */
  send(event: string, data: string, id?: string): boolean {
    let frame = '';
    if (id !== undefined) frame += `id: ${id}\n`;
    frame += `event: ${event}\n`;
    for (const line of data.split(/\r\n|\r|\n/)) frame += `data: ${line}\n`;
    return this.#write(frame + '\n');
  }

  comment(text: string): boolean {
    return this.#write(`: ${text}\n\n`);
  }

  #write(frame: string): boolean {
    if (this.#closed) return false;
    if (this.res.writableLength + frame.length > this.limits.maxBufferedBytes) {
      this.close('slow consumer: send buffer full');
      return false;
    }
    this.res.write(frame);
    return true;
  }

  /** Ends the stream, telling the client why in a last `close` event when it can still be written. */
  close(reason: string): void {
    if (this.#closed) return;
    this.#closed = true;
    clearInterval(this.#heartbeat);
    if (!this.res.destroyed && !reason.startsWith('slow consumer') && reason !== 'client went away') {
      this.res.end(`event: close\ndata: ${JSON.stringify({ reason })}\n\n`);
    } else {
      this.res.destroy();
    }
    this.#resolveClosed(reason);
  }
}
