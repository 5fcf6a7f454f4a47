import type { Command } from 'commander';
import { jobSummary, type JobInfo, type JobState } from '../queue/types.js';
import { CliError, type CliContext } from './context.js';

type Globals = { databaseUrl?: string; schema?: string; listenUrl?: string };

function line(j: JobInfo): string {
  return JSON.stringify(jobSummary(j));
}

/** `herald jobs list|stats|retry|cancel|watch|stuck`. */
export function registerJobsCommands(program: Command, ctx: CliContext): void {
  const globals = () => program.opts<Globals>();
  const jobs = program.command('jobs').description('inspect and manage the job queue');

  jobs
    .command('list')
    .description('list jobs, newest first, one JSON line each')
    .option('--queue <name>', 'only this queue')
    .option('--kind <kind>', 'only this kind')
    .option('--state <state>', 'available | running | completed | dead | cancelled')
    .option('--stage <stage>', 'only jobs at this pipeline stage')
    .option('--limit <n>', 'at most n jobs', (v) => Number(v), 100)
    .addHelpText('after', '\nExamples:\n  herald jobs list --state dead\n  herald jobs list --kind email --limit 10')
    .action(async (o: { queue?: string; kind?: string; state?: JobState; stage?: string; limit: number }) => {
      for (const j of await ctx.herald(globals()).queue.list(o)) ctx.out(line(j));
    });

  jobs
    .command('stats')
    .description('job counts per queue, kind and state (scheduled = available, not yet due)')
    .action(async () => {
      const rows = await ctx.herald(globals()).queue.stats();
      ctx.out(`${'queue'.padEnd(16)} ${'kind'.padEnd(24)} ${'state'.padEnd(10)} count`);
      for (const r of rows) ctx.out(`${r.queue.padEnd(16)} ${r.kind.padEnd(24)} ${r.state.padEnd(10)} ${r.count}`);
    });

  jobs
    .command('retry')
    .description('make dead or cancelled jobs available again with a fresh budget of attempts')
    .argument('<ids...>', 'job ids')
    .option('--include-completed', 'also re-run completed jobs')
    .addHelpText('after', '\nExamples:\n  herald jobs retry 42 43')
    .action(async (ids: string[], o: { includeCompleted?: boolean }) => {
      const done = await ctx.herald(globals()).queue.retry(ids, { includeCompleted: o.includeCompleted });
      ctx.out(`retried ${done.length}: ${done.join(' ')}`);
      if (done.length < ids.length) ctx.exitCode = 1;
    });

  jobs
    .command('cancel')
    .description('cancel waiting or running jobs (a running handler sees its signal abort at its next heartbeat)')
    .argument('<ids...>', 'job ids')
    .addHelpText('after', '\nExamples:\n  herald jobs cancel 42')
    .action(async (ids: string[]) => {
      const done = await ctx.herald(globals()).queue.cancel(ids);
      ctx.out(`cancelled ${done.length}: ${done.join(' ')}`);
      if (done.length < ids.length) ctx.exitCode = 1;
    });

  jobs
    .command('watch')
    .description('print job transitions live (jobs enqueued with announce; pipelines by default), one JSON line each')
    .option('--id <id>', 'only this job')
    .option('--count <n>', 'exit after n transitions', (v) => Number(v))
    .addHelpText('after', '\nExamples:\n  herald jobs watch\n  herald jobs watch --id 42 --count 7')
    .action(async (o: { id?: string; count?: number }) => {
      const herald = ctx.herald(globals());
      let seen = 0;
      let done!: () => void;
      const finished = new Promise<void>((r) => (done = r));
      const sub = herald.queue.watch((t) => {
        if (o.id !== undefined && t.id !== o.id) return;
        ctx.out(JSON.stringify(t));
        if (o.count !== undefined && ++seen >= o.count) done();
      });
      await sub.established;
      ctx.err('watching job transitions');
      await Promise.race([finished, ctx.io.interrupted]);
    });

  jobs
    .command('stuck')
    .description('waiting or running jobs that entered their current stage more than --older-than ago (database time); exit 1 if any')
    .option('--older-than <duration>', 'threshold: 90s, 15m, 2h or milliseconds', '15m')
    .option('--limit <n>', 'at most n jobs', (v) => Number(v), 100)
    .addHelpText('after', '\nExamples:\n  herald jobs stuck --older-than 30m')
    .action(async (o: { olderThan: string; limit: number }) => {
      const thresholdMs = parseDuration(o.olderThan);
      const rows = await ctx.herald(globals()).queue.stuck({ thresholdMs, limit: o.limit });
      for (const j of rows) ctx.out(JSON.stringify({ id: j.id, kind: j.kind, stage: j.stage, state: j.state, stuckMs: Math.round(j.stuckMs), since: j.stageEnteredAt }));
      if (rows.length > 0) ctx.exitCode = 1;
    });
}

/** `90s`, `15m`, `2h`, `1d` or plain milliseconds. */
export function parseDuration(v: string): number {
  const m = /^(\d+(?:\.\d+)?)(ms|s|m|h|d)?$/.exec(v.trim());
  if (!m) throw new CliError(`invalid duration ${JSON.stringify(v)}: use e.g. 90s, 15m, 2h or milliseconds`, 2);
  const unit = { ms: 1, s: 1000, m: 60_000, h: 3_600_000, d: 86_400_000 }[m[2] ?? 'ms']!;
  return Number(m[1]) * unit;
}
