import { readFileSync } from 'node:fs';
import type { Command } from 'commander';
import type { ApiKey } from '../server/auth.js';
import { HeraldServer, checkServerOptions, type ServerOptions } from '../server/server.js';
import { InvalidOptionError } from '../errors.js';
import { CliError, type CliContext } from './context.js';
import { startEmbedded } from './embedded.js';
import type { Herald } from '../client.js';
import { checkPostgresUrl, parseInteger, redactUrl, type IntRange } from './options.js';
import { dataDirOf } from './state.js';
import { PAYLOAD_LIMIT_BYTES } from '../notifier/validate.js';

type Globals = { databaseUrl?: string; schema?: string; listenUrl?: string; dataDir?: string };

type ServeOpts = {
  host?: string;
  port?: string;
  token?: string;
  tokenFile?: string;
  jwtSecretFile?: string;
  showSecrets?: boolean;
  apiKeys?: string;
  jwtSecret?: string;
  jwtPublicKey?: string;
  jwksUrl?: string;
  jwtIssuer?: string;
  jwtAudience?: string;
  maxConnectionsPerToken?: string;
  maxSubscriptions?: string;
  maxMessageBytes?: string;
  publishRate?: string;
  maxChannels?: string;
  maxConnections?: string;
  channelPrefix?: string;
  publicMetrics?: boolean;
  allowedOrigin?: string[];
  allowedHost?: string[];
  requireExp?: boolean;
  autoCreateTopics?: boolean;
};

/** Repeated flags, else a comma-separated environment variable. */
function listOption(given: string[] | undefined, env: string | undefined): string[] | undefined {
  if (given?.length) return given;
  const list = env?.split(',').map((s) => s.trim()).filter(Boolean);
  return list?.length ? list : undefined;
}

function boolEnv(name: string, value: string | undefined): boolean | undefined {
  if (value === undefined || value === '') return undefined;
  if (/^(1|true|yes|on)$/i.test(value)) return true;
  if (/^(0|false|no|off)$/i.test(value)) return false;
  throw new CliError(`${name} must be true or false, got ${value}`, 2);
}

function intOption(name: string, value: string | undefined, range: IntRange = { min: 1 }): number | undefined {
  if (value === undefined || value === '') return undefined;
  return parseInteger(name, value, range);
}

// ---- secrets (issue 12 point 10): a flag, a file, or the environment ----

/** The text of a secret file, trailing newline(s) trimmed; a clear error when unreadable or empty. */
export function readSecretFile(file: string, source: string): string {
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (err) {
    throw new CliError(`${source} ${file}: cannot read it (${(err as NodeJS.ErrnoException).code ?? (err as Error).message})`, 2);
  }
  const value = text.replace(/[\r\n]+$/, '');
  if (!value) throw new CliError(`${source} ${file}: the file is empty`, 2);
  return value;
}

/**
 * One secret from, in order: its flag, its file flag, its variable, its file
 * variable. Giving both the flag and the file flag is a usage error.
 */
export function secretFrom(
  names: { flag: string; fileFlag: string; env: string; fileEnv: string },
  value: string | undefined,
  file: string | undefined,
  env: Record<string, string | undefined>,
): string | undefined {
  if (value !== undefined && file !== undefined) throw new CliError(`give ${names.flag} or ${names.fileFlag}, not both`, 2);
  if (value !== undefined) return value;
  if (file !== undefined) return readSecretFile(file, names.fileFlag);
  if (env[names.env]) return env[names.env];
  if (env[names.fileEnv]) return readSecretFile(env[names.fileEnv]!, names.fileEnv);
  return undefined;
}
// ---- end of secrets ----

function readApiKeys(file: string): ApiKey[] {
  let parsed: unknown;
  try {
    parsed = JSON.parse(readFileSync(file, 'utf8'));
  } catch (err) {
    throw new CliError(`--api-keys ${file}: ${(err as Error).message}`, 2);
  }
  const list = Array.isArray(parsed) ? parsed : (parsed as { keys?: unknown })?.keys;
  if (!Array.isArray(list)) throw new CliError(`--api-keys ${file}: expected a JSON array of { name, key, grants }`, 2);
  return list as ApiKey[];
}

/** The PEM file of `--jwt-public-key`: a file that cannot be read is a usage error (exit 2), as for the other file flags. */
function readPublicKey(file: string, from: string): string {
  try {
    return readFileSync(file, 'utf8');
  } catch (err) {
    throw new CliError(`${from} ${file}: cannot read it (${(err as NodeJS.ErrnoException).code ?? (err as Error).message})`, 2);
  }
}

/**
 * The server's own checks of `options` (the HeraldServer constructor's), as usage errors
 * (exit 2): a non-loopback `--host` without credentials, a JWT secret too short...
 */
export function checkServeOptions(options: ServerOptions, hostSource: string): void {
  try {
    checkServerOptions(options);
  } catch (err) {
    if (!(err instanceof InvalidOptionError)) throw err;
    if (err.option === 'host') {
      throw new CliError(
        `${hostSource} ${options.host} is not a loopback address: serving on it needs credentials (--token, --token-file, --api-keys, --jwt-secret, --jwt-secret-file, --jwt-public-key or --jwks-url)`,
        2,
      );
    }
    throw new CliError(`herald serve: ${err.message}`, 2);
  }
}

/** Server options from the command line, then the environment (`HERALD_*`). */
export function serverOptionsFrom(opts: ServeOpts, env: Record<string, string | undefined>): ServerOptions {
  const port = parseInteger(opts.port !== undefined ? '--port' : 'HERALD_PORT', opts.port ?? env.HERALD_PORT ?? '8080', { min: 0, max: 65535 });
  const keysFile = opts.apiKeys ?? env.HERALD_API_KEYS_FILE;
  const pemFile = opts.jwtPublicKey ?? env.HERALD_JWT_PUBLIC_KEY_FILE;
  return {
    host: opts.host ?? env.HERALD_HOST,
    port,
    token: secretFrom({ flag: '--token', fileFlag: '--token-file', env: 'HERALD_TOKEN', fileEnv: 'HERALD_TOKEN_FILE' }, opts.token, opts.tokenFile, env),
    apiKeys: keysFile ? readApiKeys(keysFile) : undefined,
    jwtSecret: secretFrom(
      { flag: '--jwt-secret', fileFlag: '--jwt-secret-file', env: 'HERALD_JWT_SECRET', fileEnv: 'HERALD_JWT_SECRET_FILE' },
      opts.jwtSecret,
      opts.jwtSecretFile,
      env,
    ),
    jwtPublicKey: pemFile ? readPublicKey(pemFile, opts.jwtPublicKey !== undefined ? '--jwt-public-key' : 'HERALD_JWT_PUBLIC_KEY_FILE') : undefined,
    jwksUrl: opts.jwksUrl ?? env.HERALD_JWKS_URL,
    jwtIssuer: opts.jwtIssuer ?? env.HERALD_JWT_ISSUER,
    jwtAudience: opts.jwtAudience ?? env.HERALD_JWT_AUDIENCE,
    maxConnectionsPerToken: intOption('--max-connections-per-token', opts.maxConnectionsPerToken),
    maxSubscriptionsPerConnection: intOption('--max-subscriptions', opts.maxSubscriptions),
    maxMessageBytes: intOption('--max-message-bytes', opts.maxMessageBytes, { min: 1, max: PAYLOAD_LIMIT_BYTES - 1 }),
    publishPerSecond: intOption('--publish-rate', opts.publishRate),
    maxChannels: intOption('--max-channels', opts.maxChannels),
    maxConnections: opts.maxConnections !== undefined ? intOption('--max-connections', opts.maxConnections) : intOption('HERALD_MAX_CONNECTIONS', env.HERALD_MAX_CONNECTIONS),
    channelPrefix: opts.channelPrefix,
    publicMetrics: opts.publicMetrics,
    allowedOrigins: listOption(opts.allowedOrigin, env.HERALD_ALLOWED_ORIGINS),
    allowedHosts: listOption(opts.allowedHost, env.HERALD_ALLOWED_HOSTS),
    requireExp: opts.requireExp ?? boolEnv('HERALD_REQUIRE_EXP', env.HERALD_REQUIRE_EXP),
    autoCreateTopics: opts.autoCreateTopics,
  };
}

/**
 * Resolves when the npm script that started this process has gone (never outside
 * npm scripts). `npm start` passes SIGTERM (what `docker stop` sends) to the script's
 * shell only, which dies without passing it on: the server notices that it was
 * orphaned and shuts down as if it had received the signal. Outside npm a process
 * whose parent exits keeps running on purpose (`nohup herald serve &`).
 */
function parentGone(env: Record<string, string | undefined>, ctx: CliContext): Promise<void> {
  // The parent as it was when this process started: the script may already be gone by
  // the time the server is up (a SIGTERM during start-up), and then we stop at once.
  const parent = STARTING_PARENT;
  if (!env.npm_lifecycle_event || parent <= 1) return new Promise(() => {});
  return new Promise((resolve) => {
    if (process.ppid !== parent) return resolve();
    const timer = setInterval(() => {
      if (process.ppid !== parent) {
        clearInterval(timer);
        resolve();
      }
    }, PARENT_CHECK_MS);
    timer.unref();
    ctx.onCleanup(async () => clearInterval(timer));
  });
}

/** After SIGINT/SIGTERM, how long `serve` waits for its server and embedded Postgres to stop before it exits anyway. */
export const EMBEDDED_STOP_GRACE_MS = 60_000;

/** This process's parent when the module loaded (before any start-up work). */
const STARTING_PARENT = process.ppid;

/** How often a server started by an npm script checks that the script is still there. */
const PARENT_CHECK_MS = 250;

export function registerServeCommand(program: Command, ctx: CliContext): void {
  program
    .command('serve')
    .description('run the server: realtime gateway (SSE, WebSocket), HTTP API, dashboard, /metrics; starts an embedded Postgres when no database URL is given')
    .option('--host <address>', 'address to bind; non-loopback needs credentials (default: $HERALD_HOST or 127.0.0.1)')
    .option('--port <n>', 'port, 0 for any free one (default: $HERALD_PORT or 8080)')
    .option('--token <token>', 'an admin API key (grants admin on *) (default: $HERALD_TOKEN); visible in ps: prefer --token-file')
    .option('--token-file <path>', 'read the admin API key from this file, trailing newline trimmed (default: $HERALD_TOKEN_FILE)')
    .option('--api-keys <file>', 'JSON file: [{ "name", "key", "grants": { "subscribe": [...], "publish": [...], "admin": [...] } }] (default: $HERALD_API_KEYS_FILE)')
    .option('--jwt-secret <secret>', 'verify HS256 JWTs with this secret (default: $HERALD_JWT_SECRET); visible in ps: prefer --jwt-secret-file')
    .option('--jwt-secret-file <path>', 'read the HS256 secret from this file, trailing newline trimmed (default: $HERALD_JWT_SECRET_FILE)')
    .option('--jwt-public-key <file>', 'verify RS256 JWTs with this SPKI PEM public key (default: $HERALD_JWT_PUBLIC_KEY_FILE)')
    .option('--jwks-url <url>', 'verify RS256 JWTs with the keys of this JWKS URL (default: $HERALD_JWKS_URL)')
    .option('--jwt-issuer <iss>', 'required iss claim (default: $HERALD_JWT_ISSUER)')
    .option('--jwt-audience <aud>', 'required aud claim (default: $HERALD_JWT_AUDIENCE)')
    .option('--max-connections-per-token <n>', 'streaming connections per token (default 100)')
    .option('--max-subscriptions <n>', 'subscriptions per connection (default 100)')
    .option('--max-message-bytes <n>', 'largest publish payload, at most 7999 (default 7999)')
    .option('--publish-rate <n>', 'publishes per second per token (default 100)')
    .option('--max-channels <n>', 'topics listened on at once (default 1000)')
    .option('--max-connections <n>', 'open sockets at most; past it new ones are closed (default: $HERALD_MAX_CONNECTIONS or 21000)')
    .option('--channel-prefix <prefix>', 'Postgres channel prefix of client topics, e.g. gw. (default: none, topic = channel)')
    .option('--public-metrics', 'serve /metrics without credentials')
    .option('--allowed-origin <origin>', 'a web origin (https://app.example.com) allowed to use the server from its pages; repeatable (default: $HERALD_ALLOWED_ORIGINS, comma-separated)', (v: string, acc: string[] = []) => [...acc, v])
    .option('--allowed-host <host>', 'a Host name served besides the loopback names; repeatable; with credentials it turns the Host check on (default: $HERALD_ALLOWED_HOSTS)', (v: string, acc: string[] = []) => [...acc, v])
    .option('--require-exp', 'refuse JWTs without exp (the default; $HERALD_REQUIRE_EXP)')
    .option('--no-require-exp', 'accept JWTs without exp')
    .option('--auto-create-topics', 'POST /topics/<name>/publish creates a missing topic for a caller with create (or admin) on topic/<name> (default: 404)')
    .option('--show-secrets', 'print the embedded database URL with its password (hidden as *** by default)')
    .addHelpText(
      'after',
      '\nExamples:\n  herald serve\n  DATABASE_URL=postgres://localhost/app herald serve --port 9000\n  herald serve --host 0.0.0.0 --token-file /run/secrets/herald-token\n  herald serve --data-dir /var/lib/herald --show-secrets\n  herald serve --host 0.0.0.0 --jwks-url https://auth.example.com/.well-known/jwks.json --jwt-audience herald --allowed-origin https://app.example.com',
    )
    .action(async (opts: ServeOpts) => {
      const env = ctx.io.env;
      const globals = program.opts<Globals>();
      const serverOptions = serverOptionsFrom(opts, env);
      // Every option is checked before anything starts (embedded Postgres, connection, migrations).
      checkServeOptions(serverOptions, opts.host !== undefined ? '--host' : 'HERALD_HOST');
      let databaseUrl = globals.databaseUrl || env.DATABASE_URL || undefined;
      if (databaseUrl) checkPostgresUrl(databaseUrl, globals.databaseUrl ? '--database-url' : 'DATABASE_URL');
      let embedded: Awaited<ReturnType<typeof startEmbedded>> | undefined;
      let herald: Herald | undefined;
      if (!databaseUrl) {
        // ---- embedded Postgres (issue 16 point 4, issue 12 point 10) ----
        const root = dataDirOf(globals.dataDir, env);
        ctx.err(`starting embedded Postgres in ${root}`);
        embedded = await startEmbedded(root, (line) => ctx.err(line));
        // Stopping Postgres is a checkpoint: on a busy machine it can take longer than the
        // CLI's usual 2 s after a signal. A second signal still exits at once.
        ctx.cleanupGraceMs = EMBEDDED_STOP_GRACE_MS;
        // Runs last: the server and pgherald close before their Postgres stops.
        ctx.onCleanup(async () => {
          await herald?.close().catch(() => {});
          await embedded!.stop();
        });
        databaseUrl = embedded.url;
        const shown = opts.showSecrets ? databaseUrl : redactUrl(databaseUrl);
        ctx.err(`embedded Postgres ${embedded.cluster.majorVersion}: DATABASE_URL=${shown}`);
        if (!opts.showSecrets) ctx.err(`  (password in ${root}/credentials.json; --show-secrets prints it; \`herald <command>\` in this folder finds this database itself)`);
        // ---- end of embedded Postgres ----
      }
      herald = ctx.herald({ ...globals, databaseUrl }, { poolSize: 10, maintenance: { enabled: true } });
      // From here on an INVALID_ARGUMENT or INVALID_OPTION is not about the command line.
      ctx.argumentErrorsAreUsage = false;
      const applied = await herald.migrate();
      if (applied.length) ctx.err(`applied migrations ${applied.join(', ')}`);
      await herald.notifier.start();
      const server = new HeraldServer(herald, serverOptions);
      const url = await server.start();
      ctx.onCleanup(() => server.stop());
      embedded?.served(url);
      ctx.out(`herald serving on ${url}`);
      ctx.err(`dashboard: ${url}/dashboard  browser client: ${url}/client.js  metrics: ${url}/metrics`);
      await Promise.race([ctx.io.interrupted, parentGone(env, ctx)]);
      ctx.err('shutting down');
    });
}
