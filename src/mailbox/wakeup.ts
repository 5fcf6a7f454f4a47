import { createHash } from 'node:crypto';
import type { Notifier } from '../notifier/notifier.js';
import type { Subscription } from '../notifier/subscription.js';
import { MAX_CHANNEL_BYTES } from '../notifier/validate.js';

/**
 * The channel every sender of a schema notifies and every receiver of it LISTENs on:
 * one LISTEN per process, however many destinations. The payload names the destination.
 * `herald.mailbox` for the default schema; a schema whose name makes it too long is hashed.
 */
export function mailboxChannel(schema: string): string {
  const name = `${schema}.mailbox`;
  if (Buffer.byteLength(name) <= MAX_CHANNEL_BYTES) return name;
  return `mailbox.${createHash('sha256').update(schema).digest('hex').slice(0, 40)}`;
}

type Waiter = () => void;

/**
 * Waits for `promise`, but no longer than `timeoutMs` or until `signal` aborts; leaves
 * no timer behind. Used so that a first LISTEN that cannot connect never holds up a
 * receive past its timeout, or a consumer's stop().
 */
export async function waitBounded(promise: Promise<unknown>, timeoutMs: number, signal?: AbortSignal): Promise<void> {
  if (signal?.aborted) return;
  let timer: NodeJS.Timeout | undefined;
  let onAbort: (() => void) | undefined;
  try {
    await Promise.race([
      promise,
      new Promise<void>((resolve) => {
        if (Number.isFinite(timeoutMs)) timer = setTimeout(resolve, Math.max(0, timeoutMs));
        onAbort = () => resolve();
        signal?.addEventListener('abort', onAbort, { once: true });
      }),
    ]);
  } finally {
    clearTimeout(timer);
    if (onAbort) signal?.removeEventListener('abort', onAbort);
  }
}

/**
 * Wake-ups for the receivers of one process. Each destination has an epoch that moves
 * when a notification names it; every epoch moves when LISTEN is (re)established
 * (receivers must catch up by query then) or when a notification may have been dropped.
 *
 * A receiver reads the epoch, queries, and if it found nothing waits for the epoch to
 * move: a notification that arrives between the query and the wait is not lost.
 */
export class WakeHub {
  readonly #notifier: Notifier;
  readonly #channel: string;
  readonly #epochs = new Map<string, number>();
  readonly #waiters = new Map<string, Set<Waiter>>();
  /** Receivers interested in each destination; epochs are kept only for these. */
  readonly #interest = new Map<string, number>();
  /** Consumers' wake-up callbacks per destination (their loops' `wake`). */
  readonly #callbacks = new Map<string, Set<Waiter>>();
  #global = 0;
  #sub: Subscription | undefined;
  #onProblem: (err: Error) => void;
  readonly #onOverflow = (info: { channel: string }) => {
    if (info.channel === this.#channel) this.wakeAll();
  };

  constructor(notifier: Notifier, channel: string, onProblem: (err: Error) => void) {
    this.#notifier = notifier;
    this.#channel = channel;
    this.#onProblem = onProblem;
  }

  /**
   * LISTENs (once) and resolves when LISTEN is live. Never rejects: when the notifier
   * cannot listen, receivers still find messages by the safety poll.
   */
  async ready(): Promise<void> {
    try {
      if (!this.#sub || this.#sub.closed) {
        this.#notifier.off('notifier:overflow', this.#onOverflow);
        this.#notifier.on('notifier:overflow', this.#onOverflow);
        this.#sub = this.#notifier.listen(this.#channel, (n) => this.#wake(n.payload), {
          bufferSize: 10_000,
          // After every (re)LISTEN: catch up by query, since notifications sent while the
          // session was down are gone.
          onListen: () => this.wakeAll(),
        });
      }
      await this.#sub.established;
    } catch (err) {
      this.#onProblem(err as Error);
    }
  }

  /**
   * Registers interest in a destination (a running receive or consumer) so its epoch
   * is tracked, and `onWake` (a consumer loop's wake) to call whenever the epoch moves;
   * returns the function that releases both.
   */
  watch(destination: string, onWake?: Waiter): () => void {
    this.#interest.set(destination, (this.#interest.get(destination) ?? 0) + 1);
    if (onWake) {
      let set = this.#callbacks.get(destination);
      if (!set) this.#callbacks.set(destination, (set = new Set()));
      set.add(onWake);
    }
    let released = false;
    return () => {
      if (released) return;
      released = true;
      if (onWake) {
        const set = this.#callbacks.get(destination);
        set?.delete(onWake);
        if (set?.size === 0) this.#callbacks.delete(destination);
      }
      const n = (this.#interest.get(destination) ?? 1) - 1;
      if (n > 0) this.#interest.set(destination, n);
      else {
        this.#interest.delete(destination);
        this.#epochs.delete(destination);
      }
    };
  }

  /** The epoch of a destination (read it before querying). */
  epoch(destination: string): number {
    return this.#global + (this.#epochs.get(destination) ?? 0);
  }

  /**
   * Resolves when the destination's epoch differs from `seen`, after `timeoutMs`, or
   * when `signal` aborts; whichever comes first.
   */
  wait(destination: string, seen: number, timeoutMs: number, signal?: AbortSignal): Promise<void> {
    if (this.epoch(destination) !== seen || signal?.aborted || timeoutMs <= 0) return Promise.resolve();
    return new Promise((resolve) => {
      let set = this.#waiters.get(destination);
      if (!set) this.#waiters.set(destination, (set = new Set()));
      const done = () => {
        clearTimeout(timer);
        signal?.removeEventListener('abort', done);
        const s = this.#waiters.get(destination);
        s?.delete(done);
        if (s?.size === 0) this.#waiters.delete(destination);
        resolve();
      };
      const timer = setTimeout(done, timeoutMs);
      signal?.addEventListener('abort', done, { once: true });
      set.add(done);
    });
  }

  /** Moves one destination's epoch (a notification, or a local retry timer). */
  wake(destination: string): void {
    this.#wake(destination);
  }

  /** Moves every epoch: after (re)LISTEN, after dropped notifications, on stop. */
  wakeAll(): void {
    this.#global++;
    for (const set of [...this.#waiters.values()]) for (const w of [...set]) w();
    for (const set of [...this.#callbacks.values()]) for (const w of [...set]) w();
  }

  #wake(destination: string): void {
    if (!this.#interest.has(destination)) return;
    this.#epochs.set(destination, (this.#epochs.get(destination) ?? 0) + 1);
    const set = this.#waiters.get(destination);
    if (set) for (const w of [...set]) w();
    const callbacks = this.#callbacks.get(destination);
    if (callbacks) for (const w of callbacks) w();
  }

  /** UNLISTENs and releases every waiter. */
  async close(): Promise<void> {
    this.#notifier.off('notifier:overflow', this.#onOverflow);
    const sub = this.#sub;
    this.#sub = undefined;
    this.wakeAll();
    this.#epochs.clear();
    this.#interest.clear();
    this.#callbacks.clear();
    await sub?.close();
  }
}
