import { HeraldError } from '../errors.js';
import { pgClientExecutor } from './pg.js';
import { postgresJsExecutor } from './postgres-js.js';
import type { Executor, TxLike } from './types.js';

export * from './types.js';
export { pgDriver, pgClientExecutor, type PgDriverOptions } from './pg.js';
export { postgresJsDriver, postgresJsExecutor, type PostgresJsDriverOptions } from './postgres-js.js';

const wrapped = new WeakMap<object, Executor>();

/**
 * Turns what a caller passes as `tx` into an {@link Executor}: a postgres.js object
 * (it has `unsafe`) is wrapped; anything with `query(text, values)` (a `pg` client,
 * a pool, an Executor) is used as it is, reading `rows` and `rowCount` from its result.
 */
export function toExecutor(tx: TxLike): Executor {
  // A postgres.js `sql` or transaction is a function (a tagged template) with `unsafe`.
  if (tx == null || (typeof tx !== 'object' && typeof tx !== 'function')) {
    throw new HeraldError('INVALID_ARGUMENT', 'tx must be a transaction or client with query(text, values), or a postgres.js sql object');
  }
  const cached = wrapped.get(tx);
  if (cached) return cached;
  let executor: Executor;
  if (typeof (tx as { unsafe?: unknown }).unsafe === 'function') {
    executor = postgresJsExecutor(tx as never);
  } else if (typeof (tx as Executor).query === 'function') {
    executor = pgClientExecutor(tx as never);
  } else {
    throw new HeraldError('INVALID_ARGUMENT', 'tx must have query(text, values) or unsafe(text, values)');
  }
  wrapped.set(tx, executor);
  return executor;
}
