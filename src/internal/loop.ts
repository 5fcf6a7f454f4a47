import { DB_ERROR_BACKOFF, retryDelay, type RetryPolicy } from './backoff.js';

/**
 * What a turn asks its {@link Loop} to do next:
 * - `'again'`: run the next turn at once (work was found; there may be more);
 * - `'idle'`: nothing found: wait for a wake-up — none if one came during the turn
 *   (`dirty`) — or the safety poll. The turn must have cleared `dirty` when it began
 *   its claim, or the loop runs it again at once;
 * - `'wait'`: busy (every slot full): wait for any wake-up or {@link Loop.interrupt},
 *   whatever `dirty` says, or the safety poll;
 * - a number: like `'idle'`, but look again after at most that many milliseconds.
 */
export type Turn = 'again' | 'idle' | 'wait' | number;

/** Where a loop hears that the listen connection is back (the notifier's `reconnected` event). */
export interface ReconnectSource {
  on(event: 'notifier:reconnected', listener: () => void): unknown;
  off(event: 'notifier:reconnected', listener: () => void): unknown;
}

/** Settings of a {@link Loop}. */
export interface LoopOptions {
  /** One turn: claim, run, record. A throw is a database error: the loop backs off. */
  turn: () => Promise<Turn>;
  /** Safety poll: the longest idle wait without a wake-up. */
  pollIntervalMs: number;
  /** Reports an error the loop backs off from (the part's `problem` event). */
  onError: (err: unknown) => void;
  /** Cuts backoff short and wakes the loop when the listen connection comes back. */
  reconnects?: ReconnectSource;
  /** Backoff after errors. @defaultValue {@link DB_ERROR_BACKOFF} */
  backoff?: RetryPolicy;
  /** Called on every wake-up and every safety poll (a part drops a claim cursor there). */
  onWake?: () => void;
  /** Lanes: turns run by this many concurrent callers. @defaultValue 1 */
  lanes?: number;
  /** Let the loop's timers not keep the process alive. @defaultValue false */
  unref?: boolean;
}

/** How {@link Loop.stop} ends work in flight. */
export interface StopOptions {
  /** After the lanes ended: wait for the part's own work in flight (handlers, flushes). */
  drain?: () => Promise<void>;
  /** Deadline for lanes + drain; past it `onTimeout` runs and stop() no longer waits for the drain. */
  timeoutMs?: number;
  /** Runs once at the deadline (abort handlers, hand work back). */
  onTimeout?: () => Promise<void> | void;
}

type Waiter = () => void;

interface Hold {
  cut: () => void;
  /** stop() ends it. */
  byStop: boolean;
  /** A reconnect ends it. */
  byReconnect: boolean;
}

let defaultBackoff: RetryPolicy = DB_ERROR_BACKOFF;

/**
 * @internal A test seam: the backoff of loops created from now on without a `backoff`
 * option (`undefined` restores {@link DB_ERROR_BACKOFF}). Recovery tests set an hour, so
 * that only a reconnect can end a loop's backoff in the test's time.
 */
export function setDefaultLoopBackoff(policy: RetryPolicy | undefined): void {
  defaultBackoff = policy ?? DB_ERROR_BACKOFF;
}

/**
 * The one consumer loop under the queue worker, the mailbox consumer, the outbox relay
 * and the topic consumer (see `src/internal/README.md`). The part gives it one turn —
 * claim, run, record — and the loop decides when the next turn runs: at once after
 * work, on a wake-up, on the safety poll, or after a backoff when the turn threw.
 *
 * `dirty` says "something may be due": {@link wake} sets it, the part clears it when it
 * begins a claim, and an `'idle'` turn waits only while it is clear, so a wake-up
 * that arrives during a claim is never lost.
 */
export class Loop {
  /** A wake-up came since the part last began a claim (true at start: catch up first). */
  dirty = true;
  readonly #o: LoopOptions;
  readonly #policy: RetryPolicy;
  readonly #abort = new AbortController();
  /** Idle waits, released by wake()/interrupt()/stop(); two arrays swapped on release (no allocation). */
  #waiters: Waiter[] = [];
  #spare: Waiter[] = [];
  /** Timed waits other than idle: backoff pauses, sleeps, the wait for `ready`; each says what cuts it short. */
  readonly #holds = new Set<Hold>();
  readonly #timers = new Set<NodeJS.Timeout>();
  #lanes: Promise<void>[] = [];
  #failures = 0;
  #stopped: Promise<void> | undefined;
  readonly #onReconnect = (): void => this.#reconnected();

  constructor(options: LoopOptions) {
    this.#o = options;
    this.#policy = options.backoff ?? defaultBackoff;
  }

  /** Aborted when stop() begins. */
  get signal(): AbortSignal {
    return this.#abort.signal;
  }

  /** True once stop() was called. */
  get stopping(): boolean {
    return this.#abort.signal.aborted;
  }

  /** Some lane waits for a wake-up now. */
  get waiting(): boolean {
    return this.#waiters.length > 0;
  }

  /** Consecutive errors since the last {@link succeeded} (or reconnect). */
  get failures(): number {
    return this.#failures;
  }

  /**
   * Starts the lanes. `ready` (LISTEN established) is awaited first — bounded by the
   * safety poll and by stop(), so a notifier that cannot connect holds nothing up — and
   * the first turn is then the catch-up. Once only.
   */
  start(ready?: Promise<unknown>): void {
    if (this.#lanes.length > 0 || this.stopping) return;
    this.#o.reconnects?.on('notifier:reconnected', this.#onReconnect);
    for (let i = 0; i < (this.#o.lanes ?? 1); i++) this.#lanes.push(this.#lane(ready));
  }

  async #lane(ready: Promise<unknown> | undefined): Promise<void> {
    if (ready) await this.#hold(this.#o.pollIntervalMs, true, false, ready);
    const { turn, pollIntervalMs } = this.#o;
    while (!this.stopping) {
      let next: Turn;
      try {
        next = await turn();
      } catch (err) {
        if (this.stopping) break;
        await this.backoff(err);
        continue;
      }
      if (next === 'again' || this.stopping) continue;
      if (next === 'wait') await this.#wait(pollIntervalMs);
      else if (!this.dirty) await this.#wait(next === 'idle' ? pollIntervalMs : Math.max(1, Math.min(next, pollIntervalMs)));
    }
  }

  /** Something may be due: mark `dirty` and end every idle wait. */
  wake(): void {
    this.#o.onWake?.();
    this.nudge();
  }

  /** Like {@link wake}, without `onWake`: the part has noted what came itself (a keyed wake-up). */
  nudge(): void {
    this.dirty = true;
    this.interrupt();
  }

  /** End every idle wait without marking work (a slot freed, a statement answered). */
  interrupt(): void {
    const ws = this.#waiters;
    if (ws.length === 0) return;
    this.#waiters = this.#spare;
    this.#spare = ws;
    for (let i = 0; i < ws.length; i++) ws[i]();
    ws.length = 0;
  }

  /** The part's statement succeeded: the next error starts the backoff from its first step. */
  succeeded(): void {
    this.#failures = 0;
  }

  /** Reports `err` and pauses per the backoff policy; a reconnect or stop() cuts the pause short. */
  backoff(err: unknown): Promise<void> {
    this.#o.onError(err);
    return this.pause(retryDelay(this.#policy, ++this.#failures));
  }

  /**
   * Waits `ms`, cut short by a reconnect, and by stop() unless `untilStop` is false
   * (a path that must keep retrying while stopping, such as recording outcomes).
   */
  pause(ms: number, untilStop = true): Promise<void> {
    return this.#hold(ms, untilStop, true);
  }

  /** Waits `ms` unless stop() comes first (a cooldown, a fixed retry delay). */
  sleep(ms: number): Promise<void> {
    return this.#hold(ms, true, false);
  }

  /**
   * One timed wait, ended by its timer, by `until` settling, or by what `byStop` /
   * `byReconnect` name. No listener on the abort signal: many lanes may wait at once.
   */
  #hold(ms: number, byStop: boolean, byReconnect: boolean, until?: Promise<unknown>): Promise<void> {
    if (byStop && this.stopping) return Promise.resolve();
    return new Promise((resolve) => {
      const hold: Hold = {
        byStop,
        byReconnect,
        cut: () => {
          if (!this.#holds.delete(hold)) return;
          clearTimeout(timer);
          resolve();
        },
      };
      const timer = setTimeout(hold.cut, ms);
      if (this.#o.unref) timer.unref();
      this.#holds.add(hold);
      until?.then(hold.cut, hold.cut);
    });
  }

  /**
   * A one-shot timer that stop() clears and that does not keep the process alive (an
   * early wake-up, such as when a retried message becomes visible: the poll is the net).
   */
  timer(ms: number, fn: () => void): void {
    if (this.stopping) return;
    const t = setTimeout(() => {
      this.#timers.delete(t);
      fn();
    }, ms);
    t.unref();
    this.#timers.add(t);
  }

  #wait(ms: number): Promise<void> {
    return new Promise((resolve) => {
      let timer: NodeJS.Timeout | undefined;
      const release = (): void => {
        if (timer === undefined) return;
        clearTimeout(timer);
        timer = undefined;
        resolve();
      };
      timer = setTimeout(() => {
        timer = undefined;
        const i = this.#waiters.indexOf(release);
        if (i >= 0) this.#waiters.splice(i, 1);
        // The safety poll: look even though no wake-up came.
        this.dirty = true;
        this.#o.onWake?.();
        resolve();
      }, ms);
      if (this.#o.unref) timer.unref();
      this.#waiters.push(release);
    });
  }

  #reconnected(): void {
    this.#failures = 0;
    for (const h of [...this.#holds]) if (h.byReconnect) h.cut();
    this.wake();
  }

  /**
   * Stops: no turn starts any more; idle waits, backoff pauses and timers end now, and
   * the reconnect listener is removed. Resolves when every lane's turn in flight has
   * ended and `drain` resolved — or, past `timeoutMs`, once `onTimeout` ran and the
   * lanes ended. Afterwards the loop holds no timer and no listener. Idempotent: later
   * calls return the first call's promise.
   */
  stop(options: StopOptions = {}): Promise<void> {
    if (this.#stopped) return this.#stopped;
    this.#abort.abort();
    this.#o.reconnects?.off('notifier:reconnected', this.#onReconnect);
    for (const t of this.#timers) clearTimeout(t);
    this.#timers.clear();
    for (const h of [...this.#holds]) if (h.byStop) h.cut();
    this.interrupt();
    const lanes = Promise.all(this.#lanes).then(() => {});
    const drained = options.drain ? lanes.then(options.drain) : lanes;
    const { timeoutMs, onTimeout } = options;
    if (timeoutMs === undefined || !Number.isFinite(timeoutMs)) return (this.#stopped = drained);
    this.#stopped = (async () => {
      let timer: NodeJS.Timeout | undefined;
      const late = await Promise.race([drained.then(() => false), new Promise<boolean>((resolve) => (timer = setTimeout(() => resolve(true), timeoutMs)))]);
      clearTimeout(timer);
      if (late) {
        await onTimeout?.();
        await lanes;
      }
    })();
    return this.#stopped;
  }
}
