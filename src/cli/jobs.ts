import type { Command } from 'commander';
import { jobSummary, type JobInfo, type JobState } from '../queue/types.js';
import { CliError, type CliContext } from './context.js';
import { COUNT_RANGE, LIBRARY_LIST_MAX, LIMIT_RANGE, intArg } from './options.js';
import { BIGINT_MAX } from '../internal/validate.js';

type Globals = { databaseUrl?: string; schema?: string; listenUrl?: string; dataDir?: string };

/** Why a job was left alone by `cancel` / `retry` (undefined: it does not exist). */
function whyNot(action: 'cancel' | 'retry', job: JobInfo | undefined, includeCompleted: boolean): string {
  if (!job) return 'not found';
  if (action === 'cancel') {
    if (job.state === 'cancelled') return 'already cancelled';
    if (job.state === 'completed' || job.state === 'dead') return `already finished (${job.state})`;
    return `state ${job.state}`;
  }
  if (job.state === 'available') return 'still waiting (available): only dead or cancelled jobs are retried';
  if (job.state === 'running') return 'running: only dead or cancelled jobs are retried';
  if (job.state === 'completed' && !includeCompleted) return 'completed: pass --include-completed to run it again';
  return `state ${job.state}`;
}

const JOB_STATES: readonly JobState[] = ['waiting', 'available', 'running', 'completed', 'dead', 'cancelled'];

/** A job id as given on the command line, or a usage error (exit 2) naming `what` (`job id`, `--before-id`). */
export function jobIdArg(what: string, id: string): string {
  if (!/^\d{1,19}$/.test(id) || BigInt(id) > BIGINT_MAX) {
    throw new CliError(`${what} must be a decimal integer from 0 to ${BIGINT_MAX}, got ${JSON.stringify(id)}`, 2);
  }
  return id;
}

/** `--state`: one of the job states, or a usage error. */
function stateArg(state: string): JobState {
  if (!JOB_STATES.includes(state as JobState)) throw new CliError(`--state must be one of ${JOB_STATES.join(', ')}, got ${JSON.stringify(state)}`, 2);
  return state as JobState;
}

function line(j: JobInfo): string {
  return JSON.stringify(jobSummary(j));
}

/** A pause or limit target as the CLI prints it. */
const where = (queue: string | null, kind: string | null) => `${queue === null ? 'every queue' : `queue ${queue}`}${kind === null ? '' : `, kind ${kind}`}`;

/** `10/1s`, `100/1m`: a rate limit's count and period. */
export function parseRate(v: string): { count: number; periodMs: number } {
  const m = /^(\d+)\/(.+)$/.exec(v.trim());
  if (!m || Number(m[1]) < 1) throw new CliError(`invalid rate ${JSON.stringify(v)}: use <count>/<period>, e.g. 10/1s or 100/1m`, 2);
  return { count: Number(m[1]), periodMs: parseDuration(m[2]) };
}

/** `herald jobs list|stats|retry|cancel|watch|stuck|pause|resume|paused|limit|unlimit|limits`. */
export function registerJobsCommands(program: Command, ctx: CliContext): void {
  const globals = () => program.opts<Globals>();
  const jobs = program
    .command('jobs')
    .description('inspect and manage the job queue')
    .addHelpText('after', '\nExamples:\n  herald jobs list --state dead\n  herald jobs retry 42\n  herald jobs pause --queue emails');

  jobs
    .command('list')
    .description('list jobs, newest first (by id), one JSON line each')
    .option('--queue <name>', 'only this queue')
    .option('--kind <kind>', 'only this kind')
    .option('--state <state>', 'waiting | available | running | completed | dead | cancelled')
    .option('--stage <stage>', 'only jobs at this pipeline stage')
    .option('--before-id <id>', 'only jobs with a smaller id (the next page: the last id shown)')
    .option('--limit <n>', 'at most n jobs (1 to 100000)', intArg('--limit', LIMIT_RANGE), 100)
    .option('--json', 'every field of each job (payload, errors, history...), one JSON object per line')
    .addHelpText('after', '\nExamples:\n  herald jobs list --state dead\n  herald jobs list --kind email --limit 10\n  herald jobs list --limit 10 --before-id 120')
    .action(async (o: { queue?: string; kind?: string; state?: JobState; stage?: string; beforeId?: string; limit: number; json?: boolean }) => {
      if (o.state !== undefined) stateArg(o.state);
      if (o.beforeId !== undefined) jobIdArg('--before-id', o.beforeId);
      const { json, limit, ...filter } = o;
      const queue = ctx.herald(globals()).queue;
      // The library returns at most LIBRARY_LIST_MAX jobs per call: a larger --limit pages on by id.
      for (let left = limit, beforeId = filter.beforeId; left > 0; ) {
        const page = await queue.list({ ...filter, beforeId, limit: Math.min(left, LIBRARY_LIST_MAX) });
        for (const j of page) ctx.out(json ? JSON.stringify(j) : line(j));
        if (page.length < Math.min(left, LIBRARY_LIST_MAX)) break;
        left -= page.length;
        beforeId = page[page.length - 1].id;
      }
    });

  jobs
    .command('get')
    .description('one job with every field (payload, errors, history, result), as indented JSON; exit 1 when there is no such job')
    .argument('<id>', 'job id')
    .option('--json', 'on one line')
    .addHelpText('after', '\nExamples:\n  herald jobs get 42')
    .action(async (id: string, o: { json?: boolean }) => {
      const job = await ctx.herald(globals()).queue.get(jobIdArg('job id', id));
      if (!job) throw new CliError(`job ${id} not found`);
      ctx.out(o.json ? JSON.stringify(job) : JSON.stringify(job, null, 2));
    });

  jobs
    .command('stats')
    .description('job counts per queue, kind and state (scheduled = available, not yet due)')
    .option('--json', 'print a JSON array of {"queue","kind","state","count"}')
    .addHelpText('after', '\nExamples:\n  herald jobs stats\n  herald jobs stats --json')
    .action(async (o: { json?: boolean }) => {
      const rows = await ctx.herald(globals()).queue.stats();
      if (o.json) return ctx.out(JSON.stringify(rows));
      ctx.out(`${'queue'.padEnd(16)} ${'kind'.padEnd(24)} ${'state'.padEnd(10)} count`);
      for (const r of rows) ctx.out(`${r.queue.padEnd(16)} ${r.kind.padEnd(24)} ${r.state.padEnd(10)} ${r.count}`);
    });

  /** Prints what `cancel`/`retry` did and, per id left alone, why; exit 1 when some were. */
  const report = async (action: 'cancel' | 'retry', ids: string[], done: string[], json: boolean | undefined, includeCompleted = false) => {
    const herald = ctx.herald(globals());
    const doneSet = new Set(done);
    const skipped: { id: string; state: JobState | null; reason: string }[] = [];
    for (const id of ids) {
      if (doneSet.has(id)) continue;
      const job = await herald.queue.get(id);
      skipped.push({ id, state: job?.state ?? null, reason: whyNot(action, job, includeCompleted) });
    }
    const verb = action === 'cancel' ? 'cancelled' : 'retried';
    if (json) ctx.out(JSON.stringify({ [verb]: done, skipped }));
    else {
      ctx.out(done.length > 0 ? `${verb} ${done.length}: ${done.join(' ')}` : `${verb} 0`);
      for (const s of skipped) ctx.out(`not ${verb} ${s.id}: ${s.reason}`);
    }
    if (skipped.length > 0) ctx.exitCode = 1;
  };

  jobs
    .command('retry')
    .description('make dead or cancelled jobs available again with a fresh budget of attempts; says why for each id left alone')
    .argument('<ids...>', 'job ids')
    .option('--include-completed', 'also re-run completed jobs')
    .option('--json', 'print {"retried":[ids],"skipped":[{"id","state","reason"}]}')
    .addHelpText('after', '\nExamples:\n  herald jobs retry 42 43')
    .action(async (ids: string[], o: { includeCompleted?: boolean; json?: boolean }) => {
      for (const id of ids) jobIdArg('job id', id);
      const done = await ctx.herald(globals()).queue.retry(ids, { includeCompleted: o.includeCompleted });
      await report('retry', ids, done, o.json, o.includeCompleted === true);
    });

  jobs
    .command('cancel')
    .description('cancel waiting or running jobs (a running handler sees its signal abort at its next heartbeat); says why for each id left alone')
    .argument('<ids...>', 'job ids')
    .option('--json', 'print {"cancelled":[ids],"skipped":[{"id","state","reason"}]}')
    .addHelpText('after', '\nExamples:\n  herald jobs cancel 42')
    .action(async (ids: string[], o: { json?: boolean }) => {
      for (const id of ids) jobIdArg('job id', id);
      const done = await ctx.herald(globals()).queue.cancel(ids);
      await report('cancel', ids, done, o.json);
    });

  jobs
    .command('watch')
    .description('print job transitions live (jobs enqueued with announce; pipelines by default), one JSON line each')
    .option('--id <id>', 'only this job')
    .option('--count <n>', 'exit after n transitions', intArg('--count', COUNT_RANGE))
    .addHelpText('after', '\nExamples:\n  herald jobs watch\n  herald jobs watch --id 42 --count 7')
    .action(async (o: { id?: string; count?: number }) => {
      if (o.id !== undefined) jobIdArg('--id', o.id);
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
    .command('pause')
    .description('pause a queue, a kind, a kind of a queue, or everything (no option), in every process: running jobs finish, nothing new is claimed; kept in the database until resume')
    .option('--queue <name>', 'only this queue (default: every queue)')
    .option('--kind <kind>', 'only this kind (default: every kind)')
    .option('--json', 'print {"queue","kind","pausedAt"}')
    .addHelpText('after', '\nExamples:\n  herald jobs pause --queue emails\n  herald jobs pause --kind report\n  herald jobs pause')
    .action(async (o: { queue?: string; kind?: string; json?: boolean }) => {
      const p = await ctx.herald(globals()).queue.pause({ queue: o.queue, kind: o.kind });
      ctx.out(o.json ? JSON.stringify(p) : `paused ${where(p.queue, p.kind)} since ${p.pausedAt.toISOString()}`);
    });

  jobs
    .command('resume')
    .description('lift the pause of exactly this target (the same --queue/--kind as given to pause) and wake its workers; exit 1 when there was no such pause')
    .option('--queue <name>', 'the paused queue (default: the pause of every queue)')
    .option('--kind <kind>', 'the paused kind')
    .option('--json', 'print {"resumed":true|false}')
    .addHelpText('after', '\nExamples:\n  herald jobs resume --queue emails\n  herald jobs resume')
    .action(async (o: { queue?: string; kind?: string; json?: boolean }) => {
      const resumed = await ctx.herald(globals()).queue.resume({ queue: o.queue, kind: o.kind });
      const target = where(o.queue ?? null, o.kind ?? null);
      ctx.out(o.json ? JSON.stringify({ resumed }) : resumed ? `resumed ${target}` : `not paused: ${target} (see herald jobs paused)`);
      if (!resumed) ctx.exitCode = 1;
    });

  jobs
    .command('paused')
    .description('the pauses in force, one JSON line each ({"queue","kind","pausedAt"}; null = every)')
    .option('--json', 'one JSON object per line (the default output; accepted like every inspecting command)')
    .addHelpText('after', '\nExamples:\n  herald jobs paused\n  herald jobs paused --json')
    .action(async () => {
      for (const p of await ctx.herald(globals()).queue.paused()) ctx.out(JSON.stringify(p));
    });

  jobs
    .command('limit')
    .description('set the fleet-wide limit of a queue (or of one kind in it), replacing its previous one: at most --concurrency running at once and/or --rate starts per period, per value of --partition-by')
    .option('--queue <name>', 'the queue', 'default')
    .option('--kind <kind>', 'only this kind (default: every kind of the queue)')
    .option('--concurrency <n>', 'at most n jobs running at once (1 to 1000000)', intArg('--concurrency', { min: 1, max: 1_000_000 }))
    .option('--rate <count/period>', 'at most count starts per period, e.g. 10/1s, 600/1m')
    .option('--partition-by <path>', 'a payload field, or a dotted path (customer.id): each value gets its own limit')
    .addHelpText('after', '\nExamples:\n  herald jobs limit --queue sync --concurrency 3 --partition-by customerId\n  herald jobs limit --queue emails --rate 100/1m')
    .action(async (o: { queue: string; kind?: string; concurrency?: number; rate?: string; partitionBy?: string }) => {
      if (o.concurrency === undefined && o.rate === undefined) throw new CliError('give --concurrency and/or --rate', 2);
      await ctx.herald(globals()).queue.setLimit({
        queue: o.queue,
        kind: o.kind,
        concurrency: o.concurrency,
        rate: o.rate === undefined ? undefined : parseRate(o.rate),
        partitionBy: o.partitionBy?.split('.'),
      });
      ctx.out(`limited ${where(o.queue, o.kind ?? null)}`);
    });

  jobs
    .command('unlimit')
    .description('remove the limit of a queue (or of one kind in it); exit 1 when it had none')
    .option('--queue <name>', 'the queue', 'default')
    .option('--kind <kind>', 'only this kind')
    .addHelpText('after', '\nExamples:\n  herald jobs unlimit --queue sync\n  herald jobs unlimit --queue emails --kind newsletter')
    .action(async (o: { queue: string; kind?: string }) => {
      const removed = await ctx.herald(globals()).queue.removeLimit({ queue: o.queue, kind: o.kind });
      ctx.out(removed ? `unlimited ${where(o.queue, o.kind ?? null)}` : `no limit on ${where(o.queue, o.kind ?? null)}`);
      if (!removed) ctx.exitCode = 1;
    });

  jobs
    .command('limits')
    .description('the limits in force, one JSON line each ({"queue","kind","concurrency","partitionBy","rate","updatedAt"})')
    .option('--json', 'one JSON object per line (the default output; accepted like every inspecting command)')
    .addHelpText('after', '\nExamples:\n  herald jobs limits\n  herald jobs limits --json')
    .action(async () => {
      for (const l of await ctx.herald(globals()).queue.limits()) ctx.out(JSON.stringify(l));
    });

  jobs
    .command('stuck')
    .description('waiting or running jobs that entered their current stage more than --older-than ago (database time); exit 1 if any')
    .option('--older-than <duration>', 'threshold: 90s, 15m, 2h or milliseconds', '15m')
    .option('--limit <n>', 'at most n jobs (1 to 100000; prints at most 10000)', intArg('--limit', LIMIT_RANGE), 100)
    .option('--json', 'every field of each job, with stuckMs, one JSON object per line')
    .addHelpText('after', '\nExamples:\n  herald jobs stuck --older-than 30m')
    .action(async (o: { olderThan: string; limit: number; json?: boolean }) => {
      const thresholdMs = parseDuration(o.olderThan);
      const rows = await ctx.herald(globals()).queue.stuck({ thresholdMs, limit: Math.min(o.limit, LIBRARY_LIST_MAX) });
      for (const j of rows) ctx.out(o.json ? JSON.stringify(j) : JSON.stringify({ id: j.id, kind: j.kind, stage: j.stage, state: j.state, stuckMs: Math.round(j.stuckMs), since: j.stageEnteredAt }));
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
