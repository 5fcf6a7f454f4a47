import type { Command } from 'commander';
import { ListenNotSessionError } from '../errors.js';
import type { QueueTailHolder } from '../notifier/pressure.js';
import { serverHealth } from '../internal/server-health.js';
import { migrationScript } from '../schema/migrator.js';
import { CliError, type CliContext } from './context.js';
import { COUNT_RANGE, intArg, parseDecimal } from './options.js';

type Globals = { databaseUrl?: string; schema?: string; listenUrl?: string; dataDir?: string };

/** migrate, listen, notify, doctor. */
export function registerCoreCommands(program: Command, ctx: CliContext): void {
  const globals = () => program.opts<Globals>();

  program
    .command('migrate')
    .description('apply pending migrations (up), show them (status), or print the SQL (sql)')
    .argument('[action]', 'up | status | sql', 'up')
    .option('--json', 'status: one JSON object per migration ({"version","name","appliedAt"})')
    .addHelpText('after', '\nExamples:\n  herald migrate\n  herald migrate status\n  herald migrate sql > pgherald.sql')
    .action(async (action: string, opts: { json?: boolean }) => {
      if (action === 'sql') {
        ctx.io.stdout.write(migrationScript(globals().schema ?? ctx.io.env.HERALD_SCHEMA));
        return;
      }
      const herald = ctx.herald(globals());
      if (action === 'up') {
        const applied = await herald.migrate();
        ctx.out(applied.length ? `applied ${applied.join(', ')}` : 'up to date');
      } else if (action === 'status') {
        for (const m of await herald.migrationStatus()) {
          if (opts.json) ctx.out(JSON.stringify({ version: m.version, name: m.name, appliedAt: m.appliedAt }));
          else ctx.out(`${String(m.version).padStart(3, '0')} ${m.name.padEnd(24)} ${m.appliedAt ? m.appliedAt.toISOString() : 'pending'}`);
        }
      } else {
        throw new CliError(`unknown migrate action ${JSON.stringify(action)}: use up, status or sql`, 2);
      }
    });

  program
    .command('listen')
    .description('print notifications of the channels as they arrive (one JSON line each) until interrupted')
    .argument('<channels...>', 'channel names, exactly as given (case-sensitive)')
    .option('--count <n>', 'exit after n notifications', intArg('--count', COUNT_RANGE))
    .addHelpText('after', "\nExamples:\n  herald listen orders\n  herald listen 'OrderCreated' audit --count 1")
    .action(async (channels: string[], opts: { count?: number }) => {
      const herald = ctx.herald(globals());
      let seen = 0;
      let done!: () => void;
      const finished = new Promise<void>((r) => (done = r));
      const subs = channels.map((channel) =>
        herald.listen(channel, (n) => {
          ctx.out(JSON.stringify({ channel: n.channel, payload: n.payload, pid: n.processId }));
          if (opts.count !== undefined && ++seen >= opts.count) done();
        }),
      );
      await Promise.all(subs.map((s) => s.established));
      ctx.err(`listening on ${channels.map((c) => JSON.stringify(c)).join(', ')}`);
      await Promise.race([finished, ctx.io.interrupted]);
    });

  program
    .command('notify')
    .description('send one notification')
    .argument('<channel>', 'channel name, exactly as given')
    .argument('[payload]', 'text under 8000 bytes', '')
    .addHelpText('after', "\nExamples:\n  herald notify orders 'created:42'")
    .action(async (channel: string, payload: string) => {
      await ctx.herald(globals()).notify(channel, payload);
    });

  program
    .command('doctor')
    .description('check connectivity, server version, recovery mode, connection headroom, a LISTEN round trip, pooler mode and notification-queue usage')
    .option('--json', 'print {"ok", "checks": [{"name","ok","detail"}]}')
    .option('--connection-headroom <fraction>', `fail the connections check when fewer than this share of max_connections is free for ordinary roles (0 to 1)`, String(DOCTOR_CONNECTION_HEADROOM))
    .addHelpText('after', '\nExamples:\n  herald doctor\n  herald doctor --json\n  herald doctor --connection-headroom 0.2')
    .action(async (opts: { json?: boolean; connectionHeadroom?: string }) => {
      const json = opts.json === true;
      const headroom = parseDecimal('--connection-headroom', opts.connectionHeadroom ?? String(DOCTOR_CONNECTION_HEADROOM), { min: 0, max: 1 });
      const herald = ctx.herald(globals(), { notifier: { queueUsageIntervalMs: 0 } });
      const checks: [string, boolean, string][] = [];
      try {
        const { rows } = await herald.driver.executor.query<{ v: string; n: string }>(
          `SELECT current_setting('server_version') AS v, current_setting('server_version_num') AS n`,
        );
        checks.push(['connect', true, `PostgreSQL ${rows[0].v}`]);
        if (Number(rows[0].n) < 150000) checks.push(['version', false, 'pgherald supports PostgreSQL 15 and later']);
      } catch (err) {
        checks.push(['connect', false, (err as Error).message]);
        return report(ctx, checks, json);
      }
      try {
        const health = await serverHealth(herald.driver.executor);
        checks.push([
          'recovery',
          !health.inRecovery,
          health.inRecovery
            ? 'the server is in recovery (a standby): writes and LISTEN need the primary (after a failover, point the address at the new primary; libpq URLs: target_session_attrs=read-write)'
            : 'primary (not in recovery)',
        ]);
        const c = health.connections;
        checks.push([
          'connections',
          c.free >= headroom * c.max,
          `${c.used}/${c.max} max_connections used (${c.reserved} reserved), ${Math.max(0, c.free)} free for ordinary roles` +
            (c.free < headroom * c.max ? `: under ${Math.round(headroom * 100)}% headroom; new connections fail with 53300 when none is free (lower pool sizes, add a pooler, or raise max_connections)` : ''),
        ]);
      } catch (err) {
        checks.push(['recovery', false, (err as Error).message]);
      }
      const started = Date.now();
      try {
        const sub = herald.listen('herald.doctor');
        await sub.established;
        const got = sub.wait({ timeoutMs: 5000 });
        await herald.notify('herald.doctor', 'ping');
        const n = await got;
        checks.push(['listen', n !== null, n ? `round trip ${Date.now() - started} ms` : 'no notification came back within 5 s']);
        checks.push(['pooler', true, 'LISTEN sticks (direct or session-pooled connection)']);
      } catch (err) {
        if (err instanceof ListenNotSessionError) {
          checks.push(['listen', false, 'LISTEN does not stick']);
          checks.push(['pooler', false, 'transaction pooling detected: give LISTEN a direct or session-pooled URL (--listen-url)']);
        } else checks.push(['listen', false, (err as Error).message]);
      }
      try {
        const usage = await herald.notifier.sampleQueueUsage();
        const high = herald.notifier.options.queueUsageHighWater;
        checks.push(['queue', usage < high, `notification queue ${(usage * 100).toFixed(usage > 0 && usage < 0.0001 ? 6 : 2)}% used`]);
        // Something is unread: name who holds the queue's tail (a listener in a transaction).
        if (usage > 0) {
          const holders = await herald.notifier.queueTailHolders(3);
          checks.push([
            'tail',
            usage < high,
            holders.length === 0
              ? 'no session in a transaction: a listener that does not read its socket holds the tail'
              : `the queue's tail is likely held by ${holders.map(describeHolder).join('; or ')}`,
          ]);
        }
      } catch (err) {
        checks.push(['queue', false, (err as Error).message]);
      }
      try {
        const pending = (await herald.migrationStatus()).filter((m) => !m.appliedAt);
        checks.push(['schema', pending.length === 0, pending.length ? `${pending.length} migrations pending (herald migrate)` : 'up to date']);
      } catch (err) {
        checks.push(['schema', false, (err as Error).message]);
      }
      report(ctx, checks, json);
    });
}

/** Default of `herald doctor --connection-headroom`: the share of max_connections that should stay free. */
export const DOCTOR_CONNECTION_HEADROOM = 0.1;

function describeHolder(h: QueueTailHolder): string {
  const since = h.xactStart ?? h.stateChange;
  const age = since ? ` since ${since.toISOString()} (${Math.round((Date.now() - since.getTime()) / 1000)} s)` : '';
  const query = h.query ? `, query: ${JSON.stringify(h.query.length > 80 ? h.query.slice(0, 80) + '…' : h.query)}` : '';
  return `pid ${h.pid} (${h.reason}${age}, application_name ${JSON.stringify(h.applicationName)}, user ${h.user ?? '?'}${query})`;
}

function report(ctx: CliContext, checks: [string, boolean, string][], json: boolean): void {
  if (json) {
    const list = checks.map(([name, ok, detail]) => ({ name, ok, detail }));
    ctx.out(JSON.stringify({ ok: list.every((c) => c.ok), checks: list }));
  } else for (const [name, ok, detail] of checks) ctx.out(`${ok ? 'ok  ' : 'FAIL'} ${name.padEnd(8)} ${detail}`);
  if (checks.some(([, ok]) => !ok)) ctx.exitCode = 1;
}
