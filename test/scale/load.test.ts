import { writeFileSync } from 'node:fs';
import path from 'node:path';
import { Client, Connection } from '@temporalio/client';
import { decide, runStatus, startRun } from '../../cli/runs';
import { migrate } from '../../db/migrate';
import { parseRunSpec } from '../../schemas/runSpec';
import { GpuWorkerProcess, writeStepProbe } from '../faults/helpers/gpuWorker';
import { createTestDatabase, type TestDatabase } from '../helpers/db';
import { tinySpec, writeTinyCorpus } from '../helpers/fixtures';
import { enrolTestPrincipals } from '../helpers/identities';
import { startS3Server, type S3Server } from '../helpers/s3';
import { eventually, GiveUp, startTestDevServer, tempHome } from '../helpers/temporal';

const RUNS = 20;
/** Each worker process's pool (db/pool.ts), and the test's own. */
const POOL_MAX = 10;

/**
 * Many runs at once: 20 small runs on one Temporal server, served by 2 control and 2 gpu worker
 * processes (each with its own DACP_HOME, artifacts in object storage). Prints the figures that
 * docs/reliability.md quotes.
 */
describe('load: 20 concurrent runs, 2 control and 2 gpu workers, one server', () => {
  let server: Awaited<ReturnType<typeof startTestDevServer>>;
  let db: TestDatabase;
  let s3: S3Server;
  let client: Client;
  const workers: GpuWorkerProcess[] = [];
  const home = tempHome('dacp-load-');
  let peakConnections = 0;
  let sampling: NodeJS.Timeout | undefined;

  beforeAll(async () => {
    writeTinyCorpus(home);
    [server, db, s3] = await Promise.all([startTestDevServer(), createTestDatabase(), startS3Server()]);
    await s3.createBucket('dacp-load');
    await migrate(db.pool);
    await enrolTestPrincipals(db.pool);
    client = new Client({ connection: await Connection.connect({ address: server.address }) });
    const env = { ...s3.env, DATABASE_URL: db.url, TEMPORAL_ADDRESS: server.address, DACP_ARTIFACTS: 's3://dacp-load/runs' };
    for (const [i, queue] of (['control', 'control', 'gpu', 'gpu'] as const).entries()) {
      const workerHome = tempHome(`dacp-load-${queue}${i}-`);
      const worker = new GpuWorkerProcess({ ...env, DACP_HOME: workerHome }, writeStepProbe(workerHome), [], queue);
      workers.push(worker);
    }
    await Promise.all(workers.map((w) => w.ready));
    const dbName = new URL(db.url).pathname.slice(1);
    sampling = setInterval(() => {
      db.pool
        .query<{ n: number }>('SELECT count(*)::int AS n FROM pg_stat_activity WHERE datname = $1', [dbName])
        .then(({ rows }) => (peakConnections = Math.max(peakConnections, rows[0].n)))
        .catch(() => undefined);
    }, 250);
    process.env.DACP_ARTIFACTS = env.DACP_ARTIFACTS;
    for (const [k, v] of Object.entries(s3.env)) process.env[k] = v;
  }, 180_000);

  afterAll(async () => {
    clearInterval(sampling);
    await Promise.all(workers.map((w) => w.stop()));
    await client?.connection.close();
    await server?.cleanup();
    await db?.drop();
    await s3?.stop();
  });

  test('all 20 finish and deploy, none lost or duplicated, connections within the pools', async () => {
    const spec = parseRunSpec(
      tinySpec({
        baseModel: {
          bootstrapIfMissing: true,
          shape: { contextLength: 32, dModel: 32, nLayers: 1, nHeads: 2 },
          bootstrap: { steps: 10, batchSize: 8, learningRate: 5e-3, checkpointEvery: 10 },
        },
        dacp: { steps: 20, batchSize: 8, learningRate: 3e-3, checkpointEvery: 10 },
        instruct: { steps: 10, batchSize: 8, learningRate: 3e-3, checkpointEvery: 10 },
        heartbeatTimeout: '30s',
      }),
    );
    writeFileSync(path.join(home, 'spec.json'), JSON.stringify(spec));
    const runs = { client, pool: db.pool, artifactsDir: path.join(home, 'artifacts') };
    const started = Date.now();
    // Each run deploys to an alias of its own: runs aimed at one alias would (rightly) refuse to move
    // it under each other (AliasMoved), which is not what this test measures.
    const ids = await Promise.all(
      Array.from({ length: RUNS }, (_, i) => startRun(runs, { spec: { ...spec, deploy: { ...spec.deploy, alias: `load-${i}` } }, baseDir: home, runId: `load-${i}`, initiator: 'engineer' })),
    );
    expect(new Set(ids).size).toBe(RUNS);

    // Approve each as it reaches its gate; wait for every one to complete.
    const finished = await Promise.all(
      ids.map(async (runId) => {
        await eventually(async () => {
          const s = await runStatus(runs, runId);
          if (s.state === 'failed' || s.state === 'cancelled') throw new GiveUp(`${runId} ${s.state}: ${String(s.metrics.error)}`);
          return s.state === 'awaiting_approval' ? s : undefined;
        }, `${runId} at its gate`, 1_500_000, 1_000);
        await decide({ client, pool: db.pool }, { runId, principal: 'approver-1', decision: 'approve' });
        return eventually(async () => {
          const s = await runStatus(runs, runId);
          if (s.state === 'failed' || s.state === 'cancelled') throw new GiveUp(`${runId} ${s.state}: ${String(s.metrics.error)}`);
          return s.state === 'completed' ? s : undefined;
        }, `${runId} completed`, 300_000, 1_000);
      }),
    );
    const wallSeconds = (Date.now() - started) / 1000;
    expect(finished.map((s) => s.state)).toEqual(Array(RUNS).fill('completed'));

    // None lost or duplicated: one workflow, one run record and one deployment per id.
    const workflows: string[] = [];
    for await (const wf of client.workflow.list({ query: `WorkflowType = 'dacpPipeline'` })) workflows.push(wf.workflowId);
    expect(workflows.sort()).toEqual([...ids].sort());
    const perRun = await db.pool.query<{ run_id: string; n: number }>(`SELECT run_id, count(*)::int AS n FROM deployments GROUP BY run_id ORDER BY run_id`);
    expect(perRun.rows.map((r) => r.run_id).sort()).toEqual([...ids].sort());
    expect(perRun.rows.every((r) => r.n === 1)).toBe(true);

    // Queue wait per training: scheduled → started of every training activity, from the histories.
    const waits: number[] = [];
    const trainingTypes = new Set(['continualPretrain', 'instructionTune', 'bootstrapBaseModel']);
    for (const runId of ids) {
      const history = await client.workflow.getHandle(runId).fetchHistory();
      const scheduled = new Map<string, number>();
      for (const event of history.events ?? []) {
        const at = Number(event.eventTime?.seconds ?? 0) * 1000 + Math.floor((event.eventTime?.nanos ?? 0) / 1e6);
        const s = event.activityTaskScheduledEventAttributes;
        if (s && trainingTypes.has(s.activityType?.name ?? '')) scheduled.set(String(event.eventId), at);
        const st = event.activityTaskStartedEventAttributes;
        if (st && scheduled.has(String(st.scheduledEventId))) waits.push((at - scheduled.get(String(st.scheduledEventId))!) / 1000);
      }
    }
    expect(waits.length).toBeGreaterThanOrEqual(RUNS * 2);
    waits.sort((a, b) => a - b);
    const mean = waits.reduce((a, b) => a + b, 0) / waits.length;
    const p95 = waits[Math.floor(waits.length * 0.95)];
    // 4 worker processes and this test, each with a pool of at most POOL_MAX.
    const limit = 5 * POOL_MAX;
    console.log(
      [
        `load: ${RUNS} runs, 2 control + 2 gpu worker processes, one Temporal dev server, artifacts in SeaweedFS`,
        `  wall time ${wallSeconds.toFixed(0)} s for all ${RUNS} (start to completed)`,
        `  queue wait per training activity (${waits.length}): mean ${mean.toFixed(1)} s, p95 ${p95.toFixed(1)} s, max ${waits.at(-1)!.toFixed(1)} s`,
        `  peak database connections ${peakConnections} (limit ${limit}: 5 pools of ${POOL_MAX})`,
      ].join('\n'),
    );
    expect(peakConnections).toBeGreaterThan(0);
    expect(peakConnections).toBeLessThanOrEqual(limit);
  });
});
