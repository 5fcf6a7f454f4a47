import { createRequire } from 'node:module';
import { HeraldError } from '../errors.js';

const require = createRequire(import.meta.url);

/**
 * Loads an optional peer dependency (`pg`, `postgres`, `ws`, `prom-client`, ...) the
 * first time a feature needs it, so `import 'pgherald'` never loads what the
 * application did not install. A missing package is a {@link HeraldError} with code
 * `MISSING_DEPENDENCY` whose message names the package to install and the feature
 * that needs it; any other load failure is rethrown as it is.
 */
export function loadPeer<T>(name: string, feature: string): T {
  try {
    return require(name) as T;
  } catch (err) {
    throw missingOr(err, name, feature);
  }
}

/** `import()` of an ESM-only optional peer (`jose`, `@nats-io/*`), with the same error as {@link loadPeer}. */
export async function importPeer<T>(name: string, feature: string): Promise<T> {
  try {
    return (await import(name)) as T;
  } catch (err) {
    throw missingOr(err, name, feature);
  }
}

function missingOr(err: unknown, name: string, feature: string): unknown {
  const code = (err as NodeJS.ErrnoException)?.code;
  if ((code === 'MODULE_NOT_FOUND' || code === 'ERR_MODULE_NOT_FOUND') && String((err as Error).message).includes(`'${name}`)) {
    return new HeraldError('MISSING_DEPENDENCY', `${feature} needs the package "${name}", which is not installed: npm install ${name}`, { cause: err });
  }
  return err;
}

/**
 * Throws one `MISSING_DEPENDENCY` error naming every package of `names` that cannot be
 * resolved, so a user installs them in one go.
 */
export function requirePeers(names: readonly string[], feature: string): void {
  const missing = names.filter((name) => {
    try {
      require.resolve(name);
      return false;
    } catch {
      return true;
    }
  });
  if (missing.length > 0) {
    const list = missing.map((n) => `"${n}"`).join(', ');
    throw new HeraldError('MISSING_DEPENDENCY', `${feature} needs the package${missing.length > 1 ? 's' : ''} ${list}, not installed: npm install ${missing.join(' ')}`);
  }
}
