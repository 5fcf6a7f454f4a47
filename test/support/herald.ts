/**
 * The setup most test files share: a fresh migrated database and one Herald on it for
 * the whole file, closed and dropped after its tests.
 */
import { after, before } from 'node:test';
import { createHerald, type Herald, type HeraldOptions } from '../../src/client.js';
import { freshDatabase, type TestDatabase } from './db.js';

/**
 * Registers before/after hooks; `ready` receives the database and the Herald before the
 * first test. `database`: options of {@link freshDatabase} (`isolated: true` for a
 * cluster of the file's own).
 */
export function useHerald(
  options: Omit<HeraldOptions, 'connectionString'>,
  ready: (db: TestDatabase, herald: Herald) => void,
  database: Parameters<typeof freshDatabase>[0] = {},
): void {
  let db: TestDatabase;
  let herald: Herald;
  before(async () => {
    db = await freshDatabase(database);
    herald = createHerald({ connectionString: db.url, ...options });
    ready(db, herald);
  });
  after(async () => {
    await herald.close();
    await db.drop();
  });
}
