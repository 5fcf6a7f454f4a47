/**
 * Latencies of every item of a period (a soak's minute), in 0.1 ms buckets up to 60 s
 * (the last bucket holds the rest): the period's percentiles over all its items, without
 * sorting hundreds of thousands of numbers in the process being measured.
 */
export class LatencyHistogram {
  static readonly STEP_MS = 0.1;
  readonly counts = new Uint32Array(600_000);
  n = 0;
  add(ms: number): void {
    this.counts[Math.min(this.counts.length - 1, Math.max(0, Math.floor(ms / LatencyHistogram.STEP_MS)))]++;
    this.n++;
  }
  /** The upper edge of the bucket holding the p-quantile (ms). */
  quantile(p: number): number {
    if (this.n === 0) return NaN;
    const rank = Math.min(this.n, Math.floor(this.n * p) + 1);
    let seen = 0;
    for (let i = 0; i < this.counts.length; i++) {
      seen += this.counts[i];
      if (seen >= rank) return (i + 1) * LatencyHistogram.STEP_MS;
    }
    return Infinity;
  }
  /** Share of the items that took longer than `ms`. */
  over(ms: number): number {
    let above = 0;
    for (let i = Math.ceil(ms / LatencyHistogram.STEP_MS); i < this.counts.length; i++) above += this.counts[i];
    return this.n === 0 ? NaN : above / this.n;
  }
}
