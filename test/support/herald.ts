/**
 * The setup most test files share: a fresh migrated database and one Herald on it for
 * the whole file, closed and dropped after its tests.
 */
import { after, before } from 'node:test';
import { createHerald, type Herald, type HeraldOptions } from '../../src/client.js';
import { freshDatabase, type TestDatabase } from './db.js';

/**
 * Registers before/after hooks; `ready` receives the database and the Herald before the
 * first test (it may set up more, and return a cleanup that runs before the Herald
 * closes). `database`: options of {@link freshDatabase} (`isolated: true` for a cluster
 * of the file's own).
 */
export function useHerald(
  options: Omit<HeraldOptions, 'connectionString'>,
  ready: (db: TestDatabase, herald: Herald) => void | (() => unknown) | Promise<void | (() => unknown)>,
  database: Parameters<typeof freshDatabase>[0] = {},
): void {
  let db: TestDatabase;
  let herald: Herald;
  let cleanup: void | (() => unknown);
  before(async () => {
    db = await freshDatabase(database);
    herald = createHerald({ connectionString: db.url, ...options });
    cleanup = await ready(db, herald);
  });
  after(async () => {
    await cleanup?.();
    await herald.close();
    await db.drop();
  });
}
