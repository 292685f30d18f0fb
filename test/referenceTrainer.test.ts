import { spawn, spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import * as tf from '@tensorflow/tfjs';
import { initBackend } from '../ml/backend';
import { mixedLmBatches, sftBatches, type Batch, type SftExample } from '../ml/mixing';
import { GPT, ModelConfig } from '../ml/model';
import { deserializeModel, serializeModel } from '../ml/modelFile';
import { decodeSafetensors } from '../ml/safetensors';
import { ByteTokenizer } from '../ml/tokenizer';
import { Trainer, TrainSettings } from '../ml/train';

/**
 * The PyTorch reference trainer (trainers/reference/) speaks docs/trainer-protocol.md and
 * computes the same model as the built-in engine. These tests run the real Python process.
 */

const root = path.resolve(__dirname, '..');
const python = path.join(root, '.tools', 'venv', 'bin', 'python');
const script = path.join(root, 'trainers', 'reference', 'dacp_trainer.py');
const tokenizer = new ByteTokenizer();
const tiny: ModelConfig = { vocabSize: tokenizer.vocabSize, contextLength: 16, dModel: 16, nLayers: 1, nHeads: 2 };
const settings: TrainSettings = {
  totalSteps: 20, batchSize: 4, learningRate: 1e-2, warmupSteps: 2, minLrRatio: 0.1, weightDecay: 0.01, gradClip: 1, seed: 5,
};
// One thread: bitwise reproducibility needs the same thread count, and the host has few cores.
const env = { ...process.env, DACP_TORCH_THREADS: '1' };

type TrainerEvent =
  | { event: 'progress'; step: number; loss: number; tokens: number }
  | { event: 'checkpoint'; step: number; path: string; sha256: string }
  | { event: 'done'; step: number; loss: number; model: string; sha256: string }
  | { event: 'log'; level: string; message: string };
interface TrainerExit { code: number | null; signal: NodeJS.Signals | null; events: TrainerEvent[]; stderr: string }

let dir: string;
const sha256 = (file: string): string => createHash('sha256').update(readFileSync(file)).digest('hex');
const tensorsSha = (file: string): string | undefined => decodeSafetensors(readFileSync(file)).metadata['dacp.sha256'];

function writeTokens(name: string, text: string): string {
  const file = path.join(dir, name);
  writeFileSync(file, Buffer.from(new Int32Array(tokenizer.encode(text)).buffer));
  return file;
}

function writeModel(name: string, config: ModelConfig, seed: number): string {
  const file = path.join(dir, name);
  const model = GPT.create(config, seed);
  writeFileSync(file, serializeModel(model, tokenizer));
  model.dispose();
  return file;
}

/** A job in `dir/name/`; lm data unless `data` says otherwise. */
function writeJob(name: string, over: Record<string, unknown> = {}): string {
  const scratch = path.join(dir, name);
  const job = {
    protocol: 'dacp-trainer/1',
    stage: 'bootstrap',
    initModel: null,
    modelConfig: tiny,
    tokenizer: tokenizer.toJSON(),
    data: { kind: 'lm', domain: path.join(dir, 'domain.i32'), replay: path.join(dir, 'replay.i32'), replayRatio: 0.25 },
    settings,
    checkpointEvery: 5,
    checkpointDir: path.join(scratch, 'checkpoints'),
    resumeFrom: null,
    outputModel: path.join(scratch, 'model.safetensors'),
    ...over,
  };
  const file = path.join(dir, `${name}.job.json`);
  writeFileSync(file, JSON.stringify(job));
  return file;
}

/** Runs the trainer on a job; every stdout line must be a protocol event. `onEvent` may signal the child. */
function runTrainer(jobFile: string, onEvent?: (event: TrainerEvent, kill: (signal: NodeJS.Signals) => void) => void): Promise<TrainerExit> {
  return new Promise((resolve, reject) => {
    const child = spawn(python, [script, '--job', jobFile], { env, stdio: ['ignore', 'pipe', 'pipe'] });
    const events: TrainerEvent[] = [];
    let stdout = '';
    let stderr = '';
    let protocolError: Error | undefined;
    child.stderr.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
    child.stdout.on('data', (chunk: Buffer) => {
      stdout += chunk.toString();
      let newline: number;
      while ((newline = stdout.indexOf('\n')) >= 0) {
        const line = stdout.slice(0, newline);
        stdout = stdout.slice(newline + 1);
        try {
          const event = parseEvent(line);
          events.push(event);
          onEvent?.(event, (signal) => child.kill(signal));
        } catch (error) {
          protocolError ??= error as Error;
        }
      }
    });
    child.on('error', reject);
    child.on('close', (code, signal) => {
      if (protocolError !== undefined) reject(new Error(`${protocolError.message}\nstderr:\n${stderr}`));
      else if (stdout !== '') reject(new Error(`stdout ends without a newline: ${JSON.stringify(stdout)}`));
      else resolve({ code, signal, events, stderr });
    });
  });
}

function parseEvent(line: string): TrainerEvent {
  const value: unknown = JSON.parse(line);
  if (typeof value !== 'object' || value === null || Array.isArray(value)) throw new Error(`not an event object: ${line}`);
  const fields = value as Record<string, unknown>;
  const need: Record<string, string[]> = {
    progress: ['step', 'loss', 'tokens'], checkpoint: ['step', 'path', 'sha256'], done: ['step', 'loss', 'model', 'sha256'], log: ['level', 'message'],
  };
  const required = need[String(fields.event)];
  if (required === undefined) throw new Error(`unknown event: ${line}`);
  const missing = required.filter((key) => fields[key] === undefined || fields[key] === null);
  if (missing.length > 0) throw new Error(`event lacks ${missing.join(', ')}: ${line}`);
  return value as TrainerEvent;
}

const ofKind = <K extends TrainerEvent['event']>(events: TrainerEvent[], kind: K): Extract<TrainerEvent, { event: K }>[] =>
  events.filter((e): e is Extract<TrainerEvent, { event: K }> => e.event === kind);

/** Both engines' weights agree to 1e-4 in every tensor. */
function expectSameWeights(fromTs: Record<string, Float32Array>, fromPython: Record<string, Float32Array>): void {
  const C = tiny.dModel;
  for (const [name, values] of Object.entries(fromTs)) {
    const other = fromPython[name] as Float32Array;
    // The key bias's true gradient is 0 (softmax ignores a shift shared by a row), so AdamW moves it by
    // normalised rounding noise that differs between engines; its q and v thirds are compared.
    const compared = (i: number): boolean => !name.endsWith('attn.bqkv') || i < C || i >= 2 * C;
    const worst = values.reduce((max, value, i) => (compared(i) ? Math.max(max, Math.abs(value - (other[i] as number))) : max), 0);
    expect([name, worst < 1e-4]).toEqual([name, true]);
  }
}

/** SFT batches as trainers/reference/dacp_data.py builds them, for the given steps. */
function pythonSftBatches(o: {
  examples: SftExample[]; replay: number[] | null; replayRatio: number; batchSize: number; contextLength: number; seed: number; steps: number[];
}): Batch[] {
  const program = [
    'import json, sys',
    `sys.path.insert(0, ${JSON.stringify(path.dirname(script))})`,
    'import torch',
    'from dacp_data import sft_batches',
    'o = json.load(sys.stdin)',
    'replay = None if o["replay"] is None else torch.tensor(o["replay"], dtype=torch.int64)',
    'batches = sft_batches([(e["prompt"], e["response"]) for e in o["examples"]], o["batchSize"], o["contextLength"], o["seed"],',
    '                      o["padId"], o["eosId"], replay, o["replayRatio"])',
    'out = [[t.tolist() for t in batches(step)] for step in o["steps"]]',
    'print(json.dumps([{"inputs": i, "targets": t, "mask": m} for i, t, m in out]))',
  ].join('\n');
  const input = JSON.stringify({ ...o, padId: tokenizer.padId, eosId: tokenizer.eosId });
  const result = spawnSync(python, ['-c', program], { env, input, encoding: 'utf8' });
  if (result.status !== 0) throw new Error(`dacp_data.sft_batches exited ${result.status}: ${result.stderr}`);
  return JSON.parse(result.stdout) as Batch[];
}

function pythonJson(args: string[]): unknown {
  const result = spawnSync(python, [script, ...args], { env, encoding: 'utf8' });
  if (result.status !== 0) throw new Error(`dacp_trainer.py ${args.join(' ')} exited ${result.status}: ${result.stderr}`);
  return JSON.parse(result.stdout);
}

beforeAll(async () => {
  const probe = existsSync(python) ? spawnSync(python, ['-c', 'import torch'], { encoding: 'utf8' }) : undefined;
  if (probe?.status !== 0) {
    throw new Error(`${python} cannot import torch: run \`bash scripts/setup-python.sh\` first${probe ? ` (${probe.stderr.trim().split('\n').pop()})` : ''}`);
  }
  await initBackend('cpu');
  dir = mkdtempSync(path.join(tmpdir(), 'dacp-reference-'));
  writeTokens('domain.i32', 'the cat sat on the mat. '.repeat(40));
  writeTokens('replay.i32', 'general text about many things. '.repeat(20));
});

afterAll(() => {
  if (dir !== undefined) rmSync(dir, { recursive: true, force: true });
});

describe('reference trainer (PyTorch)', () => {
  test('a bootstrap job emits progress, checkpoints and done, and writes a model the TS side loads', async () => {
    const run = await runTrainer(writeJob('bootstrap'));
    expect(run).toMatchObject({ code: 0, signal: null });
    const checkpoints = ofKind(run.events, 'checkpoint');
    expect(checkpoints.map((c) => c.step)).toEqual([5, 10, 15, 20]);
    for (const c of checkpoints) expect(sha256(c.path)).toBe(c.sha256);
    expect(ofKind(run.events, 'progress').length).toBeGreaterThan(0);
    const done = ofKind(run.events, 'done');
    expect(done).toHaveLength(1);
    expect(run.events[run.events.length - 1]).toBe(done[0]);
    expect(done[0]).toMatchObject({ step: 20, model: path.join(dir, 'bootstrap', 'model.safetensors') });
    expect(sha256(done[0]?.model as string)).toBe(done[0]?.sha256);
    const { model } = deserializeModel(readFileSync(done[0]?.model as string)); // verifies dacp.sha256
    expect(model.config).toEqual(tiny);
    model.dispose();
  });

  test('its fresh initialisation is the same file GPT.create + serializeModel writes', () => {
    const file = path.join(dir, 'init.safetensors');
    pythonJson(['--init', file, '--config', JSON.stringify(tiny), '--seed', '42']);
    const model = GPT.create(tiny, 42);
    expect(readFileSync(file).equals(serializeModel(model, tokenizer))).toBe(true);
    model.dispose();
  });

  test('it computes the same logits as the TS model for a TS-written file', () => {
    const config: ModelConfig = { ...tiny, nLayers: 2, contextLength: 12 };
    const file = writeModel('logits.safetensors', config, 3);
    const ids = [72, 101, 108, 108, 111, 32, 256, 257, 0, 255, 10, 33];
    const fromPython = (pythonJson(['--logits', file, '--ids', ids.join(',')]) as { logits: number[][] }).logits;
    const { model } = deserializeModel(readFileSync(file));
    const fromTs = tf.tidy(() => model.logits(tf.tensor2d([ids], undefined, 'int32')).arraySync()[0] as number[][]);
    model.dispose();
    expect(fromPython).toHaveLength(ids.length);
    const worst = Math.max(...fromTs.flatMap((row, t) => row.map((value, v) => Math.abs(value - (fromPython[t]?.[v] ?? Number.NaN)))));
    expect(worst).toBeLessThan(1e-4);
  });

  test('it trains like the built-in engine: same batches, optimizer and schedule give the same weights', async () => {
    const base = writeModel('parity-base.safetensors', tiny, 8);
    const steps = { ...settings, totalSteps: 4, warmupSteps: 2 };
    const run = await runTrainer(writeJob('parity', { stage: 'dacp', initModel: base, settings: steps }));
    expect(run.code).toBe(0);
    const trainer = Trainer.create(deserializeModel(readFileSync(base)).model, tokenizer, steps);
    const batches = mixedLmBatches({
      domain: tokenizer.encode('the cat sat on the mat. '.repeat(40)),
      replay: tokenizer.encode('general text about many things. '.repeat(20)),
      replayRatio: 0.25, batchSize: steps.batchSize, contextLength: tiny.contextLength, seed: steps.seed,
    });
    const losses = Array.from({ length: steps.totalSteps }, (_, step) => trainer.trainStep(batches(step)).loss);
    const fromPython = deserializeModel(readFileSync(path.join(dir, 'parity', 'model.safetensors'))).model.weights();
    const fromTs = trainer.model.weights();
    trainer.dispose();
    expect(ofKind(run.events, 'done')[0]?.loss).toBeCloseTo(losses[losses.length - 1] as number, 4);
    expectSameWeights(fromTs, fromPython);
  });

  test.each([
    ['two parts, 0.7 / 0.3', [0.7, 0.3]],
    ['a part of weight 0', [0, 1]],
    ['three parts, one of them short', [1, 1, 2]],
  ] as const)('dacp_data.lm_batches with domain_parts builds exactly the batches of ml/mixing.ts: %s', (_, weights) => {
    const texts = ['the cat sat on the mat. '.repeat(30), 'clause four binds the lessee. '.repeat(25), 'tiny.'];
    const domainParts = weights.map((weight, i) => ({ name: `p${i}`, tokens: tokenizer.encode(texts[i] as string), weight }));
    const replay = tokenizer.encode('general text about many things. '.repeat(20));
    const o = { replayRatio: 0.25, batchSize: 6, contextLength: tiny.contextLength, seed: 4 };
    const steps = [0, 1, 2, 31];
    const fromTs = mixedLmBatches({ ...o, domain: [], domainParts, replay });
    const program = [
      'import json, sys',
      `sys.path.insert(0, ${JSON.stringify(path.dirname(script))})`,
      'import torch',
      'from dacp_data import lm_batches',
      'o = json.load(sys.stdin)',
      't = lambda ids: torch.tensor(ids, dtype=torch.int64)',
      'parts = [(p["name"], t(p["tokens"]), p["weight"]) for p in o["parts"]]',
      'batches = lm_batches(torch.zeros(0, dtype=torch.int64), t(o["replay"]), o["replayRatio"], o["batchSize"], o["contextLength"], o["seed"], parts)',
      'print(json.dumps([[x.tolist() for x in batches(step)[:2]] for step in o["steps"]]))',
    ].join('\n');
    const result = spawnSync(python, ['-c', program], { env, input: JSON.stringify({ ...o, parts: domainParts, replay, steps }), encoding: 'utf8' });
    expect([result.status, result.status === 0 ? '' : result.stderr]).toEqual([0, '']);
    const fromPython = JSON.parse(result.stdout) as [number[][], number[][]][];
    expect(fromPython).toEqual(steps.map((step) => [fromTs(step).inputs, fromTs(step).targets]));
  });

  test('a dacp job with data.domainParts trains like the built-in engine on the same parts', async () => {
    const base = writeModel('parts-base.safetensors', tiny, 8);
    const steps = { ...settings, totalSteps: 3, warmupSteps: 1 };
    writeTokens('part-a.i32', 'the cat sat on the mat. '.repeat(40));
    writeTokens('part-b.i32', 'clause four binds the lessee. '.repeat(30));
    const data = {
      kind: 'lm',
      domainParts: [{ name: 'a', tokens: path.join(dir, 'part-a.i32'), weight: 0.3 }, { name: 'b', tokens: path.join(dir, 'part-b.i32'), weight: 0.7 }],
      replay: path.join(dir, 'replay.i32'),
      replayRatio: 0.25,
    };
    const run = await runTrainer(writeJob('parts', { stage: 'dacp', initModel: base, settings: steps, data }));
    expect(run.code).toBe(0);
    const trainer = Trainer.create(deserializeModel(readFileSync(base)).model, tokenizer, steps);
    const batches = mixedLmBatches({
      domain: [],
      domainParts: [
        { name: 'a', tokens: tokenizer.encode('the cat sat on the mat. '.repeat(40)), weight: 0.3 },
        { name: 'b', tokens: tokenizer.encode('clause four binds the lessee. '.repeat(30)), weight: 0.7 },
      ],
      replay: tokenizer.encode('general text about many things. '.repeat(20)),
      replayRatio: 0.25, batchSize: steps.batchSize, contextLength: tiny.contextLength, seed: steps.seed,
    });
    for (let step = 0; step < steps.totalSteps; step++) trainer.trainStep(batches(step));
    const fromPython = deserializeModel(readFileSync(path.join(dir, 'parts', 'model.safetensors'))).model.weights();
    const fromTs = trainer.model.weights();
    trainer.dispose();
    expectSameWeights(fromTs, fromPython);
    // A malformed list is refused naming the field.
    const bad = await runTrainer(writeJob('parts-bad', { stage: 'dacp', initModel: base, settings: steps, data: { ...data, domainParts: [{ name: 'a', weight: 1 }] } }));
    expect(bad.code).not.toBe(0);
    expect(bad.stderr).toMatch(/data\.domainParts must be a list of/);
  });

  describe('instruction tuning with replay text mixed in', () => {
    const examples: SftExample[] = ['2+2?|4', 'colour of the sky?|blue', 'capital of France?|Paris', 'opposite of hot?|cold', 'a long question that will not fit the window?|no']
      .map((pair) => pair.split('|') as [string, string])
      .map(([prompt, response]) => ({ prompt: tokenizer.encode(`Q: ${prompt}\nA: `), response: tokenizer.encode(response) }));
    const replayText = 'general text about many things. '.repeat(20);

    test.each([
      ['no replay', null, 0],
      ['ratio 0 with a stream', 'stream', 0],
      ['a quarter replay', 'stream', 0.25],
      ['half of 5 rows (JS rounds 2.5 up)', 'stream', 0.5],
      ['a stream shorter than a window, read cyclically', 'short', 0.6],
      ['an empty stream (pure SFT)', 'empty', 0.5],
    ] as const)('dacp_data.sft_batches builds exactly the batches of ml/mixing.ts sftBatches: %s', (_, stream, replayRatio) => {
      const replay = stream === null ? null : stream === 'empty' ? [] : tokenizer.encode(stream === 'short' ? 'tiny.' : replayText);
      const o = { examples, replayRatio, batchSize: 5, contextLength: tiny.contextLength, seed: 9, steps: [0, 1, 2, 13] };
      const fromTs = sftBatches({ ...o, replay: replay ?? undefined, padId: tokenizer.padId, eosId: tokenizer.eosId });
      expect(pythonSftBatches({ ...o, replay })).toEqual(o.steps.map((step) => fromTs(step)));
    });

    test('an instruct job with replay trains the same weights as the built-in engine', async () => {
      const base = writeModel('sft-parity-base.safetensors', tiny, 4);
      const file = path.join(dir, 'sft-parity.jsonl');
      writeFileSync(file, examples.map((e) => JSON.stringify(e)).join('\n'));
      const steps = { ...settings, totalSteps: 4, warmupSteps: 2 };
      const data = { kind: 'sft', examples: file, padId: tokenizer.padId, eosId: tokenizer.eosId, replay: path.join(dir, 'replay.i32'), replayRatio: 0.5 };
      const run = await runTrainer(writeJob('sft-parity', { stage: 'instruct', initModel: base, settings: steps, data }));
      expect([run.code, run.stderr]).toEqual([0, expect.any(String)]);
      const trainer = Trainer.create(deserializeModel(readFileSync(base)).model, tokenizer, steps);
      const batches = sftBatches({
        examples, replay: tokenizer.encode(replayText), replayRatio: 0.5,
        batchSize: steps.batchSize, contextLength: tiny.contextLength, seed: steps.seed, padId: tokenizer.padId, eosId: tokenizer.eosId,
      });
      expect(batches(0).mask[0]).toEqual(new Array(tiny.contextLength).fill(1)); // the job really mixes LM rows in
      const losses = Array.from({ length: steps.totalSteps }, (_, step) => trainer.trainStep(batches(step)).loss);
      const fromPython = deserializeModel(readFileSync(path.join(dir, 'sft-parity', 'model.safetensors'))).model.weights();
      const fromTs = trainer.model.weights();
      trainer.dispose();
      expect(ofKind(run.events, 'done')[0]?.loss).toBeCloseTo(losses[losses.length - 1] as number, 4);
      expectSameWeights(fromTs, fromPython);
    });

    test('a job whose replayRatio has no replay file, or is out of range, is refused naming the field', async () => {
      const file = path.join(dir, 'sft-parity.jsonl');
      writeFileSync(file, examples.map((e) => JSON.stringify(e)).join('\n'));
      const base = writeModel('sft-refused-base.safetensors', tiny, 4);
      const sft = { kind: 'sft', examples: file, padId: tokenizer.padId, eosId: tokenizer.eosId };
      const missing = await runTrainer(writeJob('sft-no-replay', { stage: 'instruct', initModel: base, data: { ...sft, replayRatio: 0.3 } }));
      expect(missing.code).toBe(2);
      expect(missing.stderr).toMatch(/data\.replayRatio is 0\.3 but data\.replay names no token file/);
      const tooMuch = await runTrainer(writeJob('sft-all-replay', { stage: 'instruct', initModel: base, data: { ...sft, replay: path.join(dir, 'replay.i32'), replayRatio: 1 } }));
      expect(tooMuch.code).toBe(2);
      expect(tooMuch.stderr).toMatch(/data\.replayRatio must be a number in \[0, 1\), got 1/);
    });
  });

  test('a dacp job and an instruct job from a TS-written base model run to done and lower the loss', async () => {
    const base = writeModel('base.safetensors', tiny, 1);
    const longer = { ...settings, totalSteps: 30 };
    const examples = path.join(dir, 'pairs.jsonl');
    const pairs = ['2+2?|4', 'colour of the sky?|blue', 'capital of France?|Paris', 'opposite of hot?|cold'];
    writeFileSync(examples, pairs.map((pair) => {
      const [prompt, response] = pair.split('|') as [string, string];
      return JSON.stringify({ prompt: tokenizer.encode(`Q: ${prompt}\nA: `), response: tokenizer.encode(response) });
    }).join('\n'));
    const jobs = {
      dacp: writeJob('dacp', { stage: 'dacp', initModel: base, settings: longer }),
      instruct: writeJob('instruct', {
        stage: 'instruct', initModel: base, settings: longer,
        data: { kind: 'sft', examples, padId: tokenizer.padId, eosId: tokenizer.eosId },
      }),
    };
    for (const [stage, job] of Object.entries(jobs)) {
      const run = await runTrainer(job);
      expect([stage, run.code]).toEqual([stage, 0]);
      const first = ofKind(run.events, 'progress')[0]?.loss as number;
      const done = ofKind(run.events, 'done')[0];
      expect(done?.step).toBe(30);
      expect([stage, (done?.loss as number) < first * 0.8]).toEqual([stage, true]);
      deserializeModel(readFileSync(done?.model as string)).model.dispose();
    }
  });

  test('a run killed after a checkpoint and resumed from it ends bitwise equal to an uninterrupted run', async () => {
    const base = writeModel('resume-base.safetensors', tiny, 2);
    const job = { stage: 'dacp', initModel: base, settings: { ...settings, totalSteps: 30 } };
    const straight = await runTrainer(writeJob('straight', job));
    expect(straight.code).toBe(0);

    let announced: { step: number; path: string } | undefined;
    const killed = await runTrainer(writeJob('killed', job), (event, kill) => {
      if (event.event === 'checkpoint' && announced === undefined) {
        announced = event;
        kill('SIGKILL');
      }
    });
    expect(killed.signal).toBe('SIGKILL');
    expect(ofKind(killed.events, 'done')).toHaveLength(0);
    expect(announced?.step).toBe(5);

    const resumed = await runTrainer(writeJob('killed', { ...job, resumeFrom: announced?.path }));
    expect(resumed.code).toBe(0);
    expect(ofKind(resumed.events, 'checkpoint').map((c) => c.step)).toEqual([10, 15, 20, 25, 30]);
    const [a, b] = [straight, resumed].map((run) => ofKind(run.events, 'done')[0]?.model as string);
    expect(tensorsSha(b as string)).toBe(tensorsSha(a as string));
  });

  test('SIGTERM makes it checkpoint the current step and exit 0 without done', async () => {
    const job = writeJob('sigterm', { settings: { ...settings, totalSteps: 100_000 }, checkpointEvery: 50_000 });
    let signalled = false;
    const run = await runTrainer(job, (event, kill) => {
      if (event.event === 'progress' && !signalled) {
        signalled = true;
        kill('SIGTERM');
      }
    });
    expect(run).toMatchObject({ code: 0, signal: null });
    expect(ofKind(run.events, 'done')).toHaveLength(0);
    const last = run.events[run.events.length - 1];
    expect(last?.event).toBe('checkpoint');
    const checkpoint = last as Extract<TrainerEvent, { event: 'checkpoint' }>;
    expect(checkpoint.step).toBeGreaterThan(0);
    expect(checkpoint.step).toBeLessThan(50_000);
    expect(sha256(checkpoint.path)).toBe(checkpoint.sha256);
  });
});
