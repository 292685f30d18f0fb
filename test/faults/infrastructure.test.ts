import { mkdtempSync, rmSync } from 'node:fs';
import { enrolTestPrincipals } from '../helpers/identities';
import os from 'node:os';
import path from 'node:path';
import { Client, Connection } from '@temporalio/client';
import type { Pool } from 'pg';
import { startRun } from '../../cli/runs';
import { freePort, startDevServer, type DevServer } from '../../cli/devServer';
import { ArtifactStore } from '../../activities/artifacts';
import { migrate } from '../../db/migrate';
import { createPool } from '../../db/pool';
import { parseRunSpec } from '../../schemas/runSpec';
import { createTestDatabase, type TestDatabase } from '../helpers/db';
import { tinySpec, writeTinyCorpus } from '../helpers/fixtures';
import { eventually, tempHome, runsFor } from '../helpers/temporal';
import {
  activityAttempts,
  approveAndFinish,
  checkReferencedArtifacts,
  isAlive,
  killAll,
  runRowCounts,
  seconds,
  spawnWorker,
  waitForStatus,
  type WorkerProcess,
} from './helpers/harness';
import { startStoppablePostgres, type StoppablePostgres } from './helpers/postgres';

/** Rows a clean run of `tinySpec` with a bootstrapped base writes (no forgetting retry). */
// Forgetting, instruct and final-check evaluations; the bootstrapped base, the adapted and the tuned versions.
const cleanRun = { datasets: 9, evaluations: 3, approvals: 1, deployments: 1, modelVersions: 3 };

const spec = parseRunSpec(
  tinySpec({
    dacp: { steps: 240, batchSize: 8, learningRate: 3e-3, checkpointEvery: 20 },
    heartbeatTimeout: '5s',
  }),
);

async function expectCleanRecords(db: Pool, store: ArtifactStore, runId: string) {
  const { counts, duplicates } = await runRowCounts(db, runId);
  expect(duplicates).toEqual([]);
  expect(counts).toMatchObject({
    datasets: cleanRun.datasets,
    evaluations: cleanRun.evaluations,
    approvals: cleanRun.approvals,
    deployments: cleanRun.deployments,
    model_versions: cleanRun.modelVersions,
  });
  const artifacts = await checkReferencedArtifacts(db, store, runId);
  expect(artifacts.bad).toEqual([]);
  return { counts, artifactsChecked: artifacts.checked };
}

describe('faults: infrastructure outages', () => {
  const children: WorkerProcess[] = [];
  const stateDir = mkdtempSync(path.join(os.tmpdir(), 'dacp-temporal-restart-'));
  let port: number;
  let server: DevServer | undefined;
  let client: Client;

  beforeAll(async () => {
    port = await freePort();
    server = await startDevServer({ stateDir, port, uiPort: null });
    client = new Client({ connection: await Connection.connect({ address: server.address }) });
  });

  afterAll(async () => {
    await killAll(children);
    await client?.connection.close();
    await server?.stop();
    rmSync(stateDir, { recursive: true, force: true });
  });

  describe('the Temporal dev server stops mid-training and starts again on the same SQLite file', () => {
    let db: TestDatabase;
    let home: string;
    const runs = () => runsFor(client, db.pool, home);

    beforeAll(async () => {
      home = tempHome();
      writeTinyCorpus(home);
      db = await createTestDatabase();
      await migrate(db.pool);
      await enrolTestPrincipals(db.pool);
    });

    afterAll(async () => {
      await killAll(children);
      await db?.drop();
      rmSync(home, { recursive: true, force: true });
    });

    test('the same workers reconnect, the run resumes from its checkpoint and completes once', async () => {
      const env = { DATABASE_URL: db.url, TEMPORAL_ADDRESS: server!.address, DACP_HOME: home, DACP_LOG_LEVEL: 'INFO' };
      const workers = [spawnWorker('control', env), spawnWorker('gpu', env)];
      children.push(...workers);
      // On a failure, what the workers said is the evidence.
      const said = () => workers.map((w) => `--- ${w.queue} worker\n${w.output().slice(-6_000)}`).join('\n');
      await Promise.all(workers.map((w) => w.ready));
      const runId = await startRun(runs(), { spec, baseDir: home, runId: 'temporal-restart-1', initiator: 'engineer' });

      const stepAtStop = await eventually(async () => {
        const { rows } = await db.pool.query("SELECT max(step)::int AS step FROM checkpoints WHERE run_id = $1 AND stage = 'dacp'", [runId]);
        return (rows[0].step as number | null) !== null && rows[0].step >= 40 ? (rows[0].step as number) : undefined;
      }, 'a dacp checkpoint at step 40', 300_000, 100);

      const stopBegan = Date.now();
      await server!.stop();
      const stopped = Date.now();
      // The outage itself: a fixed time with no server at all, long enough to exceed the 5 s heartbeat timeout.
      await new Promise((r) => setTimeout(r, 10_000));
      const startBegan = Date.now();
      server = await startDevServer({ stateDir, port, uiPort: null });
      const serving = Date.now();

      // Training goes on past the step it had reached. Progress does not pass through the server, so
      // training may carry on through the outage itself; either way a newer checkpoint appears.
      const nextStep = await eventually(async () => {
        const { rows } = await db.pool.query("SELECT max(step)::int AS step FROM checkpoints WHERE run_id = $1 AND stage = 'dacp'", [runId]);
        return (rows[0].step as number) > stepAtStop ? (rows[0].step as number) : undefined;
      }, 'training to checkpoint past the step it had reached', 180_000, 100).catch((err: Error) => {
        throw new Error(`${err.message}\n${said()}`);
      });
      const progressed = Date.now();
      const reconnected = await waitForStatus(runs(), runId, (s) => s.stage !== 'dacp' || s.progress.step > stepAtStop, 'the status query to answer again');
      const workersSurvived = workers.every(isAlive);

      const result = await approveAndFinish(runs(), runId);
      expect(result.state).toBe('completed');
      expect(workersSurvived).toBe(true);
      const status = await waitForStatus(runs(), runId, (s) => s.state === 'completed', 'the completed status');
      expect(status.resumedFromStep ?? stepAtStop).toBeGreaterThanOrEqual(stepAtStop);
      const attempts = await activityAttempts(client, runId);
      const { counts, artifactsChecked } = await expectCleanRecords(db.pool, new ArtifactStore(path.join(home, 'artifacts')), runId);

      console.log(
        [
          'FAULT temporal-server-restart',
          `  dacp checkpoint at stop        step ${stepAtStop} of ${spec.dacp.steps}`,
          `  server stop() took             ${seconds(stopped - stopBegan)} s`,
          `  no server at all (fixed)       ${seconds(startBegan - stopped)} s`,
          `  restart until serving          ${seconds(serving - startBegan)} s (same SQLite file, same port ${port})`,
          `  total outage                   ${seconds(serving - stopBegan)} s`,
          `  serving → newer checkpoint     ${seconds(Math.max(0, progressed - serving))} s (step ${nextStep}; training is not held up by the outage)`,
          `  status after restart           stage ${reconnected.stage}, step ${reconnected.progress.step}`,
          `  workers survived the restart   ${workersSurvived ? 'yes (same processes, no restart)' : 'NO'}`,
          `  resumedFromStep                ${status.resumedFromStep ?? 'null (training was not interrupted)'}`,
          `  attempts                       ${JSON.stringify(attempts)}`,
          `  rows                           ${JSON.stringify(counts)}; ${artifactsChecked} artifacts verified by sha256`,
        ].join('\n'),
      );
    });
  });

  describe('PostgreSQL is unreachable for 30 s during dacp training', () => {
    let postgres: StoppablePostgres;
    let pool: Pool;
    let home: string;
    const runs = () => runsFor(client, pool, home);

    beforeAll(async () => {
      home = tempHome();
      writeTinyCorpus(home);
      postgres = await startStoppablePostgres(home);
      pool = createPool(postgres.url, { connectionTimeoutMillis: 2_000 });
      await migrate(pool);
      await enrolTestPrincipals(pool);
    });

    afterAll(async () => {
      await killAll(children);
      await pool?.end();
      await postgres?.destroy();
      rmSync(home, { recursive: true, force: true });
    });

    test('activities retry with backoff, the run completes, and nothing is written twice', async () => {
      const env = { DATABASE_URL: postgres.url, TEMPORAL_ADDRESS: server!.address, DACP_HOME: home };
      const workers = [spawnWorker('control', env), spawnWorker('gpu', env)];
      children.push(...workers);
      await Promise.all(workers.map((w) => w.ready));
      const runId = await startRun(runs(), { spec, baseDir: home, runId: 'postgres-outage-1', initiator: 'engineer' });

      const stepAtStop = await eventually(async () => {
        const { rows } = await pool.query("SELECT max(step)::int AS step FROM checkpoints WHERE run_id = $1 AND stage = 'dacp'", [runId]);
        return (rows[0].step as number | null) !== null && rows[0].step >= 40 ? (rows[0].step as number) : undefined;
      }, 'a dacp checkpoint at step 40', 300_000, 100);

      const stopBegan = Date.now();
      await postgres.stop();
      const stopped = Date.now();
      await new Promise((r) => setTimeout(r, 30_000)); // the outage
      const startBegan = Date.now();
      await postgres.start();
      const back = Date.now();

      // Recovered: the gpu worker writes a checkpoint row again.
      const nextStep = await eventually(async () => {
        const { rows } = await pool.query(
          "SELECT max(step)::int AS step FROM checkpoints WHERE run_id = $1 AND stage = 'dacp' AND created_at > to_timestamp($2 / 1000.0)",
          [runId, back],
        );
        return (rows[0].step as number | null) !== null ? (rows[0].step as number) : undefined;
      }, 'a dacp checkpoint written after PostgreSQL came back', 180_000, 100);
      const recovered = Date.now();

      const result = await approveAndFinish(runs(), runId);
      expect(result.state).toBe('completed');
      expect(workers.every(isAlive)).toBe(true);
      const status = await waitForStatus(runs(), runId, (s) => s.state === 'completed', 'the completed status');
      const attempts = await activityAttempts(client, runId);
      expect(attempts.continualPretrain).toBeGreaterThan(1);
      const { counts, artifactsChecked } = await expectCleanRecords(pool, new ArtifactStore(path.join(home, 'artifacts')), runId);
      const { rows } = await pool.query("SELECT step FROM checkpoints WHERE run_id = $1 AND stage = 'dacp' ORDER BY step", [runId]);
      const dacpSteps = rows.map((r) => r.step as number);
      // Every periodic checkpoint is there once (a resume may add the step it resumed from).
      for (let step = 20; step <= spec.dacp.steps; step += 20) expect(dacpSteps).toContain(step);
      const trainingAttempts = await pool.query(
        "SELECT count(*)::int AS n FROM audit_log WHERE run_id = $1 AND event = 'training_attempt' AND stage = 'dacp'",
        [runId],
      );

      console.log(
        [
          'FAULT postgres-outage',
          `  dacp checkpoint at stop        step ${stepAtStop} of ${spec.dacp.steps}`,
          `  pg_ctl stop -m fast took       ${seconds(stopped - stopBegan)} s`,
          `  unreachable (fixed)            ${seconds(startBegan - stopped)} s`,
          `  pg_ctl start took              ${seconds(back - startBegan)} s (same data directory, port ${postgres.port})`,
          `  total outage                   ${seconds(back - stopBegan)} s`,
          `  back → next checkpoint row     ${seconds(recovered - back)} s (step ${nextStep})`,
          `  continualPretrain attempts     ${attempts.continualPretrain} (history); training_attempt audit rows ${trainingAttempts.rows[0].n}`,
          `  resumedFromStep                ${status.resumedFromStep ?? 'null'}`,
          `  attempts                       ${JSON.stringify(attempts)}`,
          `  dacp checkpoint steps          ${dacpSteps.join(' ')}`,
          `  rows                           ${JSON.stringify(counts)}; ${artifactsChecked} artifacts verified by sha256`,
        ].join('\n'),
      );
    });
  });
});
