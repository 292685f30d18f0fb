import { statSync, truncateSync } from 'node:fs';
import path from 'node:path';
import type { Client } from '@temporalio/client';
import { DefaultLogger, Runtime } from '@temporalio/worker';
import { ArtifactStore } from '../activities/artifacts';
import { decide, runStatus, startRun } from '../cli/runs';
import type { PipelineResult } from '../schemas/pipeline';
import { parseRunSpec } from '../schemas/runSpec';
import type { TestDatabase } from './helpers/db';
import { tinySpec } from './helpers/fixtures';
import { startHarness, type Harness } from './helpers/harness';
import { eventually, GiveUp, runsFor } from './helpers/temporal';

Runtime.install({ logger: new DefaultLogger('WARN') });

describe('crash: the gpu worker is SIGKILLed mid-training', () => {
  let h: Harness;
  let client: Client;
  let db: TestDatabase;
  let home: string;
  const runs = () => runsFor(client, db.pool, home);

  beforeAll(async () => {
    h = await startHarness({ inProcessGpu: false });
    ({ client, db, home } = h);
  });

  afterAll(async () => {
    await h?.stop();
  });

  const spawnGpuWorker = () => h.spawnGpuWorker();

  test('a new worker resumes from the newest checkpoint and the run completes', async () => {
        const first = spawnGpuWorker();
    // Both this run and the uninterrupted one below bootstrap the same base model (same seed, same data).
    const spec = parseRunSpec(
      tinySpec({
        baseModel: { ref: 'no-such-model', bootstrapIfMissing: true, shape: { contextLength: 32, dModel: 32, nLayers: 1, nHeads: 2 } },
        dacp: { steps: 400, batchSize: 8, learningRate: 3e-3, checkpointEvery: 20 },
        heartbeatTimeout: '3s',
      }),
    );
    const runId = await startRun(runs(), { spec, baseDir: home, runId: 'crash-1', initiator: 'engineer' });

    // Kill once dacp training has written a checkpoint at step ≥ 40 but is far from done.
    const killedAt = await eventually(async () => {
      const { rows } = await db.pool.query(
        "SELECT max(step)::int AS step FROM checkpoints WHERE run_id = $1 AND stage = 'dacp'",
        [runId],
      );
      return rows[0].step !== null && rows[0].step >= 40 ? (rows[0].step as number) : undefined;
    }, 'a dacp checkpoint at step 40', 300_000, 50);
    // The worker said which backend it trains on, and why faster ones were passed over.
    await first.ready;
    expect(first.output()).toMatch(/worker: TensorFlow\.js backend (tensorflow|wasm) \(@tensorflow\/tfjs-[a-z-]+\)/);
    if (!hasGpuPackage()) expect(first.output()).toContain('not used: @tensorflow/tfjs-node-gpu is not installed');
    first.kill('SIGKILL');
    await new Promise((resolve) => first.once('exit', resolve));
    expect(killedAt).toBeLessThan(400);

    spawnGpuWorker();
    await eventually(async () => {
      const s = await runStatus(runs(), runId);
      if (s.state === 'failed') throw new GiveUp(String(s.metrics.error));
      return s.state === 'awaiting_approval' ? s : undefined;
    }, 'the resumed run to reach approval', 600_000, 500);

    const status = await runStatus(runs(), runId);
    expect(status.resumedFromStep).toBeGreaterThanOrEqual(killedAt);
    expect(status.resumedFromStep).toBeLessThan(400);
    expect(status.attempts.dacp).toBeGreaterThanOrEqual(2);

    await decide(runs(), { runId, principal: 'approver-1', decision: 'approve' });
    const result = (await client.workflow.getHandle(runId).result()) as PipelineResult;
    expect(result.state).toBe('completed');
    const { rows } = await db.pool.query(
      "SELECT step FROM checkpoints WHERE run_id = $1 AND stage = 'dacp' ORDER BY step",
      [runId],
    );
    expect(rows.map((r) => r.step)).toEqual(Array.from({ length: 20 }, (_, i) => (i + 1) * 20));

    // Exact resume: the same run without a crash ends with a bitwise identical training state
    // (weights, AdamW moments, step), so its final checkpoint has the same sha256.
    const clean = await startRun(runs(), { spec, baseDir: home, runId: 'uninterrupted-1', initiator: 'engineer' });
    await eventually(async () => {
      const s = await runStatus(runs(), clean);
      if (s.state === 'failed') throw new GiveUp(String(s.metrics.error));
      return s.state === 'awaiting_approval' ? s : undefined;
    }, 'the uninterrupted run to reach approval', 600_000, 500);
    expect((await runStatus(runs(), clean)).resumedFromStep).toBeNull();
    const finalCheckpoint = async (id: string) =>
      (await db.pool.query("SELECT sha256 FROM checkpoints WHERE run_id = $1 AND stage = 'dacp' AND step = 400", [id])).rows[0].sha256 as string;
    expect(await finalCheckpoint(runId)).toBe(await finalCheckpoint(clean));
    await client.workflow.getHandle(clean).cancel();
  });

  test('SIGTERM: the gpu worker checkpoints before exiting and the next one resumes from that step', async () => {
    await h.killSpawned();
        const first = spawnGpuWorker();
    await first.ready;
    const spec = parseRunSpec(
      tinySpec({
        baseModel: { ref: 'production' },
        dacp: { steps: 600, batchSize: 8, learningRate: 3e-3, checkpointEvery: 250 },
        heartbeatTimeout: '3s',
      }),
    );
    const runId = await startRun(runs(), { spec, baseDir: home, runId: 'graceful-1', initiator: 'engineer' });
    await eventually(async () => {
      const s = await runStatus(runs(), runId);
      return s.stage === 'dacp' && s.progress.step >= 20 ? s : undefined;
    }, 'dacp training to pass step 20', 300_000, 100);

    first.kill('SIGTERM');
    const code = await new Promise<number | null>((resolve) => first.once('exit', (c) => resolve(c)));
    expect(code).toBe(0);
    const { rows } = await db.pool.query("SELECT max(step)::int AS step FROM checkpoints WHERE run_id = $1 AND stage = 'dacp'", [runId]);
    const stoppedAt = rows[0].step as number;
    // Not a periodic checkpoint (every 250): the one written on the way out.
    expect(stoppedAt).toBeGreaterThanOrEqual(20);
    expect(stoppedAt % 250).not.toBe(0);

    spawnGpuWorker();
    await eventually(async () => {
      const s = await runStatus(runs(), runId);
      if (s.state === 'failed') throw new GiveUp(String(s.metrics.error));
      return s.state === 'awaiting_approval' ? s : undefined;
    }, 'the resumed run to reach approval', 600_000, 500);
    const status = await runStatus(runs(), runId);
    expect(status.resumedFromStep).toBe(stoppedAt);
  });

  test('a corrupted newest checkpoint is detected by sha256; the previous one is used, with a warning', async () => {
    await h.killSpawned();
        const first = spawnGpuWorker();
    await first.ready;
    const spec = parseRunSpec(
      tinySpec({ baseModel: { ref: 'production' }, dacp: { steps: 400, batchSize: 8, learningRate: 3e-3, checkpointEvery: 20 }, heartbeatTimeout: '3s' }),
    );
    const runId = await startRun(runs(), { spec, baseDir: home, runId: 'corrupt-1', initiator: 'engineer' });
    const newest = async () =>
      (await db.pool.query(
        "SELECT step, uri, sha256 FROM checkpoints WHERE run_id = $1 AND stage = 'dacp' AND pruned_at IS NULL ORDER BY step DESC",
        [runId],
      )).rows as { step: number; uri: string; sha256: string }[];
    await eventually(async () => ((await newest()).length >= 2 && (await newest())[0].step >= 60 ? true : undefined), 'two dacp checkpoints', 300_000, 50);
    first.kill('SIGKILL');
    await new Promise((resolve) => first.once('exit', resolve));

    const [latest, previous] = await newest();
    const file = new ArtifactStore(path.join(home, 'artifacts')).pathOf(latest.uri);
    truncateSync(file, Math.floor(statSync(file).size / 2)); // a torn write

    spawnGpuWorker();
    const status = await eventually(async () => {
      const s = await runStatus(runs(), runId);
      if (s.state === 'failed') throw new GiveUp(String(s.metrics.error));
      return s.resumedFromStep !== null ? s : undefined;
    }, 'the run to resume', 300_000, 200);
    expect(status.resumedFromStep).toBe(previous.step);
    expect((status.metrics.warnings as string[]).join(' ')).toMatch(new RegExp(`dacp checkpoint at step ${latest.step} is missing or corrupted`));
    const audit = await db.pool.query("SELECT details FROM audit_log WHERE run_id = $1 AND event = 'checkpoint_invalid'", [runId]);
    expect(audit.rows.map((r) => r.details.step)).toContain(latest.step);
    await client.workflow.getHandle(runId).cancel();
  });
});

function hasGpuPackage(): boolean {
  try {
    require.resolve('@tensorflow/tfjs-node-gpu');
    return true;
  } catch {
    return false;
  }
}
