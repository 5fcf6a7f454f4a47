import { Command, CommanderError } from 'commander';
import { HeraldError } from '../errors.js';
import { CliContext, CliError, type CliIo } from './context.js';
import { registerCoreCommands } from './core.js';
import { registerMailboxCommands } from './mailbox.js';
import { registerServeCommand } from './serve.js';
import { registerJobsCommands } from './jobs.js';
import { registerOutboxCommands } from './outbox.js';
import { registerTopicsCommands } from './topics.js';
import { packageVersion, redactUrl } from './options.js';
import { registerCompletionCommand } from './completion.js';

/**
 * Runs the `herald` CLI with `argv` (without node and script) and returns the exit
 * code. A thin layer over the library: every command calls the same code paths.
 */
export async function runCli(argv: string[], io: CliIo): Promise<number> {
  const ctx = new CliContext(io);
  const program = new Command('herald')
    .description('pgherald: Postgres-native messaging (notifier, mailbox, queue, outbox, topics) and its server')
    .option('-d, --database-url <url>', 'Postgres connection string (default: $DATABASE_URL, else the database of a herald serve running on --data-dir)')
    .option('--listen-url <url>', 'direct or session-pooled connection for LISTEN (default: the database URL; $HERALD_LISTEN_URL)')
    .option('--schema <name>', "pgherald's schema (default: $HERALD_SCHEMA or herald)")
    .option('--data-dir <dir>', "embedded Postgres folder of `herald serve`; other commands find its database there when no URL is given (default: $HERALD_DATA_DIR or ./.herald)")
    .version(packageVersion(), '-V, --version', 'print the version of pgherald')
    .configureHelp({ showGlobalOptions: true })
    .exitOverride()
    .configureOutput({ writeOut: (s) => io.stdout.write(s), writeErr: (s) => io.stderr.write(s) })
    .showHelpAfterError();
  registerCoreCommands(program, ctx);
  registerServeCommand(program, ctx);
  registerJobsCommands(program, ctx);
  registerMailboxCommands(program, ctx);
  registerOutboxCommands(program, ctx);
  registerTopicsCommands(program, ctx);
  registerCompletionCommand(program, ctx);
  try {
    await program.parseAsync(argv, { from: 'user' });
    return ctx.exitCode;
  } catch (err) {
    if (err instanceof CommanderError) return err.exitCode === 0 ? 0 : 2;
    if (err instanceof CliError) {
      ctx.err(`herald: ${err.message}`);
      return err.exitCode;
    }
    if (err instanceof HeraldError) {
      ctx.err(`herald: ${err.message} (${err.code})${whereTo(ctx, err)}`);
      return 1;
    }
    ctx.err(`herald: ${(err as Error)?.message ?? String(err)}${whereTo(ctx, err)}`);
    return 1;
  } finally {
    await ctx.cleanup();
  }
}

/** Network-level failures name the database URL they were about (password hidden). */
function whereTo(ctx: CliContext, err: unknown): string {
  const url = ctx.resolvedUrl;
  if (!url) return '';
  const codes = new Set(['ENOTFOUND', 'EAI_AGAIN', 'ECONNREFUSED', 'ECONNRESET', 'ETIMEDOUT', 'EHOSTUNREACH', 'ENETUNREACH', '28P01', '28000', '3D000']);
  for (let e = err as { code?: string; cause?: unknown } | undefined, i = 0; e && i < 5; e = e.cause as typeof e, i++) {
    if (typeof e.code === 'string' && codes.has(e.code)) return ` (database ${redactUrl(url)})`;
  }
  return '';
}

/** Entry point of the `herald` binary. */
export function main(): void {
  let interrupt!: () => void;
  const interrupted = new Promise<void>((resolve) => (interrupt = resolve));
  process.once('SIGINT', () => interrupt());
  process.once('SIGTERM', () => interrupt());
  const io: CliIo = {
    stdout: process.stdout,
    stderr: process.stderr,
    env: process.env,
    interrupted,
    stdin: process.stdin.isTTY ? undefined : process.stdin,
  };
  void runCli(process.argv.slice(2), io).then((code) => {
    process.exitCode = code;
    // Give stdout a moment to flush, then leave even if a foreign handle lingers.
    setTimeout(() => process.exit(code), 50).unref();
  });
}
