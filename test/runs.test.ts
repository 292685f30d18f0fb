import { execFile } from 'node:child_process';
import { createHash } from 'node:crypto';
import { readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import type { Client } from '@temporalio/client';
import { NativeConnection, DefaultLogger, Runtime, type Worker } from '@temporalio/worker';
import { createActivities } from '../activities';
import { ArtifactStore } from '../activities/artifacts';
import { exportAudit } from '../cli/audit';
import { publicKeyOf, signStatement } from '../schemas/signing';
import { testServerUrl } from './helpers/db';
import { cancelRun, decide, runStatus, startRun } from '../cli/runs';
import { formatStatus } from '../cli/status';
import type { PipelineResult, RunStatus } from '../schemas/pipeline';
import { parseRunSpec } from '../schemas/runSpec';
import { freePort } from '../cli/devServer';
import { createWorker } from '../workers/options';
import type { TestDatabase } from './helpers/db';
import { tinySpec } from './helpers/fixtures';
import { startHarness, type Harness } from './helpers/harness';
import { bundleWorkflows, eventually, GiveUp, runsFor } from './helpers/temporal';

Runtime.install({ logger: new DefaultLogger('WARN') });

const root = path.resolve(__dirname, '..');
const python = path.join(root, '.tools', 'venv', 'bin', 'python');
const trainer = path.join(root, 'trainers', 'hf', 'dacp_hf_trainer.py');
const probe = path.join(root, 'test', 'fixtures', 'env-probe.js');
process.env.DACP_TORCH_THREADS = '1';

/** Events in a workflow's history. */
async function historyLength(client: Client, workflowId: string): Promise<number> {
  const history = await client.workflow.getHandle(workflowId).fetchHistory();
  return history.events?.length ?? 0;
}

/** Every payload of a history, decoded to text, for scanning. */
async function historyText(client: Client, workflowId: string): Promise<string> {
  const history = await client.workflow.getHandle(workflowId).fetchHistory();
  const out: string[] = [];
  const walk = (value: unknown): void => {
    if (value instanceof Uint8Array) out.push(Buffer.from(value).toString('utf8'));
    else if (Array.isArray(value)) value.forEach(walk);
    else if (value && typeof value === 'object') Object.values(value).forEach(walk);
    else if (typeof value === 'string') out.push(value);
  };
  walk(history.events);
  return out.join('\n');
}

describe('runs: history stays small, one id is one run, status needs no worker', () => {
  let h: Harness;
  let client: Client;
  let db: TestDatabase;
  let home: string;
  const runs = () => runsFor(client, db.pool, home);

  beforeAll(async () => {
    h = await startHarness({ inProcessGpu: true });
    ({ client, db, home } = h);
  });

  afterAll(async () => {
    await h?.stop();
  });

  const untilState = (runId: string, accept: (s: RunStatus) => boolean, what: string) =>
    eventually<RunStatus>(async () => {
      const s = await runStatus(runs(), runId);
      if (s.state === 'failed' && !accept(s)) throw new GiveUp(`run ${runId} failed: ${String(s.metrics.error)}`);
      return accept(s) ? s : undefined;
    }, `${runId}: ${what}`, 300_000, 250);

  const finish = async (runId: string): Promise<PipelineResult> => {
    await untilState(runId, (s) => s.state === 'awaiting_approval', 'await approval');
    await decide(runs(), { runId, principal: 'approver-1', decision: 'approve' });
    return (await client.workflow.getHandle(runId).result()) as PipelineResult;
  };

  test('a run that trains four times longer has a history of the same size (within 5 %)', async () => {
    // Both bootstrap their base model the same way; only the length of continual pretraining differs.
    const baseModel = { ref: 'no-such-model', bootstrapIfMissing: true, shape: { contextLength: 32, dModel: 32, nLayers: 1, nHeads: 2 } };
    const short = parseRunSpec(tinySpec({ baseModel, dacp: { steps: 30, batchSize: 8, learningRate: 3e-3, checkpointEvery: 10 } }));
    const long = parseRunSpec(tinySpec({ baseModel, dacp: { steps: 120, batchSize: 8, learningRate: 3e-3, checkpointEvery: 10 } }));
    await finish(await startRun(runs(), { spec: short, baseDir: home, runId: 'history-short', initiator: 'engineer' }));
    await finish(await startRun(runs(), { spec: long, baseDir: home, runId: 'history-long', initiator: 'engineer' }));
    const shortEvents = await historyLength(client, 'history-short');
    const longEvents = await historyLength(client, 'history-long');
    const gateEvents = await historyLength(client, 'history-short-approval');
    console.log(`history events per run: pipeline ${shortEvents} (30 dacp steps), ${longEvents} (120 dacp steps); approval gate ${gateEvents}`);
    expect(longEvents).toBeGreaterThan(20);
    expect(Math.abs(longEvents - shortEvents) / shortEvents).toBeLessThan(0.05);
    // No signal carries progress any more.
    const history = await client.workflow.getHandle('history-long').fetchHistory();
    expect(history.events!.filter((e) => e.workflowExecutionSignaledEventAttributes)).toHaveLength(0);
  });

  test('a finished run reads as a summary: gate figures, version, time per stage, attempts', async () => {
    const status = await runStatus(runs(), 'history-long');
    expect(status).toMatchObject({ state: 'completed', stage: 'deploy', attempts: { dacp: 1, instruct: 1 } });
    const text = formatStatus(status);
    expect(text).toMatch(/run history-long: completed/);
    expect(text).toMatch(/domain perplexity .* → .*\(gain/);
    expect(text).toMatch(/forgetting gate +passed/);
    expect(text).toMatch(/model version +tiny:v\d+ \(alias production/);
    expect(text).toMatch(/time per stage +collect [\d.]+s, quality [\d.]+s, dacp [\d.]+s/);
    expect(text).toMatch(/training attempts +dacp 1, instruct 1/);
  });

  test('a run id that exists, running or closed, is refused, and the database refuses a second execution', async () => {
    const spec = parseRunSpec(tinySpec({ baseModel: { ref: 'production' } }));
    await expect(startRun(runs(), { spec, baseDir: home, runId: 'history-short', initiator: 'engineer' })).rejects.toThrow(
      /run history-short already exists/,
    );
    // Even a run Temporal no longer knows (retention) keeps its id: the database row is enough.
    await db.pool.query(
      `INSERT INTO runs (run_id, workflow_id, spec, spec_sha256, initiator, state, stage) VALUES ('forgotten-1', 'forgotten-1', '{}', 'x', 'e', 'completed', 'deploy')`,
    );
    await expect(startRun(runs(), { spec, baseDir: home, runId: 'forgotten-1', initiator: 'engineer' })).rejects.toThrow(/already exists/);
    // A second execution under a registered id (say, started by hand past the CLI) fails at once.
    const activities = createActivities({ pool: db.pool, store: new ArtifactStore(path.join(home, 'artifacts')) });
    await expect(
      activities.registerRun({ runId: 'history-short', workflowId: 'history-short', executionId: 'another-execution', spec, initiator: 'engineer' }),
    ).rejects.toMatchObject({ type: 'RunIdTaken' });
    // A run started past `dacp run start` without its initiator's signature, or with a forged one, never registers.
    await expect(activities.registerRun({ runId: 'unsigned-1', workflowId: 'unsigned-1', executionId: 'x', spec, initiator: 'engineer', baseDir: home })).rejects.toMatchObject({
      type: 'StartNotSigned',
      message: expect.stringMatching(/started without its initiator's signature/),
    });
    const privateKey = '11'.repeat(32);
    const statement = { format: 'dacp-start/1' as const, runId: 'forged-1', specSha256: 'x', initiator: 'engineer', baseDir: home, signedAt: new Date().toISOString(), keyId: 'f'.repeat(16) };
    const forged = { statement, signature: signStatement(statement, privateKey), publicKey: publicKeyOf(privateKey) };
    await expect(activities.registerRun({ runId: 'forged-1', workflowId: 'forged-1', executionId: 'x', spec, initiator: 'engineer', baseDir: home, startSignature: forged })).rejects.toMatchObject({
      type: 'StartNotSigned',
      message: expect.stringMatching(/is not an active operator key of engineer/),
    });
    expect((await db.pool.query(`SELECT run_id FROM runs WHERE run_id IN ('unsigned-1', 'forged-1')`)).rows).toEqual([]);
  });

  test('a deploy does not overwrite production when it moved since the run started', async () => {
    const spec = parseRunSpec(tinySpec({ baseModel: { ref: 'production' } }));
    const slow = await startRun(runs(), { spec, baseDir: home, runId: 'alias-slow', initiator: 'engineer' });
    await untilState(slow, (s) => s.state === 'awaiting_approval', 'await approval');
    const productionAtStart = (await db.pool.query(`SELECT version_id FROM model_aliases WHERE alias = 'production'`)).rows[0].version_id;
    // Meanwhile another run deploys and moves production.
    const fast = await finish(await startRun(runs(), { spec, baseDir: home, runId: 'alias-fast', initiator: 'engineer' }));
    expect(fast.state).toBe('completed');
    await decide(runs(), { runId: slow, principal: 'approver-1', decision: 'approve' });
    await expect(client.workflow.getHandle(slow).result()).rejects.toThrow();
    const status = await untilState(slow, (s) => s.state === 'failed', 'fail');
    expect(String(status.metrics.error)).toMatch(new RegExp(`pointed at ${productionAtStart}.*now at ${fast.versionId}`));
    // Production stays where the other run put it; the slow run's version is registered for a later promote.
    expect((await db.pool.query(`SELECT version_id FROM model_aliases WHERE alias = 'production'`)).rows[0].version_id).toBe(fast.versionId);
    const { rows } = await db.pool.query(`SELECT version_id FROM model_versions WHERE run_id = $1 ORDER BY version_id`, [slow]);
    expect(rows.map((r) => r.version_id)).toEqual([expect.stringMatching(/^tiny-adapted:v\d+$/), expect.stringMatching(/^tiny:v\d+$/)]);
    expect((await db.pool.query(`SELECT count(*)::int AS n FROM deployments WHERE run_id = $1`, [slow])).rows[0].n).toBe(0);
    const history = await client.workflow.getHandle(slow).fetchHistory();
    const failure = history.events!.find((e) => e.activityTaskFailedEventAttributes)?.activityTaskFailedEventAttributes?.failure;
    expect(failure?.applicationFailureInfo?.type ?? failure?.cause?.applicationFailureInfo?.type).toBe('AliasMoved');
  });

  test('cancellation waits for the last checkpoint, and nothing is written after the run ended', async () => {
    const spec = parseRunSpec(
      tinySpec({ baseModel: { ref: 'production' }, dacp: { steps: 4000, batchSize: 8, learningRate: 3e-3, checkpointEvery: 20 } }),
    );
    const runId = await startRun(runs(), { spec, baseDir: home, runId: 'cancel-1', initiator: 'engineer' });
    await eventually(async () => {
      const { rows } = await db.pool.query(`SELECT max(step)::int AS step FROM checkpoints WHERE run_id = $1 AND stage = 'dacp'`, [runId]);
      return rows[0].step >= 40 ? true : undefined;
    }, 'a dacp checkpoint at step 40', 300_000, 50);
    // Live progress, with no signal: from the heartbeat (throttled by the SDK) or the metric rows.
    const running = await untilState(runId, (s) => s.progress.step >= 40, 'show progress past step 40');
    expect(running.stage).toBe('dacp');
    expect(running.progress.totalSteps).toBe(4000);
    expect(running.progress.step).toBeGreaterThanOrEqual(40);
    expect(typeof running.progress.loss).toBe('number');

    await cancelRun(runs(), runId);
    await expect(client.workflow.getHandle(runId).result()).rejects.toThrow();
    const { rows: run } = await db.pool.query(`SELECT state, finished_at FROM runs WHERE run_id = $1`, [runId]);
    expect(run[0].state).toBe('cancelled');
    // Training wrote its last checkpoint before the run was recorded as cancelled, and nothing after.
    // Compared in SQL: JavaScript dates would drop the microseconds.
    const { rows: after } = await db.pool.query(
      `WITH ended AS (SELECT finished_at AS t FROM runs WHERE run_id = $1)
       SELECT (SELECT count(*)::int FROM checkpoints, ended WHERE run_id = $1 AND created_at > ended.t) AS checkpoints,
              (SELECT count(*)::int FROM metrics, ended WHERE run_id = $1 AND created_at > ended.t) AS metrics,
              (SELECT count(*)::int FROM audit_log, ended WHERE run_id = $1 AND created_at > ended.t) AS audit`,
      [runId],
    );
    expect(after[0]).toEqual({ checkpoints: 0, metrics: 0, audit: 0 });
    const { rows: audit } = await db.pool.query(`SELECT event FROM audit_log WHERE run_id = $1 ORDER BY id DESC LIMIT 1`, [runId]);
    expect(audit[0].event).toBe('run_cancelled');
    // The workflow waited: training's cancellation completed before the `run_cancelled` transition was scheduled …
    const history = await client.workflow.getHandle(runId).fetchHistory();
    const events = history.events!;
    const cancelledAt = events.findIndex((e) => e.activityTaskCanceledEventAttributes);
    const finalRecordAt = events.map((e) => e.activityTaskScheduledEventAttributes?.activityType?.name).lastIndexOf('recordTransition');
    expect(cancelledAt).toBeGreaterThan(0);
    expect(cancelledAt).toBeLessThan(finalRecordAt);
    // … after it had written a checkpoint at the step where it stopped, past what status showed before the cancel.
    const { rows: newest } = await db.pool.query(
      `SELECT step FROM checkpoints WHERE run_id = $1 AND stage = 'dacp' ORDER BY step DESC LIMIT 1`,
      [runId],
    );
    expect(newest[0].step).toBeGreaterThanOrEqual(running.progress.step);
    // And the database refuses a late write from a zombie attempt.
    await expect(
      db.pool.query(`INSERT INTO metrics (run_id, stage, round, step, name, value) VALUES ($1, 'dacp', 0, 99999, 'loss', 1)`, [runId]),
    ).rejects.toThrow(/has ended/);
  });

  test('a run that fails on a malformed document keeps its text out of history, the runs row and the bundle', async () => {
    const sentence = 'The violet comet hums eleven harbour lullabies.';
    writeFileSync(path.join(home, 'data', 'broken.jsonl'), `{"text": "fine line of general text for the replay pool"}\n{"text": "${sentence}" oops}\n`);
    const spec = parseRunSpec(
      tinySpec({
        baseModel: { ref: 'production' },
        sources: [
          { kind: 'files', role: 'domain', paths: ['data/domain/*.txt'] },
          { kind: 'files', role: 'replay', paths: ['data/general.jsonl', 'data/broken.jsonl'] },
          { kind: 'files', role: 'instruct', paths: ['data/pairs.jsonl'] },
        ],
      }),
    );
    const runId = await startRun(runs(), { spec, baseDir: home, runId: 'broken-1', initiator: 'engineer' });
    const failed = await untilState(runId, (s) => s.state === 'failed', 'fail');
    expect(String(failed.metrics.error)).toMatch(/broken\.jsonl:2/);
    const texts = [
      await historyText(client, runId),
      JSON.stringify((await db.pool.query('SELECT * FROM runs WHERE run_id = $1', [runId])).rows),
      JSON.stringify(await exportAudit(client, db.pool, runId, { home, artifactsDir: path.join(home, 'artifacts') })),
    ];
    for (const text of texts) expect(text).not.toContain('violet comet');
  });

  test('no planted secret and no planted document sentence reach history, the runs row or the audit bundle', async () => {
    const secret = 'planted-Secret-4f9a1c';
    const sentence = 'The quartz heron counts seven lanterns beneath the tidal observatory.';
    writeFileSync(path.join(home, 'data', 'domain', 'planted.txt'), `${sentence} ${'Radio links carry traffic between sites. '.repeat(4)}`);
    // A database of its own (the server's `postgres` database, trust auth): dacp's own is never a source.
    const secretUrl = new URL(testServerUrl);
    secretUrl.password = secret;
    // The probe lives in the test fixtures, outside the spec's folder: the worker's configuration allows it.
    process.env.DACP_TRAINER_COMMANDS = JSON.stringify([[process.execPath, probe]]);
    process.env.TEST_KB_URL = secretUrl.toString();
    // A trainer secret: the spec names the variable, the gpu worker's environment holds the value.
    process.env.TEST_TRAINER_TOKEN = `${secret}-token`;
    const probeFile = path.join(home, 'env-probe.json');
    try {
      const spec = parseRunSpec(
        tinySpec({
          baseModel: { ref: 'production' },
          engine: {
            kind: 'command',
            command: [process.execPath, probe, 'TEST_TRAINER_TOKEN', probeFile, python, trainer],
            env: ['TEST_TRAINER_TOKEN', 'DACP_TORCH_THREADS'],
          },
          sources: [
            { kind: 'files', role: 'domain', paths: ['data/domain/*.txt'] },
            { kind: 'postgres', role: 'domain', query: `SELECT 'Cell sites report handover counts every hour for the radio network.' AS text`, connectionEnv: 'TEST_KB_URL' },
            { kind: 'files', role: 'replay', paths: ['data/general.jsonl'] },
            { kind: 'files', role: 'instruct', paths: ['data/pairs.jsonl'] },
          ],
        }),
      );
      const runId = await startRun(runs(), { spec, baseDir: home, runId: 'secrets-1', initiator: 'engineer' });
      expect((await finish(runId)).state).toBe('completed');
      const texts = [
        await historyText(client, runId),
        await historyText(client, `${runId}-approval`),
        JSON.stringify((await db.pool.query('SELECT * FROM runs WHERE run_id = $1', [runId])).rows),
        JSON.stringify(await exportAudit(client, db.pool, runId, { home, artifactsDir: path.join(home, 'artifacts') })),
      ];
      expect(texts[0]).toContain('artifact:'); // what does travel: references and hashes
      for (const text of texts) {
        expect(text).not.toContain(secret);
        expect(text).not.toContain('quartz heron');
      }
      // The spec itself is not in history, only its reference.
      expect(texts[0]).not.toContain('data/domain/*.txt');
      // … and the trainer did get the value it was promised.
      const seen = JSON.parse(readFileSync(probeFile, 'utf8'));
      expect(seen).toEqual({ name: 'TEST_TRAINER_TOKEN', present: true, sha256: createHash('sha256').update(`${secret}-token`).digest('hex') });
    } finally {
      delete process.env.TEST_KB_URL;
      delete process.env.DACP_TRAINER_COMMANDS;
      delete process.env.TEST_TRAINER_TOKEN;
    }
  });

  test('`dacp run status` answers from the database when the Temporal server is down', async () => {
    // The command as a user runs it, pointed at a port where no server listens.
    const env = { ...process.env, DATABASE_URL: db.url, DACP_HOME: home, TEMPORAL_ADDRESS: `127.0.0.1:${await freePort()}` };
    const { stdout, code } = await new Promise<{ stdout: string; code: number | null }>((resolve) => {
      execFile(process.execPath, [path.join(root, 'bin', 'dacp.js'), 'run', 'status', 'history-long'], { env, encoding: 'utf8' }, (err, out) =>
        resolve({ stdout: out, code: err ? (typeof err.code === 'number' ? err.code : 1) : 0 }),
      );
    });
    expect(code).toBe(0);
    expect(stdout).toMatch(/run history-long: completed, stage deploy/);
    expect(stdout).toMatch(/model version +tiny:v\d+/);
    expect(stdout).toMatch(/time per stage +collect/);
  });

  test('with no worker running, status and cancel still answer for a run in training', async () => {
    const spec = parseRunSpec(
      tinySpec({ baseModel: { ref: 'production' }, dacp: { steps: 4000, batchSize: 8, learningRate: 3e-3, checkpointEvery: 20 } }),
    );
    const runId = await startRun(runs(), { spec, baseDir: home, runId: 'no-worker-1', initiator: 'engineer' });
    await untilState(runId, (s) => s.stage === 'dacp' && s.progress.step >= 40, 'train past step 40');
    await h.stopWorkers(); // training checkpoints and hands over; no worker is left

    const status = await runStatus(runs(), runId);
    expect(status).toMatchObject({ state: 'running', stage: 'dacp', attempts: { dacp: 1 } });
    expect(status.progress.totalSteps).toBe(4000);
    expect(status.progress.step).toBeGreaterThanOrEqual(40);
    expect(status.metrics.baseModel).toEqual(expect.stringMatching(/^tiny-adapted:v\d+$/));
    await cancelRun(runs(), runId); // accepted by Temporal with no worker

    // Workers that come back carry the cancellation out.
    const connection = await NativeConnection.connect({ address: h.server.address });
    const deps = { connection, namespace: 'default', pool: db.pool, artifactsDir: path.join(home, 'artifacts'), client };
    const workers: Worker[] = [await createWorker('control', { ...deps, workflowBundle: await bundleWorkflows() }), await createWorker('gpu', deps)];
    const running = Promise.all(workers.map((w) => w.run()));
    try {
      const cancelled = await untilState(runId, (s) => s.state === 'cancelled', 'be cancelled');
      expect(cancelled.stage).toBe('dacp');
    } finally {
      workers.forEach((w) => w.shutdown());
      await running;
      await connection.close();
    }
  });
});
