import { readdirSync } from 'node:fs';
import path from 'node:path';
import { DefaultLogger, Runtime } from '@temporalio/worker';
import { ArtifactStore } from '../../activities/artifacts';
import { runStatus, startRun } from '../../cli/runs';
import { mulberry32 } from '../../ml/demoCorpus';
import { parseRunSpec } from '../../schemas/runSpec';
import { sharedTinyBase, tinySpec } from '../helpers/fixtures';
import { eventually } from '../helpers/temporal';
import { startFaultHarness, type FaultHarness } from './helpers/gpuHarness';
import { checkpointSha, newestCheckpoint, trainingAttempts } from './helpers/gpuRecords';
import type { GpuWorkerProcess, KillRecord } from './helpers/gpuWorker';

Runtime.install({ logger: new DefaultLogger('WARN') });

// Seed 1 gives kills at steps 1 (before any checkpoint), 145 and 148 (in the last interval) and two double kills.
const SEED = 1;
const STEPS = 150;
const EVERY = 20;
const TRIALS = 6;

/**
 * Every run uses this one spec. The first run finds no `tiny-base:v1`, bootstraps it and trains
 * uninterrupted (the reference); every trial then adapts that same registered base, so their
 * final dacp checkpoints must be bitwise equal to the reference's.
 */
const spec = parseRunSpec(
  tinySpec({
    baseModel: sharedTinyBase,
    dacp: { steps: STEPS, batchSize: 8, learningRate: 3e-3, checkpointEvery: EVERY },
    heartbeatTimeout: '3s',
  }),
);

/** Kill targets in 1..STEPS-1 from a fixed seed; every third trial is killed twice. */
function killPlans(): number[][] {
  const random = mulberry32(SEED);
  return Array.from({ length: TRIALS }, (_, trial) => {
    const first = 1 + Math.floor(random() * (STEPS - 1));
    if (trial % 3 !== 2 || first >= STEPS - 1) return [first];
    return [first, first + 1 + Math.floor(random() * (STEPS - 1 - first))];
  });
}

interface KillFigures {
  trial: number;
  kill: KillRecord;
  newestAtKill: number | null;
  resumedFromStep: number | null;
  firstStepAfter: number;
  secondsToStatus: number;
  secondsToFirstStep: number;
}

describe('faults: the gpu worker is SIGKILLed at random training steps', () => {
  let h: FaultHarness;
  let worker: GpuWorkerProcess;
  let referenceSha: string;
  let referenceSeconds: number;
  const figures: KillFigures[] = [];
  const outcomes: { trial: number; runId: string; attempts: number; exact: boolean }[] = [];

  beforeAll(async () => {
    h = await startFaultHarness();
    worker = await h.spawnGpuWorker();
  });

  afterAll(async () => {
    await h?.close();
  });

  const dacpSeconds = async (runId: string) => {
    const { rows } = await h.db.pool.query(
      `SELECT extract(epoch FROM max(created_at) - min(created_at))::float AS s FROM checkpoints WHERE run_id = $1 AND stage = 'dacp'`,
      [runId],
    );
    return rows[0].s as number;
  };

  test('an uninterrupted run bootstraps the shared base and sets the reference checkpoint', async () => {
    const runId = await startRun(h.runs, { spec, baseDir: h.home, runId: 'reference', initiator: 'engineer' });
    const status = await h.untilAwaitingApproval(runId);
    expect(status.metrics.baseModel).toBe('tiny-base:v1');
    expect(status.resumedFromStep).toBeNull();
    referenceSha = (await checkpointSha(h.db.pool, runId, 'dacp', STEPS))!;
    expect(referenceSha).toMatch(/^[0-9a-f]{64}$/);
    referenceSeconds = await dacpSeconds(runId);
    await h.client.workflow.getHandle(runId).cancel();
  });

  const plans = killPlans();
  test.each(plans.map((targets, i) => [i + 1, targets] as const))(
    'trial %i: killed at steps %j, the run resumes from the newest checkpoint each time and ends bitwise equal',
    async (trial, targets) => {
      expect(referenceSha).toBeDefined();
      const store = new ArtifactStore(path.join(h.home, 'artifacts'));
      // Each kill is armed before the training it aims at can start: here before the run exists,
      // later on the fresh worker before the retry reaches it.
      let nextKill = worker.killAtStep(STEPS, targets[0]);
      nextKill.catch(() => undefined); // awaited below; this only keeps an early failure from being unhandled
      const runId = await startRun(h.runs, { spec, baseDir: h.home, runId: `kill-${trial}`, initiator: 'engineer' });

      for (const [k, target] of targets.entries()) {
        const kill = await nextKill;
        // The worker is gone: what a retry can find is now fixed.
        const newest = await newestCheckpoint(h.db.pool, runId, 'dacp');
        if (newest) expect(await store.verify(newest)).toBe(true);
        const attemptsAtKill = await trainingAttempts(h.db.pool, runId, 'dacp');
        const killedAttempt = Math.max(...attemptsAtKill.map((a) => a.attempt));

        worker = await h.spawnGpuWorker();
        if (k + 1 < targets.length) {
          nextKill = worker.killAtStep(STEPS, targets[k + 1]);
          nextKill.catch(() => undefined);
        }
        const statusAfter = await eventually(async () => {
          const s = await runStatus(h.runs, runId);
          return (s.attempts.dacp ?? 0) > killedAttempt ? s : undefined;
        }, `a new dacp attempt after the kill at step ${kill.killedAtStep}`, 120_000, 50);
        const secondsToStatus = (Date.now() - kill.killedAtMs) / 1000;
        const firstStep = await eventually(async () => worker.steps.find((s) => s.totalSteps === STEPS), 'the resumed worker\'s first step', 120_000, 20);
        const resumed = (await trainingAttempts(h.db.pool, runId, 'dacp')).find((a) => a.attempt > killedAttempt)!;

        figures.push({
          trial,
          kill,
          newestAtKill: newest?.step ?? null,
          resumedFromStep: resumed.resumedFromStep,
          firstStepAfter: firstStep.step,
          secondsToStatus,
          secondsToFirstStep: (firstStep.at - kill.killedAtMs) / 1000,
        });
        expect(kill.killedAtStep).toBeGreaterThanOrEqual(target);
        // The retry resumes from exactly the newest checkpoint that existed when the worker died …
        expect(resumed.resumedFromStep).toBe(newest?.step ?? null);
        expect(firstStep.step).toBe((newest?.step ?? 0) + 1);
        if (newest) expect(statusAfter.resumedFromStep).toBe(newest.step);
        // … so at most one checkpoint interval of work is lost.
        expect(kill.killedAtStep - (newest?.step ?? 0)).toBeLessThanOrEqual(EVERY);
        expect(kill.killedAtStep - (newest?.step ?? 0)).toBeGreaterThanOrEqual(0);
      }

      const status = await h.untilAwaitingApproval(runId);
      expect(status.attempts.dacp).toBeGreaterThanOrEqual(targets.length + 1);
      const sha = await checkpointSha(h.db.pool, runId, 'dacp', STEPS);
      outcomes.push({ trial, runId, attempts: status.attempts.dacp ?? 0, exact: sha === referenceSha });
      expect(sha).toBe(referenceSha);
      await h.client.workflow.getHandle(runId).cancel();
    },
  );

  test('report: steps lost and time to resume per kill', () => {
    const rows = figures.map((f) => ({
      trial: f.trial,
      target: f.kill.target,
      'killed at': f.kill.killedAtStep,
      'newest ckpt': f.newestAtKill ?? '-',
      'resumed from': f.resumedFromStep ?? 0,
      'steps lost': f.kill.killedAtStep - (f.resumedFromStep ?? 0),
      'kill→status (s)': f.secondsToStatus.toFixed(2),
      'kill→1st step (s)': f.secondsToFirstStep.toFixed(2),
      'final = ref': outcomes.find((o) => o.trial === f.trial)?.exact ?? false,
    }));
    const lost = rows.map((r) => r['steps lost']);
    const toStatus = figures.map((f) => f.secondsToStatus);
    const stray = readdirSync(path.join(h.home, 'artifacts', 'checkpoints'), { recursive: true, encoding: 'utf8' }).filter((f) => path.basename(f).startsWith('.tmp-'));
    console.log(
      [
        `gpu kills (seed ${SEED}, ${STEPS} steps, checkpointEvery ${EVERY}, heartbeatTimeout ${spec.heartbeatTimeout / 1000} s; uninterrupted dacp ≈ ${referenceSeconds.toFixed(1)} s)`,
        formatTable(rows),
        `kills: ${rows.length}; steps lost: mean ${(lost.reduce((a, b) => a + b, 0) / lost.length).toFixed(1)}, max ${Math.max(...lost)} (bound ${EVERY}); ` +
          `kill→new attempt: mean ${(toStatus.reduce((a, b) => a + b, 0) / toStatus.length).toFixed(2)} s, max ${Math.max(...toStatus).toFixed(2)} s; ` +
          `temp files left by kills mid-write: ${stray.length}`,
      ].join('\n'),
    );
    expect(rows.length).toBeGreaterThanOrEqual(TRIALS);
    expect(Math.max(...lost)).toBeLessThanOrEqual(EVERY);
  });
});

function formatTable(rows: Record<string, string | number | boolean>[]): string {
  if (!rows.length) return '(no kills)';
  const headers = Object.keys(rows[0]);
  const cells = rows.map((r) => headers.map((k) => String(r[k])));
  const widths = headers.map((k, i) => Math.max(k.length, ...cells.map((c) => c[i].length)));
  const line = (values: string[]) => `| ${values.map((v, i) => v.padStart(widths[i])).join(' | ')} |`;
  return [line(headers), `|${widths.map((w) => '-'.repeat(w + 2)).join('|')}|`, ...cells.map(line)].join('\n');
}
