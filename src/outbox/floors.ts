/**
 * How many keys a relay keeps a floor for (the most recently seen). The claim's key scan
 * walks a key it has no floor for as before (see migration 030): past this many keys with
 * events in flight at once, the least recently seen ones lose their floor.
 */
export const KEY_FLOORS_KEPT = 1000;

/**
 * Every floor is dropped this often. Floors drop at once when a relay hears of a redrive
 * (its event is pending again, below its key's floor) and when the listen connection
 * comes back (a promoted replica's sequence may be behind); this catches a redrive it
 * could not hear of (one made while wake-ups were paused, or by a version that does not
 * announce it).
 */
export const KEY_FLOORS_RESET_MS = 300_000;

/**
 * A relay's floor per key: a seq below which the key has no pending event, now or later
 * (the lowest pending seq of the key, a head, when a claim last saw it). The claim starts
 * the key's probe there instead of at the key's oldest index entry, so it does not walk
 * the entries of the events published since (which a transaction held open anywhere in
 * the cluster keeps from being removed). Why a head stays a floor: see migration 030.
 */
export class KeyFloors {
  /** Key -> floor, least recently seen first. */
  readonly #floors = new Map<string, bigint>();
  #resetAt = performance.now();
  /** Bumped by every drop: a claim begun before it must not set floors from what it saw. */
  #generation = 0;

  get generation(): number {
    return this.#generation;
  }

  get size(): number {
    return this.#floors.size;
  }

  /** The floors to pass to the next claim (keys, and floors as decimal text). */
  hints(): { keys: string[]; floors: string[] } {
    if (performance.now() - this.#resetAt >= KEY_FLOORS_RESET_MS) this.clear();
    const keys: string[] = [];
    const floors: string[] = [];
    for (const [k, f] of this.#floors) {
      keys.push(k);
      floors.push(f.toString());
    }
    return { keys, floors };
  }

  /** The heads a claim begun at `generation` found: each raises its key's floor. */
  learn(keys: readonly string[], seqs: readonly string[], generation: number): void {
    if (generation !== this.#generation) return;
    for (let i = 0; i < keys.length; i++) {
      const seq = BigInt(seqs[i]);
      const prev = this.#floors.get(keys[i]);
      this.#floors.delete(keys[i]);
      this.#floors.set(keys[i], prev !== undefined && prev > seq ? prev : seq);
      if (this.#floors.size > KEY_FLOORS_KEPT) this.#floors.delete(this.#floors.keys().next().value!);
    }
  }

  /** Drops every floor (the next claims walk every key from its start once). */
  clear(): void {
    this.#floors.clear();
    this.#generation++;
    this.#resetAt = performance.now();
  }
}
