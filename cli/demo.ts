import { mkdirSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { generateDemoChoiceSets } from '../data/demoChoices';
import { generateDemoCorpus } from '../ml/demoCorpus';
import { openArtifactStore } from '../activities/objectStore';
import type { InstructReport, PipelineResult, RunStatus } from '../schemas/pipeline';
import { InputError, type RunSpecInput } from '../schemas/runSpec';
import { defaultTemporalPort } from './connection';
import { freePort, isPortFree } from './devServer';
import { dacpHome } from './paths';
import { gateComparison } from './gateView';
import { approvalRequest, decide, loadSpecFile, runStatus, startRun, waitForResult } from './runs';
import { importModel } from './models';
import { ensureIdentity } from './keys';
import { loadRunReport, runReportHtml } from '../reports/runReport';
import { artifactsDir, openDatabase, startLocalServer, startWorkers } from './runtime';

export const DEMO_INITIATOR = 'demo-engineer';
export const DEMO_APPROVER = 'demo-approver';

/** The demo's spec: sizes chosen so the whole lifecycle runs in a few minutes on two CPU cores. */
export function demoSpec(): RunSpecInput {
  return {
    name: 'telecom-demo',
    sources: [
      { kind: 'files', role: 'domain', paths: ['data/domain/*.txt'] },
      { kind: 'files', role: 'replay', paths: ['data/general.jsonl'] },
      { kind: 'files', role: 'instruct', paths: ['data/instructions.jsonl'] },
    ],
    dataRoots: ['data'],
    replayRatio: 0.25,
    baseModel: {
      ref: 'production',
      bootstrapIfMissing: true,
      shape: { contextLength: 64, dModel: 64, nLayers: 2, nHeads: 4 },
      bootstrap: { steps: 300, batchSize: 16, learningRate: 3e-3, warmupFraction: 0.05, checkpointEvery: 100 },
    },
    dacp: { steps: 200, batchSize: 16, learningRate: 2e-3, checkpointEvery: 25 },
    // The demo's task sets have 40 questions each, so one question is 2.5 points: a 10-point budget
    // on general accuracy is four questions, above the noise of a model this small.
    forgetting: {
      maxGeneralRegression: 0.25,
      minDomainGain: 0.05,
      maxGeneralAccuracyDrop: 0.1,
      onFail: 'retry-with-more-replay',
      maxRetries: 1,
      final: { maxGeneralRegression: 0.25, maxGeneralAccuracyDrop: 0.1 },
    },
    evaluation: { choices: { domain: 'data/choices-domain.jsonl', general: 'data/choices-general.jsonl' } },
    instruct: { steps: 120, batchSize: 16, learningRate: 2e-3, checkpointEvery: 40 },
    approval: { approvers: [DEMO_APPROVER], quorum: 1, timeout: '1h' },
    // After the deploy, the served model must answer (the smoke test runs the code `dacp serve` runs).
    deploy: { alias: 'production', smoke: { requireAnswers: true } },
  };
}

/** `dacp demo --prepare DIR`: the seeded demo corpus, its multiple-choice sets and a ready spec.json, nothing else. */
export function prepareDemo(dir: string): string {
  const corpus = generateDemoCorpus({ seed: 7 });
  const data = path.join(dir, 'data');
  mkdirSync(path.join(data, 'domain'), { recursive: true });
  corpus.domain.forEach((text, i) => writeFileSync(path.join(data, 'domain', `doc-${String(i).padStart(4, '0')}.txt`), text + '\n'));
  writeFileSync(path.join(data, 'general.jsonl'), corpus.general.map((text) => JSON.stringify({ text })).join('\n') + '\n');
  writeFileSync(path.join(data, 'instructions.jsonl'), corpus.instructions.map((p) => JSON.stringify(p)).join('\n') + '\n');
  const choiceSets = generateDemoChoiceSets({ seed: 7 });
  for (const name of ['domain', 'general'] as const) {
    writeFileSync(path.join(data, `choices-${name}.jsonl`), choiceSets[name].map((item) => JSON.stringify(item)).join('\n') + '\n');
  }
  const specFile = path.join(dir, 'spec.json');
  writeFileSync(specFile, JSON.stringify(demoSpec(), null, 2) + '\n');
  return specFile;
}

const fmt = (x: number | undefined) => (x === undefined ? '–' : x.toFixed(2));

function progressLine(s: RunStatus): string {
  const bootstrap = s.metrics.bootstrap as { status?: string } | undefined;
  const phase = s.stage === 'dacp' && bootstrap?.status && bootstrap.status !== 'done' ? ' (bootstrap base model)' : '';
  const p = s.progress.totalSteps ? ` step ${s.progress.step}/${s.progress.totalSteps}${s.progress.loss !== null ? ` loss ${s.progress.loss.toFixed(3)}` : ''}` : '';
  return `  [${s.state}] ${s.stage}${phase}${p}`;
}

/**
 * `dacp demo`: embedded Postgres and Temporal, both workers in this process, the demo corpus, the
 * whole lifecycle with the demo approver signing off, and a summary of what happened.
 */
/**
 * The whole lifecycle on the demo data. With `base`, a Hugging Face model folder of the user's, it
 * is imported first and the run adapts it instead of bootstrapping a tiny model.
 */
export async function runDemo(log: (line: string) => void = console.log, o: { base?: string } = {}): Promise<PipelineResult> {
  const started = Date.now();
  const home = dacpHome();
  log(`dacp demo — state directory ${home}`);
  const db = await openDatabase(home);
  log(`database: ${db.embedded ? 'embedded PostgreSQL' : 'DATABASE_URL'} (migrated)`);
  const preferred = defaultTemporalPort();
  const port = (await isPortFree(preferred)) ? preferred : await freePort();
  const server = await startLocalServer({ home, port, uiPort: null, log });
  log(`temporal: dev server on ${server.address} (history in ${path.join(home, 'temporal', 'temporal.db')})`);
  const workers = await startWorkers(['control', 'gpu'], db, { home, address: server.address });
  // Ctrl-C: the SDK stops the workers (training checkpoints first); say what happens to the run.
  let interrupted = false;
  const onSignal = () => {
    interrupted = true;
    log('interrupted — stopping the workers (training writes a checkpoint first) …');
  };
  process.once('SIGINT', onSignal);
  process.once('SIGTERM', onSignal);
  const checkInterrupted = (runId: string) => {
    if (interrupted) {
      throw new InputError(
        `demo interrupted; run ${runId} is kept in ${home} and continues where it stopped when workers run again (DACP_HOME=${home} dacp dev)`,
      );
    }
  };
  try {
    const specFile = prepareDemo(path.join(home, 'demo'));
    log(`demo data and spec: ${specFile}`);
    const { spec, baseDir } = loadSpecFile(specFile);
    const runs = { client: workers.client, pool: db.pool, artifactsDir: artifactsDir(home) };
    if (o.base !== undefined) {
      const imported = await importModel(runs, { name: `${spec.name}-base`, from: o.base });
      log(`base model: ${o.base} ${imported.existed ? 'was imported before as' : 'imported as'} ${imported.versionId} (${imported.family}, ${imported.parameters} parameters, stored ${imported.dtype})`);
      spec.baseModel = { ...spec.baseModel, ref: imported.versionId, bootstrapIfMissing: false };
    }
    // The demo's two people: an operator who starts the run and an approver who signs it off,
    // each with an Ed25519 key kept under the demo's home (not in the user's own key folder).
    const keys = path.join(home, 'demo-keys');
    await ensureIdentity(db.admin(), DEMO_INITIATOR, ['operator'], keys);
    await ensureIdentity(db.admin(), DEMO_APPROVER, ['approver'], keys);
    log(`principals: ${DEMO_INITIATOR} (operator) and ${DEMO_APPROVER} (approver), keys in ${keys}`);
    const runId = await startRun(runs, { spec, baseDir, initiator: DEMO_INITIATOR, keyDir: keys });
    log(`run started: ${runId} (initiator ${DEMO_INITIATOR})`);

    let lastPhase = '';
    let lastPrintAt = 0;
    for (;;) {
      checkInterrupted(runId);
      let status: RunStatus;
      try {
        status = await runStatus(runs, runId);
      } catch (err) {
        checkInterrupted(runId);
        throw err;
      }
      const phase = `${status.stage}/${status.state}/${String((status.metrics.bootstrap as { status?: string } | undefined)?.status)}`;
      if (phase !== lastPhase || (status.progress.totalSteps > 0 && Date.now() - lastPrintAt > 5_000)) {
        log(progressLine(status));
        lastPhase = phase;
        lastPrintAt = Date.now();
      }
      if (status.state === 'awaiting_approval') break;
      if (status.state !== 'running') throw new Error(`the demo run ended ${status.state}: ${String(status.metrics.error ?? '')}`);
      await new Promise((r) => setTimeout(r, 500));
    }

    const view = await approvalRequest(workers.client, runId);
    const r = view.request;
    log('');
    log('approval request');
    log(`  base model     ${r.artifacts.baseModel.versionId}  sha256 ${r.artifacts.baseModel.sha256}`);
    log(`  tuned model    sha256 ${r.artifacts.tunedModel.sha256}`);
    log(`  forgetting     report sha256 ${r.artifacts.forgettingReport.sha256} — ${r.forgetting.passed ? 'passed' : 'failed'}`);
    log(`  instruct       report sha256 ${r.artifacts.instructReport.sha256}`);
    if (r.finalCheck && r.artifacts.finalCheckReport) {
      log(`  final check    report sha256 ${r.artifacts.finalCheckReport.sha256} — ${r.finalCheck.passed ? 'passed' : 'failed'} against ${r.finalCheck.reference.kind} ${r.finalCheck.reference.versionId}`);
    }
    for (const d of r.artifacts.datasets) log(`  dataset        ${d.role}/${d.split} ${d.docs} docs sha256 ${d.sha256}`);
    const instructReport = await openArtifactStore(artifactsDir(home)).getJson<InstructReport>(r.artifacts.instructReport);
    for (const s of instructReport.samples.slice(0, 2)) {
      log(`  sample         ${JSON.stringify(s.prompt)}`);
      log(`                   greedy  → ${JSON.stringify(s.generated)}`);
      log(`                   sampled → ${JSON.stringify(s.sampled)}`);
    }
    log(`  approvers ${r.approvers.join(', ')}, quorum ${r.quorum}`);
    const { decision } = await decide(runs, { runId, principal: DEMO_APPROVER, decision: 'approve', comment: 'demo sign-off', keyDir: keys });
    log(`approved by ${decision.principal}`);

    const result = await waitForResult(workers.client, runId);
    const f = result.forgetting;
    log('');
    log(`run ${runId}: ${result.state}`);
    if (f) {
      log(`  domain perplexity   ${fmt(f.base.domainPerplexity)} → ${fmt(f.adapted.domainPerplexity)}  (gain ${(f.domainGain * 100).toFixed(1)} %, floor ${(f.budgets.minDomainGain * 100).toFixed(1)} %)`);
      log(`  general perplexity  ${fmt(f.base.generalPerplexity)} → ${fmt(f.adapted.generalPerplexity)}  (change ${(f.generalRegression * 100).toFixed(1)} %, budget ${(f.budgets.maxGeneralRegression * 100).toFixed(1)} %)`);
      log(`  forgetting gate     ${f.passed ? 'passed' : 'failed'} (round ${f.round}, replay ratio ${f.replayRatio})`);
    }
    const final = result.finalCheck;
    if (final) {
      log(`  final check         ${final.passed ? 'passed' : 'failed'} (candidate vs ${final.reference.kind} ${final.reference.versionId}; general perplexity ${fmt(final.referenceScores.generalPerplexity)} → ${fmt(final.candidate.generalPerplexity)}, change ${(final.generalRegression * 100).toFixed(1)} %, budget ${(final.budgets.maxGeneralRegression * 100).toFixed(1)} %; instruct replay ratio ${final.instructReplayRatio})`);
    }
    if (result.instruct) {
      const { base, tuned } = result.instruct;
      log(`  instruction score   response perplexity ${fmt(base.responsePerplexity)} → ${fmt(tuned.responsePerplexity)}, token accuracy ${fmt(base.tokenAccuracy)} → ${fmt(tuned.tokenAccuracy)}, ROUGE-L ${fmt(base.rougeL)} → ${fmt(tuned.rougeL)}`);
    }
    if (f && final) {
      log('  the gates side by side');
      for (const line of gateComparison(f, final, '    ')) log(line);
    }
    log(`  approval gate       approved by ${DEMO_APPROVER}`);
    log(`  model version       ${result.versionId} (alias production), tuned from ${result.adaptedVersionId ?? '–'}`);
    const smoke = (await db.pool.query(`SELECT metrics->'smoke' AS smoke FROM runs WHERE run_id = $1`, [runId])).rows[0]?.smoke as { passed: boolean; prompts: number; reasons: string[] } | null | undefined;
    if (smoke) log(`  smoke test          ${smoke.passed ? `passed (${smoke.prompts} prompts, answered through dacp serve's code)` : `failed: ${smoke.reasons.join('; ')}`}`);
    if (result.state !== 'completed' && result.reason) log(`  reason              ${result.reason}`);
    log(`  time per stage      ${Object.entries(result.stageSeconds).map(([s, t]) => `${s} ${t!.toFixed(1)}s`).join(', ')}`);
    const report = await loadRunReport(db.pool, artifactsDir(home), runId);
    if (report) {
      const file = path.join(home, 'demo', `${runId}.report.html`);
      writeFileSync(file, runReportHtml(report));
      log(`  run report          ${file} (open it in a browser; \`dacp run report ID\` writes one for any run)`);
    }
    log(`  total               ${((Date.now() - started) / 1000).toFixed(1)}s`);
    return result;
  } finally {
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
    await workers.shutdown();
    await server.stop();
    await db.close();
  }
}
