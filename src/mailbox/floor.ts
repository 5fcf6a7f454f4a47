import { performance } from 'node:perf_hooks';
import type { Executor } from '../driver/types.js';
import type { ReconnectSource } from '../internal/loop.js';
import { mailboxFloors, type FloorWait } from './queries.js';

/** The floors are looked for at most this often, while destinations are read (ms; see {@link mailboxFloors}). */
export const FLOOR_CHECK_MS = 1000;

/** And a destination's floor from 0 this often (ms): a floor can only go down that way. */
export const FLOOR_RESCAN_MS = 60_000;

/** Destinations whose floor a process keeps at most (the least recently read goes first). */
export const FLOORS_KEPT = 10_000;

interface Entry {
  floor: string;
  /** Read since the last look began: the next look includes it. */
  read: boolean;
  from0At: number;
}

/**
 * The floors of the destinations this process takes from (consumers and `receive`):
 * a seq below which a destination has no ready message and never will (migration 028,
 * src/mailbox/README.md "The floor"). Reading a floor starts a look in the background
 * when one is due: one statement for every destination read since the last look (it
 * reads pg_locks once), one look at a time per process; readers go on with the floors
 * they have. Every FLOOR_RESCAN_MS a destination's look starts from 0, and every floor
 * goes back to 0 when the notifier reconnects: after a failover the new primary's seq
 * sequence may be behind what the old one handed out (what asynchronous replication had
 * not sent yet), and its new messages would land below floors found before.
 */
export class Floors {
  readonly #executor: Executor;
  readonly #schemaSql: string;
  readonly #problem: (err: unknown) => void;
  readonly #entries = new Map<string, Entry>();
  /** What the next look waits for (see {@link mailboxFloors}). */
  #wait: FloorWait | null = null;
  #lookAt = -Infinity;
  #look: Promise<void> | undefined;
  #closed = false;
  /** Bumped by every reset: a look begun before it answers for a server that may be gone. */
  #generation = 0;
  readonly #reconnects: ReconnectSource;
  #watching = false;
  readonly #reset = () => {
    this.#generation++;
    this.#wait = null;
    for (const e of this.#entries.values()) e.floor = '0';
  };

  constructor(executor: Executor, schemaSql: string, reconnects: ReconnectSource, problem: (err: unknown) => void) {
    this.#executor = executor;
    this.#schemaSql = schemaSql;
    this.#reconnects = reconnects;
    this.#problem = problem;
  }

  /** The floor of `to` as last found ('0' at first); starts a look when one is due. */
  floor(to: string): string {
    let e = this.#entries.get(to);
    if (e) {
      // Most recently read last.
      this.#entries.delete(to);
      this.#entries.set(to, e);
    } else {
      e = { floor: '0', read: false, from0At: performance.now() };
      this.#entries.set(to, e);
      if (this.#entries.size > FLOORS_KEPT) this.#entries.delete(this.#entries.keys().next().value!);
    }
    e.read = true;
    if (!this.#watching) {
      this.#watching = true;
      this.#reconnects.on('notifier:reconnected', this.#reset);
    }
    const now = performance.now();
    if (!this.#closed && !this.#look && now - this.#lookAt >= FLOOR_CHECK_MS) this.#startLook(now);
    return e.floor;
  }

  #startLook(now: number): void {
    this.#lookAt = now;
    const generation = this.#generation;
    const asked: { to: string; floor: string; from0: boolean; entry: Entry }[] = [];
    for (const [to, entry] of this.#entries) {
      if (!entry.read) continue;
      entry.read = false;
      const from0 = now - entry.from0At >= FLOOR_RESCAN_MS;
      asked.push({ to, floor: from0 ? '0' : entry.floor, from0, entry });
    }
    this.#look = mailboxFloors(this.#executor, this.#schemaSql, asked, this.#wait)
      .then(
        ({ floors, settled, wait }) => {
          if (generation !== this.#generation) return;
          this.#wait = wait;
          // Nothing settled: every floor stays (a look from 0 is tried again next time).
          if (!settled) return;
          for (const a of asked) {
            a.entry.floor = floors.get(a.to) ?? a.entry.floor;
            if (a.from0) a.entry.from0At = now;
          }
        },
        (err: unknown) => this.#problem(err),
      )
      .finally(() => {
        this.#look = undefined;
      });
  }

  /** Waits for the look in flight, starting none meanwhile (the mailbox is stopping), and stops watching the notifier. */
  async close(): Promise<void> {
    this.#closed = true;
    if (this.#watching) {
      this.#watching = false;
      this.#reconnects.off('notifier:reconnected', this.#reset);
    }
    try {
      await this.#look;
    } finally {
      this.#closed = false;
    }
  }
}
