import { existsSync, readdirSync } from 'node:fs';
import path from 'node:path';
import type { Client } from '@temporalio/client';
import { DefaultLogger, Runtime } from '@temporalio/worker';
import { decide, runStatus, startRun } from '../cli/runs';
import type { PipelineResult } from '../schemas/pipeline';
import { parseRunSpec } from '../schemas/runSpec';
import type { TestDatabase } from './helpers/db';
import { tinySpec } from './helpers/fixtures';
import { startHarness, type Harness } from './helpers/harness';
import { eventually, GiveUp, runsFor } from './helpers/temporal';

Runtime.install({ logger: new DefaultLogger('WARN') });

const root = path.resolve(__dirname, '..');
const python = path.join(root, '.tools', 'venv', 'bin', 'python');
// Any program that speaks the protocol; here the hf engine's trainer, started as a plain command.
const trainer = path.join(root, 'trainers', 'hf', 'dacp_hf_trainer.py');

describe('external-command engine: a protocol trainer started by its command runs every training stage', () => {
  let h: Harness;
  let client: Client;
  let db: TestDatabase;
  let home: string;
  const runs = () => runsFor(client, db.pool, home);

  beforeAll(async () => {
    if (!existsSync(python)) throw new Error('no .tools/venv: run `bash scripts/setup-python.sh` (CI does)');
    // The spec names the variable; its value lives in the gpu workers' environment (they inherit ours).
    process.env.DACP_TORCH_THREADS = '1';
    h = await startHarness({ inProcessGpu: false });
    ({ client, db, home } = h);
  });

  afterAll(async () => {
    await h?.stop();
  });

  const gpuWorker = () => h.spawnGpuWorker();

  test('a run bootstraps, pretrains and instructs with the command\'s trainer, survives a killed worker through resumeFrom, and deploys', async () => {
    const first = gpuWorker();
    const spec = parseRunSpec(
      tinySpec({
        engine: { kind: 'command', command: [python, trainer], env: ['DACP_TORCH_THREADS'] },
        dacp: { steps: 300, batchSize: 8, learningRate: 3e-3, checkpointEvery: 20 },
        heartbeatTimeout: '3s',
      }),
    );
    const runId = await startRun(runs(), { spec, baseDir: home, runId: 'external-1', initiator: 'engineer' });

    const killedAt = await eventually(async () => {
      const s = await runStatus(runs(), runId);
      if (s.state === 'failed') throw new GiveUp(String(s.metrics.error));
      const { rows } = await db.pool.query("SELECT max(step)::int AS step FROM checkpoints WHERE run_id = $1 AND stage = 'dacp'", [runId]);
      return rows[0].step !== null && rows[0].step >= 40 ? (rows[0].step as number) : undefined;
    }, 'a dacp checkpoint from the command\'s trainer', 300_000, 50);
    first.kill('SIGKILL');
    await new Promise((resolve) => first.once('exit', resolve));

    gpuWorker();
    const waiting = await eventually(async () => {
      const s = await runStatus(runs(), runId);
      if (s.state === 'failed') throw new GiveUp(String(s.metrics.error));
      return s.state === 'awaiting_approval' ? s : undefined;
    }, 'the run to reach approval', 600_000, 500);
    expect(waiting.resumedFromStep).toBeGreaterThanOrEqual(killedAt);
    expect(waiting.attempts.dacp).toBeGreaterThanOrEqual(2);
    expect((waiting.metrics.dacp as { backend: string }).backend).toBe('command:python');
    // The forgetting gate evaluated the PyTorch-trained model with the built-in engine: models move between engines.
    expect(waiting.metrics.forgetting).toMatchObject({ round: 0 });

    await decide(runs(), { runId, principal: 'approver-1', decision: 'approve' });
    const result = (await client.workflow.getHandle(runId).result()) as PipelineResult;
    expect(result.state).toBe('completed');

    // The trainer's stderr is kept per attempt in the run's log folder.
    const logs = readdirSync(path.join(home, 'logs', runId));
    expect(logs).toEqual(expect.arrayContaining(['dacp-0-attempt-1.stderr.log', 'dacp-0-attempt-2.stderr.log', 'instruct-0-attempt-1.stderr.log']));
  });
});
