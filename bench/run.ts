/**
 * `npm run bench [-- <part>... [-- options]]`: runs every benchmark script
 * `bench/<part>.ts` (or only the parts named; the soaks, plot, claim-ab, backlog,
 * mailbox-take and topics-profile only when named), one after another, each in its own process (`node --import tsx bench/<part>.ts`), each starting its own Postgres
 * (or using DATABASE_URL). Arguments after a literal `--` go to every script
 * (e.g. `npm run bench -- notifier -- --runs 1`).
 * Exit code: non-zero when any script failed.
 */
import { spawn } from 'node:child_process';
import { readdirSync } from 'node:fs';
import { basename, join } from 'node:path';

const dir = new URL('.', import.meta.url).pathname;
const available = readdirSync(dir)
  .filter((f) => f.endsWith('.ts') && f !== 'run.ts' && !f.endsWith('.d.ts'))
  .map((f) => basename(f, '.ts'))
  .sort();
/**
 * Run only when named: long runs (a soak lasts 15 minutes, the deep backlog fills ten
 * million jobs), tools that need arguments (plot: result files; claim-ab: a second
 * checkout to compare with), design prototypes (mailbox-take), and topics-profile (a
 * diagnosis whose positional arguments the options passed to every script would replace).
 */
const onlyWhenNamed = new Set(['sustained', 'soak', 'soak-messaging', 'gateway-churn', 'plot', 'claim-ab', 'backlog', 'mailbox-take', 'topics-profile']);

const argv = process.argv.slice(2);
const split = argv.indexOf('--');
const names = (split === -1 ? argv : argv.slice(0, split)).map((n) => basename(n).replace(/\.ts$/, ''));
const passThrough = split === -1 ? [] : argv.slice(split + 1);

const unknown = names.filter((n) => !available.includes(n));
if (unknown.length > 0) {
  console.error(`unknown benchmark ${unknown.join(', ')}; available: ${available.join(', ')}`);
  process.exit(2);
}

let failed = 0;
for (const name of names.length > 0 ? names : available.filter((n) => !onlyWhenNamed.has(n))) {
  console.log(`\n## ${name}\n`);
  const code: number = await new Promise((resolve) => {
    const child = spawn(process.execPath, ['--import', 'tsx', join(dir, `${name}.ts`), ...passThrough], { stdio: 'inherit' });
    child.on('exit', (c, signal) => resolve(c ?? (signal ? 1 : 0)));
  });
  if (code !== 0) {
    failed++;
    console.error(`bench/${name}.ts exited with ${code}`);
  }
}
process.exit(failed > 0 ? 1 : 0);
