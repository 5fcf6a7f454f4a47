import type { IncomingMessage, ServerResponse } from 'node:http';
import type { WebSocket } from 'ws';
import type { Principal } from './auth.js';

/** Why a connection ended; also the `reason` label of the disconnect metric. */
export type CloseReason =
  | 'client_gone'
  | 'slow_consumer'
  | 'token_expired'
  | 'shutdown'
  | 'forbidden'
  | 'unauthorized'
  | 'bad_message'
  | 'limit'
  | 'ended';

/** WebSocket close codes of the gateway (4000-4999 are application codes). */
export const WS_CLOSE: Record<CloseReason, number> = {
  client_gone: 1000,
  ended: 1000,
  shutdown: 1001,
  bad_message: 4400,
  unauthorized: 4401,
  forbidden: 4403,
  token_expired: 4408,
  limit: 4429,
  slow_consumer: 4509,
};

/** A frame rendered for one wire format; the hub renders each format once per event, not once per client. */
export type Format = 'sse' | 'sse-json' | 'ws';

/** Delay before a connection that was told to go away (slow consumer) is destroyed regardless. */
const CLOSE_GRACE_MS = 1000;

let nextId = 1;

/**
 * One streaming client (SSE response or WebSocket). Frames are queued and written
 * once per event-loop turn (every notification that arrived in the same turn goes out
 * in one write). The queued bytes plus what the socket still holds may never pass
 * `maxBufferedBytes`: a client that stops reading is told why and disconnected, and
 * nobody else waits for it.
 */
export abstract class Connection {
  readonly id = nextId++;
  /** Subscriptions by key (`channel:<topic>` or `stream:<kind>/<name>`), each with its cleanup. */
  readonly subscriptions = new Map<string, () => void>();
  #pending: Buffer[] = [];
  /** False until the transport may write (an SSE response before its headers). */
  protected started = true;
  #pendingBytes = 0;
  #closed = false;
  #closeReason: CloseReason | undefined;
  #expiryTimer: NodeJS.Timeout | undefined;
  #graceTimer: NodeJS.Timeout | undefined;
  readonly closed: Promise<CloseReason>;
  #resolveClosed!: (r: CloseReason) => void;
  /** Called once when the connection ends (the gateway's bookkeeping). */
  onClose: ((reason: CloseReason) => void) | undefined;

  constructor(
    readonly transport: 'sse' | 'ws',
    readonly format: Format,
    readonly principal: Principal,
    readonly maxBufferedBytes: number,
    readonly scheduleFlush: (c: Connection) => void,
  ) {
    this.closed = new Promise((r) => (this.#resolveClosed = r));
    const exp = principal.expiresAt;
    if (exp !== null) {
      // setTimeout holds at most 2^31-1 ms; a later expiry is re-armed on the way.
      const arm = () => {
        const left = exp - Date.now();
        if (left <= 0) return this.close('token_expired', 'the token has expired');
        this.#expiryTimer = setTimeout(arm, Math.min(left, 2 ** 31 - 1));
        this.#expiryTimer.unref();
      };
      arm();
    }
  }

  get isClosed(): boolean {
    return this.#closed;
  }

  get closeReason(): CloseReason | undefined {
    return this.#closeReason;
  }

  /** Bytes queued here and not yet taken by the kernel. */
  get bufferedBytes(): number {
    return this.#pendingBytes + this.socketBuffered();
  }

  /**
   * Queues a rendered frame. Returns false (and cuts the client as a slow consumer)
   * when that would pass the buffer bound, or when the connection is closed.
   */
  enqueue(frame: Buffer): boolean {
    if (this.#closed) return false;
    // Only the queue is checked here (cheap, per event); the socket's own buffer is
    // added at flush time, once per turn. Together they stay under about twice the bound.
    if (this.#pendingBytes + frame.length > this.maxBufferedBytes) {
      this.close('slow_consumer', `send buffer over ${this.maxBufferedBytes} bytes: the client is not reading`);
      return false;
    }
    if (this.#pending.length === 0) this.scheduleFlush(this);
    this.#pending.push(frame);
    this.#pendingBytes += frame.length;
    return true;
  }

  /** Writes what is queued (called by the gateway once per turn). */
  flush(): void {
    if (this.#closed || !this.started || this.#pending.length === 0) return;
    if (this.#pendingBytes + this.socketBuffered() > this.maxBufferedBytes) {
      this.close('slow_consumer', `send buffer over ${this.maxBufferedBytes} bytes: the client is not reading`);
      return;
    }
    const frames = this.#pending;
    this.#pending = [];
    this.#pendingBytes = 0;
    this.writeFrames(frames);
  }

  /** Lets queued frames go out once the transport can write. */
  protected markStarted(): void {
    this.started = true;
    if (this.#pending.length > 0) this.scheduleFlush(this);
  }

  /**
   * Ends the connection without writing anything (setup failed before the response
   * started; the caller sends the error).
   */
  discard(): void {
    if (this.#closed) return;
    this.#closed = true;
    this.#closeReason = 'ended';
    clearTimeout(this.#expiryTimer);
    this.#pending = [];
    this.#pendingBytes = 0;
    for (const cleanup of this.subscriptions.values()) cleanup();
    this.subscriptions.clear();
    this.onClose?.('ended');
    this.#resolveClosed('ended');
  }

  /** Ends the connection with a reason; idempotent. */
  close(reason: CloseReason, message: string = reason): void {
    if (this.#closed) return;
    this.#closed = true;
    this.#closeReason = reason;
    clearTimeout(this.#expiryTimer);
    this.#pending = [];
    this.#pendingBytes = 0;
    for (const cleanup of this.subscriptions.values()) cleanup();
    this.subscriptions.clear();
    this.onClose?.(reason);
    if (reason === 'client_gone') {
      this.destroy();
    } else {
      this.end(reason, message);
      // A client told to go away that does not read its last frame is destroyed anyway.
      this.#graceTimer = setTimeout(() => this.destroy(), CLOSE_GRACE_MS);
      this.#graceTimer.unref();
    }
    this.#resolveClosed(reason);
  }

  /** The socket finished closing: no timer may outlive it. */
  protected finished(): void {
    clearTimeout(this.#graceTimer);
    if (!this.#closed) this.close('client_gone');
  }

  protected abstract socketBuffered(): number;
  protected abstract writeFrames(frames: Buffer[]): void;
  /** Sends the goodbye (SSE `event: close`, WebSocket close code) and ends gracefully. */
  protected abstract end(reason: CloseReason, message: string): void;
  protected abstract destroy(): void;
}

/** A Server-Sent Events response. */
export class SseConnection extends Connection {
  constructor(
    req: IncomingMessage,
    readonly res: ServerResponse,
    format: 'sse' | 'sse-json',
    principal: Principal,
    maxBufferedBytes: number,
    scheduleFlush: (c: Connection) => void,
    heartbeatMs: number,
  ) {
    super('sse', format, principal, maxBufferedBytes, scheduleFlush);
    this.started = false;
    req.socket.setNoDelay(true);
    const heartbeat = setInterval(() => this.enqueue(Buffer.from(': keep-alive\n\n')), heartbeatMs);
    heartbeat.unref();
    res.on('close', () => {
      clearInterval(heartbeat);
      this.finished();
    });
  }

  /**
   * Sends the headers and a first `event: ready` with `ready` as data; then the frames
   * queued meanwhile (a resume's replay) go out. Until then nothing is written, so a
   * failed setup can still answer with a JSON error.
   */
  open(ready: Record<string, unknown>): void {
    if (this.isClosed) return;
    // No chunked encoding: the stream ends with the connection, so events can go
    // straight to the socket (one write per turn, no per-write HTTP framing).
    this.res.useChunkedEncodingByDefault = false;
    this.res.writeHead(200, {
      'content-type': 'text/event-stream; charset=utf-8',
      'cache-control': 'no-store',
      connection: 'close',
      'x-accel-buffering': 'no',
    });
    this.res.write(`event: ready\ndata: ${JSON.stringify(ready)}\n\n`);
    this.markStarted();
  }

  protected socketBuffered(): number {
    return this.res.socket?.writableLength ?? 0;
  }
  protected writeFrames(frames: Buffer[]): void {
    const socket = this.res.socket;
    if (!socket || socket.destroyed) return;
    socket.write(frames.length === 1 ? frames[0] : Buffer.concat(frames));
  }
  protected end(reason: CloseReason, message: string): void {
    if (this.res.destroyed) return;
    if (!this.res.headersSent) return void this.res.destroy();
    this.res.end(`event: close\ndata: ${JSON.stringify({ code: reason.toUpperCase(), reason: message })}\n\n`);
  }
  protected destroy(): void {
    this.res.destroy();
  }
}

const framedCache = new WeakMap<Buffer, Buffer>();

/** An unmasked, final WebSocket text frame around `payload` (RFC 6455 §5.2), cached per payload buffer. */
export function wsTextFrame(payload: Buffer): Buffer {
  let frame = framedCache.get(payload);
  if (frame) return frame;
  const n = payload.length;
  const head = n < 126 ? 2 : n < 65536 ? 4 : 10;
  frame = Buffer.allocUnsafe(head + n);
  frame[0] = 0x81; // FIN + text
  if (n < 126) frame[1] = n;
  else if (n < 65536) {
    frame[1] = 126;
    frame.writeUInt16BE(n, 2);
  } else {
    frame[1] = 127;
    frame.writeBigUInt64BE(BigInt(n), 2);
  }
  payload.copy(frame, head);
  framedCache.set(payload, frame);
  return frame;
}

/** A WebSocket (the `ws` package); every frame is one JSON text message. */
export class WsConnection extends Connection {
  constructor(
    readonly ws: WebSocket,
    principal: Principal,
    maxBufferedBytes: number,
    scheduleFlush: (c: Connection) => void,
  ) {
    super('ws', 'ws', principal, maxBufferedBytes, scheduleFlush);
    ws.on('close', () => this.finished());
    ws.on('error', () => this.finished());
  }

  /** Sends one message now (replies to the client's own requests). */
  reply(message: Record<string, unknown>): void {
    if (!this.isClosed && this.ws.readyState === this.ws.OPEN) this.ws.send(JSON.stringify(message));
  }

  protected socketBuffered(): number {
    return this.ws.bufferedAmount;
  }
  protected writeFrames(frames: Buffer[]): void {
    if (this.ws.readyState !== this.ws.OPEN) return;
    // Fan-out writes pre-framed bytes straight to the socket: a server frame is never
    // masked, so the same bytes serve every client (framed once per event, cached), and
    // a turn's events go out in one write. `ws` writes its own frames (replies, close)
    // to the same socket synchronously, so the order holds.
    const socket = (this.ws as unknown as { _socket?: { write(b: Buffer): boolean } })._socket;
    if (!socket) return;
    const framed = frames.map(wsTextFrame);
    socket.write(framed.length === 1 ? framed[0] : Buffer.concat(framed));
  }
  protected end(reason: CloseReason, message: string): void {
    if (this.ws.readyState === this.ws.OPEN || this.ws.readyState === this.ws.CONNECTING) {
      this.ws.close(WS_CLOSE[reason], message.slice(0, 120));
    }
  }
  protected destroy(): void {
    this.ws.terminate();
  }
}
