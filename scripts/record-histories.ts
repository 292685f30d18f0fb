/**
 * Records the workflow histories that `test/faults/replay.test.ts` replays against the current
 * workflow code, so that a change which breaks replay of running workflows fails CI.
 *
 *   npm run build && node dist/scripts/record-histories.js [--tag TAG] [--only NAME,…] [--out DIR]
 *
 * Each scenario runs the real pipeline (a Temporal dev server on a free port, a fresh Postgres
 * database, in-process control and gpu workers, a tiny seeded corpus) and writes one file per
 * workflow: `<runId>.json` (the pipeline) and `<runId>-approval.json` (its approval gate, when the
 * run reached it). A file's name is its workflow id. Existing files are never overwritten: a
 * re-recording gets a new `--tag`, and the old files stay, because they stand for workflows that
 * may still be running. See docs/reliability-replay.md.
 */
import { randomBytes } from 'node:crypto';
import { chmodSync, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { Client, Connection, WorkflowFailedError } from '@temporalio/client';
import { temporal } from '@temporalio/proto';
import { DefaultLogger, NativeConnection, Runtime, Worker } from '@temporalio/worker';
import pg from 'pg';
import { freePort, startDevServer, type DevServer } from '../cli/devServer';
import { cancelRun, decide, runStatus, startRun, type RunContext } from '../cli/runs';
import { ensureIdentity } from '../cli/keys';
import { migrate } from '../db/migrate';
import { createPool } from '../db/pool';
import { generateDemoCorpus } from '../ml/demoCorpus';
import type { PipelineResult, RunStatus } from '../schemas/pipeline';
import { parseRunSpec, type RunSpecInput } from '../schemas/runSpec';
import { candidateWorkflowId } from '../workflows/candidate';
import { approvalWorkflowId } from '../workflows/messages';
import { createWorker, workflowSource, type WorkerDeps } from '../workers/options';

const HISTORY = temporal.api.history.v1.History;

interface Options {
  tag: string | null;
  only: string[] | null;
  outDir: string;
}

function parseArgs(argv: string[]): Options {
  const options: Options = { tag: null, only: null, outDir: path.resolve(__dirname, '..', '..', 'test', 'histories') };
  for (let i = 0; i < argv.length; i++) {
    const value = argv[i + 1];
    const need = () => {
      if (value === undefined || value.startsWith('--')) throw new Error(`${argv[i]} needs a value`);
      i++;
      return value;
    };
    if (argv[i] === '--tag') options.tag = need();
    else if (argv[i] === '--only') options.only = need().split(',');
    else if (argv[i] === '--out') options.outDir = path.resolve(need());
    else throw new Error(`unknown argument ${argv[i]}; usage: record-histories [--tag TAG] [--only NAME,…] [--out DIR]`);
  }
  if (options.tag !== null && !/^[A-Za-z0-9._]{1,20}$/.test(options.tag)) throw new Error('--tag is 1–20 letters, digits, "." or "_"');
  return options;
}

// ---- the tiny world (the same corpus and spec as test/helpers/fixtures.ts, which the build excludes)

function writeTinyCorpus(dir: string, seed = 11): void {
  const corpus = generateDemoCorpus({ seed, domainDocs: 80, generalDocs: 80, instructionPairs: 40 });
  mkdirSync(path.join(dir, 'data', 'domain'), { recursive: true });
  corpus.domain.forEach((text, i) => writeFileSync(path.join(dir, 'data', 'domain', `d${i}.txt`), text));
  writeFileSync(path.join(dir, 'data', 'general.jsonl'), corpus.general.map((text) => JSON.stringify({ text })).join('\n'));
  writeFileSync(path.join(dir, 'data', 'pairs.jsonl'), corpus.instructions.map((p) => JSON.stringify(p)).join('\n'));
  // A second domain source, for the domainRatio scenario: lease clauses.
  mkdirSync(path.join(dir, 'data', 'legal'), { recursive: true });
  const duties = ['pay the rent', 'insure the premises', 'repair the roof', 'return the keys', 'give notice in writing'];
  for (let d = 0; d < 40; d++) {
    const clauses = duties.map((duty, i) => `Clause ${d}.${i + 1}: the ${d % 2 ? 'lessee' : 'lessor'} shall ${duties[(d + i) % duties.length]} before ${duty === 'pay the rent' ? 'quarter day' : `day ${(d * 7 + i) % 28 + 1}`}.`);
    writeFileSync(path.join(dir, 'data', 'legal', `lease-${d}.txt`), clauses.join(' '));
  }
}

const shape = { contextLength: 32, dModel: 32, nLayers: 1, nHeads: 2 };

function tinySpec(over: Partial<RunSpecInput> = {}): RunSpecInput {
  return {
    name: 'tiny',
    sources: [
      { kind: 'files', role: 'domain', paths: ['data/domain/*.txt'] },
      { kind: 'files', role: 'replay', paths: ['data/general.jsonl'] },
      { kind: 'files', role: 'instruct', paths: ['data/pairs.jsonl'] },
    ],
    quality: { minDocs: 5 },
    // The first scenario bootstraps a base model and deploys `production`; the others start from it.
    baseModel: { ref: 'production', bootstrapIfMissing: true, shape, bootstrap: { steps: 30, batchSize: 8, learningRate: 5e-3, checkpointEvery: 15 } },
    dacp: { steps: 30, batchSize: 8, learningRate: 3e-3, checkpointEvery: 10 },
    forgetting: { maxGeneralRegression: 5, minDomainGain: -1, maxEvalWindows: 8 },
    instruct: { steps: 20, batchSize: 8, learningRate: 3e-3, checkpointEvery: 10 },
    approval: { approvers: ['approver-1', 'approver-2'], quorum: 1, timeout: '1h' },
    heartbeatTimeout: '5s',
    ...over,
  };
}

// ---- the machinery: server, database, workers

interface World {
  client: Client;
  home: string;
  runs: RunContext;
  /** Stops the gpu worker (training checkpoints and fails the attempt retryably) and starts a new one. */
  restartGpuWorker(): Promise<void>;
}

async function poll<T>(probe: () => Promise<T | undefined>, what: string, timeoutMs = 300_000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await probe();
    if (value !== undefined) return value;
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs / 1000}s waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 200));
  }
}

async function statusWhen(world: World, runId: string, what: string, ok: (s: RunStatus) => boolean): Promise<RunStatus> {
  return poll(async () => {
    const s = await runStatus(world.runs, runId);
    if (ok(s)) return s;
    if (s.state === 'failed' || s.state === 'cancelled' || s.state === 'completed' || s.state === 'rejected') {
      throw new Error(`run ${runId} ended ${s.state} (${String(s.metrics.error ?? '')}) before ${what}`);
    }
    return undefined;
  }, `${runId}: ${what}`);
}

const awaitingApproval = (world: World, runId: string) => statusWhen(world, runId, 'awaiting approval', (s) => s.state === 'awaiting_approval');

async function expectState(world: World, runId: string, state: PipelineResult['state']): Promise<void> {
  const result = (await world.client.workflow.getHandle(runId).result()) as PipelineResult;
  if (result.state !== state) throw new Error(`run ${runId} ended ${result.state}, expected ${state}`);
}

async function expectFailure(world: World, runId: string): Promise<void> {
  try {
    await world.client.workflow.getHandle(runId).result();
  } catch (err) {
    if (err instanceof WorkflowFailedError) return;
    throw err;
  }
  throw new Error(`run ${runId} completed; the scenario expects it to fail or be cancelled`);
}

async function start(world: World, runId: string, over: Partial<RunSpecInput> = {}): Promise<string> {
  return startRun(world.runs, { spec: parseRunSpec(tinySpec(over)), baseDir: world.home, runId, initiator: 'engineer' });
}

// ---- the scenarios: each small, each ending in a closed workflow

interface Scenario {
  name: string;
  what: string;
  run(world: World, runId: string): Promise<void>;
}

const scenarios: Scenario[] = [
  {
    name: 'completed-and-deployed',
    what: 'bootstraps a base model, trains, passes the forgetting gate, is approved and deploys',
    async run(world, runId) {
      await start(world, runId);
      await awaitingApproval(world, runId);
      await decide(world.runs, { runId, principal: 'approver-1', decision: 'approve', comment: 'ok' });
      await expectState(world, runId, 'completed');
    },
  },
  {
    name: 'quality-in-parts',
    what: 'runs its quality stage as part activities merged in order (quality.partMB), then trains, is approved and deploys',
    async run(world, runId) {
      await start(world, runId, { quality: { minDocs: 5, partMB: 0.01 } });
      await awaitingApproval(world, runId);
      await decide(world.runs, { runId, principal: 'approver-1', decision: 'approve', comment: 'ok' });
      await expectState(world, runId, 'completed');
    },
  },
  {
    name: 'rejected-at-gate',
    what: 'reaches the approval gate and is rejected',
    async run(world, runId) {
      await start(world, runId);
      await awaitingApproval(world, runId);
      await decide(world.runs, { runId, principal: 'approver-2', decision: 'reject', reason: 'not this week' });
      await expectState(world, runId, 'rejected');
    },
  },
  {
    name: 'reminded-escalated-approved',
    what: 'waits at its gate through a reminder and an escalation, then the escalation approver approves it',
    async run(world, runId) {
      await start(world, runId, { approval: { approvers: ['approver-1'], quorum: 1, timeout: '1h', remindEvery: '2s', escalation: { after: '3s', approvers: ['approver-2'] } } });
      await awaitingApproval(world, runId);
      await poll(async () => {
        const { rows } = await world.runs.pool.query(`SELECT 1 FROM approval_notifications WHERE run_id = $1 AND kind = 'escalated'`, [runId]);
        return rows.length ? true : undefined;
      }, `${runId}: the escalation`);
      await decide(world.runs, { runId, principal: 'approver-2', decision: 'approve', comment: 'escalated to me' });
      await expectState(world, runId, 'completed');
    },
  },
  {
    name: 'forgetting-retry-then-failed',
    what: 'fails the forgetting gate, retries with more replay, fails again and fails the run',
    async run(world, runId) {
      // A domain gain of 100 % is unreachable (perplexity stays above 0), so both rounds fail for sure.
      await start(world, runId, {
        forgetting: { maxGeneralRegression: 5, minDomainGain: 1, onFail: 'retry-with-more-replay', maxRetries: 1, replayIncrement: 0.2, maxEvalWindows: 8 },
      });
      await expectFailure(world, runId);
    },
  },
  {
    name: 'cancelled-during-dacp',
    what: 'is cancelled while dacp training runs',
    async run(world, runId) {
      await start(world, runId, { dacp: { steps: 5000, batchSize: 8, learningRate: 3e-3, checkpointEvery: 10 } });
      await statusWhen(world, runId, 'dacp training to step', (s) => s.stage === 'dacp' && s.progress.step > 0);
      await cancelRun(world.runs, runId);
      await expectFailure(world, runId);
    },
  },
  {
    name: 'balance-point-candidates',
    what: 'lists two replay ratios: one candidate child each, the best chosen and plotted; approved and deployed',
    async run(world, runId) {
      await start(world, runId, { replayRatio: [0, 0.5] });
      await awaitingApproval(world, runId);
      await decide(world.runs, { runId, principal: 'approver-1', decision: 'approve' });
      await expectState(world, runId, 'completed');
    },
  },
  {
    name: 'domain-mix-candidates',
    what: 'weighs two named domain sources with a list of two domainRatio mixes: one candidate child each, the best chosen; approved and deployed',
    async run(world, runId) {
      const [domain, replay, instruct] = tinySpec().sources;
      await start(world, runId, {
        sources: [{ ...domain, name: 'telecom' }, { kind: 'files', role: 'domain', name: 'legal', paths: ['data/legal/*.txt'] }, replay, instruct],
        domainRatio: [{ telecom: 3, legal: 1 }, { telecom: 1, legal: 3 }],
      });
      await awaitingApproval(world, runId);
      await decide(world.runs, { runId, principal: 'approver-1', decision: 'approve' });
      await expectState(world, runId, 'completed');
    },
  },
  {
    name: 'final-check-failed',
    what: 'passes the forgetting gate, fails the final check on what would ship (never offered for approval), the run fails',
    async run(world, runId) {
      // A domain gain of 100 % is unreachable, so the final check fails for sure; more replay cannot help, so no retry.
      await start(world, runId, {
        forgetting: { maxGeneralRegression: 5, minDomainGain: -1, maxEvalWindows: 8, final: { maxGeneralRegression: 5, minDomainGain: 1, maxInstructionRegression: 1 } },
      });
      await expectFailure(world, runId);
    },
  },
  {
    name: 'resumed-after-gpu-worker-restart',
    what: 'the gpu worker stops mid-dacp (checkpoints, attempt fails), a new one resumes; approved and deployed',
    async run(world, runId) {
      await start(world, runId, { dacp: { steps: 200, batchSize: 8, learningRate: 3e-3, checkpointEvery: 20 } });
      await statusWhen(world, runId, 'dacp training past step 20', (s) => s.stage === 'dacp' && s.progress.step >= 20);
      await world.restartGpuWorker();
      const waiting = await awaitingApproval(world, runId);
      if (waiting.resumedFromStep === null) throw new Error(`run ${runId} did not resume from a checkpoint`);
      await decide(world.runs, { runId, principal: 'approver-1', decision: 'approve' });
      await expectState(world, runId, 'completed');
    },
  },
];

// ---- recording and checking

function historyJson(history: unknown): unknown {
  // The form `HISTORY.fromObject` reads back (cli/audit.ts writes the same): 64-bit numbers as
  // strings, enums by name, payload bytes as base64. The SDK's historyToJSON/historyFromJSON fail
  // here ("type must be a Type": two copies of protobufjs), so the proto classes do the work.
  const object = HISTORY.toObject(HISTORY.fromObject(history as Record<string, unknown>), { longs: String, enums: String, bytes: String });
  return JSON.parse(JSON.stringify(object));
}

async function record(client: Client, workflowId: string, outDir: string): Promise<string | null> {
  const handle = client.workflow.getHandle(workflowId);
  try {
    await handle.describe();
  } catch {
    return null; // the run never started this workflow (e.g. no approval gate)
  }
  const file = path.join(outDir, `${workflowId}.json`);
  writeFileSync(file, `${JSON.stringify(historyJson(await handle.fetchHistory()), null, 1)}\n`);
  return file;
}

/** Replays the files against the workflow code the workers ran, so that a broken recording is noticed here. */
async function replayAll(files: string[]): Promise<void> {
  const histories = files.map((file) => ({
    workflowId: path.basename(file, '.json'),
    history: HISTORY.fromObject(JSON.parse(readFileSync(file, 'utf8')) as Record<string, unknown>),
  }));
  for await (const result of Worker.runReplayHistories(workflowSource(), histories)) {
    if (result.error) throw new Error(`replay of ${result.workflowId} failed: ${String(result.error)}`);
  }
}

async function adminQuery(serverUrl: string, sql: string): Promise<void> {
  const client = new pg.Client({ connectionString: serverUrl });
  await client.connect();
  try {
    await client.query(sql);
  } finally {
    await client.end();
  }
}

async function main(): Promise<void> {
  const options = parseArgs(process.argv.slice(2));
  const chosen = options.only ? scenarios.filter((s) => options.only!.includes(s.name)) : scenarios;
  const unknown = (options.only ?? []).filter((name) => !scenarios.some((s) => s.name === name));
  if (unknown.length) throw new Error(`unknown scenario(s) ${unknown.join(', ')}; known: ${scenarios.map((s) => s.name).join(', ')}`);
  const runIdOf = (s: Scenario) => (options.tag ? `${s.name}-${options.tag}` : s.name);
  mkdirSync(options.outDir, { recursive: true });
  for (const s of chosen) {
    for (const id of [runIdOf(s), approvalWorkflowId(runIdOf(s))]) {
      const file = path.join(options.outDir, `${id}.json`);
      if (existsSync(file)) {
        throw new Error(`${file} exists; recorded histories are never overwritten: record new ones with --tag (e.g. --tag v2)`);
      }
    }
  }

  Runtime.install({ logger: new DefaultLogger('WARN') });
  const home = mkdtempSync(path.join(os.tmpdir(), 'dacp-record-'));
  chmodSync(home, 0o755);
  writeTinyCorpus(home);
  const serverUrl = process.env.DATABASE_URL ?? 'postgres://postgres@127.0.0.1:5432/postgres';
  const dbName = `dacp_record_${process.pid}_${randomBytes(4).toString('hex')}`;
  let server: DevServer | undefined;
  let pool: pg.Pool | undefined;
  let nativeConnection: NativeConnection | undefined;
  let client: Client | undefined;
  const runs: Promise<void>[] = [];
  const workers: Worker[] = [];
  try {
    server = await startDevServer({ stateDir: path.join(home, 'temporal'), port: await freePort(), uiPort: null });
    await adminQuery(serverUrl, `CREATE DATABASE ${dbName}`);
    const url = new URL(serverUrl);
    url.pathname = `/${dbName}`;
    pool = createPool(url.toString());
    await migrate(pool);
    // The scenarios' people, with keys in the scratch home (signed starts and votes, as any run has).
    process.env.DACP_KEYS_DIR = path.join(home, 'keys');
    await ensureIdentity(pool, 'engineer', ['operator']);
    for (const approver of ['approver-1', 'approver-2']) await ensureIdentity(pool, approver, ['approver']);
    nativeConnection = await NativeConnection.connect({ address: server.address });
    client = new Client({ connection: await Connection.connect({ address: server.address }) });
    const deps: WorkerDeps = { connection: nativeConnection, namespace: 'default', pool, artifactsDir: path.join(home, 'artifacts'), client };
    const launch = async (queue: 'control' | 'gpu') => {
      const worker = await createWorker(queue, deps);
      workers.push(worker);
      runs.push(worker.run());
      return worker;
    };
    await launch('control');
    let gpu = await launch('gpu');
    const world: World = {
      client,
      home,
      runs: { client, pool, artifactsDir: path.join(home, 'artifacts') },
      restartGpuWorker: async () => {
        gpu.shutdown();
        await runs[workers.indexOf(gpu)];
        gpu = await launch('gpu');
      },
    };

    const written: string[] = [];
    for (const s of chosen) {
      const runId = runIdOf(s);
      const started = Date.now();
      await s.run(world, runId);
      // The run, its gate and any candidate children (a run that lists replay ratios).
      const candidates = [0, 1, 2, 3].map((round) => candidateWorkflowId(runId, round));
      for (const id of [runId, approvalWorkflowId(runId), ...candidates]) {
        const file = await record(client, id, options.outDir);
        if (file) {
          written.push(file);
          console.log(`${path.relative(process.cwd(), file)}  ${Math.round(readFileSync(file).length / 1024)} KiB`);
        }
      }
      console.log(`  ${s.name}: ${s.what} (${Math.round((Date.now() - started) / 1000)}s)`);
    }
    await replayAll(written);
    console.log(`replayed ${written.length} histories against the workflow bundle: no nondeterminism`);
  } finally {
    for (const w of workers) if (w.getState() === 'RUNNING') w.shutdown();
    await Promise.allSettled(runs);
    await nativeConnection?.close();
    await client?.connection.close();
    await server?.stop();
    await pool?.end();
    await adminQuery(serverUrl, `DROP DATABASE IF EXISTS ${dbName} WITH (FORCE)`).catch(() => undefined);
    rmSync(home, { recursive: true, force: true });
  }
}

main().catch((err) => {
  console.error(`record-histories: ${err instanceof Error ? err.message : String(err)}`);
  process.exit(1);
});
