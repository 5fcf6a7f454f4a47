import { InvalidArgumentError } from '../errors.js';

/**
 * Argument checks shared by the parts' entry points, so that a value Postgres would
 * refuse (a NUL in text, a number outside a column's range, an interval that overflows)
 * is refused first with a typed error that names it, never a raw driver error.
 */

/** Largest value of a Postgres bigint (2^63 - 1): the bound of every id kept as a decimal string. */
export const BIGINT_MAX = 9223372036854775807n;

/**
 * Longest duration any call takes in milliseconds (`delayMs`, `thresholdMs`,
 * `olderThanMs`...): 10 years. Longer ones overflow Postgres timestamps or mean a bug.
 */
export const MAX_DURATION_MS = 10 * 365 * 24 * 3600 * 1000;

/** True when `s` holds a lone UTF-16 surrogate: a string that has no UTF-8 encoding (Postgres refuses it). */
export function hasLoneSurrogate(s: string): boolean {
  return /[\uD800-\uDBFF](?![\uDC00-\uDFFF])|(?<![\uD800-\uDBFF])[\uDC00-\uDFFF]/.test(s);
}

/** Whether a JSON text holds a NUL character (`\u0000` escape not itself escaped): Postgres jsonb and text refuse it. */
export function jsonHasNul(text: string): boolean {
  // Fast path: almost no payload holds the escape at all.
  return text.includes('\\u0000') && /(?:^|[^\\])(?:\\\\)*\\u0000/.test(text);
}

/**
 * Whether a JSON text written by `JSON.stringify` holds a lone surrogate (half of a UTF-16
 * pair): JSON.stringify escapes those, and only those, as `\udXXX` (a whole pair is
 * written as is); Postgres jsonb and text refuse them.
 */
export function jsonHasLoneSurrogate(text: string): boolean {
  return text.includes('\\u') && /(?:^|[^\\])(?:\\\\)*\\u[dD][89a-fA-F][0-9a-fA-F]{2}/.test(text);
}

/** A non-empty string of at most `maxBytes` UTF-8 bytes without NUL; returns it. */
export function assertText(argument: string, value: unknown, maxBytes: number): string {
  if (typeof value !== 'string' || value.length === 0 || value.includes('\0') || Buffer.byteLength(value) > maxBytes) {
    throw new InvalidArgumentError(argument, value, `a non-empty string of at most ${maxBytes} UTF-8 bytes without NUL`);
  }
  return value;
}

/** An integer from `min` to `max` (inclusive); returns it. */
export function assertInt(argument: string, value: unknown, min: number, max: number): number {
  if (typeof value !== 'number' || !Number.isInteger(value) || value < min || value > max) {
    throw new InvalidArgumentError(argument, value, `an integer from ${min} to ${max}`);
  }
  return value;
}

/** A finite number of milliseconds from 0 to {@link MAX_DURATION_MS}; returns it. */
export function assertDuration(argument: string, value: unknown): number {
  if (typeof value !== 'number' || !Number.isFinite(value) || value < 0 || value > MAX_DURATION_MS) {
    throw new InvalidArgumentError(argument, value, `a number of milliseconds from 0 to ${MAX_DURATION_MS} (10 years)`);
  }
  return value;
}

/** A Date Postgres can store and people mean: years 1970 to 9999. */
export function assertDate(argument: string, value: unknown): Date {
  if (!(value instanceof Date) || !(value.getTime() >= 0 && value.getTime() < 253402300800000)) {
    throw new InvalidArgumentError(argument, value instanceof Date ? String(value) : value, 'a valid Date from 1970 to 9999');
  }
  return value;
}

/** A decimal id string from 0 to 2^63 - 1 (a bigint key); returns it. */
export function assertBigintId(argument: string, value: unknown): string {
  if (typeof value !== 'string' || !/^\d{1,19}$/.test(value) || BigInt(value) > BIGINT_MAX) {
    throw new InvalidArgumentError(argument, value, 'a decimal id string from 0 to 9223372036854775807');
  }
  return value;
}
