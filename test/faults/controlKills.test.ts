import { mkdirSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import type { Client } from '@temporalio/client';
import pg from 'pg';
import { ArtifactStore } from '../../activities/artifacts';
import { decide, startRun } from '../../cli/runs';
import { generateDemoCorpus } from '../../ml/demoCorpus';
import { parseRunSpec } from '../../schemas/runSpec';
import { testServerUrl } from '../helpers/db';
import { tinySpec } from '../helpers/fixtures';
import { eventually, runsFor } from '../helpers/temporal';
import {
  activityAttempts,
  checkReferencedArtifacts,
  killHard,
  runRowCounts,
  seconds,
  spawnWorker,
  startFaultWorld,
  type FaultWorld,
  waitForStatus,
  type WorkerProcess,
} from './helpers/harness';
import { ranOnProcess, releaseDeadAttempt, startedActivities } from './helpers/orphans';

/**
 * How each stage's activity is kept running long enough to be killed, with nothing added to the
 * production code:
 * - collect: the first source is a Postgres query that sleeps (pg_sleep) before returning its row;
 * - quality: 16 000 highly repetitive documents, all removed by the repetition filter (so they
 *   cost quality seconds of CPU but never reach training);
 * - evaluation (forgetting): a larger domain corpus and a high maxEvalWindows;
 * - deploy: the test holds the advisory lock that serialises versions of one model name (as a
 *   concurrent deploy of the same name would), so deployModel waits inside its transaction; the
 *   killed attempt's transaction must leave nothing behind, and the deployment must exist once.
 */
const collectSleepSeconds = 5;
const noiseDocs = 16_000;

function writeCorpus(dir: string): void {
  const corpus = generateDemoCorpus({ seed: 11, domainDocs: 400, generalDocs: 80, instructionPairs: 40 });
  mkdirSync(path.join(dir, 'data'), { recursive: true });
  const jsonl = (rows: unknown[]) => rows.map((r) => JSON.stringify(r)).join('\n');
  writeFileSync(path.join(dir, 'data', 'domain.jsonl'), jsonl(corpus.domain.map((text) => ({ text }))));
  writeFileSync(path.join(dir, 'data', 'general.jsonl'), jsonl(corpus.general.map((text) => ({ text }))));
  writeFileSync(path.join(dir, 'data', 'pairs.jsonl'), jsonl(corpus.instructions));
  const words = ['signal', 'tower', 'fibre'];
  const noise = Array.from({ length: noiseDocs }, (_, i) => ({
    text: `${Array.from({ length: 160 }, (_, j) => words[(i + j) % words.length]).join(' ')} #${i}`,
  }));
  writeFileSync(path.join(dir, 'data', 'noise.jsonl'), jsonl(noise));
}

const spec = parseRunSpec(
  tinySpec({
    sources: [
      {
        kind: 'postgres',
        role: 'domain',
        connectionEnv: 'FAULT_SOURCE_URL',
        query: `SELECT 'Maintenance note: the backhaul link at the north tower was re-tested after the firmware upgrade.' AS text FROM pg_sleep(${collectSleepSeconds})`,
      },
      { kind: 'files', role: 'domain', paths: ['data/domain.jsonl', 'data/noise.jsonl'] },
      { kind: 'files', role: 'replay', paths: ['data/general.jsonl'] },
      { kind: 'files', role: 'instruct', paths: ['data/pairs.jsonl'] },
    ],
    forgetting: { maxGeneralRegression: 5, minDomainGain: -1, maxEvalWindows: 4096 },
    // Long enough for the CPU-bound stretches of quality and evaluation, short enough to notice a kill quickly.
    controlHeartbeatTimeout: '10s',
  }),
);

interface KillRecord {
  stage: string;
  activity: string;
  attemptKilled: number | null;
  released: string;
  killToNewWorkerPolling: number;
  killToStageDone: number;
}

describe('faults: the worker is SIGKILLed in every stage outside training (control; gpu for the evaluation, which runs in the training engine)', () => {
  let world: FaultWorld;
  let server: FaultWorld['server'];
  let db: FaultWorld['db'];
  let client: Client;
  let home: string;
  const runs = () => runsFor(client, db.pool, home);
  const children: WorkerProcess[] = [];

  beforeAll(async () => {
    world = await startFaultWorld(writeCorpus);
    ({ server, db, client, home } = world);
  });

  afterAll(async () => {
    await world?.stop(children);
  });

  test('after each kill a fresh control worker finishes the run: no duplicate rows, no half-written artifact used', async () => {
    const env = { DATABASE_URL: db.url, TEMPORAL_ADDRESS: server.address, DACP_HOME: home, FAULT_SOURCE_URL: testServerUrl };
    let gpu = spawnWorker('gpu', env);
    let control = spawnWorker('control', env);
    children.push(gpu, control);
    await Promise.all([gpu.ready, control.ready]);
    const runId = await startRun(runs(), { spec, baseDir: home, runId: 'control-kills-1', initiator: 'engineer' });
    const kills: KillRecord[] = [];

    /** SIGKILL the control worker, start a fresh one, free the attempt that died with the old one. */
    const killControl = async (activity: string) => {
      const dead = control;
      const killedAt = Date.now();
      await killHard(dead);
      control = spawnWorker('control', env);
      children.push(control);
      await control.ready;
      const polling = Date.now();
      // Still marked as running on the dead worker once the new one polls: nothing on the server
      // notices a SIGKILLed worker until a timeout fires. For deploy the attempt may also not have
      // started on the dead worker (the new one then runs it) or have finished before the kill.
      const orphan = (await startedActivities(client, runId)).find((a) => a.type === activity && ranOnProcess(a, dead.pid!));
      const released = orphan ? await releaseDeadAttempt(client, runId, orphan) : 'nothing was running on the dead worker';
      return { killedAt, polling, orphan, released };
    };

    /** Evaluations run in the training engine, on the gpu worker: the same kill, on that worker. */
    const killGpu = async (activity: string) => {
      const dead = gpu;
      const killedAt = Date.now();
      await killHard(dead);
      gpu = spawnWorker('gpu', env);
      children.push(gpu);
      await gpu.ready;
      const polling = Date.now();
      const orphan = (await startedActivities(client, runId)).find((a) => a.type === activity && ranOnProcess(a, dead.pid!));
      const released = orphan ? await releaseDeadAttempt(client, runId, orphan) : 'nothing was running on the dead worker';
      return { killedAt, polling, orphan, released };
    };

    const killDuring = async (stage: string, activity: string, nextStage: (s: string) => boolean, worker: 'control' | 'gpu' = 'control') => {
      const running = await eventually(async () => {
        const started = await startedActivities(client, runId);
        return started.find((a) => a.type === activity && ranOnProcess(a, (worker === 'gpu' ? gpu : control).pid!));
      }, `${activity} to be running on the ${worker} worker`, 300_000, 50);
      const { killedAt, polling, orphan, released } = worker === 'gpu' ? await killGpu(activity) : await killControl(activity);
      expect(orphan?.activityId).toBe(running.activityId);
      await waitForStatus(runs(), runId, (s) => nextStage(s.stage), `the run to get past ${stage}`, 300_000, 100);
      kills.push({
        stage,
        activity,
        attemptKilled: running.attempt,
        released,
        killToNewWorkerPolling: seconds(polling - killedAt),
        killToStageDone: seconds(Date.now() - killedAt),
      });
    };

    await killDuring('collect', 'collectSources', (s) => s !== 'collect');
    await killDuring('quality', 'qualityFilter', (s) => s !== 'quality' && s !== 'collect');
    await killDuring('forgetting', 'evaluateForgetting', (s) => s === 'instruct' || s === 'approval' || s === 'deploy', 'gpu');

    /** Hold the model name's lock, approve, kill while deployModel waits for it, then let go. */
    async function killDeployWhileItWaitsForTheLock() {
      const holder = new pg.Client({ connectionString: db.url });
      await holder.connect();
      try {
        await holder.query('SELECT pg_advisory_lock(hashtext($1))', [`dacp-model:${spec.name}`]);
        await waitForStatus(runs(), runId, (s) => s.state === 'awaiting_approval', 'the run to await approval', 600_000, 250);
        await decide(runs(), { runId, principal: 'approver-1', decision: 'approve' });
        const running = await eventually(async () => {
          const waiting = await holder.query("SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND NOT granted");
          if (!waiting.rowCount) return undefined;
          return (await startedActivities(client, runId)).find((a) => a.type === 'deployModel' && ranOnProcess(a, control.pid!));
        }, 'deployModel to wait for the lock inside its transaction', 120_000, 50);
        const { killedAt, polling, orphan, released } = await killControl('deployModel');
        expect(orphan?.activityId).toBe(running.activityId);
        return {
          stage: 'deploy',
          activity: 'deployModel',
          attemptKilled: running.attempt,
          released,
          killToNewWorkerPolling: seconds(polling - killedAt),
          killedAt,
        };
      } finally {
        await holder.query('SELECT pg_advisory_unlock_all()').catch(() => undefined);
        await holder.end();
      }
    }

    const deployKill = await killDeployWhileItWaitsForTheLock();
    const result = (await client.workflow.getHandle(runId).result()) as { state: string; versionId?: string };
    kills.push({ ...deployKill, killToStageDone: seconds(Date.now() - deployKill.killedAt) });

    expect(result.state).toBe('completed');
    const attempts = await activityAttempts(client, runId);
    expect(attempts.collectSources).toBeGreaterThanOrEqual(2);
    expect(attempts.qualityFilter).toBeGreaterThanOrEqual(2);
    expect(attempts.evaluateForgetting).toBeGreaterThanOrEqual(2);
    expect(attempts.deployModel).toBeGreaterThanOrEqual(2);

    const { counts, duplicates } = await runRowCounts(db.pool, runId);
    expect(duplicates).toEqual([]);
    // Forgetting, instruct and final-check evaluations; the bootstrapped base, the adapted and the tuned versions.
    expect(counts).toMatchObject({ datasets: 9, evaluations: 3, approvals: 1, deployments: 1, model_versions: 3 });
    const { rows: deployments } = await db.pool.query('SELECT version_id FROM deployments WHERE run_id = $1', [runId]);
    expect(deployments.map((d) => d.version_id)).toEqual([result.versionId]);
    const { rows: aliases } = await db.pool.query("SELECT version_id FROM model_aliases WHERE alias = 'production'");
    expect(aliases.map((a) => a.version_id)).toEqual([result.versionId]);

    const store = new ArtifactStore(path.join(home, 'artifacts'));
    const artifacts = await checkReferencedArtifacts(db.pool, store, runId);
    expect(artifacts.bad).toEqual([]);

    console.log(
      [
        'FAULT control-worker-sigkill (one run, four kills; the evaluation on the gpu worker)',
        ...kills.map(
          (k) =>
            `  ${k.stage.padEnd(11)} ${k.activity.padEnd(19)} killed attempt ${k.attemptKilled ?? '-'}; released by: ${k.released}; ` +
            `new worker polling after ${k.killToNewWorkerPolling} s; stage done ${k.killToStageDone} s after the kill`,
        ),
        `  attempts           ${JSON.stringify(attempts)}`,
        `  rows               ${JSON.stringify(counts)}`,
        `  artifacts          ${artifacts.checked} referenced, all verified by sha256; ${artifacts.strayTempFiles.length} unreferenced .tmp-* file(s) left by killed writes`,
      ].join('\n'),
    );
  });
});
