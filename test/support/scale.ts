/**
 * Scale of load tests: 1 runs them at the sizes the issues ask for; CI's second run
 * (the oldest supported Postgres) sets HERALD_TEST_SCALE=0.2 to stay in its time budget.
 */
export function scaled(n: number, min = 1): number {
  const scale = Number(process.env.HERALD_TEST_SCALE ?? 1);
  return Math.max(min, Math.round(n * (Number.isFinite(scale) && scale > 0 ? scale : 1)));
}
