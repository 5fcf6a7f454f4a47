/**
 * A private cluster for tests that restart or kill the server (the run's shared
 * cluster must stay up for the other files). Same binaries as the run.
 */
import { chmodSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { PostgresCluster } from '../../src/embedded/cluster.js';
import { pgDriver } from '../../src/driver/pg.js';
import { migrate } from '../../src/schema/migrator.js';

export interface PrivateCluster {
  cluster: PostgresCluster;
  url: string;
  dispose(): Promise<void>;
}

export async function privateCluster(options: { migrated?: boolean; settings?: Record<string, string | number> } = {}): Promise<PrivateCluster> {
  const tmp = mkdtempSync(join(tmpdir(), 'pgherald-private-'));
  chmodSync(tmp, 0o755);
  const cluster = await PostgresCluster.start({
    dataDir: join(tmp, 'data'),
    binDir: process.env.HERALD_TEST_PG_BINDIR || undefined,
    settings: { fsync: 'off', max_connections: 200, ...options.settings },
  });
  const url = cluster.url();
  if (options.migrated !== false) {
    const driver = pgDriver({ connectionString: url, max: 1 });
    await migrate(driver);
    await driver.end();
  }
  return {
    cluster,
    url,
    async dispose() {
      await cluster.stop();
      rmSync(tmp, { recursive: true, force: true });
    },
  };
}
