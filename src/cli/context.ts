import type { Writable } from 'node:stream';
import { Herald, type HeraldOptions } from '../client.js';
import { checkPostgresUrl, parseInteger } from './options.js';
import { dataDirOf, runningEmbeddedUrl } from './state.js';

/** Where the CLI writes and what it reads; tests pass their own. */
export interface CliIo {
  stdout: Pick<Writable, 'write'>;
  stderr: Pick<Writable, 'write'>;
  env: Record<string, string | undefined>;
  /** Resolves when the user asks a long-running command to stop (SIGINT/SIGTERM). */
  interrupted: Promise<void>;
  /** Standard input when it is not a terminal (`herald send` reads a payload from it). */
  stdin?: AsyncIterable<Buffer | string>;
}

/** `--connect-timeout` / HERALD_CONNECT_TIMEOUT_MS: 1 ms to the longest timer node keeps (about 24.8 days). */
const CONNECT_TIMEOUT_RANGE = { min: 1, max: 2_147_483_647 };

/** Shared state of one CLI invocation. */
export class CliContext {
  exitCode = 0;
  #herald: Herald | undefined;
  readonly #cleanups: (() => Promise<void>)[] = [];
  /**
   * How long cleanups may take after an interrupt before the CLI exits anyway (ms);
   * undefined: the CLI's INTERRUPT_GRACE_MS. `serve` with its embedded Postgres sets it
   * higher: stopping Postgres (a checkpoint) may take longer than that on a busy machine,
   * and leaving early would leave it running and the state file naming a dead server.
   */
  cleanupGraceMs: number | undefined;
  /**
   * Whether a library error about a bad value (`INVALID_ARGUMENT`, `INVALID_OPTION`) is a
   * usage error (exit 2): true while what the command passes the library comes from the
   * command line. A command that goes on to run with settings of its own (`serve` once
   * started, `maintenance run`'s task) sets it false first, so such an error is a
   * failure (exit 1).
   */
  argumentErrorsAreUsage = true;
  constructor(readonly io: CliIo) {}

  /** Writes a line to stdout. */
  out(line: string): void {
    this.io.stdout.write(line + '\n');
  }

  /** Writes a line to stderr. */
  err(line: string): void {
    this.io.stderr.write(line + '\n');
  }

  /** The database URL this invocation resolved (for error messages), once known. */
  resolvedUrl: string | undefined;

  /**
   * The connection string: `--database-url`, then `$DATABASE_URL`, then the database
   * of a `herald serve` running on the data folder (`--data-dir`, `$HERALD_DATA_DIR`,
   * `./.herald`, through its `herald.json`). Each is checked to be a Postgres URL.
   */
  databaseUrl(opts: { databaseUrl?: string; dataDir?: string }): string {
    let url: string | undefined;
    if (opts.databaseUrl) url = checkPostgresUrl(opts.databaseUrl, '--database-url');
    else if (this.io.env.DATABASE_URL) url = checkPostgresUrl(this.io.env.DATABASE_URL, 'DATABASE_URL');
    else url = runningEmbeddedUrl(dataDirOf(opts.dataDir, this.io.env));
    if (!url) {
      throw new CliError(
        `no database: pass --database-url, set DATABASE_URL, or start \`herald serve\` in this folder (its database is found through ${dataDirOf(opts.dataDir, this.io.env)}/herald.json; see --data-dir)`,
      );
    }
    this.resolvedUrl = url;
    return url;
  }

  /**
   * The connect timeout from `--connect-timeout` or HERALD_CONNECT_TIMEOUT_MS
   * (milliseconds), or undefined for the library's default (10 s).
   */
  connectTimeoutMs(opts: { connectTimeout?: string }): number | undefined {
    if (opts.connectTimeout !== undefined) return parseInteger('--connect-timeout', opts.connectTimeout, CONNECT_TIMEOUT_RANGE);
    const raw = this.io.env.HERALD_CONNECT_TIMEOUT_MS;
    if (raw === undefined || raw === '') return undefined;
    return parseInteger('HERALD_CONNECT_TIMEOUT_MS', raw, CONNECT_TIMEOUT_RANGE);
  }

  /** A Herald for this invocation, closed when the command ends. */
  herald(opts: { databaseUrl?: string; schema?: string; listenUrl?: string; dataDir?: string; connectTimeout?: string }, extra: Partial<HeraldOptions> = {}): Herald {
    if (!this.#herald) {
      const listenUrl = opts.listenUrl || this.io.env.HERALD_LISTEN_URL || undefined;
      if (listenUrl) checkPostgresUrl(listenUrl, opts.listenUrl ? '--listen-url' : 'HERALD_LISTEN_URL');
      this.#herald = new Herald({
        connectionString: this.databaseUrl(opts),
        listenConnectionString: listenUrl,
        schema: opts.schema ?? this.io.env.HERALD_SCHEMA,
        poolSize: 4,
        connectTimeoutMs: this.connectTimeoutMs(opts),
        ...extra,
        // A command fails when its first connection fails (after connectTimeoutMs),
        // with the error, instead of retrying for ever; reconnects after a loss
        // still retry (herald listen, herald serve).
        notifier: { maxConnectAttempts: 1, ...extra.notifier },
        // Short commands (a send, a stats read) never stand for maintenance leadership;
        // `herald serve` turns it on.
        maintenance: { enabled: false, ...extra.maintenance },
      });
    }
    return this.#herald;
  }

  /** Runs `fn` when the command ends. */
  onCleanup(fn: () => Promise<void>): void {
    this.#cleanups.push(fn);
  }

  async cleanup(): Promise<void> {
    for (const fn of this.#cleanups.splice(0).reverse()) await fn().catch(() => {});
    await this.#herald?.close().catch(() => {});
  }
}

/** An error whose message is shown to the user as it is (exit code 2 for usage, 1 otherwise). */
export class CliError extends Error {
  constructor(message: string, readonly exitCode = 1) {
    super(message);
  }
}
