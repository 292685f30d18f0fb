import { randomBytes } from 'crypto';
import { promises as fs, readFileSync } from 'fs';
import os from 'os';

/**
 * A cross-process mutex: a lock file created with O_EXCL. The holder's pid is written into it so
 * that a lock left behind by a process that died can be recognised and broken.
 */
export interface FileLock {
  release(): Promise<void>;
}

interface LockOwner {
  pid: number;
  host: string;
  token: string;
  acquiredAt: string;
}

export interface FileLockOptions {
  /** Give up waiting after this long. */
  timeoutMs: number;
  /** What the lock protects, for error messages. */
  purpose: string;
  /** A lock older than this is considered stale even if its pid looks alive (pid reuse). */
  staleAfterMs?: number;
  pollMs?: number;
}

export async function acquireFileLock(lockPath: string, options: FileLockOptions): Promise<FileLock> {
  const { timeoutMs, purpose, staleAfterMs = 10 * 60_000, pollMs = 50 } = options;
  const owner: LockOwner = {
    pid: process.pid,
    host: os.hostname(),
    token: randomBytes(8).toString('hex'),
    acquiredAt: new Date().toISOString(),
  };
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    try {
      const handle = await fs.open(lockPath, 'wx', 0o600);
      try {
        await handle.writeFile(JSON.stringify(owner));
      } finally {
        await handle.close();
      }
      return { release: () => releaseLock(lockPath, owner.token) };
    } catch (error) {
      if (errorCode(error) !== 'EEXIST') {
        throw new Error(`cannot create lock file ${lockPath} (${purpose}): ${describe(error)}`);
      }
    }
    const holder = await readHolder(lockPath);
    if (holder !== undefined && isStale(holder, staleAfterMs)) {
      await breakStaleLock(lockPath, holder.raw);
      continue;
    }
    if (Date.now() >= deadline) {
      const who = holder?.owner ? `pid ${holder.owner.pid} since ${holder.owner.acquiredAt}` : 'another process';
      throw new Error(
        `timed out after ${Math.round(timeoutMs / 1000)} s waiting for ${lockPath} (${purpose}), held by ${who}; ` +
          'if no dacp process is running, delete that file',
      );
    }
    await new Promise((resolve) => setTimeout(resolve, pollMs));
  }
}

interface Holder {
  raw: string;
  owner: LockOwner | undefined;
  modifiedMs: number;
}

async function readHolder(lockPath: string): Promise<Holder | undefined> {
  try {
    const [raw, stat] = await Promise.all([fs.readFile(lockPath, 'utf8'), fs.stat(lockPath)]);
    return { raw, owner: parseOwner(raw), modifiedMs: stat.mtimeMs };
  } catch (error) {
    if (errorCode(error) === 'ENOENT') return undefined; // released meanwhile: retry at once
    throw error;
  }
}

function isStale(holder: Holder, staleAfterMs: number): boolean {
  const ageMs = Date.now() - holder.modifiedMs;
  // An unreadable lock is one being written right now, unless it stays that way.
  if (holder.owner === undefined) return ageMs > 5_000;
  if (ageMs > staleAfterMs) return true;
  return holder.owner.host === os.hostname() && !isProcessAlive(holder.owner.pid);
}

/**
 * Moves the stale lock aside, then checks that what was moved is the lock judged stale: another
 * waiter may have broken it and taken a fresh one in between, which is put back.
 */
async function breakStaleLock(lockPath: string, staleContent: string): Promise<void> {
  const aside = `${lockPath}.stale-${process.pid}-${randomBytes(4).toString('hex')}`;
  try {
    await fs.rename(lockPath, aside);
  } catch (error) {
    if (errorCode(error) === 'ENOENT') return;
    throw error;
  }
  const moved = await fs.readFile(aside, 'utf8').catch(() => staleContent);
  if (moved !== staleContent) await fs.link(aside, lockPath).catch(() => undefined);
  await fs.unlink(aside).catch(() => undefined);
}

async function releaseLock(lockPath: string, token: string): Promise<void> {
  const holder = await readHolder(lockPath).catch(() => undefined);
  if (holder?.owner?.token === token) await fs.unlink(lockPath).catch(() => undefined);
}

function parseOwner(raw: string): LockOwner | undefined {
  try {
    const value: unknown = JSON.parse(raw);
    if (typeof value !== 'object' || value === null) return undefined;
    const record = value as Record<string, unknown>;
    if (typeof record.pid !== 'number' || typeof record.token !== 'string') return undefined;
    return {
      pid: record.pid,
      token: record.token,
      host: typeof record.host === 'string' ? record.host : '',
      acquiredAt: typeof record.acquiredAt === 'string' ? record.acquiredAt : '',
    };
  } catch {
    return undefined;
  }
}

/** True if `pid` runs. A zombie (exited, not yet reaped by its parent or init) counts as gone. */
export function isProcessAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
  } catch (error) {
    return errorCode(error) === 'EPERM';
  }
  try {
    // /proc/<pid>/stat: "pid (comm) S …"; comm may contain spaces or parentheses.
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    return stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3) !== 'Z';
  } catch {
    return true; // no procfs (macOS): kill(0) is the best we know
  }
}

export function errorCode(error: unknown): string | undefined {
  if (typeof error === 'object' && error !== null && 'code' in error) {
    const { code } = error as { code: unknown };
    return typeof code === 'string' ? code : undefined;
  }
  return undefined;
}

function describe(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}
