import { EventEmitter } from 'node:events';

/**
 * An EventEmitter typed by an event map. Events are the observability API and the
 * test seam: tests await them instead of sleeping. No event is named `error`, so an
 * event nobody listens to never throws.
 */
export class TypedEmitter<Events extends Record<string, unknown[]>> {
  readonly #emitter = new EventEmitter({ captureRejections: false });
  constructor() {
    this.#emitter.setMaxListeners(0);
  }
  on<K extends keyof Events & string>(event: K, listener: (...args: Events[K]) => void): this {
    this.#emitter.on(event, listener as (...args: unknown[]) => void);
    return this;
  }
  once<K extends keyof Events & string>(event: K, listener: (...args: Events[K]) => void): this {
    this.#emitter.once(event, listener as (...args: unknown[]) => void);
    return this;
  }
  off<K extends keyof Events & string>(event: K, listener: (...args: Events[K]) => void): this {
    this.#emitter.off(event, listener as (...args: unknown[]) => void);
    return this;
  }
  /** Whether anyone listens to `event`. */
  hasListeners<K extends keyof Events & string>(event: K): boolean {
    return this.#emitter.listenerCount(event) > 0;
  }
  /** How many listeners `event` has (tests check that nothing grows per reconnect). */
  listenerCount<K extends keyof Events & string>(event: K): number {
    return this.#emitter.listenerCount(event);
  }
  /** Resolves with the arguments of the next `event`. */
  next<K extends keyof Events & string>(event: K): Promise<Events[K]> {
    return new Promise((resolve) => this.once(event, (...args) => resolve(args)));
  }
  protected emit<K extends keyof Events & string>(event: K, ...args: Events[K]): void {
    // A throwing listener must not break the part that emits.
    if (this.#emitter.listenerCount(event) === 0) return;
    // rawListeners: a `once` listener comes wrapped, and its wrapper removes it when called
    // (`listeners()` would return the bare function, and a `once` listener would stay for ever).
    for (const listener of this.#emitter.rawListeners(event)) {
      try {
        (listener as (...a: unknown[]) => void)(...args);
      } catch {
        /* listener errors are the listener's business */
      }
    }
  }
  protected removeAllListeners(): void {
    this.#emitter.removeAllListeners();
  }
}
