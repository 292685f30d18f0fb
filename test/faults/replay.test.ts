import { mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { temporal } from '@temporalio/proto';
import { bundleWorkflowCode, DefaultLogger, Runtime, Worker, type ReplayResult, type WorkflowBundleWithSourceMap } from '@temporalio/worker';
import { DeterminismViolationError } from '@temporalio/workflow';
import { bundleWorkflows } from '../helpers/temporal';

Runtime.install({ logger: new DefaultLogger('WARN') });

/**
 * Recorded histories of real pipeline runs (scripts/record-histories.ts), replayed against the
 * workflow code as it is now. A change to workflows/ that alters the commands an existing history
 * expects fails here; such a change belongs behind `patched()` (docs/reliability-replay.md).
 */
const historiesDir = path.resolve(__dirname, '..', 'histories');
const historyFiles = readdirSync(historiesDir).filter((f) => f.endsWith('.json')).sort();

const HISTORY = temporal.api.history.v1.History;

/** A recorded file (`History.toObject` JSON) as the history object replay takes; its name is its workflow id. */
function loadHistory(file: string, retype?: string): { workflowId: string; history: temporal.api.history.v1.History } {
  const json = JSON.parse(readFileSync(path.join(historiesDir, file), 'utf8')) as {
    events: { workflowExecutionStartedEventAttributes?: { workflowType: { name: string } } }[];
  };
  const started = json.events[0].workflowExecutionStartedEventAttributes;
  if (retype && started) started.workflowType.name = retype;
  return { workflowId: path.basename(file, '.json'), history: HISTORY.fromObject(json) };
}

function workflowTypeOf(file: string): string | undefined {
  return loadHistory(file).history.events?.[0]?.workflowExecutionStartedEventAttributes?.workflowType?.name ?? undefined;
}

describe('recorded histories replay against the current workflow code', () => {
  const results = new Map<string, ReplayResult>();

  beforeAll(async () => {
    const bundle = await bundleWorkflows();
    const replay = Worker.runReplayHistories({ workflowBundle: bundle }, historyFiles.map((f) => loadHistory(f)));
    for await (const result of replay) results.set(result.workflowId, result);
  });

  test('there are recorded histories of every workflow type', () => {
    const types = new Set(historyFiles.map(workflowTypeOf));
    expect([...types].sort()).toEqual(['approvalGate', 'dacpCandidate', 'dacpPipeline']);
  });

  test.each(historyFiles)('%s replays without nondeterminism', (file) => {
    const result = results.get(path.basename(file, '.json'));
    if (!result) throw new Error(`${file} was not replayed`);
    if (result.error) {
      const kind = result.error instanceof DeterminismViolationError ? 'DeterminismViolationError' : result.error.name;
      throw new Error(
        `test/histories/${file} no longer replays (${kind}): ${result.error.message}\n` +
          'A workflow change altered the commands this recorded run expects. Guard the change with patched(\'<id>\') ' +
          '(see docs/reliability-replay.md); never edit or delete a recorded history to make this pass.',
      );
    }
  });
});

describe('the replay check has teeth', () => {
  let variants: WorkflowBundleWithSourceMap;
  let dir: string;
  const deployed = 'completed-and-deployed.json';

  beforeAll(async () => {
    // The pipeline as someone might change it: one new activity before the first, once without and
    // once with a patch marker. Both are exported from a bundle of their own; a recorded pipeline
    // history is replayed as each of them by renaming its workflow type (its events stay as recorded).
    dir = mkdtempSync(path.join(os.tmpdir(), 'dacp-replay-variant-'));
    const workflows = path.resolve(__dirname, '..', '..', 'workflows');
    const entry = path.join(dir, 'variants.ts');
    writeFileSync(
      entry,
      `import { patched, proxyActivities } from '@temporalio/workflow';
import { dacpPipeline } from ${JSON.stringify(path.join(workflows, 'pipeline'))};
export { approvalGate } from ${JSON.stringify(path.join(workflows, 'approval'))};

const { recordTransition } = proxyActivities({ taskQueue: 'dacp-control', startToCloseTimeout: '1 minute' });
const preflight = (input) =>
  recordTransition({ runId: input.runId, key: input.runId + ':preflight', event: 'preflight_checked', stage: 'collect', actor: 'dacp', details: {} });

export async function dacpPipelineWithUnguardedStep(input) {
  await preflight(input);
  return dacpPipeline(input);
}

export async function dacpPipelineWithPatchedStep(input) {
  if (patched('preflight-check')) await preflight(input);
  return dacpPipeline(input);
}
`,
    );
    const noop = () => undefined;
    variants = await bundleWorkflowCode({
      workflowsPath: entry,
      logger: { trace: noop, debug: noop, info: noop, warn: noop, error: noop, log: noop },
      // The variant lives outside the repository; let it (and the bundler's entry point) find our node_modules.
      webpackConfigHook: (config) => ({
        ...config,
        resolve: { ...config.resolve, modules: [...(config.resolve?.modules ?? []), path.resolve(__dirname, '..', '..', 'node_modules')] },
      }),
    });
  });

  afterAll(() => {
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  test('inserting an activity call without patched() is a DeterminismViolationError', async () => {
    const { workflowId, history } = loadHistory(deployed, 'dacpPipelineWithUnguardedStep');
    await expect(Worker.runReplayHistory({ workflowBundle: variants }, history, workflowId)).rejects.toBeInstanceOf(DeterminismViolationError);
  });

  test('the same change behind patched() replays the recorded run on its old path', async () => {
    const { workflowId, history } = loadHistory(deployed, 'dacpPipelineWithPatchedStep');
    await expect(Worker.runReplayHistory({ workflowBundle: variants }, history, workflowId)).resolves.toBeUndefined();
  });
});
