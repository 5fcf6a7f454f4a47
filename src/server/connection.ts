import type { IncomingMessage, ServerResponse } from 'node:http';
import type { Socket } from 'node:net';
import type { WebSocket } from 'ws';
import { truncateUtf8 } from './http.js';
import type { Principal } from './auth.js';
import { sseFrame } from './sse.js';

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
 * The frames of one topic queued in one flush round, shared by every connection that
 * follows the topic: the gateway appends each event's frame (rendered once per wire
 * format) and queues the batch once per connection, so a notification costs the same
 * whatever the number of clients; a connection's write is then the batch joined once
 * per format (one Buffer for all of them). A batch is sealed (takes no more frames) at
 * the flush round, when a client joins the topic, and when an order-sensitive frame
 * (a gap, a replay) is queued behind it on one of its connections.
 */
export class FrameBatch {
  /** No more frames are appended once sealed (the hub opens a new batch). */
  sealed = false;
  /** Events appended (each connection counts them as deliveries when written). */
  events = 0;
  readonly #parts: { [F in Format]?: { frames: Buffer[]; bytes: number; joined?: Buffer } } = {};

  /** Appends one event's frame for `format` (call once per format per event, then {@link countEvent}). */
  add(format: Format, frame: Buffer): void {
    const part = (this.#parts[format] ??= { frames: [], bytes: 0 });
    part.frames.push(frame);
    part.bytes += frame.length;
  }

  countEvent(): void {
    this.events++;
  }

  /** Bytes of `format` in the batch. */
  bytes(format: Format): number {
    return this.#parts[format]?.bytes ?? 0;
  }

  /** The batch's bytes for `format` as one Buffer, joined once and shared; seals the batch. */
  wire(format: Format): Buffer | undefined {
    this.sealed = true;
    const part = this.#parts[format];
    if (!part || part.frames.length === 0) return undefined;
    return (part.joined ??= part.frames.length === 1 ? part.frames[0] : Buffer.concat(part.frames, part.bytes));
  }
}

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
  /** Wire-ready frames and shared topic batches, in order (reused between writes). */
  readonly #pending: (Buffer | FrameBatch)[] = [];
  /** False until the transport may write (an SSE response before its headers). */
  protected started = true;
  /** Bytes of the queued frames and replies (batches are counted at the write, see {@link flush}). */
  #pendingBytes = 0;
  /**
   * Replies to the client's own requests (WebSocket `pong`, `subscribed`, `error`...):
   * written before the queued frames at the next write, as they used to be sent at once,
   * and counted against the same bound as fan-out.
   */
  readonly #replies: Buffer[] = [];
  /** Batches in `#pending`. */
  #batches = 0;
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
    return this.#queuedBytes() + this.socketBuffered();
  }

  #queuedBytes(): number {
    let n = this.#pendingBytes;
    if (this.#batches > 0) for (const item of this.#pending) if (item instanceof FrameBatch) n += item.bytes(this.format);
    return n;
  }

  /** Turns a rendered payload into the bytes this transport writes (a WebSocket frame; SSE as is). */
  abstract wire(payload: Buffer): Buffer;

  /**
   * Queues a wire-ready frame (see {@link wire}) behind everything queued so far.
   * Returns false (and cuts the client as a slow consumer) when that would pass the
   * buffer bound, or when the connection is closed. `ordered: false` (keep-alive
   * comments) may go out anywhere between frames.
   */
  enqueue(frame: Buffer, ordered = true): boolean {
    if (this.#closed) return false;
    // Only the queue is checked here (cheap, per event); the socket's own buffer is
    // added at flush time, once per turn. Together they stay under about twice the bound.
    if (this.#queuedBytes() + frame.length > this.maxBufferedBytes) {
      this.close('slow_consumer', `send buffer over ${this.maxBufferedBytes} bytes: the client is not reading`);
      return false;
    }
    // A topic batch queued before this frame takes no more events: they would pass it.
    if (ordered && this.#batches > 0) for (const item of this.#pending) if (item instanceof FrameBatch) item.sealed = true;
    if (this.#pending.length === 0 && this.#replies.length === 0) this.scheduleFlush(this);
    this.#pending.push(frame);
    this.#pendingBytes += frame.length;
    return true;
  }

  /**
   * Queues a reply to the client's own request: written ahead of the frames queued so
   * far (replies keep their own order), bounded like them. False (and the client cut
   * as a slow consumer) when that would pass `maxBufferedBytes`: a client that sends
   * without reading is disconnected, its replies never pile up.
   */
  enqueueReply(frame: Buffer): boolean {
    if (this.#closed) return false;
    if (this.#queuedBytes() + frame.length > this.maxBufferedBytes) {
      this.close('slow_consumer', `send buffer over ${this.maxBufferedBytes} bytes: the client is not reading`);
      return false;
    }
    if (this.#pending.length === 0 && this.#replies.length === 0) this.scheduleFlush(this);
    this.#replies.push(frame);
    this.#pendingBytes += frame.length;
    return true;
  }

  /** Queues a topic batch (the gateway appends to it until it is sealed). False when closed. */
  enqueueBatch(batch: FrameBatch): boolean {
    if (this.#closed) return false;
    if (this.#pending.length === 0 && this.#replies.length === 0) this.scheduleFlush(this);
    this.#pending.push(batch);
    this.#batches++;
    return true;
  }

  /**
   * Writes what is queued in one write (called by the gateway once per round, after it
   * sealed the round's batches); returns the number of batch events written. A client
   * whose queued plus socket-held bytes pass `maxBufferedBytes` is cut instead.
   */
  flush(): number {
    const pending = this.#pending;
    const replies = this.#replies;
    if (this.#closed || !this.started || pending.length + replies.length === 0) return 0;
    if (this.#queuedBytes() + this.socketBuffered() > this.maxBufferedBytes) {
      this.close('slow_consumer', `send buffer over ${this.maxBufferedBytes} bytes: the client is not reading`);
      return 0;
    }
    let events = 0;
    if (replies.length === 0 && pending.length === 1) {
      const item = pending[0];
      let out: Buffer | undefined = item as Buffer;
      if (item instanceof FrameBatch) {
        out = item.wire(this.format);
        events = item.events;
      }
      if (out) this.writeWire(out);
    } else {
      // Several parts (replies, batches of several slices of a round, a gap...): one
      // gathered write of the shared buffers, no copy; replies first.
      this.cork();
      for (const r of replies) this.writeWire(r);
      for (const item of pending) {
        let out: Buffer | undefined = item as Buffer;
        if (item instanceof FrameBatch) {
          out = item.wire(this.format);
          events += item.events;
        }
        if (out) this.writeWire(out);
      }
      this.uncork();
    }
    pending.length = 0;
    replies.length = 0;
    this.#pendingBytes = 0;
    this.#batches = 0;
    return events;
  }

  /** Lets queued frames go out once the transport can write. */
  protected markStarted(): void {
    this.started = true;
    if (this.#pending.length + this.#replies.length > 0) this.scheduleFlush(this);
  }

  #drop(): void {
    this.#closed = true;
    clearTimeout(this.#expiryTimer);
    this.#pending.length = 0;
    this.#replies.length = 0;
    this.#pendingBytes = 0;
    this.#batches = 0;
    for (const cleanup of this.subscriptions.values()) cleanup();
    this.subscriptions.clear();
  }

  /**
   * Ends the connection without writing anything (setup failed before the response
   * started; the caller sends the error).
   */
  discard(): void {
    if (this.#closed) return;
    this.#closeReason = 'ended';
    this.#drop();
    this.onClose?.('ended');
    this.#resolveClosed('ended');
  }

  /** Ends the connection with a reason; idempotent. */
  close(reason: CloseReason, message: string = reason): void {
    if (this.#closed) return;
    this.#closeReason = reason;
    this.#drop();
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
  /** Writes wire-ready bytes to the socket. */
  protected abstract writeWire(bytes: Buffer): void;
  /** The socket the frames go to (writes between `cork` and `uncork` leave in one syscall). */
  protected abstract socket(): { cork(): void; uncork(): void; write(b: Buffer): boolean; destroyed: boolean } | null | undefined;
  protected cork(): void {
    this.socket()?.cork();
  }
  protected uncork(): void {
    this.socket()?.uncork();
  }
  /** Sends the goodbye (SSE `event: close`, WebSocket close code) and ends gracefully. */
  protected abstract end(reason: CloseReason, message: string): void;
  protected abstract destroy(): void;
}

const KEEP_ALIVE = Buffer.from(': keep-alive\n\n');

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
    const heartbeat = setInterval(() => this.enqueue(KEEP_ALIVE, false), heartbeatMs);
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
    this.res.write(sseFrame('ready', JSON.stringify(ready)));
    this.markStarted();
  }

  protected socketBuffered(): number {
    return this.res.socket?.writableLength ?? 0;
  }
  wire(payload: Buffer): Buffer {
    return payload;
  }
  protected socket(): Socket | null {
    return this.res.socket;
  }
  protected writeWire(bytes: Buffer): void {
    const socket = this.res.socket;
    if (!socket || socket.destroyed) return;
    socket.write(bytes);
  }
  protected end(reason: CloseReason, message: string): void {
    if (this.res.destroyed) return;
    if (!this.res.headersSent) return void this.res.destroy();
    this.res.end(sseFrame('close', JSON.stringify({ code: reason.toUpperCase(), reason: message })));
  }
  protected destroy(): void {
    this.res.destroy();
  }
}

/** An unmasked, final WebSocket text frame around `payload` (RFC 6455 §5.2): the same bytes serve every client. */
export function wsTextFrame(payload: Buffer): Buffer {
  const n = payload.length;
  const head = n < 126 ? 2 : n < 65536 ? 4 : 10;
  const frame = Buffer.allocUnsafe(head + n);
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

  /**
   * Replies to the client's own request (`pong`, `subscribed`, `error`...): queued
   * ahead of the fan-out frames and written at the next flush, within the same
   * `maxBufferedBytes` (past it the client is cut with 4509). False when not sent.
   */
  reply(message: Record<string, unknown>): boolean {
    if (this.isClosed || this.ws.readyState !== this.ws.OPEN) return false;
    return this.enqueueReply(wsTextFrame(Buffer.from(JSON.stringify(message))));
  }

  protected socketBuffered(): number {
    return this.ws.bufferedAmount;
  }
  wire(payload: Buffer): Buffer {
    return wsTextFrame(payload);
  }
  protected writeWire(bytes: Buffer): void {
    if (this.ws.readyState !== this.ws.OPEN) return;
    // Fan-out writes pre-framed bytes straight to the socket: a server frame is never
    // masked, so the same bytes serve every client (framed once per event), and a
    // round's events go out in one write. `ws` writes its own frames (replies, close)
    // to the same socket synchronously, so the order holds.
    this.socket()?.write(bytes);
  }
  protected socket(): Socket | undefined {
    return (this.ws as unknown as { _socket?: Socket })._socket;
  }
  protected end(reason: CloseReason, message: string): void {
    if (this.ws.readyState === this.ws.OPEN || this.ws.readyState === this.ws.CONNECTING) {
      this.ws.close(WS_CLOSE[reason], truncateUtf8(message, 123)); // ws throws past 123 bytes
    }
  }
  protected destroy(): void {
    this.ws.terminate();
  }
}
