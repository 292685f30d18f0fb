import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import type { Client } from '@temporalio/client';
import { DefaultLogger, Runtime } from '@temporalio/worker';
import { approvalView, formatApprovalView } from '../cli/approval';
import { decide, runStatus, startRun } from '../cli/runs';
import { formatStatus } from '../cli/status';
import type { FinalCheckReport, ForgettingReport, PipelineResult, RunStatus } from '../schemas/pipeline';
import { parseRunSpec, type RunSpecInput } from '../schemas/runSpec';
import type { TestDatabase } from './helpers/db';
import { tinySpec } from './helpers/fixtures';
import { startHarness, type Harness } from './helpers/harness';
import { eventually, GiveUp, runsFor } from './helpers/temporal';
import { mulberry32 } from '../ml/random';

Runtime.install({ logger: new DefaultLogger('WARN') });

/** The DACP recipe: the final check on what ships, instruction tuning with replay, candidates per replay ratio, task sets in the gates. */
describe('the DACP recipe through the workflow', () => {
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
      if ((s.state === 'failed' || s.state === 'cancelled') && !accept(s)) throw new GiveUp(`run ${runId} ${s.state}: ${String(s.metrics.error)}`);
      return accept(s) ? s : undefined;
    }, `${runId}: ${what}`, 600_000, 250);

  const q = (sql: string, ...args: unknown[]) => db.pool.query(sql, args).then((r) => r.rows);
  const spec = (over: Partial<RunSpecInput>) => parseRunSpec(tinySpec(over));
  const finalBudgets = { maxGeneralRegression: 5, minDomainGain: -1, maxInstructionRegression: 1 };

  test('a first run is checked against its base after instruction tuning, and the approval request shows both checks', async () => {
    const runId = await startRun(runs(), { spec: spec({}), baseDir: home, runId: 'recipe-first', initiator: 'engineer' });
    const waiting = await untilState(runId, (s) => s.state === 'awaiting_approval', 'await approval');
    const final = waiting.metrics.finalCheck as FinalCheckReport;
    expect(final).toMatchObject({ passed: true, round: 0, instructReplayRatio: 0.2, reference: { kind: 'base', versionId: 'tiny-base:v1' } });
    expect(final.candidate.instructionTokenAccuracy).toEqual(expect.any(Number));
    expect(final.referenceScores.generalPerplexity).toBeGreaterThan(0);
    // Status and the approval request show the two checks side by side.
    const text = formatStatus(waiting);
    expect(text).toMatch(/after DACP: adapted vs base +after instruction tuning: candidate vs base tiny-base:v1/);
    expect(text).toMatch(/general perplexity .*budget.*budget/);
    const view = await approvalView(client, runId, { artifactsDir: runs().artifactsDir });
    expect(view.finalCheck).toEqual(final);
    expect(formatApprovalView(view)).toMatch(/the gates side by side/);
    expect(view.artifacts.finalCheckReport?.sha256).toMatch(/^[0-9a-f]{64}$/);
    await decide(runs(), { runId, principal: 'approver-1', decision: 'approve' });
    const result = (await client.workflow.getHandle(runId).result()) as PipelineResult;
    expect(result).toMatchObject({ state: 'completed', versionId: 'tiny:v1', adaptedVersionId: 'tiny-adapted:v1' });
    // Instruction tuning mixed general text in: the attempt was trained with it.
    const [attempt] = await q(`SELECT details FROM audit_log WHERE run_id = $1 AND event = 'training_attempt' AND details->>'trainingStage' = 'instruct'`, runId);
    expect(attempt.details).toMatchObject({ round: 0, replayRatio: 0.2 });
    // Lineage shows both lines.
    expect(await q(`SELECT version_id, parent_version_id, lineage->>'kind' AS kind FROM model_versions WHERE run_id = $1 ORDER BY version_id`, runId)).toEqual([
      { version_id: 'tiny-adapted:v1', parent_version_id: 'tiny-base:v1', kind: 'adapted' },
      { version_id: 'tiny-base:v1', parent_version_id: null, kind: 'bootstrap' },
      { version_id: 'tiny:v1', parent_version_id: 'tiny-adapted:v1', kind: 'tuned' },
    ]);
  });

  test('a candidate that fails the final check is never offered for approval (onFail: fail)', async () => {
    const runId = await startRun(runs(), {
      spec: spec({ baseModel: { ref: 'production' }, forgetting: { maxGeneralRegression: 5, minDomainGain: -1, maxEvalWindows: 8, final: { ...finalBudgets, minDomainGain: 0.99, onFail: 'fail' } } }),
      baseDir: home,
      runId: 'recipe-final-fails',
      initiator: 'engineer',
    });
    const failed = await untilState(runId, (s) => s.state === 'failed', 'fail');
    expect(failed.stage).toBe('final_check');
    expect(String(failed.metrics.error)).toMatch(/final check failed: domain perplexity fell only .* \(floor 99\.0 %\)/);
    await expect(client.workflow.getHandle(`${runId}-approval`).describe()).rejects.toThrow();
    expect(await q(`SELECT count(*)::int AS n FROM model_versions WHERE run_id = $1`, runId)).toEqual([{ n: 0 }]);
  });

  test('retry-with-more-replay tunes again with more general text when the candidate forgot general text', async () => {
    // No replay anywhere, and no alias to compare with yet, so the candidate is checked against the
    // model it started from (an adapted model, not instruction-tuned): tuning without general text
    // costs general perplexity, beyond a 1 % budget.
    const runId = await startRun(runs(), {
      spec: spec({
        baseModel: { ref: 'production' },
        replayRatio: 0,
        instruct: { steps: 40, batchSize: 8, learningRate: 5e-3, checkpointEvery: 20, replayRatio: 0 },
        deploy: { alias: 'staging' },
        forgetting: { maxGeneralRegression: 5, minDomainGain: -1, maxEvalWindows: 8, final: { ...finalBudgets, maxGeneralRegression: 0.01, maxRetries: 1, replayIncrement: 0.5 } },
      }),
      baseDir: home,
      runId: 'recipe-final-retry',
      initiator: 'engineer',
    });
    const ended = await untilState(runId, (s) => s.state === 'failed' || s.state === 'awaiting_approval', 'pass or fail its final check');
    const retries = await q(`SELECT details FROM audit_log WHERE run_id = $1 AND event = 'final_check_retry'`, runId);
    expect(retries).toEqual([{ details: expect.objectContaining({ nextInstructReplayRatio: 0.5, reasons: [expect.stringMatching(/^general perplexity rose/)] }) }]);
    const checks = await q(`SELECT round, report->>'instructReplayRatio' AS ratio FROM evaluations WHERE run_id = $1 AND kind = 'final_check' ORDER BY round`, runId);
    expect(checks).toEqual([{ round: 0, ratio: '0' }, { round: 1, ratio: '0.5' }]);
    const tunings = await q(
      `SELECT details->'round' AS round, details->'replayRatio' AS ratio FROM audit_log WHERE run_id = $1 AND event = 'training_attempt' AND details->>'trainingStage' = 'instruct' ORDER BY id`,
      runId,
    );
    expect(tunings).toEqual([{ round: 0, ratio: 0 }, { round: 1, ratio: 0.5 }]);
    // Bounded: one retry, then the run passes or fails; it never tunes a third time.
    expect((ended.metrics.finalCheck as FinalCheckReport).round).toBe(1);
    if (ended.state === 'awaiting_approval') await decide(runs(), { runId, principal: 'approver-1', decision: 'reject', reason: 'test run' });
  });

  test('task sets enter both gates with their own budgets', async () => {
    const evaluation = { choices: { domain: 'data/choices-domain.jsonl', general: 'data/choices-general.jsonl' } };
    const runId = await startRun(runs(), {
      spec: spec({
        baseModel: { ref: 'production' },
        evaluation,
        forgetting: { maxGeneralRegression: 5, minDomainGain: -1, maxEvalWindows: 8, minDomainAccuracyGain: 1, final: { ...finalBudgets, minDomainAccuracyGain: -1, maxGeneralAccuracyDrop: 1 } },
      }),
      baseDir: home,
      runId: 'recipe-tasks',
      initiator: 'engineer',
    });
    // A domain accuracy gain of 100 points cannot be met: the forgetting gate fails on it, after its retry.
    const failed = await untilState(runId, (s) => s.state === 'failed', 'fail on task accuracy');
    const forgetting = failed.metrics.forgetting as ForgettingReport;
    expect(forgetting.base.domainAccuracy).toEqual(expect.any(Number));
    expect(forgetting.adapted.generalAccuracy).toEqual(expect.any(Number));
    expect(forgetting.domainAccuracyGain).toEqual(expect.any(Number));
    expect(forgetting.reasons.join(' ')).toMatch(/domain task accuracy changed .* \(floor 100\.0 points\)/);
    expect(forgetting.reasons.join(' ')).not.toMatch(/perplexity/);
  });

  /** A second domain, far from the first: lease clauses, seeded, as data/legal/*.txt. */
  function writeLegalCorpus(dir: string, docs = 80): void {
    const pick = <T>(list: readonly T[], u: () => number) => list[Math.floor(u() * list.length)] as T;
    const u = mulberry32(29);
    const parties = ['the lessee', 'the lessor', 'the guarantor', 'the tenant', 'the landlord'];
    const duties = ['pay the rent in advance', 'insure the premises', 'repair the roof', 'return the keys', 'keep the garden tidy', 'give notice in writing'];
    const terms = ['quarter day', 'the break date', 'the rent review', 'the expiry of the term', 'completion'];
    mkdirSync(path.join(dir, 'data', 'legal'), { recursive: true });
    for (let d = 0; d < docs; d++) {
      const clauses = Array.from({ length: 5 }, (_, i) => `Clause ${d % 17}.${i + 1}: ${pick(parties, u)} shall ${pick(duties, u)} before ${pick(terms, u)}, unless ${pick(parties, u)} agrees otherwise.`);
      writeFileSync(path.join(dir, 'data', 'legal', `lease-${d}.txt`), clauses.join(' '));
    }
  }

  const twoDomains = () => {
    const [domain, replay, instruct] = tinySpec().sources;
    return [{ ...domain, name: 'telecom' }, { kind: 'files' as const, role: 'domain' as const, name: 'legal', paths: ['data/legal/*.txt'] }, replay, instruct];
  };

  test('domainRatio weighs several domain sources: a list trains one candidate per mix, and each source gains where its weight went', async () => {
    writeLegalCorpus(home);
    const runId = await startRun(runs(), {
      spec: spec({
        baseModel: { ref: 'production' },
        sources: twoDomains(),
        domainRatio: [{ telecom: 1, legal: 0 }, { telecom: 0, legal: 1 }],
        dacp: { steps: 60, batchSize: 8, learningRate: 5e-3, checkpointEvery: 30, seed: 7 },
        forgetting: { maxGeneralRegression: 5, minDomainGain: -1, maxEvalWindows: 8, final: finalBudgets },
      }),
      baseDir: home,
      runId: 'recipe-domain-mix',
      initiator: 'engineer',
    });
    const waiting = await untilState(runId, (s) => s.state === 'awaiting_approval', 'await approval');
    // Quality kept each source's documents apart.
    const sources = (waiting.metrics.quality as { domainSources: Record<string, { train: number; heldout: number }> }).domainSources;
    expect(sources.telecom!.train).toBeGreaterThan(0);
    expect(sources.legal!.heldout).toBeGreaterThan(0);
    const candidates = waiting.metrics.candidates as { round: number; domainMix: Record<string, number>; chosen: boolean }[];
    expect(candidates.map((c) => c.domainMix)).toEqual([{ legal: 0, telecom: 1 }, { legal: 1, telecom: 0 }]);
    // Each candidate trained with its mix, and the gate scored each source on its own held-out text.
    const attempts = await q(`SELECT details->'round' AS round, details->'domainMix' AS mix FROM audit_log WHERE run_id = $1 AND event = 'training_attempt' AND details->>'trainingStage' = 'dacp' ORDER BY details->>'round'`, runId);
    expect(attempts).toEqual([{ round: 0, mix: { legal: 0, telecom: 1 } }, { round: 1, mix: { legal: 1, telecom: 0 } }]);
    const reports = (await q(`SELECT report FROM evaluations WHERE run_id = $1 AND kind = 'forgetting' ORDER BY round`, runId)).map((r) => r.report as ForgettingReport);
    const [telecomOnly, legalOnly] = reports.map((r) => r.domainGainBySource as Record<string, number>);
    console.log(`domain gain by source: telecom only ${JSON.stringify(telecomOnly)}, legal only ${JSON.stringify(legalOnly)}`);
    expect(telecomOnly!.telecom).toBeGreaterThan(legalOnly!.telecom as number);
    expect(legalOnly!.legal).toBeGreaterThan(telecomOnly!.legal as number);
    // Status and the approval request show the mixes.
    expect(formatStatus(waiting)).toMatch(/0\.25 \(legal 0\.00 \/ telecom 1\.00\) → /);
    expect(formatStatus(waiting)).toMatch(/gain by source +legal .* %, telecom .* %/);
    const view = await approvalView(client, runId, { artifactsDir: runs().artifactsDir });
    expect(view.tradeoff?.table).toMatch(/^domain mix +replay ratio/);
    expect(view.tradeoff?.table).toMatch(/legal 1\.00 \/ telecom 0\.00 +0\.25/);
    expect(readFileSync(view.tradeoff!.svgFile!, 'utf8').match(/data-domain-mix="/g)).toHaveLength(2);
    expect(formatApprovalView(view)).toMatch(/gain by source +legal .*, telecom /);
    await decide(runs(), { runId, principal: 'approver-1', decision: 'reject', reason: 'test run' });
  });

  test('one domainRatio mix trains the single dacp stage with it', async () => {
    const runId = await startRun(runs(), {
      spec: spec({ baseModel: { ref: 'production' }, sources: twoDomains(), domainRatio: { telecom: 3, legal: 1 } }),
      baseDir: home,
      runId: 'recipe-domain-mix-one',
      initiator: 'engineer',
    });
    const waiting = await untilState(runId, (s) => s.state === 'awaiting_approval', 'await approval');
    expect(waiting.metrics.candidates).toBeUndefined();
    expect(waiting.metrics.dacp).toMatchObject({ domainMix: { legal: 0.25, telecom: 0.75 } });
    expect(waiting.metrics.forgetting).toMatchObject({ domainMix: { legal: 0.25, telecom: 0.75 }, domainGainBySource: { legal: expect.any(Number), telecom: expect.any(Number) } });
    const [attempt] = await q(`SELECT details FROM audit_log WHERE run_id = $1 AND event = 'training_attempt' AND details->>'trainingStage' = 'dacp'`, runId);
    expect(attempt.details).toMatchObject({ domainMix: { legal: 0.25, telecom: 0.75 } });
    await decide(runs(), { runId, principal: 'approver-1', decision: 'reject', reason: 'test run' });
  });

  test('a list of replay ratios trains one candidate each; more replay means less forgetting and less domain gain; the best is chosen and plotted', async () => {
    const runId = await startRun(runs(), {
      spec: spec({
        baseModel: { ref: 'production' },
        replayRatio: [0, 0.3, 0.7],
        dacp: { steps: 80, batchSize: 8, learningRate: 5e-3, checkpointEvery: 40, seed: 7 },
        forgetting: { maxGeneralRegression: 5, minDomainGain: -1, maxEvalWindows: 16, final: finalBudgets },
      }),
      baseDir: home,
      runId: 'recipe-balance',
      initiator: 'engineer',
    });
    const waiting = await untilState(runId, (s) => s.state === 'awaiting_approval', 'await approval');
    const candidates = waiting.metrics.candidates as { round: number; replayRatio: number; domainGain: number; generalRegression: number; passed: boolean; chosen: boolean }[];
    expect(candidates.map((c) => c.replayRatio)).toEqual([0, 0.3, 0.7]);
    const [none, some, much] = candidates;
    console.log(`replay trade-off: ${candidates.map((c) => `${c.replayRatio}: domain gain ${c.domainGain}, general change ${c.generalRegression}`).join('; ')}`);
    // The direction the literature reports.
    expect(none!.generalRegression).toBeGreaterThan(some!.generalRegression);
    expect(some!.generalRegression).toBeGreaterThan(much!.generalRegression);
    expect(none!.domainGain).toBeGreaterThan(some!.domainGain);
    expect(some!.domainGain).toBeGreaterThan(much!.domainGain);
    // All pass these loose budgets, so the largest domain gain is chosen, and the run went on with it.
    expect(candidates.filter((c) => c.chosen)).toEqual([expect.objectContaining({ replayRatio: 0 })]);
    expect(waiting.metrics.forgetting).toMatchObject({ replayRatio: 0 });
    // Each candidate is a child workflow; the parent's history holds the children, not their training.
    for (const c of candidates) expect((await client.workflow.getHandle(`${runId}-candidate-${c.round}`).describe()).status.name).toBe('COMPLETED');
    const parent = await client.workflow.getHandle(runId).fetchHistory();
    const trainedInParent = parent.events!.filter((e) => e.activityTaskScheduledEventAttributes?.activityType?.name === 'continualPretrain');
    expect(trainedInParent).toHaveLength(0);
    // The approval request shows the trade-off as a table and an SVG plot, the chosen point marked.
    const view = await approvalView(client, runId, { artifactsDir: runs().artifactsDir });
    expect(view.tradeoff?.candidates).toHaveLength(3);
    expect(view.tradeoff?.table).toMatch(/0\.00 .*← chosen/);
    const svg = readFileSync(view.tradeoff!.svgFile!, 'utf8');
    expect(svg).toMatch(/^<svg /);
    expect(svg.match(/class="candidate"/g)).toHaveLength(3);
    expect(svg).toMatch(/class="chosen"/);
    expect(formatApprovalView(view)).toMatch(/replay trade-off/);
    expect(formatStatus(waiting)).toMatch(/candidates +replay ratio → domain gain, general change/);
  });
});
