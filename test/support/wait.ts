/** Waiting on real signals: a condition that becomes true, or an event. Never a bare sleep. */

/**
 * Polls `check` until it returns a truthy value (returned), or throws after `timeoutMs`.
 * With `progress`, `timeoutMs` is how long the measure may stand still instead: the
 * deadline moves each time it grows, so a loaded machine (slow progress) passes and a
 * stuck run (no progress) fails, however long the whole wait takes.
 */
export async function waitFor<T>(
  check: () => T | Promise<T>,
  options: { timeoutMs?: number; intervalMs?: number; what?: string; progress?: () => number | Promise<number> } = {},
): Promise<NonNullable<T>> {
  const window = options.timeoutMs ?? 15_000;
  let deadline = Date.now() + window;
  let best = -Infinity;
  let last: unknown;
  for (;;) {
    try {
      const v = await check();
      if (v) return v as NonNullable<T>;
      if (options.progress) {
        const p = await options.progress();
        if (p > best) {
          best = p;
          deadline = Date.now() + window;
        }
      }
    } catch (err) {
      last = err;
    }
    if (Date.now() > deadline) {
      const still = options.progress ? ` (no progress for ${window} ms, stuck at ${best})` : '';
      throw new Error(`timed out waiting for ${options.what ?? 'condition'}${still}${last ? `: ${(last as Error).message}` : ''}`);
    }
    await new Promise((r) => setTimeout(r, options.intervalMs ?? 20));
  }
}

/**
 * Waits until `count()` reaches `target`; fails only when the count has not grown for
 * `idleMs` (default 60 s). Returns the count.
 */
export function waitForCount(
  count: () => number | Promise<number>,
  target: number,
  options: { idleMs?: number; intervalMs?: number; what?: string } = {},
): Promise<number> {
  let latest = 0;
  const measure = async () => (latest = await count());
  return waitFor(async () => ((await measure()) >= target ? latest || target : 0), {
    timeoutMs: options.idleMs ?? 60_000,
    intervalMs: options.intervalMs,
    what: `${options.what ?? 'count'} to reach ${target}`,
    progress: () => latest,
  });
}

/** Resolves with the arguments of the next `event` on an emitter with `once`, or rejects after `timeoutMs`. */
export function nextEvent<E extends { once(event: any, fn: (...args: any[]) => void): unknown }>(
  emitter: E,
  event: Parameters<E['once']>[0] & string,
  timeoutMs = 15_000,
): Promise<any[]> {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`timed out waiting for event ${event}`)), timeoutMs);
    emitter.once(event, (...args: unknown[]) => {
      clearTimeout(timer);
      resolve(args);
    });
  });
}

/** A promise with its resolve function outside. */
export function deferred<T = void>(): { promise: Promise<T>; resolve: (v: T) => void; reject: (e: unknown) => void } {
  let resolve!: (v: T) => void;
  let reject!: (e: unknown) => void;
  const promise = new Promise<T>((res, rej) => {
    resolve = res;
    reject = rej;
  });
  return { promise, resolve, reject };
}
