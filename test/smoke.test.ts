import { DefaultLogger, Runtime } from '@temporalio/worker';
import { ArtifactStore } from '../activities/artifacts';
import { smokeActivities } from '../activities/smoke';
import { decide, runStatus, startRun } from '../cli/runs';
import type { PipelineResult, RunStatus } from '../schemas/pipeline';
import { parseRunSpec } from '../schemas/runSpec';
import { tinySpec } from './helpers/fixtures';
import { startHarness, type Harness } from './helpers/harness';
import { eventually, GiveUp } from './helpers/temporal';
import { spawnSync } from 'node:child_process';
import path from 'node:path';

Runtime.install({ logger: new DefaultLogger('WARN') });

/**
 * After a deploy, the deployed version is loaded and asked its prompts through `dacp serve`'s code,
 * on the gpu queue. A failing smoke test puts the alias back where it was on its own and ends the
 * run `rolled_back`, saying why; a passing one leaves the deploy as it is.
 */

let h: Harness;

beforeAll(async () => {
  h = await startHarness({ inProcessGpu: true });
}, 120_000);

afterAll(async () => {
  await h?.stop();
});

async function approveAndFinish(runId: string, spec: ReturnType<typeof parseRunSpec>): Promise<PipelineResult> {
  await startRun(h.runs, { spec, baseDir: h.home, runId, initiator: 'engineer' });
  await eventually<RunStatus>(async () => {
    const s = await runStatus(h.runs, runId);
    if (s.state === 'failed') throw new GiveUp(`run failed: ${String(s.metrics.error)}`);
    return s.state === 'awaiting_approval' ? s : undefined;
  }, `${runId} to reach approval`, 300_000, 250);
  await decide(h.runs, { runId, principal: 'approver-1', decision: 'approve' });
  return (await h.client.workflow.getHandle(runId).result()) as PipelineResult;
}

const aliasTarget = async (alias: string) => (await h.db.pool.query('SELECT version_id FROM model_aliases WHERE alias = $1', [alias])).rows[0]?.version_id ?? null;

test('a passing smoke test leaves the deploy; a failing one rolls the alias back on its own, and the run ends rolled_back', async () => {
  const first = await approveAndFinish('smoke-1', parseRunSpec(tinySpec({ name: 'smoke' })));
  expect(first).toMatchObject({ state: 'completed', versionId: 'smoke:v1' });
  const passed = (await runStatus(h.runs, 'smoke-1')).metrics.smoke as { passed: boolean; prompts: number; answerChars: number[]; report: { uri: string; sha256: string } };
  expect(passed).toMatchObject({ passed: true, reasons: [], prompts: expect.any(Number) });
  expect(passed.answerChars).toHaveLength(passed.prompts);
  // The answers are in the report artifact, not in history.
  const report = await new ArtifactStore(path.join(h.home, 'artifacts')).getJson<{ answers: string[]; versionId: string }>(passed.report);
  expect(report).toMatchObject({ versionId: 'smoke:v1', answers: expect.any(Array) });
  expect(report.answers.map((a) => a.length)).toEqual(passed.answerChars);
  expect(await aliasTarget('production')).toBe('smoke:v1');

  // A canary the model does not know: the smoke test fails after the deploy, and production goes back.
  const canary = tinySpec({ name: 'smoke', deploy: { alias: 'production', smoke: { prompts: ['What is the canary?'], expect: 'zz-canary-42' } } });
  const second = await approveAndFinish('smoke-2', parseRunSpec(canary));
  expect(second.state).toBe('rolled_back');
  expect(second.reason).toBe('the smoke test of smoke:v2 failed: answer 1 of 1 lacks the expected text (deploy.smoke.expect)');
  expect(await aliasTarget('production')).toBe('smoke:v1');
  const status = await runStatus(h.runs, 'smoke-2');
  expect(status.state).toBe('rolled_back');
  expect(status.metrics.rollback).toEqual({ rolledBack: true, restoredVersionId: 'smoke:v1', current: 'smoke:v1' });
  const history = await h.db.pool.query(`SELECT kind, actor, note, version_id, previous_version_id FROM deployments WHERE alias = 'production' ORDER BY id`);
  expect(history.rows.map((r) => [r.kind, r.actor, r.previous_version_id, r.version_id])).toEqual([
    ['deploy', null, null, 'smoke:v1'], ['deploy', null, 'smoke:v1', 'smoke:v2'], ['rollback', 'dacp', 'smoke:v2', 'smoke:v1'],
  ]);
  expect(history.rows[2].note).toBe(second.reason);
  const events = await h.db.pool.query(`SELECT event, details FROM audit_log WHERE run_id = 'smoke-2' AND event = 'run_rolled_back'`);
  expect(events.rows[0]?.details).toMatchObject({ reason: second.reason, restoredVersionId: 'smoke:v1' });
  // `dacp run status` says what happened, in words.
  const shown = spawnSync(process.execPath, [path.join(__dirname, '..', 'bin', 'dacp.js'), 'run', 'status', 'smoke-2'], { env: { ...process.env, ...h.env }, encoding: 'utf8' });
  expect(shown.stdout).toMatch(/smoke test +failed: answer 1 of 1 lacks the expected text/);
  expect(shown.stdout).toMatch(/rolled back +production → smoke:v1/);
  // The version stays registered, for inspection.
  expect((await h.db.pool.query(`SELECT count(*)::int AS n FROM model_versions WHERE version_id = 'smoke:v2'`)).rows[0].n).toBe(1);

  // A first deploy to an alias has nothing to go back to: the alias is removed, so the failing model never serves.
  const fresh = tinySpec({ name: 'smoke', deploy: { alias: 'staging', smoke: { prompts: ['Anything?'], expect: 'zz-canary-42' } } });
  const third = await approveAndFinish('smoke-3', parseRunSpec(fresh));
  expect(third.state).toBe('rolled_back');
  expect(await aliasTarget('staging')).toBeNull();
  expect((await runStatus(h.runs, 'smoke-3')).metrics.rollback).toEqual({ rolledBack: true, restoredVersionId: null, current: null });
  // The removal is in the alias's history, so a later rollback never brings the failed version back.
  const staging = await h.db.pool.query(`SELECT kind, actor, version_id, previous_version_id FROM deployments WHERE alias = 'staging' ORDER BY id`);
  expect(staging.rows.map((r) => [r.kind, r.actor, r.previous_version_id, r.version_id])).toEqual([['deploy', null, null, 'smoke:v3'], ['rollback', 'dacp', 'smoke:v3', null]]);
  const again = await smokeActivities({ pool: h.db.pool, store: new ArtifactStore(path.join(h.home, 'artifacts')) }).rollbackDeploy({ runId: 'smoke-3', alias: 'staging', versionId: 'smoke:v3', previousVersionId: null, reason: 'x' });
  expect(again).toEqual({ rolledBack: true, restoredVersionId: null, current: null });

  // A spec stored before the smoke test existed (no deploy.smoke) gets its defaults.
  const heldout = (await h.db.pool.query(`SELECT * FROM datasets WHERE run_id = 'smoke-1' AND stage = 'quality' AND role = 'instruct' AND split = 'heldout'`)).rows[0];
  const old = parseRunSpec(tinySpec({ name: 'smoke' }));
  const result = await smokeActivities({ pool: h.db.pool, store: new ArtifactStore(path.join(h.home, 'artifacts')) }).smokeTestDeployed({
    runId: 'smoke-1', spec: { ...old, deploy: { alias: 'production' } } as never, versionId: 'smoke:v1',
    heldout: { uri: heldout.uri, sha256: heldout.sha256, bytes: 0, role: 'instruct', split: 'heldout', docs: heldout.docs, dataBytes: Number(heldout.bytes), tokens: Number(heldout.tokens) },
  });
  expect(result).toMatchObject({ passed: true, prompts: Math.min(3, Number(heldout.docs)) });
}, 900_000);
