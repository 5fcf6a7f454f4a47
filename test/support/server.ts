/**
 * The setup of the test files that drive `herald serve`'s routes: a fresh migrated
 * database, one Herald on it and one HeraldServer on a free port for the whole file;
 * stopped, closed and dropped after its tests.
 */
import { after, before } from 'node:test';
import { createHerald, type Herald, type HeraldOptions } from '../../src/client.js';
import { HeraldServer, type ServerOptions } from '../../src/server/server.js';
import { freshDatabase, type TestDatabase } from './db.js';

export interface ServerFixture {
  db: TestDatabase;
  herald: Herald;
  server: HeraldServer;
  /** The server's base URL (`http://127.0.0.1:<port>`). */
  base: string;
}

/** Registers before/after hooks; `ready` receives the fixture once the server listens. */
export function useServer(
  options: { herald?: Omit<HeraldOptions, 'connectionString'>; server?: Omit<ServerOptions, 'port'> },
  ready: (fixture: ServerFixture) => void,
): void {
  let fixture: Partial<ServerFixture> = {};
  before(async () => {
    const db = await freshDatabase();
    fixture.db = db;
    const herald = (fixture.herald = createHerald({ connectionString: db.url, ...options.herald }));
    const server = (fixture.server = new HeraldServer(herald, { port: 0, ...options.server }));
    fixture.base = await server.start();
    ready(fixture as ServerFixture);
  });
  after(async () => {
    await fixture.server?.stop();
    await fixture.herald?.close();
    await fixture.db?.drop();
    fixture = {};
  });
}
