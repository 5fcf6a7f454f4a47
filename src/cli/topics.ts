import type { Command } from 'commander';
import { parsePosition, type GroupStart } from '../topic/types.js';
import { CliError, type CliContext } from './context.js';
import { COUNT_RANGE, LIBRARY_LIST_MAX, LIMIT_RANGE, intArg } from './options.js';

type Globals = { databaseUrl?: string; schema?: string; listenUrl?: string; dataDir?: string };

/** `herald topics list|create|stats|tail|reset|publish|dead|redrive`. */
export function registerTopicsCommands(program: Command, ctx: CliContext): void {
  const globals = () => program.opts<Globals>();
  const topics = program
    .command('topics')
    .description('durable topics: list them, show stats and group lag, follow one, move a group')
    .addHelpText(
      'after',
      "\nExamples:\n  herald topics list\n  herald topics create orders --partitions 16 --retention-ms 604800000\n  herald topics stats orders\n  herald topics tail orders --from earliest --count 10\n  herald topics reset orders billing --to earliest\n  herald topics publish orders '{\"id\":42}' --key customer-7\n  herald topics dead orders --group billing\n  herald topics redrive orders billing",
    );

  topics
    .command('list')
    .description('one line per topic: name, partitions, retained messages, segments, bytes, groups with lag')
    .option('--json', "each topic's stats (as `topics stats` prints them), one JSON object per line")
    .addHelpText('after', '\nExamples:\n  herald topics list\n  herald topics list --json')
    .action(async (opts: { json?: boolean }) => {
      const herald = ctx.herald(globals());
      for (const name of await herald.topics.list()) {
        const s = await herald.topics.stats(name);
        if (opts.json) {
          ctx.out(JSON.stringify(s));
          continue;
        }
        const groups = s.groups.map((g) => `${g.name}(lag ${g.lag})`).join(' ') || '-';
        ctx.out(`${name}\tpartitions=${s.partitions}\tmessages=${s.messages}\tsegments=${s.segments}\tbytes=${s.bytes}\tgroups=${groups}`);
      }
    });

  topics
    .command('create')
    .description('create a topic (idempotent: an existing topic keeps its options); prints {"topic","created"}')
    .argument('<topic>', 'topic name')
    .option('--partitions <n>', 'key partitions, 1 to 1024 (default 8)', intArg('--partitions', { min: 1, max: 1024 }))
    .option('--segment-size <n>', 'message ids per segment, 1 or more (default 1000000)', intArg('--segment-size', { min: 1 }))
    .option('--retention-ms <n>', 'drop full segments older than this, 0 or more (default 604800000, 7 days)', intArg('--retention-ms', { min: 0 }))
    .option('--retention-bytes <n>', 'drop the oldest full segments past this size, 0 or more (default: keep)', intArg('--retention-bytes', { min: 0 }))
    .addHelpText('after', '\nExamples:\n  herald topics create orders\n  herald topics create orders --partitions 16 --retention-ms 604800000')
    .action(async (topic: string, opts: { partitions?: number; segmentSize?: number; retentionMs?: number; retentionBytes?: number }) => {
      const created = await ctx.herald(globals()).topics.create(topic, opts);
      ctx.out(JSON.stringify({ topic, created }));
    });

  topics
    .command('stats')
    .description('statistics of one topic as JSON: size, retention, per-group and per-partition position and lag')
    .argument('<topic>', 'topic name')
    .option('--json', 'on one line (the default is indented)')
    .addHelpText('after', '\nExamples:\n  herald topics stats orders\n  herald topics stats orders --json')
    .action(async (topic: string, opts: { json?: boolean }) => {
      ctx.out(JSON.stringify(await ctx.herald(globals()).topics.stats(topic), null, opts.json ? undefined : 2));
    });

  topics
    .command('tail')
    .description('print messages of a topic as JSON lines ({"id","position","key","partition","payload","publishedAt"}) as they come')
    .argument('<topic>', 'topic name')
    .option('--from <where>', "'earliest', 'latest' or a position to resume after", 'latest')
    .option('--count <n>', 'exit after n messages', intArg('--count', COUNT_RANGE))
    .addHelpText('after', '\nExamples:\n  herald topics tail orders\n  herald topics tail orders --from earliest --count 10')
    .action(async (topic: string, opts: { from: string; count?: number }) => {
      const herald = ctx.herald(globals());
      const abort = new AbortController();
      void ctx.io.interrupted.then(() => abort.abort());
      let seen = 0;
      for await (const m of herald.topics.tail(topic, { after: opts.from, signal: abort.signal })) {
        ctx.out(JSON.stringify({ id: m.id, position: m.position, key: m.key, partition: m.partition, payload: m.payload, publishedAt: m.publishedAt }));
        if (opts.count !== undefined && ++seen >= opts.count) break;
      }
    });

  topics
    .command('reset')
    .description("move a group's position: replay from earliest, skip to latest, go to a time, or resume after a position")
    .argument('<topic>', 'topic name')
    .argument('<group>', 'group name')
    .addHelpText('after', '\nExamples:\n  herald topics reset orders billing --to earliest\n  herald topics reset orders billing --to 2026-01-31T12:00:00Z\n  herald topics reset orders billing --to 1200')
    .requiredOption('--to <where>', "'earliest', 'latest', an ISO time (2026-01-31T12:00:00Z) or a position (digits; an earlier version's <xid>:<id> means its id)")
    .action(async (topic: string, group: string, opts: { to: string }) => {
      const herald = ctx.herald(globals());
      let to: GroupStart | { position: string };
      if (opts.to === 'earliest' || opts.to === 'latest') to = opts.to;
      else if (/^(\d+:)?\d+$/.test(opts.to)) to = { position: opts.to };
      else {
        const d = new Date(opts.to);
        if (Number.isNaN(d.getTime())) throw new CliError(`--to: expected earliest, latest, an ISO time or a position, got ${JSON.stringify(opts.to)}`, 2);
        to = d;
      }
      const moved = await herald.topics.resetGroup(topic, group, to);
      if (moved === 0) throw new CliError(`topic ${topic} has no group ${group}`);
      ctx.out(`moved ${moved} partitions of group ${group}`);
    });

  topics
    .command('publish')
    .description('publish one message (a JSON value; plain text is sent as a JSON string)')
    .argument('<topic>', 'topic name')
    .argument('<payload>', 'JSON value')
    .option('--key <key>', 'message key (one key keeps its order within a group)')
    .addHelpText('after', "\nExamples:\n  herald topics publish orders '{\"id\":42}' --key customer-7\n  herald topics publish orders hello")
    .action(async (topic: string, payload: string, opts: { key?: string }) => {
      let value: unknown;
      try {
        value = JSON.parse(payload);
      } catch {
        value = payload;
      }
      const m = await ctx.herald(globals()).topics.publish(topic, value, { key: opts.key ?? null, waitForPosition: true });
      ctx.out(JSON.stringify(m));
    });

  topics
    .command('dead')
    .description('list dead letters of a topic (messages whose handler failed maxAttempts times) as JSON lines, with attempts and last error')
    .argument('<topic>', 'topic name')
    .option('--group <group>', 'only this group (default: every group)')
    .option('--limit <n>', 'at most n letters (1 to 100000; prints at most 10000)', intArg('--limit', LIMIT_RANGE), 100)
    .option('--json', 'one JSON object per line (the default output; accepted like every inspecting command)')
    .addHelpText('after', '\nExamples:\n  herald topics dead orders\n  herald topics dead orders --group billing --limit 10')
    .action(async (topic: string, opts: { group?: string; limit: number }) => {
      const dead = await ctx.herald(globals()).topics.deadLetters(topic, { group: opts.group, limit: Math.min(opts.limit, LIBRARY_LIST_MAX) });
      for (const d of dead) ctx.out(JSON.stringify(d));
    });

  topics
    .command('redrive')
    .description("hand dead letters of a group back to its consumers (all, or the given positions); each is delivered again as a batch of its own")
    .argument('<topic>', 'topic name')
    .argument('<group>', 'group name')
    .argument('[positions...]', 'positions of dead letters (default: every dead letter of the group)')
    .addHelpText('after', '\nExamples:\n  herald topics redrive orders billing\n  herald topics redrive orders billing 1200 1201')
    .action(async (topic: string, group: string, positions: string[]) => {
      for (const p of positions) {
        try {
          parsePosition(p);
        } catch {
          throw new CliError(`position must be a topic position (a decimal integer from 0 to 9223372036854775807), got ${JSON.stringify(p)}`, 2);
        }
      }
      const n = await ctx.herald(globals()).topics.redrive(topic, group, { positions: positions.length ? positions : undefined });
      ctx.out(`redrove ${n}`);
      if (positions.length > 0 && n < positions.length) {
        ctx.out(`not redriven ${positions.length - n} of ${positions.length}: only dead letters of group ${JSON.stringify(group)} not already redriven are`);
        ctx.exitCode = 1;
      }
    });
}
