import { execFileSync } from 'node:child_process';
import { mkdirSync, readdirSync, readFileSync, statfsSync } from 'node:fs';
import path from 'node:path';
import { sha256Hex } from '../../../activities/artifacts';

/** Run `mount` and return null, or the reason it failed (its stderr). */
function mount(args: string[]): string | null {
  try {
    execFileSync('mount', args, { stdio: ['ignore', 'ignore', 'pipe'] });
    return null;
  } catch (err) {
    const stderr = (err as { stderr?: Buffer }).stderr?.toString().trim();
    return stderr || (err as Error).message;
  }
}

/** A small tmpfs mounted over a directory, to make that directory fill up or go read-only on demand. */
export class SmallDisk {
  private mounted = false;

  constructor(readonly dir: string) {}

  /** Mount it; returns null or why it could not (not root, no CAP_SYS_ADMIN in this container, …). */
  mount(bytes: number): string | null {
    mkdirSync(this.dir, { recursive: true });
    const failure = mount(['-t', 'tmpfs', '-o', `size=${Math.ceil(bytes / 1024)}k,mode=0755`, 'tmpfs', this.dir]);
    this.mounted = failure === null;
    return failure;
  }

  /** `remount,ro` / `remount,rw`; throws with mount's message (say, EBUSY while a file is open for writing). */
  remount(option: 'ro' | 'rw'): void {
    const failure = mount(['-o', `remount,${option}`, this.dir]);
    if (failure) throw new Error(`mount -o remount,${option} ${this.dir}: ${failure}`);
  }

  freeBytes(): number {
    const s = statfsSync(this.dir);
    return s.bavail * s.bsize;
  }

  /** Every file below the mount, relative to it. */
  files(): string[] {
    return readdirSync(this.dir, { recursive: true, withFileTypes: true })
      .filter((e) => e.isFile())
      .map((e) => path.relative(this.dir, path.join(e.parentPath ?? e.path, e.name)));
  }

  /** Content-addressed files whose bytes no longer hash to their name (torn or partial writes). */
  misnamedArtifacts(): string[] {
    return this.files()
      .filter((f) => /^[0-9a-f]{2}\/[0-9a-f]{64}\.[a-z0-9.]+$/.test(f))
      .filter((f) => sha256Hex(readFileSync(path.join(this.dir, f))) !== path.basename(f).split('.')[0]);
  }

  /** Unmount (lazily, so a process that still has a file open cannot block the test's cleanup). */
  unmount(): void {
    if (!this.mounted) return;
    const failure = (() => {
      try {
        execFileSync('umount', ['-l', this.dir], { stdio: ['ignore', 'ignore', 'pipe'] });
        return null;
      } catch (err) {
        return (err as Error).message;
      }
    })();
    if (failure) throw new Error(`umount ${this.dir}: ${failure}`);
    this.mounted = false;
  }
}
