/// <reference lib="dom" />
/// <reference lib="dom.iterable" />
import type { Client } from '@temporalio/client';
import { defaultPayloadConverter } from '@temporalio/common';
import { DefaultLogger, Runtime } from '@temporalio/worker';
import path from 'node:path';
import { createActivities } from '../activities';
import { ArtifactStore } from '../activities/artifacts';
import { randomBytes } from 'node:crypto';
import { spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync } from 'node:fs';
import { chromium as chromiumLauncher } from 'playwright-core';
import { exportAudit, manifestStatement, partHash, verifyAudit, type AuditBundle } from '../cli/audit';
import { keyIdOf } from '../db/principals';
import { publicKeyOf, signStatement } from '../schemas/signing';
import { decide, runStatus, startRun } from '../cli/runs';
import { parseRunSpec } from '../schemas/runSpec';
import type { PipelineResult, RunStatus } from '../schemas/pipeline';
import type { TestDatabase } from './helpers/db';
import { tinySpec } from './helpers/fixtures';
import { startHarness, type Harness } from './helpers/harness';
import { eventually, GiveUp, runsFor } from './helpers/temporal';

Runtime.install({ logger: new DefaultLogger('WARN') });

/** Debian's chromium (`.ci/run` installs it); without it the browser test is skipped and says so. */
const chromium = ['/usr/bin/chromium', '/usr/bin/chromium-browser'].find((p) => existsSync(p)) ?? null;
if (!chromium) console.warn('run report browser test skipped (not run, not passed): no chromium at /usr/bin/chromium; `apt-get install chromium`');
/** Screenshots and other files a test keeps for people to look at. */
const testArtifacts = path.join(__dirname, '..', 'test-results');

describe('the whole pipeline on the dev server with real Postgres', () => {
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

  const awaitingApproval = (runId: string) =>
    eventually<RunStatus>(async () => {
      const s = await runStatus(runs(), runId);
      if (s.state === 'failed' || s.state === 'cancelled') throw new GiveUp(`run ${s.state}: ${String(s.metrics.error)}`);
      return s.state === 'awaiting_approval' ? s : undefined;
    }, `${runId} to await approval`, 300_000, 500);

  let firstVersion: string;

  test('a run collects, cleans, trains, evaluates, waits for approval and deploys', async () => {
    const spec = parseRunSpec(tinySpec());
    const runId = await startRun(runs(), { spec, baseDir: home, runId: 'pipeline-1', initiator: 'engineer' });

    const waiting = await awaitingApproval(runId);
    expect(waiting.stage).toBe('approval');
    // The built-in engine evaluated it (on the gpu queue, where it trains).
    expect(waiting.metrics.forgetting).toMatchObject({ passed: true, round: 0, evaluatedBy: 'builtin' });
    expect(waiting.metrics.instruct).toBeDefined();
    expect(waiting.attempts.dacp).toBe(1);

    // The initiator may not approve; an approver may.
    await expect(decide(runs(), { runId, principal: 'engineer', decision: 'approve' })).rejects.toThrow(/separation of duties/);
    await decide(runs(), { runId, principal: 'approver-1', decision: 'approve', comment: 'ok' });
    const result = (await client.workflow.getHandle(runId).result()) as PipelineResult;
    expect(result.state).toBe('completed');
    expect(result.versionId).toBe('tiny:v1');
    firstVersion = result.versionId!;

    const status = await runStatus(runs(), runId);
    expect(status).toMatchObject({ runId, stage: 'deploy', state: 'completed' });
    expect(Object.keys(status).sort()).toEqual(['attempts', 'metrics', 'progress', 'resumedFromStep', 'runId', 'stage', 'state']);

    const q = (sql: string, ...args: unknown[]) => db.pool.query(sql, args).then((r) => r.rows);
    expect(await q('SELECT state, stage FROM runs WHERE run_id = $1', runId)).toEqual([{ state: 'completed', stage: 'deploy' }]);
    const events = (await q('SELECT event, stage FROM audit_log WHERE run_id = $1 ORDER BY id', runId)).map((r) => `${r.event}:${r.stage}`);
    for (const stage of ['collect', 'quality', 'dacp', 'forgetting', 'instruct', 'final_check', 'approval', 'deploy']) {
      expect(events).toContain(`stage_started:${stage}`);
    }
    expect(events).toContain('approved_by:approval');
    const attempts = await q("SELECT details FROM audit_log WHERE run_id = $1 AND event = 'training_attempt' ORDER BY id", runId);
    expect(attempts.map((r) => r.details.trainingStage)).toEqual(['bootstrap', 'dacp', 'instruct']);
    expect(attempts[1].details).toMatchObject({ attempt: 1, resumedFromStep: null, backend: expect.stringMatching(/^(tensorflow|wasm|cpu)$/) });
    expect(events).toContain('deployed:deploy');
    expect(events[events.length - 1]).toBe('run_completed:deploy');
    expect((await q('SELECT step FROM checkpoints WHERE run_id = $1 AND stage = $2 ORDER BY step', runId, 'dacp')).map((r) => r.step)).toEqual([10, 20, 30]);
    expect(await q('SELECT kind, passed FROM evaluations WHERE run_id = $1 ORDER BY kind', runId)).toEqual([
      { kind: 'final_check', passed: true },
      { kind: 'forgetting', passed: true },
      { kind: 'instruct', passed: expect.any(Boolean) },
    ]);
    expect(await q('SELECT count(*)::int AS n FROM datasets WHERE run_id = $1', runId)).toEqual([{ n: 9 }]);
    // Two linked versions: the adapted model (child of the base) and the tuned one that serves (child of the adapted).
    const [version] = await q('SELECT * FROM model_versions WHERE version_id = $1', firstVersion);
    expect(version.parent_version_id).toBe('tiny-adapted:v1');
    expect(version.lineage).toMatchObject({ kind: 'tuned', adaptedVersionId: 'tiny-adapted:v1', runId });
    expect(version.lineage.datasets).toHaveLength(6);
    const [adaptedVersion] = await q('SELECT * FROM model_versions WHERE version_id = $1', 'tiny-adapted:v1');
    expect(adaptedVersion).toMatchObject({ parent_version_id: 'tiny-base:v1', run_id: runId, lineage: expect.objectContaining({ kind: 'adapted' }) });
    expect(result.adaptedVersionId).toBe('tiny-adapted:v1');
    expect(await q("SELECT version_id FROM model_aliases WHERE alias = 'production'")).toEqual([{ version_id: firstVersion }]);
    expect(await q('SELECT version_id, previous_version_id FROM deployments WHERE run_id = $1', runId)).toEqual([
      { version_id: firstVersion, previous_version_id: null },
    ]);
  });

  test('repeating the deploy activity with the recorded input changes nothing', async () => {
    const history = await client.workflow.getHandle('pipeline-1').fetchHistory();
    const scheduled = history.events!.find((e) => e.activityTaskScheduledEventAttributes?.activityType?.name === 'deployModel');
    const input = defaultPayloadConverter.fromPayload(scheduled!.activityTaskScheduledEventAttributes!.input!.payloads![0]);
    const activities = createActivities({ pool: db.pool, store: new ArtifactStore(path.join(home, 'artifacts')) });
    const count = async () =>
      (await db.pool.query(`SELECT (SELECT count(*) FROM model_versions)::int AS v, (SELECT count(*) FROM deployments)::int AS d,
        (SELECT count(*) FROM audit_log)::int AS a`)).rows[0];
    const before = await count();
    const again = await activities.deployModel(input as Parameters<typeof activities.deployModel>[0]);
    expect(again.versionId).toBe(firstVersion);
    expect(await count()).toEqual(before);
  });

  test('a second run continues the pretrained line behind production, is checked against production, and records the version it replaces', async () => {
    const spec = parseRunSpec(tinySpec({ baseModel: { ref: 'production', bootstrapIfMissing: false } }));
    const runId = await startRun(runs(), { spec, baseDir: home, runId: 'pipeline-2', initiator: 'engineer' });
    const waiting = await awaitingApproval(runId);
    // Continual pretraining starts from the adapted model behind production, never from the chat model …
    expect(waiting.metrics.baseModel).toBe('tiny-adapted:v1');
    // … and what would ship is compared with what it would replace.
    expect(waiting.metrics.finalCheck).toMatchObject({ reference: { kind: 'production', versionId: firstVersion }, passed: true });
    await decide(runs(), { runId, principal: 'approver-2', decision: 'approve' });
    const result = (await client.workflow.getHandle(runId).result()) as PipelineResult;
    expect(result.versionId).toBe('tiny:v2');
    const { rows } = await db.pool.query('SELECT version_id, previous_version_id FROM deployments WHERE run_id = $1', [runId]);
    expect(rows).toEqual([{ version_id: 'tiny:v2', previous_version_id: firstVersion }]);
    const [v2] = (await db.pool.query("SELECT parent_version_id FROM model_versions WHERE version_id = 'tiny:v2'")).rows;
    expect(v2.parent_version_id).toBe('tiny-adapted:v2');
    const [adapted2] = (await db.pool.query("SELECT parent_version_id FROM model_versions WHERE version_id = 'tiny-adapted:v2'")).rows;
    expect(adapted2.parent_version_id).toBe('tiny-adapted:v1');
  });

  test('a rejected run deploys nothing', async () => {
    const spec = parseRunSpec(tinySpec({ baseModel: { ref: 'production' } }));
    const runId = await startRun(runs(), { spec, baseDir: home, runId: 'pipeline-3', initiator: 'engineer' });
    await awaitingApproval(runId);
    await decide(runs(), { runId, principal: 'approver-1', decision: 'reject', reason: 'not this week' });
    const result = (await client.workflow.getHandle(runId).result()) as PipelineResult;
    expect(result).toMatchObject({ state: 'rejected', reason: expect.stringMatching(/not this week/) });
    const { rows } = await db.pool.query('SELECT state FROM runs WHERE run_id = $1', [runId]);
    expect(rows).toEqual([{ state: 'rejected' }]);
    expect((await db.pool.query('SELECT count(*)::int AS n FROM deployments WHERE run_id = $1', [runId])).rows[0].n).toBe(0);
  });

  const exportBundle = (runId: string) => exportAudit(client, db.pool, runId, { home, artifactsDir: path.join(home, 'artifacts') });
  /** What someone editing a bundle would do: recompute every hash and sign again, with their own key. */
  const resealed = (bundle: AuditBundle): AuditBundle => {
    const manifest = Object.fromEntries(Object.entries(bundle.parts).map(([name, value]) => [name, partHash(name, value)]));
    const privateKey = randomBytes(32).toString('hex');
    const publicKey = publicKeyOf(privateKey);
    const sealed = { ...bundle, manifest };
    return { ...sealed, signature: { algorithm: 'ed25519', keyId: keyIdOf(publicKey), publicKey, signature: signStatement(manifestStatement(sealed), privateKey) } };
  };
  const copy = (b: AuditBundle) => JSON.parse(JSON.stringify(b)) as AuditBundle;
  // eslint-disable-next-line @typescript-eslint/no-explicit-any -- tests edit bundles freely, as a tamperer would
  const rows = (b: AuditBundle, table: string) => b.parts[`records:${table}`] as Record<string, any>[];
  // eslint-disable-next-line @typescript-eslint/no-explicit-any -- as above
  const historyEvents = (b: AuditBundle, id: string) => (b.parts[`history:${id}`] as { events: Record<string, any>[] }).events;

  test('the audit bundle is signed, holds histories, rows, keys and artifacts, and verifies offline', async () => {
    const bundle = await exportBundle('pipeline-1');
    expect(Object.keys(bundle.parts).filter((n) => n.startsWith('history:'))).toEqual(['history:pipeline-1', 'history:pipeline-1-approval']);
    expect(rows(bundle, 'approvals')).toHaveLength(1);
    expect(rows(bundle, 'approvals')[0].signature.statement).toMatchObject({ format: 'dacp-decision/1', runId: 'pipeline-1', principal: 'approver-1', decision: 'approve', via: 'cli' });
    expect(rows(bundle, 'principal_keys').map((k) => k.principal).sort()).toEqual(['approver-1', 'engineer']);
    // The dataset, checkpoint and model manifests and the reports, as their exact bytes.
    const artifacts = Object.keys(bundle.parts).filter((n) => n.startsWith('artifact:'));
    const named = ['datasets', 'evaluations', 'model_versions', 'checkpoints'].flatMap((table) => rows(bundle, table)).filter((r) => String(r.uri ?? r.report_uri).endsWith('.json'));
    expect(named.length).toBeGreaterThanOrEqual(rows(bundle, 'datasets').length + rows(bundle, 'evaluations').length);
    for (const row of named) expect(artifacts).toContain(`artifact:${row.sha256}`);
    const verdict = verifyAudit(bundle);
    expect(verdict).toMatchObject({ ok: true, authentic: false, problems: [] });
    expect(verdict.checked.join('\n')).toMatch(/authenticity not checked/);
    expect(verifyAudit(bundle, { publicKey: bundle.signature.publicKey })).toMatchObject({ ok: true, authentic: true });
  });

  test('audit verify finds each kind of tampering and says what it found', async () => {
    const bundle = await exportBundle('pipeline-1');
    const published = bundle.signature.publicKey;
    const problems = (b: AuditBundle, publicKey?: string) => {
      const v = verifyAudit(b, { publicKey });
      expect(v.ok).toBe(false);
      return v.problems.join('\n');
    };

    // A changed byte, hashes left alone: the manifest catches it.
    const edited = copy(bundle);
    rows(edited, 'runs')[0].initiator = 'mallory';
    expect(problems(edited)).toMatch(/part records:runs was changed/);

    // Re-sealed with another key: integrity holds against the key inside, but not against the published one.
    const forged = resealed(copy(bundle));
    expect(verifyAudit(forged).ok).toBe(true);
    expect(problems(forged, published)).toMatch(/not by the published key given with --key/);

    // The signature itself.
    const badSignature = copy(bundle);
    badSignature.signature.signature = badSignature.signature.signature.replace(/^./, (c) => (c === '0' ? '1' : '0'));
    expect(problems(badSignature)).toMatch(/signature does not verify with the key inside it/);

    // A vote turned around in the database (and the bundle re-sealed): its signed statement and the history disagree.
    const vote = copy(bundle);
    rows(vote, 'approvals')[0].decision = 'reject';
    const voteProblems = problems(resealed(vote));
    expect(voteProblems).toMatch(/the vote of approver-1 says reject on pipeline-1, its signed statement approve/);
    expect(voteProblems).toMatch(/reject in the database but approve in the gate's history/);

    // A vote's signature altered: it no longer verifies.
    const forgedVote = copy(bundle);
    rows(forgedVote, 'approvals')[0].signature.statement.comment = 'changed after signing';
    expect(problems(resealed(forgedVote))).toMatch(/the signature on the vote of approver-1 does not verify/);

    // An audit row edited: the hash chain breaks at that row.
    const row = copy(bundle);
    const stageRow = rows(row, 'audit_log').find((r) => r.event === 'stage_started' && r.stage === 'dacp')!;
    stageRow.details = { forged: true };
    expect(problems(resealed(row))).toMatch(new RegExp(`audit row ${stageRow.id} \\(stage_started\\) was changed`));

    // An audit row dropped: the next one no longer links, and the history's transition is missing.
    const dropped = copy(bundle);
    const log = rows(dropped, 'audit_log');
    const i = log.findIndex((r) => r.event === 'stage_started' && r.stage === 'forgetting');
    log.splice(i, 1);
    const droppedProblems = problems(resealed(dropped));
    expect(droppedProblems).toMatch(/does not link to the row before it/);
    expect(droppedProblems).toMatch(/the history records transition stage_started \(forgetting\) that the audit log lacks/);

    // A history event edited: the gate's history names another voter than the database.
    const history = copy(bundle);
    for (const event of historyEvents(history, 'pipeline-1-approval')) {
      const input = event.workflowExecutionUpdateAcceptedEventAttributes?.acceptedRequest?.input;
      if (!input) continue;
      const vote = JSON.parse(Buffer.from(input.args.payloads[0].data, 'base64').toString('utf8'));
      vote.principal = 'approver-2';
      input.args.payloads[0].data = Buffer.from(JSON.stringify(vote)).toString('base64');
    }
    const historyProblems = problems(resealed(history));
    expect(historyProblems).toMatch(/the vote of approver-1 is in the database but not in the gate's history/);
    expect(historyProblems).toMatch(/the gate's history holds a vote by approver-2 that the database does not/);

    // A hash: the deployed version is not the model that was approved.
    const hash = copy(bundle);
    const version = rows(hash, 'model_versions').find((v) => v.version_id === 'tiny:v1')!;
    version.sha256 = 'f'.repeat(64);
    expect(problems(resealed(hash))).toMatch(/the deployed tiny:v1 has sha256 ffffffffffff…, the approved candidate/);
  });

  (chromium ? test : test.skip)('dacp run report writes one self-contained HTML file; headless Chromium renders its tables and plots', async () => {
    const out = path.join(home, 'pipeline-1.report.html');
    const written = spawnSync(process.execPath, [path.join(__dirname, '..', 'bin', 'dacp.js'), 'run', 'report', 'pipeline-1', '--out', out], { env: { ...process.env, ...h.env }, encoding: 'utf8' });
    expect(written.stderr).toBe('');
    expect(written.stdout).toMatch(/report of run pipeline-1 \(completed\) written to/);
    const html = readFileSync(out, 'utf8');
    // Self-contained: nothing is fetched, nothing runs.
    expect(html).not.toMatch(/<script|<link|src="http|href="http/);
    const [deployed] = (await db.pool.query("SELECT sha256 FROM model_versions WHERE version_id = 'tiny:v1'")).rows;
    expect(html).toContain(deployed.sha256);

    const browser = await chromiumLauncher.launch({ executablePath: chromium!, args: ['--no-sandbox'] });
    try {
      const page = await browser.newPage({ viewport: { width: 1100, height: 900 } });
      const requests: string[] = [];
      page.on('request', (r) => requests.push(r.url()));
      await page.goto(`file://${out}`);
      expect(requests).toEqual([`file://${out}`]);
      const rendered = await page.evaluate(() => ({
        headings: [...document.querySelectorAll('h2')].map((h) => h.textContent),
        curves: [...document.querySelectorAll('svg.chart polyline.series')].map((p) => ({
          label: p.getAttribute('data-label'),
          points: (p.getAttribute('points') ?? '').trim().split(/\s+/).length,
          width: (p as SVGGraphicsElement).getBBox().width,
        })),
        charts: [...document.querySelectorAll('svg.chart')].map((c) => c.getAttribute('aria-label')),
        bars: [...document.querySelectorAll('svg.chart:not(.histogram) rect.bar')].map((b) => (b as SVGGraphicsElement).getBBox().height),
        lengthCounts: [...document.querySelectorAll('svg.histogram[aria-label="domain: document length"] rect.bar')].map((b) => Number(b.getAttribute('data-count'))),
        examples: [...document.querySelectorAll('ul.examples li')].map((li) => li.textContent ?? ''),
        votes: [...document.querySelectorAll('#approval ~ table tbody tr')].slice(0, 1).map((tr) => tr.textContent),
      }));
      expect(rendered.headings).toEqual(['Data quality', 'Training', 'Forgetting gate (after continual pretraining)', 'Final check (the candidate that would ship)', 'Instruction score', 'Sample answers', 'Approval', 'Hashes']);
      expect(rendered.charts).toEqual(expect.arrayContaining(['continual pretraining: training loss', 'instruction tuning: training loss', 'perplexity: base, adapted and the candidate that would ship']));
      // Each curve is drawn across the plot, one point per recorded step.
      expect(rendered.curves.length).toBeGreaterThanOrEqual(2);
      for (const curve of rendered.curves) {
        expect(curve.points).toBeGreaterThan(5);
        expect(curve.width).toBeGreaterThan(300);
      }
      expect(rendered.bars.length).toBe(6);
      for (const height of rendered.bars) expect(height).toBeGreaterThan(0);
      expect(rendered.votes[0]).toMatch(/approver-1approve/);
      // Data quality as pictures: length and score histograms per role, and redacted examples of what was removed.
      expect(rendered.charts).toEqual(expect.arrayContaining(['domain: document length', 'domain: repetition score', 'domain: symbol score', 'replay: document length']));
      const domainIn = (await db.pool.query("SELECT metrics->'quality'->'perRole'->'domain'->>'input' AS n FROM runs WHERE run_id = 'pipeline-1'")).rows[0].n;
      expect(rendered.lengthCounts.reduce((a, b) => a + b, 0)).toBe(Number(domainIn));
      expect(rendered.examples.some((e) => e.startsWith('too_short: '))).toBe(true);
      expect(rendered.examples.some((e) => e.startsWith('duplicate: '))).toBe(true);
      mkdirSync(testArtifacts, { recursive: true });
      await page.screenshot({ path: path.join(testArtifacts, 'run-report.png'), fullPage: true });
    } finally {
      await browser.close();
    }

    // The approval request linked the report as it stood when the gate opened.
    const request = (await client.workflow.getHandle('pipeline-1-approval').fetchHistory()).events![0].workflowExecutionStartedEventAttributes!.input!.payloads![0];
    const opened = JSON.parse(Buffer.from(request.data!).toString('utf8')) as { artifacts: { runReport?: { uri: string; sha256: string } } };
    const linked = await new ArtifactStore(path.join(home, 'artifacts')).get(opened.artifacts.runReport!);
    expect(linked.toString('utf8')).toMatch(/^<!doctype html>[\s\S]*no votes yet/);
    // … with the quality report's histograms and examples in it.
    expect(linked.toString('utf8')).toMatch(/aria-label="domain: document length"[\s\S]*class="examples"/);
  });

  test('no secret and no document, prompt or generated text lands in the workflow histories', async () => {
    const bundle = await exportBundle('pipeline-1');
    // Every payload of both histories (inputs, results, signals, updates, search attributes), decoded.
    const payloads: string[] = [];
    const collect = (value: unknown): void => {
      if (Array.isArray(value)) value.forEach(collect);
      else if (value && typeof value === 'object') {
        for (const [key, inner] of Object.entries(value)) {
          if (key === 'data' && typeof inner === 'string') payloads.push(Buffer.from(inner, 'base64').toString('utf8'));
          else collect(inner);
        }
      }
    };
    collect(Object.entries(bundle.parts).filter(([name]) => name.startsWith('history:')).map(([, h]) => h));
    expect(payloads.length).toBeGreaterThan(50);
    const text = payloads.join('\n');
    expect(text).toContain('artifact:models/'); // what does travel: URIs and hashes
    expect(text).not.toMatch(/postgres:\/\//);
    // Telecom vocabulary is in every domain document and instruction pair, and in nothing the workflow says.
    expect(text).not.toMatch(/gNB|PRB|handover/);
    expect(text).not.toMatch(/### Instruction/);
  });

  test('with no worker running, status of a finished run still answers from its result', async () => {
    await h.stopWorkers();
    const completed = await runStatus(runs(), 'pipeline-1');
    expect(completed).toMatchObject({ runId: 'pipeline-1', stage: 'deploy', state: 'completed', metrics: { deploy: { versionId: 'tiny:v1' } } });
    expect(Object.keys(completed).sort()).toEqual(['attempts', 'metrics', 'progress', 'resumedFromStep', 'runId', 'stage', 'state']);
    const rejected = await runStatus(runs(), 'pipeline-3');
    expect(rejected).toMatchObject({ stage: 'approval', state: 'rejected' });
    expect(String((rejected.metrics.approval as { reason: string }).reason)).toMatch(/not this week/);
  });
});
