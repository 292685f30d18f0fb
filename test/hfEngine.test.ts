import { spawn, spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { DefaultLogger, Runtime } from '@temporalio/worker';
import { ArtifactStore } from '../activities/artifacts';
import { HfEvaluator } from '../activities/hfScorer';
import { decide, runStatus, startRun } from '../cli/runs';
import { initBackend } from '../ml/backend';
import { choiceAccuracy } from '../ml/choices';
import { instructionScore, perplexity } from '../ml/evaluate';
import { gpt2FolderFiles, readHfFolder, readHfWeights, writeFolder } from '../ml/hfFolder';
import { mixedLmBatches } from '../ml/mixing';
import { GPT } from '../ml/model';
import { modelFileTensors } from '../ml/modelFile';
import { readSafetensorsHeader } from '../ml/safetensorsFile';
import { tfScorer } from '../ml/scorer';
import { Trainer } from '../ml/train';
import { runExternalTrainer, writeTokenFile, type TrainerJob, type TrainerEvent } from '../ml/externalTrainer';
import type { RunStatus } from '../schemas/pipeline';
import { parseRunSpec, RunSpec } from '../schemas/runSpec';
import { tinySpec } from './helpers/fixtures';
import { startHarness, type Harness } from './helpers/harness';
import { MULTILINGUAL } from './helpers/multilingual';
import { eventually, GiveUp } from './helpers/temporal';

Runtime.install({ logger: new DefaultLogger('WARN') });

/**
 * The Hugging Face engine (trainers/hf/, transformers + PyTorch): a user's Llama through the whole
 * pipeline with full fine-tuning and with LoRA under two DDP processes; the protocol run directly for
 * DDP against one process and for an exact resume after SIGKILL; a trainer whose worker is killed
 * stops on its own. Needs the project's Python (scripts/setup-python.sh, which `npm test` runs first).
 */

const root = path.resolve(__dirname, '..');
const python = path.join(root, '.tools', 'venv', 'bin', 'python');
const trainerScript = path.join(root, 'trainers', 'hf', 'dacp_hf_trainer.py');
const env = { ...process.env, TRANSFORMERS_VERBOSITY: 'error', TOKENIZERS_PARALLELISM: 'false' };
const ready = existsSync(python) && spawnSync(python, ['-c', 'import transformers, peft'], { env }).status === 0;
if (!ready) console.warn(`skipping the hf engine tests: ${python} cannot import transformers and peft (run \`bash scripts/setup-python.sh\`)`);
const withPython = ready ? describe : describe.skip;

let fixtures: string;
beforeAll(() => {
  if (!ready) return;
  fixtures = mkdtempSync(path.join(tmpdir(), 'dacp-hf-engine-'));
  const made = spawnSync(python, [path.join(root, 'scripts', 'make-hf-fixtures.py'), fixtures], { env, encoding: 'utf8' });
  if (made.status !== 0) throw new Error(`make-hf-fixtures.py failed: ${made.stderr}`);
});
afterAll(() => {
  if (fixtures) rmSync(fixtures, { recursive: true, force: true });
});

describe('the spec refuses what the hf engine does not support', () => {
  const refused = (engine: unknown, over: Record<string, unknown> = {}) => {
    try {
      parseRunSpec(tinySpec({ engine, ...over } as Partial<Parameters<typeof tinySpec>[0]>));
    } catch (error) {
      return (error as Error).message;
    }
    return null;
  };

  test('an unknown setting, a precision it lacks, zero processes, fewer rows than processes, fsdp on one process', () => {
    expect(refused({ kind: 'hf' })).toBeNull(); // a base from nothing: dacp initialises it, the engine trains it
    const imported = { baseModel: { ref: 'tiny-llama:v1', bootstrapIfMissing: false } };
    expect(refused({ kind: 'hf' }, imported)).toBeNull();
    expect(refused({ kind: 'hf', lora: { r: 8 }, processes: 2, gradientCheckpointing: true, precision: 'bf16' }, imported)).toBeNull();
    expect(refused({ kind: 'hf', deepspeed: true }, imported)).toMatch(/engine.*deepspeed/);
    expect(refused({ kind: 'hf', precision: 'fp16' }, imported)).toMatch(/engine\.precision/);
    expect(refused({ kind: 'hf', processes: 0 }, imported)).toMatch(/engine\.processes/);
    expect(refused({ kind: 'hf', lora: { r: 0 } }, imported)).toMatch(/engine\.lora\.r/);
    expect(refused({ kind: 'hf', processes: 16 }, imported)).toMatch(/dacp\.batchSize: 8 rows cannot be shared among engine\.processes 16: each process needs at least one row/);
    const spec = RunSpec.parse(tinySpec({ engine: { kind: 'hf' }, ...imported }));
    expect(spec.engine).toEqual({ kind: 'hf', gradientCheckpointing: false, precision: 'auto', processes: 1, parallel: 'ddp', env: [], killGraceSeconds: 30 });
    expect(refused({ kind: 'hf', parallel: 'fsdp' }, imported)).toMatch(/engine\.parallel: fsdp shards the model across processes, and engine\.processes is 1/);
    expect(refused({ kind: 'hf', parallel: 'fsdp', processes: 2 }, imported)).toBeNull();
    expect(refused({ kind: 'hf', parallel: 'zero3' }, imported)).toMatch(/engine\.parallel/);
  });
});

withPython('the hf trainer speaks dacp-trainer/2', () => {
  let dir: string;
  const ids = (n: number, seed: number) => Array.from({ length: n }, (_, i) => 3 + ((i * 7919 + seed * 104729) % 597));
  beforeAll(async () => {
    dir = mkdtempSync(path.join(tmpdir(), 'dacp-hf-protocol-'));
    await writeTokenFile(path.join(dir, 'domain.i32'), ids(4000, 1));
    await writeTokenFile(path.join(dir, 'replay.i32'), ids(1500, 2));
  });
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  const job = (name: string, over: Partial<TrainerJob> = {}): TrainerJob => ({
    protocol: 'dacp-trainer/2',
    stage: 'dacp',
    initModelDir: path.join(fixtures, 'llama'),
    contextLength: 32,
    data: { kind: 'lm', domain: path.join(dir, 'domain.i32'), replay: path.join(dir, 'replay.i32'), replayRatio: 0.25 },
    settings: { totalSteps: 12, batchSize: 8, learningRate: 3e-3, warmupSteps: 2, minLrRatio: 0.1, weightDecay: 0.01, gradClip: 1, seed: 5 },
    checkpointEvery: 4,
    checkpointDir: path.join(dir, name, 'checkpoints'),
    resumeFrom: null,
    outputModelDir: path.join(dir, name, 'model'),
    hf: { lora: null, gradientCheckpointing: false, precision: 'auto' },
    ...over,
  });

  async function run(name: string, command: string[], over: Partial<TrainerJob> = {}) {
    const events: TrainerEvent[] = [];
    const result = await runExternalTrainer({
      command,
      job: job(name, over),
      workDir: path.join(dir, name),
      env: { DACP_TORCH_THREADS: '1' },
      stderrFile: path.join(dir, `${name}.stderr.log`),
      onProgress: (e) => {
        events.push(e);
      },
      onCheckpoint: async (e) => {
        events.push(e);
      },
    });
    return { done: result.done, events };
  }

  const lossesOf = (events: TrainerEvent[]) => new Map(events.filter((e) => e.event === 'progress').map((e) => [e.step, (e as { loss: number }).loss]));

  test('it trains what the built-in engine trains: the same batches, optimizer and schedule give the same losses (Llama, and a dacp GPT-2)', async () => {
    await initBackend();
    const settings = { totalSteps: 6, batchSize: 8, learningRate: 3e-3, warmupSteps: 2, minLrRatio: 0.1, weightDecay: 0.01, gradClip: 1, seed: 5 };
    const fixture = await readHfFolder(path.join(fixtures, 'gpt2'));
    fixture.model.dispose();
    const gpt2 = path.join(dir, 'dacp-gpt2');
    const made = GPT.create({ vocabSize: 600, contextLength: 32, dModel: 32, nLayers: 2, nHeads: 4 }, 3);
    await writeFolder(gpt2, gpt2FolderFiles(made, fixture.tokenizer));
    made.dispose();
    for (const [name, folder] of [['llama', path.join(fixtures, 'llama')], ['gpt2', gpt2]] as const) {
      const loaded = await readHfFolder(folder);
      const trainer = Trainer.create(loaded.model, loaded.tokenizer, settings);
      const batches = mixedLmBatches({ domain: ids(4000, 1), replay: ids(1500, 2), replayRatio: 0.25, batchSize: 8, contextLength: 32, seed: 5 });
      const builtin = Array.from({ length: 6 }, () => trainer.trainStep(batches(trainer.step)).loss);
      trainer.dispose();
      const hf = await run(`parity-${name}`, [python, trainerScript], { initModelDir: folder, checkpointEvery: 1, settings });
      const losses = lossesOf(hf.events);
      builtin.forEach((loss, i) => expect(Math.abs((losses.get(i + 1) as number) / loss - 1)).toBeLessThan(1e-3));
    }
  });

  test('two processes under torchrun (DDP, gloo) train what one process trains', async () => {
    const one = await run('one', [python, trainerScript]);
    const two = await run('two', [python, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node=2', trainerScript]);
    expect(one.done.step).toBe(12);
    expect(two.done.step).toBe(12);
    const [a, b] = [lossesOf(one.events), lossesOf(two.events)];
    expect([...b.keys()]).toEqual([...a.keys()]);
    for (const [step, loss] of a) expect(Math.abs((b.get(step) as number) - loss)).toBeLessThan(1e-5);
    // Only rank 0 spoke: one checkpoint event per interval, one done.
    expect(two.events.filter((e) => e.event === 'checkpoint').map((e) => e.step)).toEqual([4, 8, 12]);
    expect(readdirSync(two.done.model).sort()).toEqual(expect.arrayContaining(['config.json', 'model.safetensors', 'tokenizer.json', 'tokenizer_config.json']));
  });

  const torchrun2 = [python, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node=2', trainerScript];
  const fsdp = (over: Partial<TrainerJob['hf']> = {}): Pick<TrainerJob, 'hf'> => ({
    hf: { lora: null, gradientCheckpointing: false, precision: 'auto', parallel: 'fsdp', ...over },
  });

  test('FSDP on two processes (each holds half of the weights and optimizer state) trains what one process trains, full and LoRA', async () => {
    const one = await run('fsdp-ref', [python, trainerScript]);
    const two = await run('fsdp-two', torchrun2, fsdp());
    const [a, b] = [lossesOf(one.events), lossesOf(two.events)];
    expect([...b.keys()]).toEqual([...a.keys()]);
    for (const [step, loss] of a) expect(Math.abs((b.get(step) as number) - loss)).toBeLessThan(1e-5);
    const log = readFileSync(path.join(dir, 'fsdp-two.stderr.log'), 'utf8');
    expect(log).toContain('2 process(es), FSDP');
    // The gathered model is a plain folder with the same weights as one process wrote.
    const [w1, w2] = await Promise.all([readHfWeights(one.done.model), readHfWeights(two.done.model)]);
    expect(Object.keys(w2.weights).sort()).toEqual(Object.keys(w1.weights).sort());
    const worst = Object.entries(w1.weights).reduce(
      (max, [name, values]) => Math.max(max, ...values.map((v, i) => Math.abs(v - (w2.weights[name] as Float32Array)[i]!))),
      0,
    );
    expect(worst).toBeLessThan(1e-4);
    // LoRA under FSDP: the adapter trains on shards and is merged into the plain folder on export.
    const lora = { r: 4, alpha: 8, dropout: 0, targetModules: ['q_proj', 'v_proj'] };
    const loraOne = await run('fsdp-lora-ref', [python, trainerScript], { hf: { lora, gradientCheckpointing: false, precision: 'auto' } });
    const loraTwo = await run('fsdp-lora-two', torchrun2, fsdp({ lora, gradientCheckpointing: true }));
    const [la, lb] = [lossesOf(loraOne.events), lossesOf(loraTwo.events)];
    for (const [step, loss] of la) expect(Math.abs((lb.get(step) as number) - loss)).toBeLessThan(1e-5);
    expect(readdirSync(loraTwo.done.model)).not.toContain('adapter_config.json');
    expect((await readSafetensorsHeader(path.join(loraTwo.done.model, 'model.safetensors'))).spans.some((t) => t.name.includes('lora'))).toBe(false);
  });

  /** Trains `name` whole, and again SIGKILLed (its process group) after the step-4 checkpoint, then resumed from it. */
  async function killAndResume(name: string, command: string[], over: Partial<TrainerJob> = {}) {
    const whole = await run(`${name}-whole`, command, over);
    let checkpoint: string | undefined;
    writeFileSync(path.join(dir, `${name}-killed.json`), JSON.stringify(job(`${name}-killed`, over)));
    const killed = spawn(command[0] as string, [...command.slice(1), '--job', path.join(dir, `${name}-killed.json`)], {
      stdio: ['ignore', 'pipe', 'ignore'],
      detached: true,
      env: { ...env, DACP_TORCH_THREADS: '1' },
    });
    let out = '';
    killed.stdout!.on('data', (d: Buffer) => {
      out += d.toString();
      const line = out.split('\n').find((l) => l.includes('"checkpoint"'));
      if (line && checkpoint === undefined) {
        checkpoint = (JSON.parse(line) as { path: string }).path;
        process.kill(-(killed.pid as number), 'SIGKILL');
      }
    });
    const [, signal] = await new Promise<[number | null, string | null]>((resolve) => killed.once('exit', (code, sig) => resolve([code, sig])));
    expect(signal).toBe('SIGKILL');
    expect(existsSync(path.join(dir, `${name}-killed`, 'model'))).toBe(false);
    const resumed = await run(`${name}-resumed`, command, { ...over, resumeFrom: checkpoint as string });
    expect(resumed.events.filter((e) => e.event === 'progress')[0]?.step).toBeGreaterThan(4);
    expect(resumed.done.loss).toBe(whole.done.loss);
    expect(readFileSync(path.join(resumed.done.model, 'model.safetensors')).equals(readFileSync(path.join(whole.done.model, 'model.safetensors')))).toBe(true);
  }

  test('killed with SIGKILL after a checkpoint, it resumes from it exactly: the same model, byte for byte', async () => {
    await killAndResume('one', [python, trainerScript]);
  });

  test('under FSDP too: the gathered checkpoint resumes every shard, to the same model byte for byte', async () => {
    await killAndResume('fsdp', torchrun2, {
      initModelDir: path.join(fixtures, 'gpt2'),
      settings: { totalSteps: 12, batchSize: 7, learningRate: 3e-3, warmupSteps: 2, minLrRatio: 0.1, weightDecay: 0.01, gradClip: 1, seed: 5 },
      ...fsdp(),
    });
  });

  test('under torchrun too, with dropout and rows that do not divide evenly: each process resumes its own random state', async () => {
    // The GPT-2 fixture trains with dropout 0.1; 7 rows on 2 processes give them different draws.
    await killAndResume('ddp', [python, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node=2', trainerScript], {
      initModelDir: path.join(fixtures, 'gpt2'),
      settings: { totalSteps: 12, batchSize: 7, learningRate: 3e-3, warmupSteps: 2, minLrRatio: 0.1, weightDecay: 0.01, gradClip: 1, seed: 5 },
    });
  });
});

withPython('scripts/gpu-check.sh', () => {
  test('--smoke runs its steps on a tiny model on the CPU: both loops train, the SIGKILLed engine resumes exactly, FSDP trains the same losses', () => {
    const run = spawnSync('bash', [path.join(root, 'scripts', 'gpu-check.sh'), '--smoke'], { cwd: root, env: { ...env, DACP_TORCH_THREADS: '1' }, encoding: 'utf8' });
    expect(run.status).toBe(0);
    const [figures, tfjs] = run.stdout.trim().split('\n').map((line) => JSON.parse(line) as Record<string, unknown>);
    expect(figures).toMatchObject({ shape: 'tiny (smoke)', precision: 'fp32', resumeExact: true, ratioTarget: 0.9 });
    expect(figures?.engineTokensPerSec).toBeGreaterThan(0);
    expect(figures?.plainTokensPerSec).toBeGreaterThan(0);
    // FSDP over two processes (gloo here) trains the same batches to the same losses.
    expect(figures?.fsdp).toMatchObject({ processes: 2, batch: 4 });
    const fsdp = figures?.fsdp as { tokensPerSec: number; maxLossDiff: number };
    expect(fsdp.tokensPerSec).toBeGreaterThan(0);
    expect(fsdp.maxLossDiff).toBeLessThan(1e-4);
    expect(tfjs).toEqual({ tfjsNodeGpu: 'skipped: --smoke' });
    // Without --smoke and without CUDA the Python part refuses, saying why (the script then builds nothing).
    const refused = spawnSync(python, [path.join(root, 'scripts', 'gpu_check.py')], { cwd: root, env: { ...env, CUDA_VISIBLE_DEVICES: '' }, encoding: 'utf8' });
    expect(refused.status).toBe(2);
    expect(refused.stderr).toContain('no CUDA device is visible');
  });
});

withPython('evaluation in the hf engine', () => {
  test('perplexity, token accuracy, task accuracy and greedy and sampled answers equal the built-in engine\'s on the same models', async () => {
    await initBackend();
    const dir = mkdtempSync(path.join(tmpdir(), 'dacp-hf-eval-'));
    const store = new ArtifactStore(path.join(dir, 'artifacts'));
    const evaluator = await HfEvaluator.start({ pool: undefined as never, store, logsDir: path.join(dir, 'logs') }, 'parity', 'parity');
    try {
      for (const name of ['gpt2', 'llama']) {
        const loaded = await readHfFolder(path.join(fixtures, name));
        const file = modelFileTensors(loaded.model, loaded.tokenizer);
        const ref = await store.putSafetensors('models', file.tensors, file.metadata);
        const ours = tfScorer(loaded.model);
        const theirs = await evaluator.load(name, ref, loaded.model.config.contextLength);
        const tokens = MULTILINGUAL.flatMap((text) => [...loaded.tokenizer.encode(text), loaded.tokenizer.eosId]);
        const [a, b] = [await perplexity(ours, tokens), await perplexity(theirs, tokens)];
        expect(b.tokens).toBe(a.tokens);
        expect(Math.abs(b.perplexity / a.perplexity - 1)).toBeLessThan(1e-4);
        const pairs = [{ prompt: 'Restart the gNB', response: 'Run the restart command twice.' }, { prompt: '안녕하세요', response: 'こんにちは 👋' }];
        const [x, y] = [await instructionScore(ours, loaded.tokenizer, pairs, { maxNewTokens: 8 }), await instructionScore(theirs, loaded.tokenizer, pairs, { maxNewTokens: 8 })];
        expect(y.tokenAccuracy).toBe(x.tokenAccuracy);
        expect(Math.abs(y.responsePerplexity / x.responsePerplexity - 1)).toBeLessThan(1e-4);
        expect(y.samples).toEqual(x.samples); // greedy and seeded sampled answers alike
        const items = [
          { question: 'Which layer holds the PDCP?', choices: ['radio', 'the kitchen', 'a banana'], answer: 0 },
          { question: '2 + 2 =', choices: ['4', 'five hundred'], answer: 0 },
        ];
        expect(await choiceAccuracy(theirs, loaded.tokenizer, items)).toEqual(await choiceAccuracy(ours, loaded.tokenizer, items));
        await evaluator.unload(name);
        loaded.model.dispose();
      }
    } finally {
      await evaluator.close();
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

withPython('runs on the hf engine', () => {
  let h: Harness;

  beforeAll(async () => {
    h = await startHarness({ inProcessGpu: false });
    const imported = spawnSync(process.execPath, [path.join(root, 'bin', 'dacp.js'), 'models', 'import', 'tiny-llama', '--from', path.join(fixtures, 'llama')], {
      env: { ...process.env, ...h.env },
      encoding: 'utf8',
    });
    if (imported.status !== 0) throw new Error(`import failed: ${imported.stderr}`);
  });
  afterAll(async () => {
    await h?.stop();
  });

  async function runToApproval(runId: string, engine: Record<string, unknown>) {
    const spec = parseRunSpec(tinySpec({ name: `${runId}-model`, baseModel: { ref: 'tiny-llama:v1', bootstrapIfMissing: false }, engine, deploy: { alias: `${runId}-prod` } } as Parameters<typeof tinySpec>[0]));
    await startRun(h.runs, { spec, baseDir: h.home, runId, initiator: 'engineer' });
    return eventually<RunStatus>(async () => {
      const s = await runStatus(h.runs, runId);
      if (s.state === 'failed') throw new GiveUp(`run failed: ${String(s.metrics.error)}`);
      return s.state === 'awaiting_approval' ? s : undefined;
    }, `${runId} reaches approval`, 600_000, 250);
  }

  /** The sha256 over the tensors of the model a run's continualPretrain returned (dacp.sha256 in its header). */
  async function trainedDigest(runId: string): Promise<string> {
    const events = (await h.client.workflow.getHandle(runId).fetchHistory()).events ?? [];
    const types = new Map(events.filter((e) => e.activityTaskScheduledEventAttributes).map((e) => [String(e.eventId), e.activityTaskScheduledEventAttributes?.activityType?.name]));
    const done = events.find((e) => types.get(String(e.activityTaskCompletedEventAttributes?.scheduledEventId)) === 'continualPretrain');
    const payload = done?.activityTaskCompletedEventAttributes?.result?.payloads?.[0]?.data;
    if (!payload) throw new Error(`${runId}: no completed continualPretrain in history`);
    const { model } = JSON.parse(Buffer.from(payload).toString('utf8')) as { model: { uri: string } };
    const { metadata } = await readSafetensorsHeader(new ArtifactStore(path.join(h.home, 'artifacts')).pathOf(model.uri));
    return metadata['dacp.sha256'] as string;
  }

  function transformersGenerates(folder: string): number[] {
    const check = spawnSync(python, [path.join(root, 'scripts', 'hf-check.py'), folder, 'generate'], { env, input: JSON.stringify({ prompt: 'The gNB alarm', maxNewTokens: 6 }), encoding: 'utf8' });
    if (check.status !== 0) throw new Error(`hf-check.py: ${check.stderr}`);
    return (JSON.parse(check.stdout) as { ids: number[] }).ids;
  }

  test('full fine-tuning, then LoRA with gradient checkpointing sharded over two FSDP processes: both gates, deploy, and transformers loads what is exported', async () => {
    const worker = h.spawnGpuWorker();
    await worker.ready;
    for (const [runId, engine] of [
      ['hf-full', { kind: 'hf' }],
      ['hf-lora-fsdp', { kind: 'hf', lora: { r: 4 }, processes: 2, parallel: 'fsdp', gradientCheckpointing: true }],
    ] as const) {
      const status = await runToApproval(runId, engine);
      // Both stages trained on the hf engine, and both gates judged the result.
      const { rows } = await h.db.pool.query("SELECT details FROM audit_log WHERE run_id = $1 AND event = 'training_attempt' ORDER BY id", [runId]);
      const backends = rows.map((r) => (r.details as { backend?: string }).backend);
      expect(backends.length).toBeGreaterThanOrEqual(2);
      expect(new Set(backends)).toEqual(new Set([engine.processes === 2 ? 'hf:fsdp×2' : 'hf']));
      // What the trainer says it does, rank by rank.
      const said = readFileSync(path.join(h.home, 'logs', runId, 'dacp-0-attempt-1.stderr.log'), 'utf8');
      expect(said).toContain(engine.processes === 2 ? 'LoRA r=4 on q_proj, k_proj, v_proj, o_proj, gradient checkpointing, 2 process(es), FSDP' : 'float32, full fine-tuning, 1 process(es)');
      expect(status.state).toBe('awaiting_approval'); // offered for approval: both gates passed
      // Both gates and the instruction score ran in the hf engine, on the gpu queue.
      expect(status.metrics.forgetting).toMatchObject({ evaluatedBy: 'hf', passed: true });
      expect(status.metrics.finalCheck).toMatchObject({ evaluatedBy: 'hf', passed: true });
      const queues = new Map<string, string>();
      for (const event of (await h.client.workflow.getHandle(runId).fetchHistory()).events ?? []) {
        const scheduled = event.activityTaskScheduledEventAttributes;
        if (scheduled?.activityType?.name) queues.set(scheduled.activityType.name, scheduled.taskQueue?.name ?? '');
      }
      expect(Object.fromEntries(['evaluateForgetting', 'evaluateInstruction', 'evaluateFinal', 'continualPretrain', 'recordTransition'].map((a) => [a, queues.get(a)]))).toEqual({
        evaluateForgetting: 'dacp-gpu', evaluateInstruction: 'dacp-gpu', evaluateFinal: 'dacp-gpu', continualPretrain: 'dacp-gpu', recordTransition: 'dacp-control',
      });
      await decide(h.runs, { runId, principal: 'approver-1', decision: 'approve' });
      expect(await h.client.workflow.getHandle(runId).result()).toMatchObject({ state: 'completed', versionId: `${runId}-model:v1` });
      const out = path.join(h.home, `exported-${runId}`);
      const exported = spawnSync(process.execPath, [path.join(root, 'bin', 'dacp.js'), 'models', 'export', `${runId}-prod`, '--out', out], { env: { ...process.env, ...h.env }, encoding: 'utf8' });
      expect(exported.stderr).toBe('');
      expect(transformersGenerates(out).length).toBeGreaterThan(0);
    }
  });

  test('a gpu worker SIGKILLed mid-training: the next one resumes the hf trainer from its checkpoint, to the uninterrupted run\'s model byte for byte', async () => {
    await h.killSpawned();
    const spec = (name: string) => parseRunSpec(tinySpec({
      name,
      baseModel: { ref: 'tiny-llama:v1', bootstrapIfMissing: false },
      engine: { kind: 'hf' },
      dacp: { steps: 40, batchSize: 8, learningRate: 3e-3, checkpointEvery: 10 },
    } as Parameters<typeof tinySpec>[0]));
    let worker = h.spawnGpuWorker();
    await worker.ready;
    const runId = await startRun(h.runs, { spec: spec('hf-resume-model'), baseDir: h.home, runId: 'hf-resume', initiator: 'engineer' });
    const killedAt = await eventually(async () => {
      const { rows } = await h.db.pool.query("SELECT max(step)::int AS step FROM checkpoints WHERE run_id = $1 AND stage = 'dacp'", [runId]);
      return rows[0].step !== null && rows[0].step >= 10 && rows[0].step < 40 ? (rows[0].step as number) : undefined;
    }, 'an hf checkpoint at step 10 or later', 300_000, 50);
    // Once stored, the trainer's own checkpoint file is deleted: a long run does not fill the disk with them.
    const stored = path.join(h.home, 'logs', runId, 'work', 'dacp-0-attempt-1', 'checkpoints', 'step-10.pt');
    expect(existsSync(path.dirname(stored))).toBe(true);
    await eventually(async () => (existsSync(stored) ? undefined : true), 'the stored step-10 checkpoint file to be deleted', 30_000, 50);
    worker.kill('SIGKILL');
    await new Promise((resolve) => worker.once('exit', resolve));
    worker = h.spawnGpuWorker();
    const toApproval = async (id: string) => eventually<RunStatus>(async () => {
      const s = await runStatus(h.runs, id);
      if (s.state === 'failed') throw new GiveUp(`run failed: ${String(s.metrics.error)}`);
      return s.state === 'awaiting_approval' ? s : undefined;
    }, `${id} reaches approval`, 600_000, 250);
    const resumed = await toApproval(runId);
    expect(resumed.attempts.dacp).toBeGreaterThanOrEqual(2);
    expect(resumed.resumedFromStep).toBeGreaterThanOrEqual(killedAt);

    const clean = await startRun(h.runs, { spec: spec('hf-clean-model'), baseDir: h.home, runId: 'hf-clean', initiator: 'engineer' });
    expect((await toApproval(clean)).resumedFromStep).toBeNull();
    // The weights each run's dacp stage produced: the tensor digest of the stored model (its other metadata names the run).
    expect(await trainedDigest(runId)).toBe(await trainedDigest(clean));
    for (const id of [runId, clean]) await h.client.workflow.getHandle(id).terminate('test over');
  });

  test('a worker with two GPUs trains two runs at once, each trainer on its own GPU; SIGKILLed, its trainers stop on their own within seconds', async () => {
    await h.killSpawned();
    // A host with two GPUs, as nvidia-smi lists them (the trainers run on the CPU: the CUDA-less torch build ignores the device ids).
    const bin = mkdtempSync(path.join(tmpdir(), 'dacp-fake-gpus-'));
    writeFileSync(path.join(bin, 'nvidia-smi'), '#!/bin/sh\necho "GPU 0: NVIDIA H200 (UUID: GPU-0)"\necho "GPU 1: NVIDIA H200 (UUID: GPU-1)"\n', { mode: 0o755 });
    const worker = h.spawnGpuWorker({ PATH: `${bin}${path.delimiter}${process.env.PATH}`, CUDA_VISIBLE_DEVICES: undefined });
    await worker.ready;
    expect(worker.output()).toContain('worker: 2 training slots (GPU 0, GPU 1)');
    const runIds = ['hf-orphan-a', 'hf-orphan-b'];
    for (const runId of runIds) {
      const spec = parseRunSpec(tinySpec({
        name: `${runId}-model`,
        baseModel: { ref: 'tiny-llama:v1', bootstrapIfMissing: false },
        engine: { kind: 'hf' },
        dacp: { steps: 100_000, batchSize: 8, learningRate: 1e-3, checkpointEvery: 1000 },
      } as Parameters<typeof tinySpec>[0]));
      await startRun(h.runs, { spec, baseDir: h.home, runId, initiator: 'engineer' });
    }
    // Both train at the same time: each has a live trainer that has reported progress.
    for (const runId of runIds) {
      await eventually(async () => ((await runStatus(h.runs, runId)).progress.step > 0 ? true : undefined), `${runId}'s trainer to report progress`, 180_000, 250);
    }
    expect(runIds.map((runId) => trainerPids(runId).length > 0)).toEqual([true, true]);
    // Each trainer saw only its slot's device.
    const seen = runIds.map((runId) => {
      const log = readFileSync(path.join(h.home, 'logs', runId, 'dacp-0-attempt-1.stderr.log'), 'utf8');
      return /CUDA_VISIBLE_DEVICES=(\d+)/.exec(log)?.[1];
    });
    expect(seen.sort()).toEqual(['0', '1']);

    worker.kill('SIGKILL');
    const killedAt = Date.now();
    await eventually(async () => (runIds.every((runId) => trainerPids(runId).length === 0) ? true : undefined), 'the orphaned trainers to exit', 30_000, 100);
    const seconds = (Date.now() - killedAt) / 1000;
    console.log(`orphaned hf trainers exited ${seconds.toFixed(1)} s after their worker was SIGKILLed`);
    expect(seconds).toBeLessThan(10);
    for (const runId of runIds) await h.client.workflow.getHandle(runId).terminate('test over');
    rmSync(bin, { recursive: true, force: true });
  });
});

/** Processes whose command line runs the hf trainer on a job of this run. */
function trainerPids(runId: string): number[] {
  const pids: number[] = [];
  for (const entry of readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    let cmdline: string;
    try {
      cmdline = readFileSync(`/proc/${entry}/cmdline`, 'utf8');
    } catch {
      continue;
    }
    const stat = readFileSync(`/proc/${entry}/stat`, 'utf8').split(' ')[2];
    if (stat !== 'Z' && cmdline.includes('dacp_hf_trainer.py') && cmdline.includes(`${path.sep}${runId}${path.sep}`)) pids.push(Number(entry));
  }
  return pids;
}
