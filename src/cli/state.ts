/**
 * The files `herald serve` keeps in its data folder (default `./.herald`) for the
 * embedded Postgres, and how other `herald` commands find that database through them:
 *
 * - `credentials.json` (0600): the generated passwords, of the cluster's superuser
 *   `postgres` (cluster administration only) and of the role `herald` the server and
 *   the CLI connect as;
 * - `herald.json` (0600): the state: the Postgres port (kept across restarts, so a
 *   printed `DATABASE_URL` stays valid), the database and role, and while a server
 *   runs its process id and URL. It holds no secret.
 */
import { randomBytes } from 'node:crypto';
import { existsSync, readFileSync, renameSync, unlinkSync, writeFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { CliError } from './context.js';

/** Name of the state file in the data folder. */
export const STATE_FILE = 'herald.json';
/** Name of the credentials file in the data folder. */
export const CREDENTIALS_FILE = 'credentials.json';
/** The non-superuser role (and its database) the server uses on the embedded cluster. */
export const APP_ROLE = 'herald';

/** Contents of `herald.json`. */
export interface EmbeddedState {
  /** TCP port of the embedded Postgres on 127.0.0.1 (kept across restarts). */
  port: number;
  /** Database and role the server connects as. */
  database: string;
  user: string;
  /** While a server runs: its process id, its Postgres' process id, its URL, when it started. */
  pid?: number;
  postgresPid?: number;
  serverUrl?: string;
  startedAt?: string;
}

/** Contents of `credentials.json`. */
export interface Credentials {
  /** The cluster superuser (`postgres`) and its password. */
  user: string;
  password: string;
  /** Password of {@link APP_ROLE}. */
  appPassword: string;
}

/** The data folder: `--data-dir`, then `$HERALD_DATA_DIR`, then `./.herald`. */
export function dataDirOf(option: string | undefined, env: Record<string, string | undefined>): string {
  return resolve(option || env.HERALD_DATA_DIR || '.herald');
}

/** Writes `file` with mode 0600, replacing it atomically. */
export function writePrivateFile(file: string, text: string): void {
  const tmp = `${file}.${randomBytes(4).toString('hex')}.tmp`;
  writeFileSync(tmp, text, { mode: 0o600 });
  renameSync(tmp, file);
}

function readJson(file: string): Record<string, unknown> | undefined {
  if (!existsSync(file)) return undefined;
  try {
    return JSON.parse(readFileSync(file, 'utf8'));
  } catch (err) {
    throw new CliError(`cannot read ${file}: ${(err as Error).message}`);
  }
}

/** The state of the data folder, or undefined when there is none. */
export function readState(dir: string): EmbeddedState | undefined {
  const s = readJson(join(dir, STATE_FILE));
  if (!s || typeof s.port !== 'number') return undefined;
  return s as unknown as EmbeddedState;
}

/** Writes the state of the data folder (0600). */
export function writeState(dir: string, state: EmbeddedState): void {
  writePrivateFile(join(dir, STATE_FILE), JSON.stringify(state, null, 2) + '\n');
}

/**
 * The credentials of the data folder: read, completed (a folder from an older
 * version has no `appPassword`) or generated. `created` tells whether the file is new
 * (a failed first start removes it, so no password is left behind).
 */
export function loadCredentials(dir: string): { credentials: Credentials; created: boolean } {
  const file = join(dir, CREDENTIALS_FILE);
  const found = readJson(file);
  const gen = () => randomBytes(18).toString('base64url');
  if (found && typeof found.password === 'string') {
    if (typeof found.appPassword === 'string') return { credentials: found as unknown as Credentials, created: false };
    const credentials = { user: String(found.user ?? 'postgres'), password: found.password, appPassword: gen() };
    writePrivateFile(file, JSON.stringify(credentials) + '\n');
    return { credentials, created: false };
  }
  const credentials = { user: 'postgres', password: gen(), appPassword: gen() };
  writePrivateFile(file, JSON.stringify(credentials) + '\n');
  return { credentials, created: true };
}

/** Removes a file, ignoring a missing one. */
export function removeFile(file: string): void {
  try {
    unlinkSync(file);
  } catch {
    /* already gone */
  }
}

/** True when process `pid` exists (EPERM: it exists, owned by another user). */
export function isAlive(pid: number | undefined): boolean {
  if (!pid || !Number.isInteger(pid) || pid <= 0) return false;
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as { code?: string }).code === 'EPERM';
  }
}

/** `postgres://user:password@127.0.0.1:port/database` of the role the server uses. */
export function appUrl(state: Pick<EmbeddedState, 'port' | 'user' | 'database'>, password: string): string {
  return `postgres://${encodeURIComponent(state.user)}:${encodeURIComponent(password)}@127.0.0.1:${state.port}/${encodeURIComponent(state.database)}`;
}

/**
 * The database of a `herald serve` running on data folder `dir`, for commands given
 * no URL; undefined when the folder has no state file. Throws a clear error when the
 * folder has one but its server is not running.
 */
export function runningEmbeddedUrl(dir: string): string | undefined {
  const state = readState(dir);
  if (!state) return undefined;
  if (!isAlive(state.pid) && !isAlive(state.postgresPid)) {
    throw new CliError(`no database: the embedded Postgres of ${dir} is not running (start it with \`herald serve --data-dir ${dir}\`, or pass --database-url / DATABASE_URL)`);
  }
  const creds = readJson(join(dir, CREDENTIALS_FILE));
  if (!creds || typeof creds.appPassword !== 'string') throw new CliError(`no database: ${join(dir, CREDENTIALS_FILE)} is missing or has no appPassword`);
  return appUrl(state, creds.appPassword);
}
