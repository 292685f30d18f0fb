/**
 * One environment for the bad-input specification: a real Temporal dev server, a fresh Postgres
 * database, in-process control + gpu workers, the tiny corpus on disk, and the real `dacp` command.
 */
import { enrolTestPrincipals } from '../../helpers/identities';
import { execFile } from 'node:child_process';
import { createHash } from 'node:crypto';
import { readdirSync, readFileSync, rmSync } from 'node:fs';
import path from 'node:path';
import { Client, Connection, WorkflowNotFoundError } from '@temporalio/client';
import { NativeConnection, type Worker } from '@temporalio/worker';
import { migrate } from '../../../db/migrate';
import { createWorker } from '../../../workers/options';
import { createTestDatabase, type TestDatabase } from '../../helpers/db';
import { writeTinyCorpus } from '../../helpers/fixtures';
import type { RunContext } from '../../../cli/status';
import { bundleWorkflows, startTestDevServer, tempHome } from '../../helpers/temporal';

const dacpBin = path.resolve(__dirname, '..', '..', '..', 'bin', 'dacp.js');

export interface BadInputHarness {
  home: string;
  artifactsDir: string;
  db: TestDatabase;
  client: Client;
  /** What the run functions of cli/runs.ts need for this harness. */
  runs: RunContext;
  /**
   * Runs the real `dacp` command (bin/dacp.js → dist/) against this environment's dev server.
   * Asynchronously: the workers answering its queries run in this process and must not be blocked.
   */
  dacp(...args: string[]): Promise<CliResult>;
  stop(): Promise<void>;
}

export interface CliResult {
  code: number | null;
  stdout: string;
  stderr: string;
}

export async function startBadInputHarness(): Promise<BadInputHarness> {
  const home = tempHome('dacp-bad-input-');
  writeTinyCorpus(home);
  const artifactsDir = path.join(home, 'artifacts');
  const [server, db, bundle] = await Promise.all([startTestDevServer(), createTestDatabase(), bundleWorkflows()]);
  await migrate(db.pool);
  await enrolTestPrincipals(db.pool);
  const nativeConnection = await NativeConnection.connect({ address: server.address });
  const client = new Client({ connection: await Connection.connect({ address: server.address }) });
  const deps = { connection: nativeConnection, namespace: 'default', pool: db.pool, artifactsDir, client };
  const workers: Worker[] = [await createWorker('control', { ...deps, workflowBundle: bundle }), await createWorker('gpu', deps)];
  const running = Promise.all(workers.map((w) => w.run()));
  // The command shares the workers' database and artifact store, as it does on a real home.
  const env: NodeJS.ProcessEnv = { ...process.env, TEMPORAL_ADDRESS: server.address, DATABASE_URL: db.url, DACP_HOME: home };

  return {
    home,
    artifactsDir,
    db,
    client,
    runs: { client, pool: db.pool, artifactsDir },
    dacp: (...args) =>
      new Promise<CliResult>((resolve) => {
        execFile(process.execPath, [dacpBin, ...args], { env, cwd: home, encoding: 'utf8', maxBuffer: 16 * 1024 * 1024 }, (err, stdout, stderr) => {
          const code = err === null ? 0 : typeof err.code === 'number' ? err.code : null;
          resolve({ code, stdout, stderr: stderr.trim() });
        });
      }),
    stop: async () => {
      workers.forEach((w) => w.shutdown());
      await running;
      await nativeConnection.close();
      await client.connection.close();
      await server.cleanup();
      await db.drop();
      rmSync(home, { recursive: true, force: true });
    },
  };
}

/** Everything stored about one run, plus the registry, plus every artifact's bytes (as sha256). */
export interface StoredState {
  rows: Record<string, unknown[]>;
  artifacts: Record<string, string>;
}

const perRunTables: Record<string, string> = {
  runs: 'run_id',
  audit_log: 'id',
  datasets: 'stage, role, split',
  checkpoints: 'stage, round, step',
  metrics: 'stage, round, step, name',
  evaluations: 'kind',
  approvals: 'principal',
  deployments: 'version_id',
};

export async function storedState(h: BadInputHarness, runId: string): Promise<StoredState> {
  const rows: Record<string, unknown[]> = {};
  for (const [table, order] of Object.entries(perRunTables)) {
    rows[table] = (await h.db.pool.query(`SELECT * FROM ${table} WHERE run_id = $1 ORDER BY ${order}`, [runId])).rows;
  }
  rows.model_versions = (await h.db.pool.query('SELECT * FROM model_versions ORDER BY version_id')).rows;
  rows.model_aliases = (await h.db.pool.query('SELECT * FROM model_aliases ORDER BY alias')).rows;
  const artifacts: Record<string, string> = {};
  const visit = (dir: string): void => {
    for (const entry of readdirSync(dir, { withFileTypes: true })) {
      const full = path.join(dir, entry.name);
      if (entry.isDirectory()) visit(full);
      else artifacts[path.relative(h.artifactsDir, full)] = createHash('sha256').update(readFileSync(full)).digest('hex');
    }
  };
  visit(h.artifactsDir);
  return { rows, artifacts };
}

export async function workflowExists(client: Client, workflowId: string): Promise<boolean> {
  try {
    await client.workflow.getHandle(workflowId).describe();
    return true;
  } catch (err) {
    if (err instanceof WorkflowNotFoundError) return false;
    throw err;
  }
}

export interface ActivityFailureRecord {
  activity: string;
  attempt: number;
  type: string | null;
  nonRetryable: boolean;
  message: string;
}

/** The activity failures a run's history records: which activity, on which attempt, and how it failed. */
export async function activityFailures(client: Client, runId: string): Promise<ActivityFailureRecord[]> {
  const events = (await client.workflow.getHandle(runId).fetchHistory()).events ?? [];
  const byId = new Map(events.map((e) => [String(e.eventId), e]));
  return events.flatMap((e) => {
    const failed = e.activityTaskFailedEventAttributes;
    if (!failed) return [];
    const scheduled = byId.get(String(failed.scheduledEventId))?.activityTaskScheduledEventAttributes;
    const started = byId.get(String(failed.startedEventId))?.activityTaskStartedEventAttributes;
    const info = failed.failure?.applicationFailureInfo;
    return [
      {
        activity: scheduled?.activityType?.name ?? '?',
        attempt: started?.attempt ?? 0,
        type: info?.type ?? null,
        nonRetryable: Boolean(info?.nonRetryable),
        message: failed.failure?.message ?? '',
      },
    ];
  });
}

export interface PendingActivityRecord {
  activity: string;
  attempt: number;
  lastFailureType: string | null;
  lastFailureNonRetryable: boolean;
}

/** Activities still being tried: history only records an activity's last attempt, so retries show here. */
export async function pendingActivities(client: Client, runId: string): Promise<PendingActivityRecord[]> {
  const description = await client.workflow.getHandle(runId).describe();
  return (description.raw.pendingActivities ?? []).map((p) => ({
    activity: p.activityType?.name ?? '?',
    attempt: p.attempt ?? 0,
    lastFailureType: p.lastFailure?.applicationFailureInfo?.type ?? null,
    lastFailureNonRetryable: Boolean(p.lastFailure?.applicationFailureInfo?.nonRetryable),
  }));
}
