/**
 * The CLI's shared parsing of option values: one integer parser for every numeric
 * option (so `--limit abc` and `--count abc` fail the same clear way instead of a
 * `NaN` reaching a query or a loop), the package version, and URL checks that name
 * the URL without its password.
 */
import { readFileSync } from 'node:fs';
import { CliError } from './context.js';

/** Inclusive bounds of an integer option. */
export interface IntRange {
  /** @defaultValue 0 */
  min?: number;
  /** @defaultValue Number.MAX_SAFE_INTEGER */
  max?: number;
}

/** Limits of the list commands (`--limit`): 1 to 100000. */
export const LIMIT_RANGE: IntRange = { min: 1, max: 100_000 };
/**
 * Most rows the library returns per list call (`queue.list`/`stuck`, the dead-letter
 * lists): `jobs list` pages past it, the other lists print at most this many.
 */
export const LIBRARY_LIST_MAX = 10_000;
/** `--count` of the following commands (listen, jobs watch, topics tail, receive): at least 1. */
export const COUNT_RANGE: IntRange = { min: 1 };

/**
 * Parses a decimal integer option value, or throws a usage error (exit code 2) that
 * names the option, the accepted range and the value given.
 */
export function parseInteger(option: string, raw: string, range: IntRange = {}): number {
  const min = range.min ?? 0;
  const max = range.max ?? Number.MAX_SAFE_INTEGER;
  const text = raw.trim();
  const n = /^[-+]?\d+$/.test(text) ? Number(text) : NaN;
  if (!Number.isSafeInteger(n) || n < min || n > max) {
    const bounds = max === Number.MAX_SAFE_INTEGER ? `an integer >= ${min}` : `an integer from ${min} to ${max}`;
    throw new CliError(`${option} must be ${bounds}, got ${JSON.stringify(raw)}`, 2);
  }
  return n;
}

/**
 * Parses a decimal number that may have a fraction (`0.2`; no sign, no exponent), for
 * the two options that are not integers (`receive --wait` seconds, `doctor
 * --connection-headroom`), or throws a usage error naming the option, range and value.
 */
export function parseDecimal(option: string, raw: string, range: { min: number; max: number }, unit = ''): number {
  const text = raw.trim();
  const n = /^\d+(\.\d+)?$/.test(text) ? Number(text) : NaN;
  if (!(n >= range.min && n <= range.max)) {
    throw new CliError(`${option} must be a number${unit} from ${range.min} to ${range.max} (a decimal, fractions allowed), got ${JSON.stringify(raw)}`, 2);
  }
  return n;
}

/** A commander argument parser for an integer option (see {@link parseInteger}). */
export function intArg(option: string, range: IntRange = {}): (raw: string) => number {
  return (raw) => parseInteger(option, raw, range);
}

/** The package version, from package.json (two folders up from src/cli and dist/cli). */
export function packageVersion(): string {
  try {
    return JSON.parse(readFileSync(new URL('../../package.json', import.meta.url), 'utf8')).version as string;
  } catch {
    return 'unknown';
  }
}

/**
 * `url` as given, with its password replaced by `***`: the one of the user-info
 * (`scheme://user:password@`) and any `password=` (a query parameter, a keyword/value
 * connection string). The text is not normalised (`http://x` stays `http://x`).
 */
export function redactUrl(url: string): string {
  return url.replace(/^([^:/?#@\s]+:\/\/[^:/?#@\s]*:)[^/?#\s]*@/, '$1***@').replace(/(password=)[^&\s]*/gi, '$1***');
}

/**
 * Checks that `url` is a Postgres connection URL (`postgres://` or `postgresql://`)
 * and throws a usage error that names where it came from and the URL (password
 * hidden) when it is not.
 */
export function checkPostgresUrl(url: string, source: string): string {
  let parsed: URL | undefined;
  try {
    parsed = new URL(url);
  } catch {
    parsed = undefined;
  }
  if (!parsed || (parsed.protocol !== 'postgres:' && parsed.protocol !== 'postgresql:')) {
    throw new CliError(
      `${source} is not a Postgres URL: ${JSON.stringify(redactUrl(url))} (expected postgres://user:password@host:5432/database)`,
      2,
    );
  }
  return url;
}
