import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, rmSync, statSync, truncateSync } from 'node:fs';
import path from 'node:path';
import { Client, Connection } from '@temporalio/client';
import { DefaultLogger, NativeConnection, Runtime, type Worker } from '@temporalio/worker';
import { ArtifactStore } from '../activities/artifacts';
import { runStatus, startRun } from '../cli/runs';
import { migrate } from '../db/migrate';
import type { PipelineResult } from '../schemas/pipeline';
import { parseRunSpec } from '../schemas/runSpec';
import { approveUpdate, approvalWorkflowId } from '../workflows/messages';
import { createWorker } from '../workers/options';
import { createTestDatabase, type TestDatabase } from './helpers/db';
import { tinySpec, writeTinyCorpus } from './helpers/fixtures';
import { bundleWorkflows, eventually, GiveUp, startTestDevServer, tempHome } from './helpers/temporal';

Runtime.install({ logger: new DefaultLogger('WARN') });

const dacpBin = path.resolve(__dirname, '..', 'bin', 'dacp.js');

/** A gpu worker in its own process, as `dacp worker --queue gpu` runs it, so it can be SIGKILLed. */
function spawnGpuWorker(env: NodeJS.ProcessEnv): ChildProcess & { ready: Promise<void> } {
  const child = spawn(process.execPath, [dacpBin, 'worker', '--queue', 'gpu'], { env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
  let output = '';
  const ready = new Promise<void>((resolve, reject) => {
    child.stdout!.on('data', (d) => {
      output += d;
      if (output.includes('polling')) resolve();
    });
    child.once('exit', (code) => reject(new Error(`gpu worker exited (${code}) before polling: ${output}`)));
  });
  ready.catch(() => undefined);
  child.stderr!.resume();
  return Object.assign(child, { ready });
}

async function stopAll(children: ChildProcess[]): Promise<void> {
  for (const child of children) {
    if (child.exitCode === null && child.signalCode === null) {
      const exited = new Promise((resolve) => child.once('exit', resolve));
      child.kill('SIGKILL');
      await exited;
    }
  }
}

describe('crash: the gpu worker is SIGKILLed mid-training', () => {
  let server: Awaited<ReturnType<typeof startTestDevServer>>;
  let db: TestDatabase;
  let client: Client;
  let control: Worker;
  let running: Promise<void>;
  let home: string;
  let nativeConnection: NativeConnection;
  const children: ChildProcess[] = [];

  beforeAll(async () => {
    if (!existsSync(path.resolve(__dirname, '..', 'dist', 'cli', 'main.js'))) throw new Error('run `npm run build` first (npm test does)');
    home = tempHome();
    writeTinyCorpus(home);
    [server, db] = await Promise.all([startTestDevServer(), createTestDatabase()]);
    await migrate(db.pool);
    nativeConnection = await NativeConnection.connect({ address: server.address });
    client = new Client({ connection: await Connection.connect({ address: server.address }) });
    control = await createWorker('control', {
      connection: nativeConnection,
      namespace: 'default',
      pool: db.pool,
      artifactsDir: path.join(home, 'artifacts'),
      client,
      workflowBundle: await bundleWorkflows(),
    });
    running = control.run();
  });

  afterAll(async () => {
    await stopAll(children);
    control?.shutdown();
    await running;
    await nativeConnection?.close();
    await client?.connection.close();
    await server?.cleanup();
    await db?.drop();
    rmSync(home, { recursive: true, force: true });
  });

  test('a new worker resumes from the newest checkpoint and the run completes', async () => {
    const env = { DATABASE_URL: db.url, TEMPORAL_ADDRESS: server.address, DACP_HOME: home };
    const first = spawnGpuWorker(env);
    children.push(first);
    // Both this run and the uninterrupted one below bootstrap the same base model (same seed, same data).
    const spec = parseRunSpec(
      tinySpec({
        baseModel: { ref: 'no-such-model', bootstrapIfMissing: true, shape: { contextLength: 32, dModel: 32, nLayers: 1, nHeads: 2 } },
        dacp: { steps: 400, batchSize: 8, learningRate: 3e-3, checkpointEvery: 20 },
        heartbeatTimeout: '3s',
      }),
    );
    const runId = await startRun(client, { spec, baseDir: home, runId: 'crash-1', initiator: 'engineer' });

    // Kill once dacp training has written a checkpoint at step ≥ 40 but is far from done.
    const killedAt = await eventually(async () => {
      const { rows } = await db.pool.query(
        "SELECT max(step)::int AS step FROM checkpoints WHERE run_id = $1 AND stage = 'dacp'",
        [runId],
      );
      return rows[0].step !== null && rows[0].step >= 40 ? (rows[0].step as number) : undefined;
    }, 'a dacp checkpoint at step 40', 300_000, 50);
    first.kill('SIGKILL');
    await new Promise((resolve) => first.once('exit', resolve));
    expect(killedAt).toBeLessThan(400);

    children.push(spawnGpuWorker(env));
    await eventually(async () => {
      const s = await runStatus(client, runId);
      if (s.state === 'failed') throw new GiveUp(String(s.metrics.error));
      return s.state === 'awaiting_approval' ? s : undefined;
    }, 'the resumed run to reach approval', 600_000, 500);

    const status = await runStatus(client, runId);
    expect(status.resumedFromStep).toBeGreaterThanOrEqual(killedAt);
    expect(status.resumedFromStep).toBeLessThan(400);
    expect(status.attempts.dacp).toBeGreaterThanOrEqual(2);

    await client.workflow.getHandle(approvalWorkflowId(runId)).executeUpdate(approveUpdate, { args: [{ principal: 'approver-1' }] });
    const result = (await client.workflow.getHandle(runId).result()) as PipelineResult;
    expect(result.state).toBe('completed');
    const { rows } = await db.pool.query(
      "SELECT step FROM checkpoints WHERE run_id = $1 AND stage = 'dacp' ORDER BY step",
      [runId],
    );
    expect(rows.map((r) => r.step)).toEqual(Array.from({ length: 20 }, (_, i) => (i + 1) * 20));

    // Exact resume: the same run without a crash ends with a bitwise identical training state
    // (weights, AdamW moments, step), so its final checkpoint has the same sha256.
    const clean = await startRun(client, { spec, baseDir: home, runId: 'uninterrupted-1', initiator: 'engineer' });
    await eventually(async () => {
      const s = await runStatus(client, clean);
      if (s.state === 'failed') throw new GiveUp(String(s.metrics.error));
      return s.state === 'awaiting_approval' ? s : undefined;
    }, 'the uninterrupted run to reach approval', 600_000, 500);
    expect((await runStatus(client, clean)).resumedFromStep).toBeNull();
    const finalCheckpoint = async (id: string) =>
      (await db.pool.query("SELECT sha256 FROM checkpoints WHERE run_id = $1 AND stage = 'dacp' AND step = 400", [id])).rows[0].sha256 as string;
    expect(await finalCheckpoint(runId)).toBe(await finalCheckpoint(clean));
    await client.workflow.getHandle(clean).cancel();
  });

  test('SIGTERM: the gpu worker checkpoints before exiting and the next one resumes from that step', async () => {
    await stopAll(children);
    const env = { DATABASE_URL: db.url, TEMPORAL_ADDRESS: server.address, DACP_HOME: home };
    const first = spawnGpuWorker(env);
    children.push(first);
    await first.ready;
    const spec = parseRunSpec(
      tinySpec({
        baseModel: { ref: 'production' },
        dacp: { steps: 600, batchSize: 8, learningRate: 3e-3, checkpointEvery: 250 },
        heartbeatTimeout: '3s',
      }),
    );
    const runId = await startRun(client, { spec, baseDir: home, runId: 'graceful-1', initiator: 'engineer' });
    await eventually(async () => {
      const s = await runStatus(client, runId);
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

    children.push(spawnGpuWorker(env));
    await eventually(async () => {
      const s = await runStatus(client, runId);
      if (s.state === 'failed') throw new GiveUp(String(s.metrics.error));
      return s.state === 'awaiting_approval' ? s : undefined;
    }, 'the resumed run to reach approval', 600_000, 500);
    const status = await runStatus(client, runId);
    expect(status.resumedFromStep).toBe(stoppedAt);
  });

  test('a corrupted newest checkpoint is detected by sha256; the previous one is used, with a warning', async () => {
    await stopAll(children);
    const env = { DATABASE_URL: db.url, TEMPORAL_ADDRESS: server.address, DACP_HOME: home };
    const first = spawnGpuWorker(env);
    children.push(first);
    await first.ready;
    const spec = parseRunSpec(
      tinySpec({ baseModel: { ref: 'production' }, dacp: { steps: 400, batchSize: 8, learningRate: 3e-3, checkpointEvery: 20 }, heartbeatTimeout: '3s' }),
    );
    const runId = await startRun(client, { spec, baseDir: home, runId: 'corrupt-1', initiator: 'engineer' });
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

    children.push(spawnGpuWorker(env));
    const status = await eventually(async () => {
      const s = await runStatus(client, runId);
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
