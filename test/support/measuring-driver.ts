import { pgDriver } from '../../src/index.js';
import type { Driver, Executor } from '../../src/driver/types.js';

/**
 * A driver over `url` that measures with `read` what some statements read: autocommit
 * ones matching `pooled` each in a transaction of their own (into `pooledOut`), and ones
 * inside a transaction matching `inTx` in that transaction (into `inTxOut`).
 * `inFlight.n`, when given, counts the measured statements under way.
 */
export function measuringDriver(
  url: string,
  read: (tx: Executor) => Promise<number>,
  pooled: (text: string) => boolean,
  pooledOut: number[],
  inTx: (text: string) => boolean,
  inTxOut: number[],
  inFlight: { n: number } = { n: 0 },
): Driver {
  const inner = pgDriver({ connectionString: url, max: 6 });
  const measured = async (tx: Executor, out: number[], run: () => Promise<unknown>) => {
    inFlight.n++;
    try {
      const before = await read(tx);
      const r = await run();
      out.push((await read(tx)) - before);
      return r as never;
    } finally {
      inFlight.n--;
    }
  };
  return {
    kind: inner.kind,
    maxConnections: inner.maxConnections,
    executor: {
      query: (text, values, opts) =>
        pooled(text) ? inner.transaction((tx) => measured(tx, pooledOut, () => tx.query(text, values))) : inner.executor.query(text, values, opts),
    },
    transaction: (fn, options) =>
      inner.transaction(
        (tx) => fn({ query: async (text, values, opts) => (inTx(text) ? measured(tx, inTxOut, () => tx.query(text, values, opts)) : tx.query(text, values, opts)) }),
        options,
      ),
    openListenSession: (o) => inner.openListenSession(o),
    end: (o) => inner.end(o),
  };
}

/**
 * What the statements of a transaction read so far from the given relations (index
 * entries returned to index scans, rows returned by sequential scans: the transaction's
 * own `pg_stat_get_xact_tuples_returned`).
 */
export function tuplesReturned(...relations: string[]): (tx: Executor) => Promise<number> {
  return async (tx) =>
    (
      await tx.query<{ n: number }>(
        `SELECT coalesce(sum(pg_stat_get_xact_tuples_returned(r::regclass)), 0)::int AS n FROM unnest($1::text[]) AS r`,
        [relations],
      )
    ).rows[0].n;
}
