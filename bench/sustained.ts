/**
 * Every sustained-load measurement of issue 19, one after another, for a quiet machine
 * (about 2 h 40 min with the defaults): each step in its own process under the shared
 * bench lock's discipline (nothing else should run), its output kept in
 * `<out>/sustained.log` with the load average before and after each step.
 *
 *   node --import tsx bench/sustained.ts [--out bench/results] [--only soak,backlog,...] [--minutes 15]
 *
 * Steps (names for `--only`):
 * - `soak`: bench/soak.ts for pgherald, graphile-worker and pg-boss at 5,000 jobs/s for
 *   `--minutes` each (library defaults except concurrency 50), then one plot of the three;
 * - `backlog`: bench/backlog.ts with 10 million waiting jobs;
 * - `messaging`: bench/soak-messaging.ts, mailbox then outbox, 2,000 messages/s for `--minutes`;
 * - `churn`: bench/gateway-churn.ts for 30 minutes (100 clients connecting and 100
 *   closing each second, half SSE, half WebSocket), then its plot.
 * A failing step is reported and the next one runs; the exit code counts failures.
 */
import { spawn } from 'node:child_process';
import { appendFileSync, mkdirSync } from 'node:fs';
import { loadavg } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';

const { values } = parseArgs({
  options: {
    out: { type: 'string', default: 'bench/results' },
    only: { type: 'string', default: 'soak,backlog,messaging,churn' },
    minutes: { type: 'string', default: '15' },
  },
});
const out = values.out!;
const minutes = values.minutes!;
const only = new Set(values.only!.split(','));
mkdirSync(out, { recursive: true });
const log = join(out, 'sustained.log');
const note = (line: string) => {
  console.log(line);
  appendFileSync(log, `${line}\n`);
};
const load = () => loadavg().map((x) => x.toFixed(2)).join(' ');

let failed = 0;
async function step(script: string, args: string[]): Promise<void> {
  note(`\n## ${new Date().toISOString()} ${script} ${args.join(' ')} (load ${load()})`);
  const code: number = await new Promise((resolve) => {
    const child = spawn(process.execPath, ['--import', 'tsx', join(import.meta.dirname, script), ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
    for (const s of [child.stdout, child.stderr]) {
      s.on('data', (b: Buffer) => {
        process.stdout.write(b);
        appendFileSync(log, b);
      });
    }
    child.on('exit', (c, signal) => resolve(c ?? (signal ? 1 : 0)));
  });
  note(`## ${new Date().toISOString()} ${script} exited ${code} (load ${load()})`);
  if (code !== 0) failed++;
}

const soaks = ['pgherald', 'graphile-worker', 'pg-boss'];
if (only.has('soak')) {
  for (const lib of soaks) await step('soak.ts', ['--lib', lib, '--rate', '5000', '--minutes', minutes, '--concurrency', '50', '--out', out]);
  await step('plot.ts', [...soaks.map((l) => join(out, `soak-${l}.json`)), '--out', join(out, 'soak-all.png')]);
}
if (only.has('backlog')) await step('backlog.ts', ['--jobs', '10000000', '--json', join(out, 'backlog.json')]);
if (only.has('messaging')) {
  for (const part of ['mailbox', 'outbox']) {
    await step('soak-messaging.ts', ['--part', part, '--rate', '2000', '--minutes', minutes, '--out', out]);
    await step('plot.ts', [join(out, `soak-${part}.json`)]);
  }
}
if (only.has('churn')) {
  await step('gateway-churn.ts', ['--minutes', '30', '--churn', '100', '--transports', 'mixed', '--out', out]);
  await step('plot.ts', [join(out, 'gateway-churn.json')]);
}
note(`\n${failed} step(s) failed`);
process.exit(failed > 0 ? 1 : 0);
