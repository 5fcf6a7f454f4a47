import type { Command } from 'commander';
import { MAINTENANCE_TASKS, type MaintenanceTask } from '../maintenance/types.js';
import { CliError, type CliContext } from './context.js';

type Globals = { databaseUrl?: string; schema?: string; listenUrl?: string; dataDir?: string };

/** `herald maintenance status|run`: the maintenance service as the database records it. */
export function registerMaintenanceCommands(program: Command, ctx: CliContext): void {
  const globals = () => program.opts<Globals>();
  // The CLI never stands for election: it reads what the fleet's leader recorded.
  const herald = () => ctx.herald(globals(), { notifier: { queueUsageIntervalMs: 0 }, maintenance: { enabled: false } });

  const maintenance = program
    .command('maintenance')
    .description('the maintenance service: periodic tasks (rescue, retention) run by the elected leader')
    .addHelpText('after', '\nExamples:\n  herald maintenance status\n  herald maintenance run outboxRetention');

  maintenance
    .command('status')
    .description('one line per task: last run, rows, duration, next run, errors, and the leader')
    .option('--json', 'print one JSON object: {"leader", "tasks": [...]}')
    .addHelpText('after', '\nExamples:\n  herald maintenance status\n  herald maintenance status --json')
    .action(async (opts: { json?: boolean }) => {
      const s = await herald().maintenance.status();
      if (opts.json) return ctx.out(JSON.stringify({ leader: s.leader, tasks: s.tasks }));
      const leader = s.leader ? s.leader.holder : '-';
      const at = (d: Date | null) => (d ? d.toISOString() : '-');
      for (const t of s.tasks) {
        const state = t.enabled ? (t.lastError ? 'failing' : 'on') : 'off';
        ctx.out(
          `${t.task.padEnd(21)} ${state.padEnd(7)} last=${at(t.lastRunAt)} rows=${t.lastRows ?? '-'} took=${t.lastDurationMs === null ? '-' : `${Math.round(t.lastDurationMs)}ms`} ` +
            `next=${t.enabled ? at(t.nextRunAt) : '-'} runs=${t.runs} errors=${t.errors} leader=${leader}` +
            (t.lastError ? ` error=${JSON.stringify(t.lastError)}` : ''),
        );
      }
    });

  maintenance
    .command('run')
    .description('run one task now from this process, whoever leads (recorded like a scheduled run); prints the rows it changed')
    .argument('<task>', MAINTENANCE_TASKS.join(' | '))
    .addHelpText('after', '\nExamples:\n  herald maintenance run outboxRetention\n  herald maintenance run queueRescue')
    .action(async (task: string) => {
      if (!MAINTENANCE_TASKS.includes(task as MaintenanceTask)) throw new CliError(`unknown task ${JSON.stringify(task)}: use ${MAINTENANCE_TASKS.join(', ')}`, 2);
      const maintenance = herald().maintenance;
      // The task runs with this process's settings: what it throws is not about the command line.
      ctx.argumentErrorsAreUsage = false;
      const rows = await maintenance.run(task as MaintenanceTask);
      ctx.out(`${task} rows=${rows}`);
    });
}
