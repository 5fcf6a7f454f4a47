import { hostname } from 'node:os';
import { randomUUID } from 'node:crypto';
import type { Executor } from '../driver/types.js';
import { leaderAcquire, leaderRelease } from './queries.js';

/** A holder name unique to this process: `host:pid:random`, shown by `herald maintenance status`. */
export function holderName(): string {
  return `${hostname()}:${process.pid}:${randomUUID().slice(0, 8)}`;
}

/**
 * Leadership of one role through the database: a lease row (role, holder, expires_at)
 * taken or renewed for `ttlMs` of database time. The one election mechanism of
 * pgherald: queue cron (role `cron`) and the maintenance service (role `maintenance`)
 * both use it. A leader that dies stops renewing and the lease runs out: another
 * candidate takes it at its next renewal, at most `ttlMs` plus one renewal period
 * later. A leader that stops resigns (deletes the row), so a successor takes over at
 * its next renewal. No dedicated session is held, so it works through a transaction
 * pooler.
 *
 * Callers renew at a third of `ttlMs` or more often. A renewal that fails (database
 * unreachable) counts as a loss: the caller stops leading at once rather than after
 * its lease ran out, since it cannot know whether it still holds it.
 */
export class Leadership {
  #leader = false;

  constructor(
    readonly executor: Executor,
    readonly schemaSql: string,
    readonly role: string,
    readonly holder: string,
    readonly ttlMs: number,
    readonly onChange: (leader: boolean) => void,
  ) {}

  /** Whether this holder led at its last renewal. */
  get isLeader(): boolean {
    return this.#leader;
  }

  /** Takes or renews the lease; returns whether this holder leads. Throws (and no longer leads) when the database fails. */
  async renew(): Promise<boolean> {
    let leader: boolean;
    try {
      leader = await leaderAcquire(this.executor, this.schemaSql, this.role, this.holder, this.ttlMs);
    } catch (err) {
      this.#set(false);
      throw err;
    }
    this.#set(leader);
    return leader;
  }

  /** Gives the lease up if held (a successor takes it at its next renewal). */
  async resign(): Promise<void> {
    if (!this.#leader) return;
    this.#set(false);
    await leaderRelease(this.executor, this.schemaSql, this.role, this.holder);
  }

  #set(leader: boolean): void {
    if (leader === this.#leader) return;
    this.#leader = leader;
    this.onChange(leader);
  }
}
