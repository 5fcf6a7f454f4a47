/** Both driver adapters, for conformance suites that run the same tests against each. */
import { pgDriver } from '../../src/driver/pg.js';
import { postgresJsDriver } from '../../src/driver/postgres-js.js';
import type { Driver } from '../../src/driver/types.js';

export const DRIVERS: { name: 'pg' | 'postgres'; make(url: string, listenUrl?: string): Driver }[] = [
  { name: 'pg', make: (url, listenUrl) => pgDriver({ connectionString: url, max: 4, listenConnectionString: listenUrl }) },
  { name: 'postgres', make: (url, listenUrl) => postgresJsDriver({ connectionString: url, max: 4, listenConnectionString: listenUrl }) },
];
