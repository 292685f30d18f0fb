import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { ArtifactStore } from '../activities/artifacts';
import { initBackend } from '../ml/backend';
import { generateDemoCorpus } from '../ml/demoCorpus';
import { runExternalTrainer, writeTokenFile } from '../ml/externalTrainer';
import { mixedLmBatches } from '../ml/mixing';
import { spawnSync } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import { createModel, type AnyModelConfig } from '../ml/families';
import { gpt2FolderFiles, writeFolder } from '../ml/hfFolder';
import type { LlamaConfig } from '../ml/llama';
import { GPT, type ModelConfig } from '../ml/model';
import { BpeTokenizer } from '../ml/tokenizer';
import { Trainer, type TrainSettings } from '../ml/train';

/**
 * `npm run bench:train [-- --json]`: tokens/s of the built-in engine and of the hf engine's PyTorch
 * trainer (through the trainer protocol, on the CPU) on one fixed small config and the same tokens, checkpoint save/load cost, peak memory;
 * then, per family (GPT-2, Llama) at the demo size and at about 10 M parameters, tokens/s and model
 * FLOPs utilisation of the built-in engine against a plain transformers training loop in PyTorch
 * on the same config and tokens (scripts/bench-hf-reference.py).
 */

const SHAPE = { contextLength: 64, dModel: 64, nLayers: 2, nHeads: 4 };
const BATCH = 16;
const STEPS = 40;
/** The PyTorch trainer starts in a few seconds (importing torch, transformers) and reports every ~2 s: it runs longer. */
const REFERENCE_STEPS = 400;
const WARMUP_STEPS = 3;
const CHECKPOINT_EVERY = 25; // the spec's default interval for the dacp stage
const VOCAB = 512;

function projectRoot(): string {
  let dir = __dirname;
  while (!existsSync(path.join(dir, 'package.json'))) dir = path.dirname(dir);
  return dir;
}

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];

async function benchBuiltin(config: ModelConfig, tokenizer: BpeTokenizer, tokens: number[], settings: TrainSettings) {
  const backend = await initBackend();
  const trainer = Trainer.create(GPT.create(config, settings.seed), tokenizer, settings);
  const batches = mixedLmBatches({ domain: tokens, replay: [], replayRatio: 0, batchSize: BATCH, contextLength: config.contextLength, seed: 1 });
  let peakRss = process.memoryUsage().rss;
  for (let i = 0; i < WARMUP_STEPS; i++) trainer.trainStep(batches(trainer.step));
  const started = process.hrtime.bigint();
  for (let i = 0; i < STEPS; i++) {
    trainer.trainStep(batches(trainer.step));
    peakRss = Math.max(peakRss, process.memoryUsage().rss);
  }
  const trainSeconds = Number(process.hrtime.bigint() - started) / 1e9;

  // Checkpoint cost as the activity pays it: serialise, then an atomic, fsynced, verified store write.
  const dir = mkdtempSync(path.join(os.tmpdir(), 'dacp-bench-'));
  const store = new ArtifactStore(dir);
  const saves: number[] = [];
  const loads: number[] = [];
  let bytes = 0;
  for (let i = 0; i < 5; i++) {
    const t0 = process.hrtime.bigint();
    const buf = trainer.checkpoint({ bench: String(i) });
    const ref = await store.put('checkpoints', buf, 'safetensors');
    saves.push(Number(process.hrtime.bigint() - t0) / 1e9);
    bytes = buf.length;
    const t1 = process.hrtime.bigint();
    const restored = Trainer.fromCheckpoint(await store.get(ref));
    loads.push(Number(process.hrtime.bigint() - t1) / 1e9);
    restored.dispose();
  }
  rmSync(dir, { recursive: true, force: true });
  trainer.dispose();
  const stepSeconds = trainSeconds / STEPS;
  return {
    backend: backend.name,
    tokensPerSec: (STEPS * BATCH * config.contextLength) / trainSeconds,
    stepSeconds,
    checkpointSaveSeconds: median(saves),
    checkpointLoadSeconds: median(loads),
    checkpointBytes: bytes,
    checkpointShare: median(saves) / (median(saves) + CHECKPOINT_EVERY * stepSeconds),
    peakRssMb: peakRss / 2 ** 20,
  };
}

interface ReferenceResult {
  tokensPerSec?: number;
  peakRssMb?: number;
  error?: string;
}

async function benchReference(config: ModelConfig, tokenizer: BpeTokenizer, tokens: number[], settings: TrainSettings): Promise<ReferenceResult> {
  const root = projectRoot();
  const python = path.join(root, '.tools', 'venv', 'bin', 'python');
  const trainer = path.join(root, 'trainers', 'hf', 'dacp_hf_trainer.py');
  if (!existsSync(python)) return { error: 'no .tools/venv (run `bash scripts/setup-python.sh`)' };
  const dir = mkdtempSync(path.join(os.tmpdir(), 'dacp-bench-ref-'));
  // The same fresh model as the built-in engine trains, as a model folder.
  const fresh = GPT.create(config, settings.seed);
  await writeFolder(path.join(dir, 'init'), gpt2FolderFiles(fresh, tokenizer));
  fresh.dispose();
  await writeTokenFile(path.join(dir, 'domain.i32'), tokens);
  await writeTokenFile(path.join(dir, 'replay.i32'), []);
  const timeFile = path.join(dir, 'time.txt');
  const wrap = existsSync('/usr/bin/time') ? ['/usr/bin/time', '-f', '%M', '-o', timeFile] : [];
  const samples: { t: number; tokens: number; step: number }[] = [];
  const { done } = await runExternalTrainer({
    command: [...wrap, python, trainer],
    workDir: dir,
    stderrFile: path.join(dir, 'stderr.log'),
    job: {
      protocol: 'dacp-trainer/2',
      stage: 'bootstrap',
      initModelDir: path.join(dir, 'init'),
      contextLength: config.contextLength,
      data: { kind: 'lm', domain: path.join(dir, 'domain.i32'), replay: path.join(dir, 'replay.i32'), replayRatio: 0 },
      settings: { ...settings, totalSteps: REFERENCE_STEPS },
      checkpointEvery: 10_000,
      checkpointDir: path.join(dir, 'checkpoints'),
      resumeFrom: null,
      outputModelDir: path.join(dir, 'model'),
    },
    env: { DACP_TORCH_THREADS: process.env.DACP_TORCH_THREADS ?? String(os.cpus().length) },
    onProgress: (e) => {
      samples.push({ t: Number(process.hrtime.bigint()) / 1e9, tokens: e.tokens, step: e.step });
    },
  });
  const doneAt = Number(process.hrtime.bigint()) / 1e9;
  const peakKb = existsSync(timeFile) ? Number(readFileSync(timeFile, 'utf8').trim().split('\n').pop()) : Number.NaN;
  rmSync(dir, { recursive: true, force: true });
  // Throughput from the first progress event after warm-up to `done`: start-up excluded.
  const first = samples.find((s) => s.step >= WARMUP_STEPS);
  if (!first || done.step <= first.step) return { error: `no progress event after warm-up (${samples.length} events)` };
  const tokensPerStep = BATCH * config.contextLength;
  return { tokensPerSec: ((done.step - first.step) * tokensPerStep) / (doneAt - first.t), peakRssMb: peakKb / 1024 };
}

// ---------------------------------------------------------------------------------------------
// Per family and size, against transformers

const SIZES = {
  demo: { contextLength: 64, dModel: 64, nLayers: 2, nHeads: 4, steps: 20, referenceSteps: 40 },
  '10M': { contextLength: 128, dModel: 320, nLayers: 8, nHeads: 8, steps: 4, referenceSteps: 6 },
} as const;

interface FamilyFigures {
  family: 'gpt2' | 'llama';
  size: keyof typeof SIZES;
  parameters: number;
  builtinTokensPerSec: number;
  referenceTokensPerSec: number | null;
  ratio: number | null;
  builtinMfu: number | null;
  referenceMfu: number | null;
  referenceError?: string;
}

function familyConfig(family: 'gpt2' | 'llama', size: keyof typeof SIZES, vocabSize: number): AnyModelConfig {
  const { contextLength, dModel, nLayers, nHeads } = SIZES[size];
  if (family === 'gpt2') return { vocabSize, contextLength, dModel, nLayers, nHeads };
  // SwiGLU's three matrices at 8/3 × width hold what GPT-2's two at 4 × hold; two query heads per key/value head.
  const llama: LlamaConfig = {
    family: 'llama', vocabSize, contextLength, dModel, nLayers, nHeads, nKvHeads: nHeads / 2, headDim: dModel / nHeads,
    ffnDim: Math.round((dModel * 8) / 3 / 16) * 16, rmsNormEps: 1e-5, ropeTheta: 10000, ropeScaling: null, tiedEmbeddings: false, attentionBias: 'none',
  };
  return llama;
}

/** Training FLOPs per token: 6 per weight multiply-add pass (forward + backward), plus attention's score and value products. */
function flopsPerToken(parameters: number, config: AnyModelConfig): number {
  return 6 * parameters + 12 * config.nLayers * config.contextLength * config.dModel;
}

function pythonJson(python: string, script: string, request: unknown): Record<string, unknown> {
  const run = spawnSync(python, [script], { input: JSON.stringify(request), encoding: 'utf8', env: { ...process.env, TRANSFORMERS_VERBOSITY: 'error' } });
  if (run.status !== 0) throw new Error(run.stderr.trim().split('\n').pop() ?? `exit ${run.status}`);
  return JSON.parse(run.stdout) as Record<string, unknown>;
}

async function benchFamilies(tokenizer: BpeTokenizer, tokens: number[]): Promise<{ peakFlopsPerSec: number | null; figures: FamilyFigures[] }> {
  const root = projectRoot();
  const python = path.join(root, '.tools', 'venv', 'bin', 'python');
  const script = path.join(root, 'scripts', 'bench-hf-reference.py');
  const threads = Number(process.env.DACP_TORCH_THREADS ?? os.cpus().length);
  const dir = mkdtempSync(path.join(os.tmpdir(), 'dacp-bench-hf-'));
  const tokenFile = path.join(dir, 'tokens.i32');
  writeFileSync(tokenFile, Buffer.from(new Int32Array(tokens).buffer));
  let peakFlopsPerSec: number | null = null;
  try {
    peakFlopsPerSec = Number(pythonJson(python, script, { gemm: true, threads }).flopsPerSec);
  } catch {
    peakFlopsPerSec = null;
  }
  const figures: FamilyFigures[] = [];
  for (const family of ['gpt2', 'llama'] as const) {
    for (const size of Object.keys(SIZES) as (keyof typeof SIZES)[]) {
      const config = familyConfig(family, size, tokenizer.vocabSize);
      const { steps, referenceSteps } = SIZES[size];
      const settings: TrainSettings = { totalSteps: 1000, batchSize: BATCH, learningRate: 1e-3, warmupSteps: 10, minLrRatio: 0.1, weightDecay: 0.01, gradClip: 1, seed: 7 };
      const trainer = Trainer.create(createModel(config, 7), tokenizer, settings);
      const parameters = trainer.model.parameterCount();
      const batches = mixedLmBatches({ domain: tokens, replay: [], replayRatio: 0, batchSize: BATCH, contextLength: config.contextLength, seed: 1 });
      trainer.trainStep(batches(trainer.step));
      const started = process.hrtime.bigint();
      for (let i = 0; i < steps; i++) trainer.trainStep(batches(trainer.step));
      const builtinTokensPerSec = (steps * BATCH * config.contextLength) / (Number(process.hrtime.bigint() - started) / 1e9);
      trainer.dispose();
      let referenceTokensPerSec: number | null = null;
      let referenceError: string | undefined;
      try {
        const answer = pythonJson(python, script, { family, config, tokens: tokenFile, batchSize: BATCH, steps: referenceSteps, warmup: 1, threads });
        referenceTokensPerSec = Number(answer.tokensPerSec);
      } catch (error) {
        referenceError = (error as Error).message;
      }
      const flops = flopsPerToken(parameters, config);
      figures.push({
        family,
        size,
        parameters,
        builtinTokensPerSec: Math.round(builtinTokensPerSec),
        referenceTokensPerSec: referenceTokensPerSec === null ? null : Math.round(referenceTokensPerSec),
        ratio: referenceTokensPerSec === null ? null : Number((builtinTokensPerSec / referenceTokensPerSec).toFixed(3)),
        builtinMfu: peakFlopsPerSec ? Number(((builtinTokensPerSec * flops) / peakFlopsPerSec).toFixed(3)) : null,
        referenceMfu: peakFlopsPerSec && referenceTokensPerSec ? Number(((referenceTokensPerSec * flops) / peakFlopsPerSec).toFixed(3)) : null,
        ...(referenceError ? { referenceError } : {}),
      });
    }
  }
  rmSync(dir, { recursive: true, force: true });
  return { peakFlopsPerSec, figures };
}

async function main(): Promise<void> {
  const json = process.argv.includes('--json');
  const corpus = generateDemoCorpus({ seed: 3 });
  const tokenizer = BpeTokenizer.train(corpus.general, { vocabSize: VOCAB });
  const tokens: number[] = [];
  for (const text of corpus.domain) tokens.push(...tokenizer.encode(text), tokenizer.eosId);
  const config: ModelConfig = { vocabSize: tokenizer.vocabSize, ...SHAPE };
  const settings: TrainSettings = { totalSteps: 1000, batchSize: BATCH, learningRate: 1e-3, warmupSteps: 10, minLrRatio: 0.1, weightDecay: 0.01, gradClip: 1, seed: 7 };

  const builtin = await benchBuiltin(config, tokenizer, tokens, settings);
  const reference = await benchReference(config, tokenizer, tokens, settings);
  const referenceTokensPerSec = reference.tokensPerSec ?? null;
  const result = {
    config: { ...config, batchSize: BATCH, steps: STEPS, checkpointEvery: CHECKPOINT_EVERY },
    host: { cpus: os.cpus().length, cpu: os.cpus()[0]?.model ?? 'unknown', node: process.version },
    builtinBackend: builtin.backend,
    builtinTokensPerSec: Math.round(builtin.tokensPerSec),
    referenceTokensPerSec: referenceTokensPerSec === null ? null : Math.round(referenceTokensPerSec),
    ratio: referenceTokensPerSec === null ? null : Number((builtin.tokensPerSec / referenceTokensPerSec).toFixed(3)),
    checkpointSaveSeconds: Number(builtin.checkpointSaveSeconds.toFixed(4)),
    checkpointLoadSeconds: Number(builtin.checkpointLoadSeconds.toFixed(4)),
    checkpointBytes: builtin.checkpointBytes,
    checkpointShare: Number(builtin.checkpointShare.toFixed(4)),
    builtinPeakRssMb: Math.round(builtin.peakRssMb),
    referencePeakRssMb: reference.peakRssMb !== undefined && Number.isFinite(reference.peakRssMb) ? Math.round(reference.peakRssMb) : null,
    referenceError: reference.error,
    ...(await benchFamilies(tokenizer, tokens).then(({ peakFlopsPerSec, figures }) => ({
      /** fp32 matrix-product throughput of torch on this host: the peak MFU is measured against. */
      peakGflops: peakFlopsPerSec === null ? null : Math.round(peakFlopsPerSec / 1e9),
      families: figures,
      ratio10M: figures.find((f) => f.family === 'gpt2' && f.size === '10M')?.ratio ?? null,
      ratio10MLlama: figures.find((f) => f.family === 'llama' && f.size === '10M')?.ratio ?? null,
    }))),
  };
  if (json) {
    console.log(JSON.stringify(result));
    return;
  }
  const c = result.config;
  console.log(`bench:train — GPT vocab ${c.vocabSize}, context ${c.contextLength}, d ${c.dModel}, ${c.nLayers} layers, ${c.nHeads} heads, batch ${c.batchSize}, ${c.steps} steps`);
  console.log(`host: ${result.host.cpus} CPUs (${result.host.cpu}), Node ${result.host.node}`);
  console.log(`built-in engine (${result.builtinBackend})     ${result.builtinTokensPerSec} tokens/s   peak RSS ${result.builtinPeakRssMb} MB`);
  console.log(
    `hf engine, PyTorch (CPU)         ${result.referenceTokensPerSec ?? `n/a (${result.referenceError})`} tokens/s   peak RSS ${result.referencePeakRssMb ?? 'n/a'} MB`,
  );
  console.log(`ratio built-in / PyTorch        ${result.ratio ?? 'n/a'}   (target ≥ 0.5)`);
  console.log(
    `checkpoint: save ${(result.checkpointSaveSeconds * 1000).toFixed(1)} ms, load ${(result.checkpointLoadSeconds * 1000).toFixed(1)} ms, ${(result.checkpointBytes / 1024).toFixed(0)} KiB; ` +
      `share of training time at every ${c.checkpointEvery} steps: ${(result.checkpointShare * 100).toFixed(2)} % (target ≤ 5 %)`,
  );
  console.log('');
  console.log(`per family, against a plain transformers loop in PyTorch (peak ${result.peakGflops ?? 'n/a'} GFLOP/s: torch fp32 matrix products on this host)`);
  for (const f of result.families) {
    console.log(
      `  ${f.family.padEnd(6)} ${f.size.padEnd(5)} ${(f.parameters / 1e6).toFixed(2).padStart(6)} M params  built-in ${String(f.builtinTokensPerSec).padStart(7)} tokens/s (MFU ${f.builtinMfu ?? 'n/a'})  ` +
        `PyTorch ${String(f.referenceTokensPerSec ?? `n/a (${f.referenceError})`).padStart(7)} tokens/s (MFU ${f.referenceMfu ?? 'n/a'})  ratio ${f.ratio ?? 'n/a'}`,
    );
  }
  console.log(`ratio10M ${result.ratio10M ?? 'n/a'} (GPT-2 family; target ≥ 0.8), Llama family ${result.ratio10MLlama ?? 'n/a'}`);
}

main().catch((err) => {
  console.error(`bench:train: ${(err as Error).message}`);
  process.exit(1);
});
