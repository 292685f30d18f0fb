import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { DefaultLogger, Runtime } from '@temporalio/worker';
import { ArtifactStore } from '../../activities/artifacts';
import { startRun } from '../../cli/runs';
import { parseRunSpec } from '../../schemas/runSpec';
import { sharedTinyBase, tinySpec } from '../helpers/fixtures';
import { eventually } from '../helpers/temporal';
import { SmallDisk } from './helpers/diskTmpfs';
import { startFaultHarness, type FaultHarness } from './helpers/gpuHarness';
import { newestCheckpoint, trainingAttempts, type CheckpointRecord } from './helpers/gpuRecords';
import type { GpuWorkerProcess } from './helpers/gpuWorker';

Runtime.install({ logger: new DefaultLogger('WARN') });

const STEPS = 300;
const EVERY = 20;

const spec = parseRunSpec(
  tinySpec({
    baseModel: sharedTinyBase,
    dacp: { steps: STEPS, batchSize: 8, learningRate: 3e-3, checkpointEvery: EVERY },
    checkpoints: { keepLast: 3, keepBest: false },
    heartbeatTimeout: '10s',
  }),
);

/**
 * Why this machine cannot run the disk-full tests (mounting a tmpfs needs root with CAP_SYS_ADMIN),
 * or null. Decided at load time with a throwaway mount, so jest reports the tests as skipped, with
 * the reason in the suite's name, instead of passing tests that checked nothing.
 */
function tmpfsUnavailable(): string | null {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'dacp-tmpfs-probe-'));
  const probe = new SmallDisk(dir);
  try {
    const failure = probe.mount(1024 * 1024);
    return failure === null ? null : `cannot mount a tmpfs (${failure.replace(/\s+/g, ' ').replace(/\.$/, '')}); needs root with CAP_SYS_ADMIN`;
  } finally {
    probe.unmount();
    rmSync(dir, { recursive: true, force: true });
  }
}

const skipReason = tmpfsUnavailable();
const describeWithTmpfs = skipReason ? describe.skip : describe;
// jest's summary hides the names of a suite whose every test is skipped; say why here, once.
if (skipReason) console.warn(`disk-full fault tests skipped (not run, not passed): ${skipReason}`);
const suiteName = 'faults: the checkpoint directory fills up or turns read-only during training';

interface AttemptFailure {
  /** The attempt now pending (the failure belongs to the one before it). */
  attempt: number;
  message: string;
  type: string | null;
}

describeWithTmpfs(skipReason ? `${suiteName} (skipped: ${skipReason})` : suiteName, () => {
  let h: FaultHarness;
  let disk: SmallDisk;
  let worker: GpuWorkerProcess;
  let store: ArtifactStore;
  const runId = 'disk-1';
  let previous: CheckpointRecord;
  let firstFaultAttempt: number;

  beforeAll(async () => {
    h = await startFaultHarness();
    store = new ArtifactStore(path.join(h.home, 'artifacts'));
    disk = new SmallDisk(path.join(h.home, 'artifacts', 'checkpoints'));
    const failure = disk.mount(16 * 1024 * 1024);
    // The probe at load time could mount, so a failure here is a real fault, not a missing capability.
    if (failure) throw new Error(`cannot mount a tmpfs over ${disk.dir}: ${failure}`);
    worker = await h.spawnGpuWorker();
  });

  afterAll(async () => {
    try {
      worker?.signal('SIGCONT');
      await worker?.stop();
      disk?.unmount();
    } finally {
      await h?.close();
    }
  });

  /** The failure of the newest finished attempt of the training activity, while it is being retried. */
  const lastAttemptFailure = async (): Promise<AttemptFailure | undefined> => {
    const { raw } = await h.client.workflow.getHandle(runId).describe();
    const pending = raw.pendingActivities?.find((a) => a.activityType?.name === 'continualPretrain');
    if (!pending?.lastFailure?.message) return undefined;
    return { attempt: pending.attempt ?? 0, message: pending.lastFailure.message, type: pending.lastFailure.applicationFailureInfo?.type ?? null };
  };

  /** Freeze the worker at a moment when no artifact write is in flight, do `change`, let it go on. */
  const whileNoWriteInFlight = async (what: string, change: () => void) => {
    await eventually(async () => {
      worker.signal('SIGSTOP');
      try {
        if (disk.files().some((f) => path.basename(f).startsWith('.tmp-'))) return undefined;
        change();
        return true;
      } finally {
        worker.signal('SIGCONT');
      }
    }, what, 60_000, 20);
  };

  test('a full disk fails the checkpoint write with a clear ENOSPC error, and leaves no partial file', async () => {
    await startRun(h.runs, { spec, baseDir: h.home, runId, initiator: 'engineer' });
    await eventually(async () => ((await newestCheckpoint(h.db.pool, runId, 'dacp'))?.step ?? 0) >= 2 * EVERY || undefined, 'two dacp checkpoints', 300_000, 20);

    // Fill the disk so that less than half a checkpoint fits: the next checkpoint write fails.
    const bytes = (await newestCheckpoint(h.db.pool, runId, 'dacp'))!.bytes;
    await whileNoWriteInFlight('a moment without a checkpoint write in flight', () => {
      const filler = disk.freeBytes() - Math.floor(bytes / 2);
      writeFileSync(path.join(disk.dir, 'filler'), Buffer.alloc(Math.max(0, filler)));
    });

    const failure = await eventually(async () => {
      const f = await lastAttemptFailure();
      return f && /ENOSPC/.test(f.message) ? f : undefined;
    }, 'a dacp attempt to fail with ENOSPC', 120_000, 100);
    firstFaultAttempt = failure.attempt - 1;
    previous = (await newestCheckpoint(h.db.pool, runId, 'dacp'))!;
    console.log(`attempt ${firstFaultAttempt} failed (${failure.type}): ${failure.message}`);

    // A message a user can act on: what failed, where, why.
    expect(failure.message).toMatch(/no space left/i);
    expect(failure.message).toContain(path.join(disk.dir, ''));
    expect(failure.message).toMatch(/\.safetensors/);
    // No temp file left behind, nothing under a final name that does not hash to it.
    expect(disk.files().filter((f) => path.basename(f).startsWith('.tmp-'))).toEqual([]);
    expect(disk.misnamedArtifacts()).toEqual([]);
    // The previous checkpoint is still the newest, and intact.
    expect(await store.verify(previous)).toBe(true);
  });

  test('while the disk stays full, each retry resumes from the previous checkpoint and fails the same way', async () => {
    const again = await eventually(async () => {
      const f = await lastAttemptFailure();
      return f && f.attempt > firstFaultAttempt + 1 && /ENOSPC/.test(f.message) ? f : undefined;
    }, 'a second attempt to fail with ENOSPC', 120_000, 100);
    const retried = (await trainingAttempts(h.db.pool, runId, 'dacp')).find((a) => a.attempt === again.attempt - 1)!;
    expect(retried.resumedFromStep).toBe(previous.step);
    expect((await newestCheckpoint(h.db.pool, runId, 'dacp'))!.step).toBe(previous.step);
    expect(disk.files().filter((f) => path.basename(f).startsWith('.tmp-'))).toEqual([]);
    expect(await store.verify(previous)).toBe(true);
  });

  test('a read-only checkpoint directory fails the write with a clear EROFS error', async () => {
    // Root ignores permission bits (chmod would change nothing) and tmpfs has no immutable flag
    // (chattr +i is refused), so "unwritable" is a read-only remount: every write gets EROFS.
    const before = (await lastAttemptFailure())?.attempt ?? 0;
    await whileNoWriteInFlight('a moment to remount the checkpoint disk read-only', () => {
      rmSync(path.join(disk.dir, 'filler'));
      disk.remount('ro');
    });
    const failure = await eventually(async () => {
      const f = await lastAttemptFailure();
      return f && f.attempt > before && /EROFS/.test(f.message) ? f : undefined;
    }, 'a dacp attempt to fail with EROFS', 120_000, 100);
    console.log(`attempt ${failure.attempt - 1} failed (${failure.type}): ${failure.message}`);
    expect(failure.message).toMatch(/read-only/i);
    expect(failure.message).toContain(path.join(disk.dir, ''));
    const failed = (await trainingAttempts(h.db.pool, runId, 'dacp')).find((a) => a.attempt === failure.attempt - 1)!;
    expect(failed.resumedFromStep).toBe(previous.step);
    expect(await store.verify(previous)).toBe(true);
  });

  test('once the directory is writable again, the next attempt resumes from the previous checkpoint and the run reaches approval', async () => {
    const before = (await lastAttemptFailure())?.attempt ?? 0;
    disk.remount('rw');
    const status = await h.untilAwaitingApproval(runId);
    const attempts = await trainingAttempts(h.db.pool, runId, 'dacp');
    const recovered = attempts.filter((a) => a.attempt >= before);
    // Every attempt after the fault started from the checkpoint written before it.
    expect(recovered.length).toBeGreaterThanOrEqual(1);
    for (const a of recovered) expect(a.resumedFromStep).toBe(previous.step);
    expect(status.resumedFromStep).toBe(previous.step);
    const { rows } = await h.db.pool.query("SELECT step FROM checkpoints WHERE run_id = $1 AND stage = 'dacp' ORDER BY step", [runId]);
    expect(rows.map((r) => r.step)).toEqual(Array.from({ length: STEPS / EVERY }, (_, i) => (i + 1) * EVERY));
    expect(disk.files().filter((f) => path.basename(f).startsWith('.tmp-'))).toEqual([]);
    expect(disk.misnamedArtifacts()).toEqual([]);
    expect(existsSync(store.pathOf((await newestCheckpoint(h.db.pool, runId, 'dacp'))!.uri))).toBe(true);
    console.log(`dacp attempts: ${attempts.map((a) => `#${a.attempt} from ${a.resumedFromStep ?? 0}`).join(', ')}`);
    await h.client.workflow.getHandle(runId).cancel();
  });
});
