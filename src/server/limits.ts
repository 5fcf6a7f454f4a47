import { HttpError } from './http.js';

/** A token bucket: `ratePerSecond` refill, burst of the same size. */
export class TokenBucket {
  #tokens: number;
  #at = performance.now();
  constructor(readonly ratePerSecond: number) {
    this.#tokens = ratePerSecond;
  }
  /** Takes one token; false when empty. */
  take(): boolean {
    const now = performance.now();
    this.#tokens = Math.min(this.ratePerSecond, this.#tokens + ((now - this.#at) / 1000) * this.ratePerSecond);
    this.#at = now;
    if (this.#tokens < 1) return false;
    this.#tokens -= 1;
    return true;
  }
}

/** Per-token accounting: open connections and the publish rate. Entries go away when unused. */
export class TokenLimits {
  readonly #connections = new Map<string, number>();
  readonly #buckets = new Map<string, { bucket: TokenBucket; usedAt: number }>();
  #sweptAt = Date.now();

  constructor(readonly maxConnectionsPerToken: number, readonly publishPerSecond: number) {}

  /** Counts a new connection of `id`; throws 429 `TOO_MANY_CONNECTIONS` at the limit. Returns its release. */
  acquireConnection(id: string): () => void {
    const n = this.#connections.get(id) ?? 0;
    if (n >= this.maxConnectionsPerToken) {
      throw new HttpError(429, 'TOO_MANY_CONNECTIONS', `this token already holds ${n} connections (limit ${this.maxConnectionsPerToken})`);
    }
    this.#connections.set(id, n + 1);
    let released = false;
    return () => {
      if (released) return;
      released = true;
      const left = (this.#connections.get(id) ?? 1) - 1;
      if (left <= 0) this.#connections.delete(id);
      else this.#connections.set(id, left);
    };
  }

  /** Connections of `id` now. */
  connections(id: string): number {
    return this.#connections.get(id) ?? 0;
  }

  /** Takes one publish from `id`'s bucket; throws 429 `RATE_LIMITED` when empty. */
  takePublish(id: string): void {
    const now = Date.now();
    if (now - this.#sweptAt > 60_000) {
      for (const [k, v] of this.#buckets) if (now - v.usedAt > 60_000) this.#buckets.delete(k);
      this.#sweptAt = now;
    }
    let entry = this.#buckets.get(id);
    if (!entry) {
      entry = { bucket: new TokenBucket(this.publishPerSecond), usedAt: now };
      this.#buckets.set(id, entry);
    }
    entry.usedAt = now;
    if (!entry.bucket.take()) throw new HttpError(429, 'RATE_LIMITED', `publish rate over ${this.publishPerSecond}/s for this token`);
  }
}
