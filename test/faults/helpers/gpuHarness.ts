import { rmSync } from 'node:fs';
import { enrolTestPrincipals } from '../../helpers/identities';
import path from 'node:path';
import { Client, Connection } from '@temporalio/client';
import { NativeConnection, type Worker } from '@temporalio/worker';
import { migrate } from '../../../db/migrate';
import type { RunStatus } from '../../../schemas/pipeline';
import { runStatus } from '../../../cli/runs';
import { createWorker } from '../../../workers/options';
import { createTestDatabase, type TestDatabase } from '../../helpers/db';
import { writeTinyCorpus } from '../../helpers/fixtures';
import { bundleWorkflows, eventually, GiveUp, startTestDevServer, tempHome } from '../../helpers/temporal';
import { GpuWorkerProcess, writeStepProbe } from './gpuWorker';
import type { RunContext } from '../../../cli/status';

/**
 * What the fault tests share: a dev server, a fresh database, a control worker in this process, a
 * home with the tiny corpus, and gpu workers as separate processes (so they can be killed).
 */
export interface FaultHarness {
  home: string;
  db: TestDatabase;
  client: Client;
  /** What the run functions of cli/runs.ts need for this harness. */
  runs: RunContext;
  /** Spawn a gpu worker for this home and wait until it polls. */
  spawnGpuWorker(): Promise<GpuWorkerProcess>;
  /** Poll the run's status until it awaits approval (fails at once if the run fails). */
  untilAwaitingApproval(runId: string, timeoutMs?: number): Promise<RunStatus>;
  /** Kill every gpu worker, stop the control worker and the server, drop the database, remove the home. */
  close(): Promise<void>;
}

export async function startFaultHarness(): Promise<FaultHarness> {
  const home = tempHome();
  writeTinyCorpus(home);
  const probeFile = writeStepProbe(home);
  const [server, db] = await Promise.all([startTestDevServer(), createTestDatabase()]);
  await migrate(db.pool);
  await enrolTestPrincipals(db.pool);
  const nativeConnection = await NativeConnection.connect({ address: server.address });
  const client = new Client({ connection: await Connection.connect({ address: server.address }) });
  const control: Worker = await createWorker('control', {
    connection: nativeConnection,
    namespace: 'default',
    pool: db.pool,
    artifactsDir: path.join(home, 'artifacts'),
    client,
    workflowBundle: await bundleWorkflows(),
  });
  const running = control.run();
  const env = { DATABASE_URL: db.url, TEMPORAL_ADDRESS: server.address, DACP_HOME: home };
  const workers: GpuWorkerProcess[] = [];

  return {
    home,
    db,
    client,
    runs: { client, pool: db.pool, artifactsDir: path.join(home, 'artifacts') },
    async spawnGpuWorker() {
      const worker = new GpuWorkerProcess(env, probeFile);
      workers.push(worker);
      await worker.ready;
      return worker;
    },
    async untilAwaitingApproval(runId, timeoutMs = 300_000) {
      return eventually(async () => {
        const s = await runStatus({ client, pool: db.pool, artifactsDir: path.join(home, 'artifacts') }, runId);
        if (s.state === 'failed' || s.state === 'cancelled') throw new GiveUp(`run ${runId} is ${s.state}: ${String(s.metrics.error)}`);
        return s.state === 'awaiting_approval' ? s : undefined;
      }, `run ${runId} to reach approval`, timeoutMs, 250);
    },
    async close() {
      await Promise.all(workers.map((w) => w.stop()));
      control.shutdown();
      await running;
      await nativeConnection.close();
      await client.connection.close();
      await server.cleanup();
      await db.drop();
      rmSync(home, { recursive: true, force: true });
    },
  };
}
