/**
 * One measurement of bench/claim-ab.ts, in its own process so that two versions of the
 * library never share a module graph: `node --import tsx bench/support/claim-ab-child.ts
 * <root> <part> <n> <databaseUrl>`. Loads `<root>/src/index.ts`, fills the part with
 * `n` items, then times how long its consumer (library defaults except the options
 * named below) takes to hand all of them to a no-op handler. Prints one JSON line
 * `{ part, n, seconds, perSecond }`.
 *
 * The options used work on every version being compared (the API of these calls has
 * not changed since 2026-11-22):
 * - queue: `enqueueMany` in batches of 5,000; `work(kind, fn, { concurrency: 10 })`.
 * - mailbox: `sendMany` in batches of 5,000; `consume(to, fn, { batchSize: 100 })`
 *   (`AB_BATCH` and `AB_CONC` set batchSize and concurrency: e.g. 1000, what
 *   bench/mailbox.ts's throughput consumers use).
 * - outbox: `addMany` in batches of 5,000 over 100 keys; `relay({ sink })` (defaults:
 *   batchSize 100, concurrency 10).
 * - topics: `publishMany` in batches of 5,000 over 100 keys to a topic of 8 partitions;
 *   one consumer group, `consumer(topic, group, fn)` (default batchSize 100).
 */
import { pathToFileURL } from 'node:url';
import { join } from 'node:path';
import pg from 'pg';

const [root, part, nText, url] = process.argv.slice(2);
const n = Number(nText);
const lib = await import(pathToFileURL(join(root, 'src/index.ts')).href);
const herald = lib.createHerald({ connectionString: url });
await herald.migrate();
// Experiments: AB_SQL runs after the migrations (e.g. a storage parameter to try).
if (process.env.AB_SQL) {
  const c = new pg.Client({ connectionString: url });
  await c.connect();
  await c.query(process.env.AB_SQL);
  await c.end();
}

const chunks = (size: number) => Array.from({ length: Math.ceil(n / size) }, (_, c) => Array.from({ length: Math.min(size, n - c * size) }, (_, j) => c * size + j));
let seen = 0;
let done!: () => void;
const all = new Promise<void>((resolve) => (done = resolve));
const count = (k: number) => {
  seen += k;
  if (seen >= n) done();
};

let started: bigint;
if (part === 'queue') {
  for (const c of chunks(5000)) await herald.queue.enqueueMany(c.map((i) => ({ kind: 'noop', payload: { i } })));
  started = process.hrtime.bigint();
  herald.queue.work('noop', () => count(1), { concurrency: 10 });
} else if (part === 'mailbox') {
  for (const c of chunks(5000)) await herald.mailbox.sendMany(c.map((i) => ({ to: 'ab', payload: { i } })));
  started = process.hrtime.bigint();
  herald.mailbox.consume('ab', () => count(1), { batchSize: Number(process.env.AB_BATCH ?? 100), concurrency: Number(process.env.AB_CONC ?? 1) });
} else if (part === 'outbox') {
  for (const c of chunks(5000)) await herald.outbox.addMany(c.map((i) => ({ type: 'ab', key: `k${i % 100}`, payload: { i } })));
  started = process.hrtime.bigint();
  herald.outbox.relay({ sink: () => count(1) });
} else if (part === 'topics') {
  await herald.topics.create('ab', { partitions: 8 });
  for (const c of chunks(5000)) await herald.topics.publishMany('ab', c.map((i) => ({ payload: { i }, key: `k${i % 100}` })));
  started = process.hrtime.bigint();
  const consumer = herald.topics.consumer('ab', 'g', ({ messages }: { messages: unknown[] }) => count(messages.length));
  await consumer.start();
} else {
  throw new Error(`unknown part ${part}`);
}
await all;
const seconds = Number(process.hrtime.bigint() - started) / 1e9;
await herald.close(); // stops the consumer
console.log(JSON.stringify({ part, n, seconds, perSecond: n / seconds }));
