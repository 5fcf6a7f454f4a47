import { HeraldError } from '../errors.js';
import type { Notification } from './types.js';

/** A fixed-capacity FIFO; memory never exceeds `capacity` entries. */
class Ring<T> {
  readonly #items: (T | undefined)[];
  #head = 0;
  #size = 0;
  constructor(readonly capacity: number) {
    this.#items = new Array(capacity);
  }
  get size(): number {
    return this.#size;
  }
  push(item: T): boolean {
    if (this.#size === this.capacity) return false;
    this.#items[(this.#head + this.#size) % this.capacity] = item;
    this.#size++;
    return true;
  }
  shift(): T | undefined {
    if (this.#size === 0) return undefined;
    const item = this.#items[this.#head];
    this.#items[this.#head] = undefined;
    this.#head = (this.#head + 1) % this.capacity;
    this.#size--;
    return item;
  }
  clear(): void {
    this.#items.fill(undefined);
    this.#head = 0;
    this.#size = 0;
  }
}

/** Hooks the notifier gives a subscription. */
export interface SubscriptionHost {
  release(sub: Subscription): void;
  overflow(sub: Subscription): void;
  handlerFailed(sub: Subscription, err: unknown): void;
}

/**
 * One subscriber of one channel. Each has its own bounded buffer, so a slow or stuck
 * subscriber drops (and counts) its own notifications and never delays the others.
 *
 * Consume it with the handler given to `listen`, or by async iteration:
 *
 * @example
 * const sub = herald.listen('orders');
 * await sub.established;
 * for await (const n of sub) console.log(n.payload);
 */
export class Subscription implements AsyncIterable<Notification> {
  /** The channel, exactly as given. */
  readonly channel: string;
  /** Resolves once LISTEN for this channel is live on the server; rejects if the notifier stops or fails first. */
  readonly established: Promise<void>;
  /** Notifications accepted into this subscription's buffer. */
  delivered = 0;
  /** Notifications dropped because the buffer was full. */
  dropped = 0;
  /** How many notifications the buffer holds (the `bufferSize` it was opened with). */
  readonly bufferSize: number;

  readonly #buffer: Ring<Notification>;
  readonly #handler?: (n: Notification) => unknown;
  readonly #host: SubscriptionHost;
  readonly #onListen?: () => void;
  #resolveEstablished!: () => void;
  #rejectEstablished!: (err: Error) => void;
  #isEstablished = false;
  #closed = false;
  #draining = false;
  #overflowing = false;
  #waiters: ((n: Notification | null) => void)[] = [];

  constructor(
    channel: string,
    host: SubscriptionHost,
    options: { bufferSize: number; handler?: (n: Notification) => unknown; onListen?: () => void },
  ) {
    this.channel = channel;
    this.#host = host;
    this.#handler = options.handler;
    this.#onListen = options.onListen;
    this.bufferSize = options.bufferSize;
    this.#buffer = new Ring(options.bufferSize);
    this.established = new Promise<void>((resolve, reject) => {
      this.#resolveEstablished = resolve;
      this.#rejectEstablished = reject;
    });
    // Nobody has to await `established`: a rejection must not become unhandled.
    this.established.catch(() => {});
  }

  /** True after `close()` (or after the notifier stopped). */
  get closed(): boolean {
    return this.#closed;
  }

  /** Number of notifications waiting in the buffer. */
  get buffered(): number {
    return this.#buffer.size;
  }

  /** @internal LISTEN is live (first time or after a reconnect). */
  _listening(): void {
    if (this.#closed) return;
    if (!this.#isEstablished) {
      this.#isEstablished = true;
      this.#resolveEstablished();
    }
    try {
      this.#onListen?.();
    } catch (err) {
      this.#host.handlerFailed(this, err);
    }
  }

  /** @internal Establishment failed for good. */
  _fail(err: Error): void {
    if (!this.#isEstablished) this.#rejectEstablished(err);
    this._end();
  }

  /** @internal A notification for this channel arrived. */
  _push(n: Notification): void {
    if (this.#closed) return;
    const waiter = this.#waiters.shift();
    if (waiter) {
      this.delivered++;
      waiter(n);
      return;
    }
    // An idle handler (nothing buffered, nothing running) gets the notification at
    // once. Deferring it to a microtask would buffer a whole socket read first: one
    // read can hold thousands of notifications, and a handler that keeps up with
    // every one of them would still overflow its buffer (measured in bench/notifier.ts).
    if (this.#handler && !this.#draining && this.#buffer.size === 0) {
      this.delivered++;
      this.#draining = true;
      let r: unknown;
      try {
        r = this.#handler(n);
      } catch (err) {
        this.#draining = false;
        this.#host.handlerFailed(this, err);
        return;
      }
      if (r && typeof (r as Promise<unknown>).then === 'function') void this.#settle(r as Promise<unknown>);
      else this.#draining = false;
      return;
    }
    if (!this.#buffer.push(n)) {
      this.dropped++;
      if (!this.#overflowing) {
        this.#overflowing = true;
        this.#host.overflow(this);
      }
      return;
    }
    this.#overflowing = false;
    this.delivered++;
    if (this.#handler && !this.#draining) {
      this.#draining = true;
      queueMicrotask(() => void this.#drain());
    }
  }

  /** Waits for an async handler called inline, then drains what arrived meanwhile. */
  async #settle(r: Promise<unknown>): Promise<void> {
    try {
      await r;
    } catch (err) {
      this.#host.handlerFailed(this, err);
    }
    await this.#drain();
  }

  async #drain(): Promise<void> {
    const handler = this.#handler!;
    let n: Notification | undefined;
    while (!this.#closed && (n = this.#buffer.shift()) !== undefined) {
      try {
        const r = handler(n);
        if (r && typeof (r as Promise<unknown>).then === 'function') await r;
      } catch (err) {
        this.#host.handlerFailed(this, err);
      }
    }
    this.#draining = false;
  }

  /**
   * Waits for the next notification: resolves with it, or with `null` when
   * `timeoutMs` passes, `signal` aborts, or the subscription closes. Only for
   * subscriptions without a handler.
   */
  wait(options: { timeoutMs?: number; signal?: AbortSignal } = {}): Promise<Notification | null> {
    const ready = this.#buffer.shift();
    if (ready) return Promise.resolve(ready);
    if (this.#closed || options.signal?.aborted) return Promise.resolve(null);
    return new Promise((resolve) => {
      let timer: NodeJS.Timeout | undefined;
      const done = (n: Notification | null) => {
        if (timer) clearTimeout(timer);
        options.signal?.removeEventListener('abort', onAbort);
        resolve(n);
      };
      const onAbort = () => {
        this.#waiters = this.#waiters.filter((w) => w !== done);
        done(null);
      };
      if (options.timeoutMs !== undefined && Number.isFinite(options.timeoutMs)) {
        timer = setTimeout(onAbort, Math.max(0, options.timeoutMs));
      }
      options.signal?.addEventListener('abort', onAbort, { once: true });
      this.#waiters.push(done);
    });
  }

  async *[Symbol.asyncIterator](): AsyncIterator<Notification> {
    while (true) {
      const n = await this.wait();
      if (n === null) return;
      yield n;
    }
  }

  /** Stops this subscriber; the last subscriber of a channel makes the notifier UNLISTEN. Idempotent. */
  async close(): Promise<void> {
    if (this.#closed) return;
    this._end();
    this.#host.release(this);
  }

  /** @internal */
  _end(): void {
    this.#closed = true;
    this.#buffer.clear();
    for (const w of this.#waiters.splice(0)) w(null);
    if (!this.#isEstablished) this.#rejectEstablished(new HeraldError('STOPPED', 'subscription closed before LISTEN was established'));
  }
}
