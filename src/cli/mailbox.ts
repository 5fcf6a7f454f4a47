import type { Command } from 'commander';
import { CliError, type CliContext } from './context.js';
import { COUNT_RANGE, LIBRARY_LIST_MAX, LIMIT_RANGE, intArg, parseDecimal } from './options.js';
import { MAX_DURATION_MS } from '../internal/validate.js';

type Globals = { databaseUrl?: string; schema?: string; listenUrl?: string; dataDir?: string };

/** Longest `receive --wait`: the library's longest timeoutMs (10 years), in seconds. */
export const MAX_WAIT_S = MAX_DURATION_MS / 1000;

/** send, receive, mailbox stats, mailbox dead, mailbox redrive. */
export function registerMailboxCommands(program: Command, ctx: CliContext): void {
  const globals = () => program.opts<Globals>();

  program
    .command('send')
    .description('send one durable message to a destination; prints {"id","created"}')
    .argument('<to>', 'destination, exactly as given (case-sensitive)')
    .argument('[payload]', 'the payload: text, or JSON with --json; read from stdin when omitted and stdin is not a terminal')
    .option('--topic <topic>', 'topic of the message')
    .option('--id <id>', 'message id = idempotency key (default: a random UUID); sending it again creates nothing')
    .option('--json', 'parse the payload as JSON (otherwise it is stored as text, byte-exact)')
    .addHelpText(
      'after',
      `\nExamples:\n  herald send billing 'invoice 42'\n  herald send billing '{"orderId":42}' --json --id order-42\n  cat big.txt | herald send archive`,
    )
    .action(async (to: string, payloadArg: string | undefined, opts: { topic?: string; id?: string; json?: boolean }) => {
      let text = payloadArg;
      if (text === undefined) text = ctx.io.stdin ? await readAll(ctx.io.stdin) : '';
      let payload: unknown = text;
      if (opts.json) {
        try {
          payload = JSON.parse(text);
        } catch {
          throw new CliError('--json: the payload is not valid JSON', 2);
        }
      }
      const result = await ctx.herald(globals()).mailbox.send({ to, payload, topic: opts.topic, id: opts.id });
      ctx.out(JSON.stringify(result));
    });

  program
    .command('receive')
    .description('consume messages of a destination, printing each as a JSON line {"id","to","topic","payload","attempts","createdAt"}')
    .argument('<to>', 'destination')
    .option('--topic <topic>', 'only messages of this topic')
    .option('--wait <seconds>', `how long to wait for each message, 0 to ${MAX_DURATION_MS / 1000} seconds, fractions allowed (0: look once)`, '0')
    .option('--count <n>', 'messages to take before exiting', intArg('--count', COUNT_RANGE), 1)
    .addHelpText('after', '\nExamples:\n  herald receive billing\n  herald receive billing --wait 30 --count 10\n\nExit code 0 when at least one message was received, 3 when none arrived in time.')
    .action(async (to: string, opts: { topic?: string; wait: string; count: number }) => {
      const waitS = parseDecimal('--wait', opts.wait, { min: 0, max: MAX_WAIT_S }, ' of seconds');
      const count = opts.count;
      const mailbox = ctx.herald(globals()).mailbox;
      const stop = new AbortController();
      void ctx.io.interrupted.then(() => stop.abort());
      let got = 0;
      while (got < count && !stop.signal.aborted) {
        const m = await mailbox.receive(to, { topic: opts.topic, timeoutMs: waitS * 1000, signal: stop.signal });
        if (!m) break;
        got++;
        ctx.out(JSON.stringify({ id: m.id, to: m.to, topic: m.topic, payload: m.payload, attempts: m.attempts, createdAt: m.createdAt }));
      }
      if (got === 0) ctx.exitCode = 3;
    });

  const mailbox = program
    .command('mailbox')
    .description('inspect and repair the mailbox')
    .addHelpText('after', '\nExamples:\n  herald mailbox stats\n  herald mailbox dead billing\n  herald mailbox redrive billing');

  mailbox
    .command('stats')
    .description('messages per destination: ready, delayed, consumed (kept until retention), dead, oldest ready')
    .argument('[to]', 'one destination (default: all)')
    .option('--json', 'print JSON')
    .addHelpText('after', '\nExamples:\n  herald mailbox stats\n  herald mailbox stats billing --json')
    .action(async (to: string | undefined, opts: { json?: boolean }) => {
      const stats = await ctx.herald(globals()).mailbox.stats(to);
      if (opts.json) return ctx.out(JSON.stringify(stats));
      ctx.out(['destination', 'ready', 'delayed', 'consumed', 'dead', 'oldest ready'].join('\t'));
      for (const s of stats) {
        ctx.out([s.to, s.ready, s.delayed, s.consumed, s.dead, s.oldestReadyAt ? s.oldestReadyAt.toISOString() : '-'].join('\t'));
      }
    });

  mailbox
    .command('dead')
    .description('list dead messages of a destination with their last error (JSON lines)')
    .argument('<to>', 'destination')
    .option('--limit <n>', 'at most n (1 to 100000; prints at most 10000)', intArg('--limit', LIMIT_RANGE), 100)
    .option('--json', 'one JSON object per line (the default output; accepted for symmetry)')
    .addHelpText('after', '\nExamples:\n  herald mailbox dead billing\n  herald mailbox dead billing --limit 10')
    .action(async (to: string, opts: { limit: number }) => {
      const dead = await ctx.herald(globals()).mailbox.deadLetters(to, { limit: Math.min(opts.limit, LIBRARY_LIST_MAX) });
      for (const d of dead) ctx.out(JSON.stringify(d));
    });

  mailbox
    .command('redrive')
    .description('put dead messages of a destination back to ready (all, or the given ids)')
    .argument('<to>', 'destination')
    .argument('[ids...]', 'message ids (default: every dead message of the destination)')
    .addHelpText('after', '\nExamples:\n  herald mailbox redrive billing\n  herald mailbox redrive billing order-42 order-43')
    .action(async (to: string, ids: string[]) => {
      const n = await ctx.herald(globals()).mailbox.redrive(to, { ids: ids.length ? ids : undefined });
      ctx.out(`redrove ${n}`);
      if (ids.length > 0 && n < ids.length) {
        ctx.out(`not redriven ${ids.length - n} of ${ids.length}: only dead messages of ${JSON.stringify(to)} are (the others are unknown, ready or consumed)`);
        ctx.exitCode = 1;
      }
    });
}

async function readAll(stream: AsyncIterable<Buffer | string>): Promise<string> {
  const chunks: Buffer[] = [];
  for await (const c of stream) chunks.push(typeof c === 'string' ? Buffer.from(c) : c);
  return Buffer.concat(chunks).toString('utf8');
}
