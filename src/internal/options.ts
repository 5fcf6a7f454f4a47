import { InvalidOptionError } from '../errors.js';

/**
 * Checks one option's value: returns a description of what was expected when the value
 * is out of its domain (the {@link InvalidOptionError} message), or nothing when it is fine.
 */
export type OptionCheck = (value: unknown) => string | undefined;

/** Per-option checks of a resolver; options without one are taken as given. */
export type OptionChecks<T> = { readonly [K in keyof T]?: OptionCheck };

/**
 * The one option resolver: `defaults`, overridden by every option the user gave a
 * value other than `undefined` (keys the defaults do not know are ignored, so a wider
 * options object — one that also carries `sink` or `handler` — can be passed as is),
 * then each check run in order; the first failing one throws an
 * {@link InvalidOptionError} naming `prefix + option` and the value.
 *
 * @example
 * ```ts
 * const o = resolveOptions(RELAY_DEFAULTS, options, { batchSize: positiveInteger(), pollIntervalMs: positiveNumber });
 * ```
 */
export function resolveOptions<T extends object>(defaults: T, given: object | undefined | null, checks: OptionChecks<T> = {}, prefix = ''): T {
  const out = { ...defaults } as Record<string, unknown>;
  if (given) {
    for (const [k, v] of Object.entries(given)) if (v !== undefined && Object.prototype.hasOwnProperty.call(defaults, k)) out[k] = v;
  }
  for (const [k, check] of Object.entries(checks) as [string, OptionCheck | undefined][]) {
    const expected = check?.(out[k]);
    if (expected !== undefined) throw new InvalidOptionError(prefix + k, out[k], expected);
  }
  return out as T;
}

const finite = (v: unknown): v is number => typeof v === 'number' && Number.isFinite(v);

/** A finite number > 0. */
export const positiveNumber: OptionCheck = (v) => (finite(v) && v > 0 ? undefined : 'a positive number');
/** A finite number >= 0. */
export const nonNegativeNumber: OptionCheck = (v) => (finite(v) && v >= 0 ? undefined : 'a number >= 0');
/** An integer from 1 to `max`. */
export function positiveInteger(max = Number.MAX_SAFE_INTEGER): OptionCheck {
  const expected = max === Number.MAX_SAFE_INTEGER ? 'a positive integer' : `an integer from 1 to ${max}`;
  return (v) => (finite(v) && Number.isInteger(v) && v >= 1 && v <= max ? undefined : expected);
}
/** A number from `min` to `max`. */
export function numberBetween(min: number, max: number): OptionCheck {
  return (v) => (finite(v) && v >= min && v <= max ? undefined : `a number from ${min} to ${max}`);
}
/** A boolean. */
export const boolean: OptionCheck = (v) => (typeof v === 'boolean' ? undefined : 'a boolean');
/** `null`, or what `check` accepts. */
export function nullOr(check: OptionCheck): OptionCheck {
  return (v) => (v === null ? undefined : check(v));
}
/** An integer from `min` to `max`. */
export function integerBetween(min: number, max: number): OptionCheck {
  return (v) => (finite(v) && Number.isInteger(v) && v >= min && v <= max ? undefined : `an integer from ${min} to ${max}`);
}
/** A number >= 1, `Infinity` allowed (attempt counts without a limit). */
export const attemptsOrInfinity: OptionCheck = (v) => (typeof v === 'number' && v >= 1 ? undefined : 'a number >= 1 (or Infinity)');
/** A string of at most `maxBytes` UTF-8 bytes. */
export function stringOfBytes(maxBytes: number): OptionCheck {
  return (v) => (typeof v === 'string' && Buffer.byteLength(v) <= maxBytes ? undefined : `a string of at most ${maxBytes} bytes`);
}

/**
 * Default `samplePages` of `queue.stats({ estimate: true })` and
 * `mailbox.stats({ estimate: true })`: pages of the table sampled (`TABLESAMPLE SYSTEM`)
 * to estimate its finished rows; a table no larger is counted exactly.
 */
export const STATS_SAMPLE_PAGES = 500;
