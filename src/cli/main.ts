import { Command, CommanderError } from 'commander';
import { HeraldError } from '../errors.js';
import { CliContext, CliError, type CliIo } from './context.js';
import { registerCoreCommands } from './core.js';
import { registerMailboxCommands } from './mailbox.js';
import { registerServeCommand } from './serve.js';
import { registerJobsCommands } from './jobs.js';
import { registerOutboxCommands } from './outbox.js';
import { registerTopicsCommands } from './topics.js';
import { registerMaintenanceCommands } from './maintenance.js';
import { packageVersion, redactUrl } from './options.js';
import { registerCompletionCommand } from './completion.js';

/**
 * After an interrupt (Ctrl-C, SIGTERM), how long a command may take to stop by
 * itself. Long-running commands (`listen`, `serve`, `jobs watch`, ...) stop cleanly
 * well within it; one still waiting on the network (an address that accepts and
 * never answers) is abandoned with exit code 130, so one Ctrl-C always ends the CLI.
 */
export const INTERRUPT_GRACE_MS = 2000;

/** Exit code of a command abandoned after an interrupt (128 + SIGINT). */
export const INTERRUPTED_EXIT_CODE = 130;

/** The `herald` program with every command (commander), writing to `ctx.io`. */
export function createProgram(ctx: CliContext): Command {
  const io = ctx.io;
  const program = new Command('herald')
    .description('pgherald: Postgres-native messaging (notifier, mailbox, queue, outbox, topics) and its server')
    .option('-d, --database-url <url>', 'Postgres connection string (default: $DATABASE_URL, else the database of a herald serve running on --data-dir)')
    .option('--listen-url <url>', 'direct or session-pooled connection for LISTEN (default: the database URL; $HERALD_LISTEN_URL)')
    .option('--schema <name>', "pgherald's schema (default: $HERALD_SCHEMA or herald)")
    .option('--data-dir <dir>', "embedded Postgres folder of `herald serve`; other commands find its database there when no URL is given (default: $HERALD_DATA_DIR or ./.herald)")
    .version(packageVersion(), '-V, --version', 'print the version of pgherald')
    .configureHelp({ showGlobalOptions: true })
    .option('--connect-timeout <ms>', 'give up opening a connection after this many milliseconds (default: $HERALD_CONNECT_TIMEOUT_MS or 10000)')
    .exitOverride()
    .configureOutput({ writeOut: (s) => io.stdout.write(s), writeErr: (s) => io.stderr.write(s) })
    .showHelpAfterError();
  registerCoreCommands(program, ctx);
  registerServeCommand(program, ctx);
  registerJobsCommands(program, ctx);
  registerMailboxCommands(program, ctx);
  registerOutboxCommands(program, ctx);
  registerTopicsCommands(program, ctx);
  registerMaintenanceCommands(program, ctx);
  registerCompletionCommand(program, ctx);
  return program;
}

/**
 * Runs the `herald` CLI with `argv` (without node and script) and returns the exit
 * code. A thin layer over the library: every command calls the same code paths.
 */
export async function runCli(argv: string[], io: CliIo): Promise<number> {
  const ctx = new CliContext(io);
  const program = createProgram(ctx);
  let interrupted = false;
  let finished = false;
  let graceTimer: NodeJS.Timeout | undefined;
  // Resolves INTERRUPT_GRACE_MS after an interrupt: a command that has not stopped by
  // then (it waits on the network and does not watch the interrupt) is abandoned.
  const abandoned = io.interrupted.then(
    () =>
      new Promise<'abandoned'>((resolve) => {
        if (finished) return;
        interrupted = true;
        graceTimer = setTimeout(() => resolve('abandoned'), INTERRUPT_GRACE_MS);
        graceTimer.unref();
      }),
  );
  try {
    const command = program.parseAsync(argv, { from: 'user' });
    const outcome = await Promise.race([command.then(() => 'done' as const), abandoned]);
    if (outcome === 'abandoned') {
      command.catch(() => {});
      ctx.err('herald: interrupted');
      return INTERRUPTED_EXIT_CODE;
    }
    return ctx.exitCode;
  } catch (err) {
    if (err instanceof CommanderError) return err.exitCode === 0 ? 0 : 2;
    if (err instanceof CliError) {
      ctx.err(`herald: ${err.message}`);
      return err.exitCode;
    }
    if (err instanceof HeraldError) {
      ctx.err(`herald: ${err.message} (${err.code})${whereTo(ctx, err)}`);
      // A value of the command line the library refused is a usage error (see argumentErrorsAreUsage).
      return ctx.argumentErrorsAreUsage && (err.code === 'INVALID_ARGUMENT' || err.code === 'INVALID_OPTION') ? 2 : 1;
    }
    ctx.err(`herald: ${(err as Error)?.message ?? String(err)}${whereTo(ctx, err)}`);
    return 1;
  } finally {
    finished = true;
    clearTimeout(graceTimer);
    // Closing waits on the network too: after an interrupt it gets the same grace.
    let cleanupTimer: NodeJS.Timeout | undefined;
    const cleaned = ctx.cleanup();
    if (interrupted) {
      await Promise.race([cleaned, new Promise<void>((r) => (cleanupTimer = setTimeout(r, ctx.cleanupGraceMs ?? INTERRUPT_GRACE_MS).unref()))]);
      clearTimeout(cleanupTimer);
    } else await cleaned;
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
  // The first signal asks the command to stop (runCli abandons it after
  // INTERRUPT_GRACE_MS); a second one ends the process at once.
  let signals = 0;
  const onSignal = () => {
    if (++signals > 1) process.exit(INTERRUPTED_EXIT_CODE);
    interrupt();
  };
  process.on('SIGINT', onSignal);
  process.on('SIGTERM', onSignal);
  // stdout closed by its reader (`herald migrate sql | head`): a normal end, not a crash.
  // Later output is dropped, a long-running command stops as after Ctrl-C, exit code 0.
  let stdoutClosed = false;
  process.stdout.on('error', (err: NodeJS.ErrnoException) => {
    if (err.code !== 'EPIPE') throw err;
    if (stdoutClosed) return;
    stdoutClosed = true;
    process.exitCode = 0;
    interrupt();
  });
  const io: CliIo = {
    stdout: { write: (s: string | Uint8Array) => (stdoutClosed ? true : process.stdout.write(s)) },
    stderr: process.stderr,
    env: process.env,
    interrupted,
    stdin: process.stdin.isTTY ? undefined : process.stdin,
  };
  void runCli(process.argv.slice(2), io).then((result) => {
    const code = stdoutClosed ? 0 : result;
    process.exitCode = code;
    // Give stdout a moment to flush, then leave even if a foreign handle lingers.
    setTimeout(() => process.exit(stdoutClosed ? 0 : code), 50).unref();
  });
}
