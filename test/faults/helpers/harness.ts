import { spawn, type ChildProcess } from 'node:child_process';
import { promises as fs, rmSync } from 'node:fs';
import path from 'node:path';
import { Client, Connection } from '@temporalio/client';
import type { Pool } from 'pg';
import { ArtifactStore } from '../../../activities/artifacts';
import { decide, runStatus, type RunContext } from '../../../cli/runs';
import { migrate } from '../../../db/migrate';
import type { DatasetManifest, PipelineResult, RunStatus } from '../../../schemas/pipeline';
import { createTestDatabase, type TestDatabase } from '../../helpers/db';
import { enrolTestPrincipals } from '../../helpers/identities';
import { eventually, GiveUp, startTestDevServer, tempHome } from '../../helpers/temporal';

const dacpBin = path.resolve(__dirname, '..', '..', '..', 'bin', 'dacp.js');

/** A worker in its own process, exactly as `dacp worker --queue …` runs it, so it can be SIGKILLed. */
export interface WorkerProcess extends ChildProcess {
  queue: 'control' | 'gpu';
  /** Resolves once the worker prints that it polls. */
  ready: Promise<void>;
  /** Everything it printed so far (stdout and stderr), for failure messages. */
  output(): string;
}

/** What a fault test with spawned workers stands on: a dev server, a migrated database with the test principals, a client, and a home with its corpus. */
export interface FaultWorld {
  server: Awaited<ReturnType<typeof startTestDevServer>>;
  db: TestDatabase;
  client: Client;
  home: string;
  /** SIGKILL `children`, then stop the client, the server and the database, and remove the home. */
  stop(children: ChildProcess[]): Promise<void>;
}

export async function startFaultWorld(writeCorpus: (home: string) => void): Promise<FaultWorld> {
  const home = tempHome();
  writeCorpus(home);
  const [server, db] = await Promise.all([startTestDevServer(), createTestDatabase()]);
  await migrate(db.pool);
  await enrolTestPrincipals(db.pool);
  const client = new Client({ connection: await Connection.connect({ address: server.address }) });
  return {
    server,
    db,
    client,
    home,
    async stop(children) {
      await killAll(children);
      await client.connection.close();
      await server.cleanup();
      await db.drop();
      rmSync(home, { recursive: true, force: true });
    },
  };
}

export function spawnWorker(queue: 'control' | 'gpu', env: NodeJS.ProcessEnv): WorkerProcess {
  const child = spawn(process.execPath, [dacpBin, 'worker', '--queue', queue], {
    env: { ...process.env, ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let output = '';
  const ready = new Promise<void>((resolve, reject) => {
    child.stdout!.on('data', (d) => {
      output += d;
      if (output.includes('polling')) resolve();
    });
    child.stderr!.on('data', (d) => {
      output += d;
    });
    child.once('exit', (code, signal) => reject(new Error(`${queue} worker exited (${code ?? signal}) before polling: ${output}`)));
  });
  ready.catch(() => undefined);
  return Object.assign(child, { queue, ready, output: () => output });
}

export function isAlive(child: ChildProcess): boolean {
  return child.exitCode === null && child.signalCode === null;
}

/** SIGKILL and wait for the exit. */
export async function killHard(child: ChildProcess): Promise<void> {
  if (!isAlive(child)) return;
  const exited = new Promise((resolve) => child.once('exit', resolve));
  child.kill('SIGKILL');
  await exited;
}

export async function killAll(children: ChildProcess[]): Promise<void> {
  for (const child of children) await killHard(child);
}

/** Poll the run's status until `accept` returns true; a failed run stops the wait at once. */
export function waitForStatus(
  runs: RunContext,
  runId: string,
  accept: (s: RunStatus) => boolean,
  what: string,
  timeoutMs = 300_000,
  intervalMs = 100,
): Promise<RunStatus> {
  return eventually(
    async () => {
      const s = await runStatus(runs, runId);
      if (s.state === 'failed') throw new GiveUp(`the run failed while waiting for ${what}: ${String(s.metrics.error)}`);
      return accept(s) ? s : undefined;
    },
    what,
    timeoutMs,
    intervalMs,
  );
}

/** Approve at the gate (quorum 1) and wait for the pipeline's result. */
export async function approveAndFinish(runs: RunContext, runId: string): Promise<PipelineResult> {
  const { client } = runs;
  await waitForStatus(runs, runId, (s) => s.state === 'awaiting_approval', 'the run to await approval', 600_000, 250);
  await decide(runs, { runId, principal: 'approver-1', decision: 'approve' });
  return (await client.workflow.getHandle(runId).result()) as PipelineResult;
}

/**
 * The highest attempt of each activity type in a workflow's history. A retried activity's
 * ActivityTaskStarted event carries the attempt that finally completed (or failed for good).
 */
export async function activityAttempts(client: Client, workflowId: string): Promise<Record<string, number>> {
  const history = await client.workflow.getHandle(workflowId).fetchHistory();
  const typeOf = new Map<string, string>();
  const attempts: Record<string, number> = {};
  for (const event of history.events ?? []) {
    const scheduled = event.activityTaskScheduledEventAttributes;
    if (scheduled) typeOf.set(String(event.eventId), scheduled.activityType?.name ?? '?');
    const started = event.activityTaskStartedEventAttributes;
    if (started) {
      const name = typeOf.get(String(started.scheduledEventId)) ?? '?';
      attempts[name] = Math.max(attempts[name] ?? 0, started.attempt ?? 1);
    }
  }
  return attempts;
}

/** Rows of a run per table, and every natural key that occurs more than once (there must be none). */
export async function runRowCounts(pool: Pool, runId: string): Promise<{ counts: Record<string, number>; duplicates: string[] }> {
  const counts: Record<string, number> = {};
  for (const table of ['datasets', 'checkpoints', 'evaluations', 'approvals', 'model_versions', 'deployments', 'audit_log']) {
    const { rows } = await pool.query(`SELECT count(*)::int AS n FROM ${table} WHERE run_id = $1`, [runId]);
    counts[table] = rows[0].n as number;
  }
  const keyed: [string, string][] = [
    ['datasets', 'stage, role, split'],
    ['checkpoints', 'stage, round, step'],
    ['evaluations', 'kind, round'],
    ['approvals', 'principal'],
    ['model_versions', 'name'],
    ['deployments', 'alias'],
    ['audit_log', 'idempotency_key'],
  ];
  const duplicates: string[] = [];
  for (const [table, key] of keyed) {
    const { rows } = await pool.query(
      `SELECT ${key}, count(*)::int AS n FROM ${table} WHERE run_id = $1 GROUP BY ${key} HAVING count(*) > 1`,
      [runId],
    );
    for (const row of rows) duplicates.push(`${table} ${JSON.stringify(row)}`);
  }
  // Transitions the workflow records once per run: a second one would mean a stage ran twice.
  const { rows } = await pool.query(
    `SELECT event, stage, count(*)::int AS n FROM audit_log
     WHERE run_id = $1 AND event IN ('stage_started', 'deployed', 'run_completed', 'approved_by', 'approval_requested')
     GROUP BY event, stage HAVING count(*) > 1`,
    [runId],
  );
  for (const row of rows) duplicates.push(`audit_log event ${JSON.stringify(row)}`);
  return { counts, duplicates };
}

/**
 * Every artifact the run's rows reference (datasets with their shards, live checkpoints, evaluation
 * reports, model versions), checked by sha256. Returns the ones that fail, the number checked, and
 * the temp files (`.tmp-*`, from killed writes) lying in the store, none of which may be referenced.
 */
export async function checkReferencedArtifacts(
  pool: Pool,
  store: ArtifactStore,
  runId: string,
): Promise<{ checked: number; bad: string[]; strayTempFiles: string[] }> {
  const refs: { uri: string; sha256: string; from: string }[] = [];
  const collect = async (sql: string, from: string) => {
    for (const row of (await pool.query(sql, [runId])).rows) refs.push({ uri: row.uri as string, sha256: row.sha256 as string, from });
  };
  await collect('SELECT uri, sha256 FROM datasets WHERE run_id = $1', 'datasets');
  await collect('SELECT uri, sha256 FROM checkpoints WHERE run_id = $1 AND pruned_at IS NULL', 'checkpoints');
  await collect('SELECT report_uri AS uri, sha256 FROM evaluations WHERE run_id = $1', 'evaluations');
  await collect('SELECT uri, sha256 FROM model_versions WHERE run_id = $1', 'model_versions');
  for (const manifest of refs.filter((r) => r.from === 'datasets')) {
    if (!(await store.verify(manifest))) continue; // reported below
    const { shards } = await store.getJson<DatasetManifest>(manifest);
    for (const shard of shards) refs.push({ uri: shard.uri, sha256: shard.sha256, from: `shard of ${manifest.uri}` });
  }
  const bad: string[] = [];
  for (const ref of refs) {
    const file = store.pathOf(ref.uri);
    if (path.basename(file).startsWith('.tmp-')) bad.push(`${ref.from}: ${ref.uri} names a temp file`);
    else if (!(await store.verify(ref))) bad.push(`${ref.from}: ${ref.uri} is missing or fails sha256`);
  }
  return { checked: refs.length, bad, strayTempFiles: await tempFiles(store.root) };
}

async function tempFiles(dir: string): Promise<string[]> {
  const out: string[] = [];
  const entries = await fs.readdir(dir, { withFileTypes: true }).catch(() => []);
  for (const entry of entries) {
    const full = path.join(dir, entry.name);
    if (entry.isDirectory()) out.push(...(await tempFiles(full)));
    else if (entry.name.startsWith('.tmp-')) out.push(full);
  }
  return out;
}

/** Seconds with one decimal, for the figures the tests print. */
export const seconds = (ms: number): number => Math.round(ms / 100) / 10;
