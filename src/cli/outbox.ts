import type { Command } from 'commander';
import { CliError, type CliContext } from './context.js';
import { LIBRARY_LIST_MAX, LIMIT_RANGE, intArg } from './options.js';

/** An outbox event id. */
const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;

type Globals = { databaseUrl?: string; schema?: string; listenUrl?: string; dataDir?: string };

/** `herald outbox stats|dead|redrive` and `herald changes track|untrack|list`. */
export function registerOutboxCommands(program: Command, ctx: CliContext): void {
  const globals = () => program.opts<Globals>();
  const herald = () => ctx.herald(globals(), { notifier: { queueUsageIntervalMs: 0 } });

  const outbox = program
    .command('outbox')
    .description('the transactional outbox: backlog, dead letters, redrive')
    .addHelpText('after', '\nExamples:\n  herald outbox stats\n  herald outbox dead --limit 10\n  herald outbox redrive --all');

  outbox
    .command('stats')
    .description('backlog counters: pending, due, retrying, dead, published, age of the oldest pending event')
    .option('--json', 'print one JSON object')
    .addHelpText('after', '\nExamples:\n  herald outbox stats\n  herald outbox stats --json')
    .action(async (opts: { json?: boolean }) => {
      const s = await herald().outbox.stats();
      if (opts.json) return ctx.out(JSON.stringify(s));
      for (const [k, v] of Object.entries(s)) ctx.out(`${k.padEnd(18)} ${v ?? '-'}`);
    });

  outbox
    .command('dead')
    .description('list dead-lettered events, oldest first (id, type, key, attempts, last error)')
    .option('--limit <n>', 'at most n events (1 to 100000; prints at most 10000)', intArg('--limit', LIMIT_RANGE), 100)
    .option('--json', 'one JSON object per line')
    .addHelpText('after', '\nExamples:\n  herald outbox dead\n  herald outbox dead --limit 10 --json')
    .action(async (opts: { limit: number; json?: boolean }) => {
      for (const e of await herald().outbox.dead({ limit: Math.min(opts.limit, LIBRARY_LIST_MAX) })) {
        if (opts.json) ctx.out(JSON.stringify(e));
        else ctx.out(`${e.id} ${e.type} key=${e.key ?? '-'} attempts=${e.attempts} dead_at=${e.deadAt.toISOString()} error=${JSON.stringify(e.lastError)}`);
      }
    });

  outbox
    .command('redrive')
    .description('return dead events to the backlog (attempts reset, due now) and wake the relays')
    .argument('[ids...]', 'event ids to redrive')
    .option('--all', 'redrive every dead event')
    .addHelpText('after', '\nExamples:\n  herald outbox redrive 0b7f6c1e-4b7a-4c4f-9d51-0c8f3a1e2b3c\n  herald outbox redrive --all')
    .action(async (ids: string[], opts: { all?: boolean }) => {
      if (!opts.all && ids.length === 0) throw new CliError('give event ids or --all', 2);
      if (opts.all && ids.length > 0) throw new CliError('give event ids or --all, not both', 2);
      for (const id of ids) if (!UUID.test(id)) throw new CliError(`event id must be a UUID, got ${JSON.stringify(id)}`, 2);
      const n = await herald().outbox.redrive(opts.all ? {} : { ids });
      ctx.out(`redriven ${n}`);
      if (!opts.all && n < ids.length) {
        ctx.out(`not redriven ${ids.length - n} of ${ids.length}: only dead-lettered events are (the others are unknown, pending or published)`);
        ctx.exitCode = 1;
      }
    });

  const changes = program
    .command('changes')
    .description('row-change triggers: announce INSERT/UPDATE/DELETE of a table')
    .addHelpText('after', '\nExamples:\n  herald changes track orders\n  herald changes list\n  herald changes untrack orders');

  changes
    .command('track')
    .description('install the change triggers on a table (schema.table, or table in public; exact case)')
    .argument('<table>', 'schema.table or table')
    .option('--columns <columns...>', 'columns that identify a row (default: the primary key); space- or comma-separated')
    .option('--max-keys <n>', 'list keys of up to n rows per statement, else "many"', intArg('--max-keys', { min: 0, max: 1000 }), 20)
    .option('--to-outbox', 'also write one outbox event per changed row (durable)')
    .addHelpText('after', "\nExamples:\n  herald changes track orders\n  herald changes track 'billing.Invoices' --columns tenant_id id --to-outbox")
    .action(async (table: string, opts: { columns?: string[]; maxKeys: number; toOutbox?: boolean }) => {
      const columns = opts.columns?.flatMap((c) => c.split(',')).map((c) => c.trim()).filter(Boolean);
      const t = await herald().changes.track(table, { columns, maxKeys: opts.maxKeys, toOutbox: opts.toOutbox === true });
      ctx.out(`tracking ${t.table} (${t.columns.join(', ')}) on channel ${JSON.stringify(t.channel)}${t.toOutbox ? ', to the outbox' : ''}`);
    });

  changes
    .command('untrack')
    .description('remove the change triggers from a table')
    .argument('<table>', 'schema.table or table')
    .addHelpText('after', '\nExamples:\n  herald changes untrack orders')
    .action(async (table: string) => {
      const was = await herald().changes.untrack(table);
      ctx.out(was ? `untracked ${table}` : `${table} was not tracked`);
    });

  changes
    .command('list')
    .description('tracked tables with their columns and channels')
    .option('--json', 'one JSON object per line')
    .addHelpText('after', '\nExamples:\n  herald changes list')
    .action(async (opts: { json?: boolean }) => {
      for (const t of await herald().changes.list()) {
        if (opts.json) ctx.out(JSON.stringify(t));
        else ctx.out(`${t.table} columns=${t.columns.join(',')} max_keys=${t.maxKeys} to_outbox=${t.toOutbox} channel=${t.channel}`);
      }
    });
}
