/**
 * The one retry policy of pgherald. Every delay between attempts — a failed job, a
 * failed mailbox message, a failed outbox publish, a consumer loop backing off after a
 * database error — is drawn from the same formula, in JavaScript ({@link retryDelay})
 * or in SQL ({@link retryDelaySql}), from the same {@link RetryPolicy} parameters:
 *
 * ```
 * ceiling(n) = min(maxMs, baseMs * 2^(n - 1))        n = attempts failed so far (n >= 1)
 * delay(n)   = ceiling(n) * (1 - jitter * random())   random() uniform in [0, 1)
 * ```
 *
 * `jitter` is the share of the ceiling taken off at random: 0 waits exactly the
 * ceiling, 0.5 ("equal jitter") waits between half the ceiling and all of it, 1 ("full
 * jitter") anywhere up to the ceiling. Jitter spreads many processes that failed
 * together (a restart, a broken sink) over the window instead of synchronising their
 * retries; some jitter below 1 keeps a retry from ever being immediate.
 */
export interface RetryPolicy {
  /** Ceiling of the first delay, in milliseconds; doubles per attempt. */
  baseMs: number;
  /** Cap of the ceiling, in milliseconds. */
  maxMs: number;
  /** Share of each delay taken off at random, from 0 (none) to 1 (full jitter). */
  jitter: number;
}

/** Exponents above this change nothing (2^30 ms is 12 days) and keep the arithmetic finite. */
const MAX_DOUBLINGS = 30;

/**
 * The policy of every consumer loop (queue worker, mailbox consumer, outbox relay,
 * topic consumer) after a database error (connection lost, server restarting): 50 ms
 * doubling to 2 s, equal jitter. The notifier's `reconnected` event cuts it short.
 */
export const DB_ERROR_BACKOFF: Readonly<RetryPolicy> = Object.freeze({ baseMs: 50, maxMs: 2000, jitter: 0.5 });

/** The delay before the next attempt after `attempts` failed ones (see {@link RetryPolicy}). */
export function retryDelay(policy: RetryPolicy, attempts: number, random: () => number = Math.random): number {
  const n = Math.min(Math.max(attempts - 1, 0), MAX_DOUBLINGS);
  const ceiling = Math.min(policy.maxMs, policy.baseMs * 2 ** n);
  return Math.floor(ceiling * (1 - policy.jitter * random()));
}

/**
 * The same formula as an SQL expression (float8 milliseconds) for statements that
 * schedule the retry in database time. `attempts` is an SQL expression written by
 * pgherald (a column reference), never a user's string; the three parameters are bind
 * parameter references such as `'$4'` holding {@link RetryPolicy} values.
 *
 * @example `now() + ${retryDelaySql('m.attempts + 1', '$4', '$5', '$6')} * interval '1 millisecond'`
 */
export function retryDelaySql(attempts: string, baseParam: string, maxParam: string, jitterParam: string): string {
  return (
    `(least(${maxParam}::float8, ${baseParam}::float8 * power(2::float8, least(greatest((${attempts}) - 1, 0), ${MAX_DOUBLINGS})))` +
    ` * (1 - ${jitterParam}::float8 * random()))`
  );
}

/**
 * Exponential backoff with full jitter, by a 0-based attempt: {@link retryDelay} with
 * `jitter` 1 and `attempt + 1` failed attempts. Kept for the notifier's reconnect loop.
 */
export function backoffDelay(attempt: number, baseMs: number, capMs: number, random: () => number = Math.random): number {
  return retryDelay({ baseMs, maxMs: capMs, jitter: 1 }, attempt + 1, random);
}

/** A sleep that a signal can cut short; resolves either way, never rejects. */
export function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    if (signal?.aborted) return resolve();
    const onAbort = () => {
      clearTimeout(timer);
      resolve();
    };
    const timer = setTimeout(() => {
      signal?.removeEventListener('abort', onAbort);
      resolve();
    }, ms);
    signal?.addEventListener('abort', onAbort, { once: true });
  });
}

/** Rejects with `onTimeout()` if `promise` does not settle within `ms`. */
export function withTimeout<T>(promise: Promise<T>, ms: number, onTimeout: () => Error): Promise<T> {
  let timer: NodeJS.Timeout;
  return Promise.race([
    promise.finally(() => clearTimeout(timer)),
    new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(onTimeout()), ms);
    }),
  ]);
}
