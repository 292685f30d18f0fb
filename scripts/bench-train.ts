import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { ArtifactStore } from '../activities/artifacts';
import { initBackend } from '../ml/backend';
import { generateDemoCorpus } from '../ml/demoCorpus';
import { runExternalTrainer, writeTokenFile } from '../ml/externalTrainer';
import { mixedLmBatches } from '../ml/mixing';
import { GPT, type ModelConfig } from '../ml/model';
import { BpeTokenizer } from '../ml/tokenizer';
import { Trainer, type TrainSettings } from '../ml/train';

/**
 * `npm run bench:train [-- --json]`: tokens/s of the built-in engine and of the PyTorch reference
 * trainer on one fixed small config and the same tokens, checkpoint save/load cost, peak memory.
 */

const SHAPE = { contextLength: 64, dModel: 64, nLayers: 2, nHeads: 4 };
const BATCH = 16;
const STEPS = 40;
/** The reference trainer starts in ~1.5 s (importing torch) and reports every ~2 s: it runs longer. */
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
  const trainer = path.join(root, 'trainers', 'reference', 'dacp_trainer.py');
  if (!existsSync(python)) return { error: 'no .tools/venv (run `bash scripts/setup-python.sh`)' };
  const dir = mkdtempSync(path.join(os.tmpdir(), 'dacp-bench-ref-'));
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
      protocol: 'dacp-trainer/1',
      stage: 'bootstrap',
      initModel: null,
      modelConfig: config,
      tokenizer: tokenizer.toJSON(),
      data: { kind: 'lm', domain: path.join(dir, 'domain.i32'), replay: path.join(dir, 'replay.i32'), replayRatio: 0 },
      settings: { ...settings, totalSteps: REFERENCE_STEPS },
      checkpointEvery: 10_000,
      checkpointDir: path.join(dir, 'checkpoints'),
      resumeFrom: null,
      outputModel: path.join(dir, 'model.safetensors'),
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
    `reference PyTorch trainer (CPU)  ${result.referenceTokensPerSec ?? `n/a (${result.referenceError})`} tokens/s   peak RSS ${result.referencePeakRssMb ?? 'n/a'} MB`,
  );
  console.log(`ratio built-in / reference      ${result.ratio ?? 'n/a'}   (target ≥ 0.5)`);
  console.log(
    `checkpoint: save ${(result.checkpointSaveSeconds * 1000).toFixed(1)} ms, load ${(result.checkpointLoadSeconds * 1000).toFixed(1)} ms, ${(result.checkpointBytes / 1024).toFixed(0)} KiB; ` +
      `share of training time at every ${c.checkpointEvery} steps: ${(result.checkpointShare * 100).toFixed(2)} % (target ≤ 5 %)`,
  );
}

main().catch((err) => {
  console.error(`bench:train: ${(err as Error).message}`);
  process.exit(1);
});
