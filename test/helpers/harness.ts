import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, rmSync } from 'node:fs';
import path from 'node:path';
import { Client, Connection } from '@temporalio/client';
import { NativeConnection, type Worker } from '@temporalio/worker';
import type { RunContext } from '../../cli/status';
import { migrate } from '../../db/migrate';
import { createWorker } from '../../workers/options';
import { createTestDatabase, type TestDatabase } from './db';
import { enrolTestPrincipals } from './identities';
import { writeTinyCorpus } from './fixtures';
import { bundleWorkflows, startTestDevServer, tempHome } from './temporal';

const root = path.resolve(__dirname, '..', '..');

/**
 * What the integration tests share: a real dev server, a fresh Postgres database, a home with the
 * tiny corpus, and workers running in this process — the control worker always, the gpu worker
 * unless the test runs gpu workers as processes it can kill (`spawnGpuWorker`).
 */
export interface Harness {
  server: Awaited<ReturnType<typeof startTestDevServer>>;
  db: TestDatabase;
  client: Client;
  home: string;
  /** What the run functions of cli/runs.ts need for this harness. */
  runs: RunContext;
  /** Environment for `dacp` processes that join this harness. */
  env: NodeJS.ProcessEnv;
  spawnGpuWorker(extraEnv?: NodeJS.ProcessEnv): GpuWorkerProcess;
  /** SIGKILL every spawned worker and wait for it to exit. */
  killSpawned(): Promise<void>;
  /** Stop the in-process workers (the server and database stay up). */
  stopWorkers(): Promise<void>;
  stop(): Promise<void>;
}

export type GpuWorkerProcess = ChildProcess & {
  /** Resolves once the worker polls and has said which TensorFlow.js backend it trains on. */
  ready: Promise<void>;
  /** What the worker printed so far. */
  output: () => string;
};

export async function startHarness(o: { inProcessGpu: boolean }): Promise<Harness> {
  if (!o.inProcessGpu && !existsSync(path.join(root, 'dist', 'cli', 'main.js'))) {
    throw new Error('run `npm run build` first (npm test does): spawned workers run dist/');
  }
  const home = tempHome();
  writeTinyCorpus(home);
  const [server, db] = await Promise.all([startTestDevServer(), createTestDatabase()]);
  await migrate(db.pool);
  await enrolTestPrincipals(db.pool);
  const nativeConnection = await NativeConnection.connect({ address: server.address });
  const client = new Client({ connection: await Connection.connect({ address: server.address }) });
  const deps = { connection: nativeConnection, namespace: 'default', pool: db.pool, artifactsDir: path.join(home, 'artifacts'), client };
  const workers: Worker[] = [await createWorker('control', { ...deps, workflowBundle: await bundleWorkflows() })];
  if (o.inProcessGpu) workers.push(await createWorker('gpu', deps));
  const running = Promise.all(workers.map((w) => w.run()));
  const env: NodeJS.ProcessEnv = { DATABASE_URL: db.url, TEMPORAL_ADDRESS: server.address, DACP_HOME: home };
  const children: ChildProcess[] = [];

  const stopWorkers = async () => {
    for (const w of workers) if (w.getState() === 'RUNNING') w.shutdown();
    await running;
  };

  const killSpawned = async () => {
    for (const child of children) {
      if (child.exitCode === null && child.signalCode === null) {
        const exited = new Promise((resolve) => child.once('exit', resolve));
        child.kill('SIGKILL');
        await exited;
      }
    }
  };

  return {
    server,
    db,
    client,
    home,
    runs: { client, pool: db.pool, artifactsDir: path.join(home, 'artifacts') },
    env,
    /** A gpu worker in its own process, as `dacp worker --queue gpu` runs it; `ready` once it polls. */
    spawnGpuWorker: (extraEnv: NodeJS.ProcessEnv = {}) => {
      const child = spawn(process.execPath, [path.join(root, 'bin', 'dacp.js'), 'worker', '--queue', 'gpu'], {
        env: { ...process.env, ...env, ...extraEnv },
        stdio: ['ignore', 'pipe', 'pipe'],
      });
      children.push(child);
      let output = '';
      const ready = new Promise<void>((resolve, reject) => {
        child.stdout!.on('data', (d) => {
          output += d;
          if (output.includes('polling') && output.includes('TensorFlow.js backend')) resolve();
        });
        child.once('exit', (code) => reject(new Error(`gpu worker exited (${code}) before polling: ${output}`)));
      });
      ready.catch(() => undefined);
      child.stderr!.resume();
      return Object.assign(child, { ready, output: () => output });
    },
    killSpawned,
    stopWorkers,
    stop: async () => {
      await killSpawned();
      await stopWorkers();
      await nativeConnection.close();
      await client.connection.close();
      await server.cleanup();
      await db.drop();
      rmSync(home, { recursive: true, force: true });
    },
  };
}
