import { performance } from 'node:perf_hooks';
import type { Executor } from '../driver/types.js';
import { mailboxFloor, type FloorWait } from './queries.js';

/** A destination's floor is looked for at most this often while it is read (ms; see {@link mailboxFloor}). */
export const FLOOR_CHECK_MS = 1000;

/** And looked for from 0 this often (ms): a floor can only go down that way. */
export const FLOOR_RESCAN_MS = 60_000;

/** Destinations whose floor a process keeps at most (the least recently used goes first). */
export const FLOORS_KEPT = 10_000;

interface Entry {
  floor: string;
  wait: FloorWait | null;
  at: number;
  from0At: number;
  check: Promise<void> | undefined;
}

/**
 * The floors of the destinations this process takes from (consumers and `receive`):
 * a seq below which a destination has no ready message and never will (migration 028,
 * src/mailbox/README.md "The floor"). Reading a floor starts a look for a higher one in
 * the background when one is due (one at a time per destination); the reader goes on
 * with the floor it has. Every FLOOR_RESCAN_MS the look starts from 0.
 */
export class Floors {
  readonly #executor: Executor;
  readonly #schemaSql: string;
  readonly #problem: (err: unknown) => void;
  readonly #entries = new Map<string, Entry>();
  #closed = false;

  constructor(executor: Executor, schemaSql: string, problem: (err: unknown) => void) {
    this.#executor = executor;
    this.#schemaSql = schemaSql;
    this.#problem = problem;
  }

  /** The floor of `to` as last found ('0' at first); starts a look when one is due. */
  floor(to: string): string {
    let e = this.#entries.get(to);
    if (e) {
      // Most recently used last.
      this.#entries.delete(to);
      this.#entries.set(to, e);
    } else {
      e = { floor: '0', wait: null, at: -Infinity, from0At: -Infinity, check: undefined };
      this.#entries.set(to, e);
      if (this.#entries.size > FLOORS_KEPT) this.#entries.delete(this.#entries.keys().next().value!);
    }
    const now = performance.now();
    if (!this.#closed && !e.check && now - e.at >= FLOOR_CHECK_MS) {
      e.at = now;
      const from0 = now - e.from0At >= FLOOR_RESCAN_MS;
      if (from0) e.from0At = now;
      const entry = e;
      entry.check = mailboxFloor(this.#executor, this.#schemaSql, to, from0 ? '0' : entry.floor, entry.wait)
        .then(
          ({ floor, wait }) => {
            entry.floor = floor;
            entry.wait = wait;
          },
          (err: unknown) => this.#problem(err),
        )
        .finally(() => {
          entry.check = undefined;
        });
    }
    return e.floor;
  }

  /** Waits for the looks in flight, starting none meanwhile (the mailbox is stopping). */
  async close(): Promise<void> {
    this.#closed = true;
    try {
      await Promise.all([...this.#entries.values()].map((e) => e.check));
    } finally {
      this.#closed = false;
    }
  }
}
