/**
 * Before/after claim throughput of every part, in one run: the same workload against two
 * checkouts of pgherald, interleaved (A B B A A B ...), each measurement in its own
 * process (bench/support/claim-ab-child.ts) and its own fresh database of one cluster.
 *
 *   git worktree add --detach /tmp/before <commit>   (and link node_modules into it)
 *   node --import tsx bench/claim-ab.ts --before /tmp/before [--after .] [--rounds 5]
 *        [--n 20000] [--parts queue,mailbox,outbox,topics]
 *
 * Postgres: a throwaway cluster at default durability (bench/support/postgres.ts), or
 * DATABASE_URL's server. Prints, per part, every round's two figures, the median of
 * each side and the median of the per-round ratios after/before: the ratio is what
 * means something on a loaded machine, since both sides of a round share its load.
 */
import { spawnSync } from 'node:child_process';
import { loadavg } from 'node:os';
import { resolve } from 'node:path';
import pg from 'pg';
import { benchPostgres } from './support/postgres.js';
import { option } from './support/args.js';

const before = option('before');
if (!before) {
  console.error('usage: bench/claim-ab.ts --before <checkout> [--after <checkout>] [--rounds 5] [--n 20000] [--parts ...]');
  process.exit(2);
}
const sides = { before: resolve(before), after: resolve(option('after', '.')!) };
const ROUNDS = Number(option('rounds', '5'));
const N = Number(option('n', '20000'));
const PARTS = option('parts', 'queue,mailbox,outbox,topics')!.split(',');

const server = await benchPostgres({ shared_buffers: '256MB', max_connections: 200 });
const admin = new pg.Client({ connectionString: server.url });
await admin.connect();
const median = (xs: number[]) => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
};
let dbNo = 0;
async function measure(side: 'before' | 'after', part: string): Promise<number> {
  const db = `ab_${process.pid}_${dbNo++}`;
  await admin.query(`CREATE DATABASE ${db}`);
  try {
    const url = new URL(server.url);
    url.pathname = `/${db}`;
    const child = spawnSync(process.execPath, ['--import', 'tsx', resolve(import.meta.dirname, 'support/claim-ab-child.ts'), sides[side], part, String(N), url.toString()], {
      cwd: sides[side],
      encoding: 'utf8',
      maxBuffer: 64 * 1024 * 1024,
    });
    const line = child.stdout.trim().split('\n').pop() ?? '';
    if (child.status !== 0 || !line.startsWith('{')) throw new Error(`${side} ${part} failed (${child.status}):\n${child.stderr}`);
    return JSON.parse(line).perSecond;
  } finally {
    await admin.query(`DROP DATABASE ${db} WITH (FORCE)`);
  }
}

const version = (await admin.query('SHOW server_version')).rows[0].server_version;
const load0 = loadavg()[0].toFixed(1);
console.log(`Postgres ${version}, default durability; n = ${N}; ${ROUNDS} rounds; load average ${load0} at start`);
console.log(`before = ${sides.before}\nafter  = ${sides.after}\n`);
const summary: string[] = [];
for (const part of PARTS) {
  const rows: { b: number; a: number }[] = [];
  for (let r = 0; r < ROUNDS; r++) {
    // Alternate which side goes first, so a trend in the machine's load favours neither.
    const order: ('before' | 'after')[] = r % 2 ? ['after', 'before'] : ['before', 'after'];
    const got: Record<string, number> = {};
    for (const side of order) got[side] = await measure(side, part);
    rows.push({ b: got.before, a: got.after });
    console.log(`${part} round ${r + 1}: before ${got.before.toFixed(0)}/s, after ${got.after.toFixed(0)}/s, ratio ${(got.after / got.before).toFixed(3)} (load ${loadavg()[0].toFixed(1)})`);
  }
  const mb = median(rows.map((x) => x.b));
  const ma = median(rows.map((x) => x.a));
  const mr = median(rows.map((x) => x.a / x.b));
  summary.push(`| ${part} | ${mb.toFixed(0)} | ${ma.toFixed(0)} | ${mr.toFixed(3)} |`);
}
console.log(`\nload average ${load0} at start, ${loadavg()[0].toFixed(1)} at end\n`);
console.log('| part | before (items/s, median) | after (items/s, median) | after / before (median of rounds) |\n|---|---:|---:|---:|');
for (const line of summary) console.log(line);
await admin.end();
await server.stop();
