import { EventEmitter } from 'node:events';

/** The event every emitter has: a listener threw (the part that emitted goes on). */
export type ListenerErrorEvent = { 'listener:error': [info: { event: string; error: unknown }] };

/**
 * An EventEmitter typed by an event map. Events are named `<part>:<what>`
 * (`notifier:lost`, `job:completed`, `message:dead`, `relay:published`, `topic:batch`).
 * A listener that throws never breaks the part that emits: the error is reported as
 * `listener:error` `{ event, error }`, or, when nobody listens to that, once per event
 * name as a process warning (`HeraldListenerError`). Events are the observability API and the
 * test seam: tests await them instead of sleeping. No event is named `error`, so an
 * event nobody listens to never throws.
 */
export class TypedEmitter<E extends Record<string, unknown[]>, Events extends Record<string, unknown[]> = E & ListenerErrorEvent> {
  readonly #emitter = new EventEmitter({ captureRejections: false });
  /** Event names whose throwing listener was already reported as a warning. */
  readonly #warned = new Set<string>();
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
      } catch (error) {
        this.#listenerFailed(event, error);
      }
    }
  }
  #listenerFailed(event: string, error: unknown): void {
    if (event !== 'listener:error' && this.#emitter.listenerCount('listener:error') > 0) {
      for (const listener of this.#emitter.rawListeners('listener:error')) {
        try {
          (listener as (info: unknown) => void)({ event, error });
        } catch {
          /* a throwing listener:error listener has nowhere left to report to */
        }
      }
      return;
    }
    if (this.#warned.has(event)) return;
    this.#warned.add(event);
    const text = error instanceof Error ? error.message : String(error);
    process.emitWarning(`a listener of '${event}' threw: ${text} (listen to 'listener:error' to handle these; further ones are not reported)`, 'HeraldListenerError');
  }
  protected removeAllListeners(): void {
    this.#emitter.removeAllListeners();
  }
}
