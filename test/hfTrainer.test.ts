import { spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { initBackend } from '../ml/backend';
import { gpt2FolderFiles, readHfWeights, writeFolder } from '../ml/hfFolder';
import { mixedLmBatches, sftBatches, type Batch, type SftExample } from '../ml/mixing';
import { GPT, type ModelConfig } from '../ml/model';
import { ByteTokenizer } from '../ml/tokenizer';
import { Trainer, type TrainSettings } from '../ml/train';
import {
  runExternalTrainer,
  TrainerExitError,
  writeTokenFile,
  type TrainerEvent,
  type TrainerJob,
} from '../ml/externalTrainer';

/**
 * The hf engine's trainer (trainers/hf/dacp_hf_trainer.py) as any command trainer meets it: a
 * dacp-trainer/2 job with no `hf` settings, on dacp's own GPT-2 models written as folders. Its
 * batches are ml/mixing.ts's to the token, so it trains what the built-in engine trains, for
 * several weighted domain sources and for instruction tuning with replay; it refuses malformed jobs
 * naming the field; SIGTERM makes it checkpoint and stop. (Resume after SIGKILL, DDP and FSDP are in
 * test/hfEngine.test.ts.)
 */

const root = path.resolve(__dirname, '..');
const python = path.join(root, '.tools', 'venv', 'bin', 'python');
const trainer = path.join(root, 'trainers', 'hf', 'dacp_hf_trainer.py');
const env = { ...process.env, DACP_TORCH_THREADS: '1', TRANSFORMERS_VERBOSITY: 'error' };
const ready = existsSync(python) && spawnSync(python, ['-c', 'import transformers'], { env }).status === 0;
if (!ready) console.warn(`skipping the hf trainer tests: ${python} cannot import transformers (run \`bash scripts/setup-python.sh\`)`);
const withPython = ready ? describe : describe.skip;

const tokenizer = new ByteTokenizer();
const tiny: ModelConfig = { vocabSize: tokenizer.vocabSize, contextLength: 16, dModel: 16, nLayers: 1, nHeads: 2 };
const settings: TrainSettings = {
  totalSteps: 4, batchSize: 4, learningRate: 1e-2, warmupSteps: 2, minLrRatio: 0.1, weightDecay: 0.01, gradClip: 1, seed: 5,
};
const texts = {
  domain: 'the cat sat on the mat. '.repeat(40),
  lease: 'clause four binds the lessee. '.repeat(30),
  replay: 'general text about many things. '.repeat(20),
};
const examples: SftExample[] = ['2+2?|4', 'colour of the sky?|blue', 'capital of France?|Paris', 'opposite of hot?|cold', 'a long question that will not fit the window?|no']
  .map((pair) => pair.split('|') as [string, string])
  .map(([prompt, response]) => ({ prompt: tokenizer.encode(`Q: ${prompt}\nA: `), response: tokenizer.encode(response) }));

let dir: string;

withPython('the hf trainer as a command trainer (dacp-trainer/2, no hf settings)', () => {
  beforeAll(async () => {
    await initBackend('cpu');
    dir = mkdtempSync(path.join(tmpdir(), 'dacp-hf-trainer-'));
    for (const [name, text] of Object.entries(texts)) await writeTokenFile(path.join(dir, `${name}.i32`), tokenizer.encode(text));
    writeFileSync(path.join(dir, 'sft.jsonl'), examples.map((e) => JSON.stringify(e)).join('\n'));
  });
  afterAll(() => {
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  /** A fresh dacp GPT-2 as a model folder; the model itself for the built-in side. */
  async function base(name: string, seed: number): Promise<{ folder: string; model: GPT }> {
    const model = GPT.create(tiny, seed);
    const folder = path.join(dir, name);
    await writeFolder(folder, gpt2FolderFiles(model, tokenizer));
    return { folder, model };
  }

  function job(name: string, over: Partial<TrainerJob>): TrainerJob {
    return {
      protocol: 'dacp-trainer/2',
      stage: 'dacp',
      initModelDir: path.join(dir, 'missing'),
      contextLength: tiny.contextLength,
      data: { kind: 'lm', domain: path.join(dir, 'domain.i32'), replay: path.join(dir, 'replay.i32'), replayRatio: 0.25 },
      settings,
      checkpointEvery: 1,
      checkpointDir: path.join(dir, name, 'checkpoints'),
      resumeFrom: null,
      outputModelDir: path.join(dir, name, 'model'),
      ...over,
    };
  }

  async function run(name: string, over: Partial<TrainerJob>, signal?: AbortSignal) {
    const events: TrainerEvent[] = [];
    const push = async (e: TrainerEvent) => {
      events.push(e);
    };
    try {
      const { done } = await runExternalTrainer({
        command: [python, trainer],
        job: job(name, over),
        workDir: path.join(dir, name),
        env: { DACP_TORCH_THREADS: '1' },
        stderrFile: path.join(dir, `${name}.stderr.log`),
        onProgress: push,
        onCheckpoint: push,
        ...(signal ? { signal, killGraceMs: 60_000 } : {}),
      });
      return { done, events, error: undefined };
    } catch (error) {
      return { done: undefined, events, error: error as Error };
    }
  }

  const lossesOf = (events: TrainerEvent[]) => events.filter((e) => e.event === 'progress').map((e) => [e.step, (e as { loss: number }).loss] as const);

  /** Per-step losses of both engines agree to 1e-3, and so does every trained weight. */
  async function expectSameTraining(hf: { events: TrainerEvent[]; done?: { model: string } }, model: GPT, batches: (step: number) => Batch, s: TrainSettings) {
    const builtin = Trainer.create(model, tokenizer, s);
    const losses = Array.from({ length: s.totalSteps }, (_, step) => builtin.trainStep(batches(step)).loss);
    const fromHf = new Map(lossesOf(hf.events));
    losses.forEach((loss, i) => expect([i + 1, Math.abs((fromHf.get(i + 1) as number) / loss - 1) < 1e-3]).toEqual([i + 1, true]));
    const { weights } = await readHfWeights(hf.done?.model as string);
    for (const [name, values] of Object.entries(builtin.model.weights())) {
      const other = weights[name] as Float32Array;
      const worst = values.reduce((max, v, i) => Math.max(max, Math.abs(v - (other[i] as number))), 0);
      expect([name, worst < 1e-3]).toEqual([name, true]);
    }
    builtin.dispose();
  }

  test.each([
    ['two parts, 0.7 / 0.3', [0.7, 0.3]],
    ['a part of weight 0', [0, 1]],
    ['three parts, one of them short', [1, 1, 2]],
  ] as const)('dacp_data.lm_batches with domain parts builds exactly the batches of ml/mixing.ts: %s', (_, weights) => {
    const parts = [texts.domain, texts.lease, 'tiny.'];
    const domainParts = weights.map((weight, i) => ({ name: `p${i}`, tokens: tokenizer.encode(parts[i] as string), weight }));
    const replay = tokenizer.encode(texts.replay);
    const o = { replayRatio: 0.25, batchSize: 6, contextLength: tiny.contextLength, seed: 4 };
    const steps = [0, 1, 2, 31];
    const fromTs = mixedLmBatches({ ...o, domain: [], domainParts, replay });
    const program = [
      'import json, sys',
      `sys.path.insert(0, ${JSON.stringify(path.dirname(trainer))})`,
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
    expect(JSON.parse(result.stdout)).toEqual(steps.map((step) => [fromTs(step).inputs, fromTs(step).targets]));
  });

  test.each([
    ['no replay', null, 0],
    ['ratio 0 with a stream', 'stream', 0],
    ['a quarter replay', 'stream', 0.25],
    ['half of 5 rows (JS rounds 2.5 up)', 'stream', 0.5],
    ['a stream shorter than a window, read cyclically', 'short', 0.6],
    ['an empty stream (pure SFT)', 'empty', 0.5],
  ] as const)('dacp_data.sft_batches builds exactly the batches of ml/mixing.ts sftBatches: %s', (_, stream, replayRatio) => {
    const replay = stream === null ? null : stream === 'empty' ? [] : tokenizer.encode(stream === 'short' ? 'tiny.' : texts.replay);
    const o = { examples, replayRatio, batchSize: 5, contextLength: tiny.contextLength, seed: 9, steps: [0, 1, 2, 13] };
    const fromTs = sftBatches({ ...o, replay: replay ?? undefined, padId: tokenizer.padId, eosId: tokenizer.eosId });
    const program = [
      'import json, sys',
      `sys.path.insert(0, ${JSON.stringify(path.dirname(trainer))})`,
      'import torch',
      'from dacp_data import sft_batches',
      'o = json.load(sys.stdin)',
      'replay = None if o["replay"] is None else torch.tensor(o["replay"], dtype=torch.int64)',
      'batches = sft_batches([(e["prompt"], e["response"]) for e in o["examples"]], o["batchSize"], o["contextLength"], o["seed"],',
      '                      o["padId"], o["eosId"], replay, o["replayRatio"])',
      'out = [[t.tolist() for t in batches(step)] for step in o["steps"]]',
      'print(json.dumps([{"inputs": i, "targets": t, "mask": m} for i, t, m in out]))',
    ].join('\n');
    const input = JSON.stringify({ ...o, replay, padId: tokenizer.padId, eosId: tokenizer.eosId });
    const result = spawnSync(python, ['-c', program], { env, input, encoding: 'utf8' });
    expect([result.status, result.status === 0 ? '' : result.stderr]).toEqual([0, '']);
    expect(JSON.parse(result.stdout)).toEqual(o.steps.map((step) => fromTs(step)));
  });

  test('a dacp job with two weighted domain parts trains what the built-in engine trains; a malformed list is refused naming the field', async () => {
    const { folder, model } = await base('parts-base', 8);
    const data = {
      kind: 'lm' as const,
      domainParts: [{ name: 'a', tokens: path.join(dir, 'domain.i32'), weight: 0.3 }, { name: 'b', tokens: path.join(dir, 'lease.i32'), weight: 0.7 }],
      replay: path.join(dir, 'replay.i32'),
      replayRatio: 0.25,
    };
    const hf = await run('parts', { initModelDir: folder, data });
    expect(hf.error).toBeUndefined();
    const batches = mixedLmBatches({
      domain: [],
      domainParts: [
        { name: 'a', tokens: tokenizer.encode(texts.domain), weight: 0.3 },
        { name: 'b', tokens: tokenizer.encode(texts.lease), weight: 0.7 },
      ],
      replay: tokenizer.encode(texts.replay),
      replayRatio: 0.25, batchSize: settings.batchSize, contextLength: tiny.contextLength, seed: settings.seed,
    });
    await expectSameTraining(hf, model, batches, settings);
    const bad = await run('parts-bad', { initModelDir: folder, data: { ...data, domainParts: [{ name: 'a', weight: 1 } as never] } });
    expect(bad.error).toBeInstanceOf(TrainerExitError);
    expect((bad.error as TrainerExitError).stderrTail).toMatch(/data\.domainParts must be a list of/);
  });

  test('an instruct job with replay rows trains what the built-in engine trains', async () => {
    const { folder, model } = await base('sft-base', 4);
    const data = { kind: 'sft' as const, examples: path.join(dir, 'sft.jsonl'), padId: tokenizer.padId, eosId: tokenizer.eosId, replay: path.join(dir, 'replay.i32'), replayRatio: 0.5 };
    const hf = await run('sft', { stage: 'instruct', initModelDir: folder, data });
    expect(hf.error).toBeUndefined();
    const batches = sftBatches({
      examples, replay: tokenizer.encode(texts.replay), replayRatio: 0.5,
      batchSize: settings.batchSize, contextLength: tiny.contextLength, seed: settings.seed, padId: tokenizer.padId, eosId: tokenizer.eosId,
    });
    expect(batches(0).mask[0]).toEqual(new Array(tiny.contextLength).fill(1)); // the job really mixes LM rows in
    await expectSameTraining(hf, model, batches, settings);
  });

  test('a job whose replayRatio has no replay file, or is out of range, is refused naming the field', async () => {
    const { folder, model } = await base('refused-base', 4);
    model.dispose();
    const sft = { kind: 'sft' as const, examples: path.join(dir, 'sft.jsonl'), padId: tokenizer.padId, eosId: tokenizer.eosId };
    const missing = await run('sft-no-replay', { stage: 'instruct', initModelDir: folder, data: { ...sft, replayRatio: 0.3 } as never });
    expect((missing.error as TrainerExitError).stderrTail).toMatch(/data\.replayRatio is 0\.3 but data\.replay names no token file/);
    const tooMuch = await run('sft-all-replay', { stage: 'instruct', initModelDir: folder, data: { ...sft, replay: path.join(dir, 'replay.i32'), replayRatio: 1 } as never });
    expect((tooMuch.error as TrainerExitError).stderrTail).toMatch(/data\.replayRatio must be a number in \[0, 1\), got 1/);
  });

  test('a bootstrap job (fresh weights dacp wrote) and an instruct job run to done and lower the loss', async () => {
    const { folder, model } = await base('fresh', 1);
    model.dispose();
    const longer = { ...settings, totalSteps: 30 };
    for (const [stage, data] of [
      ['bootstrap', undefined],
      ['instruct', { kind: 'sft', examples: path.join(dir, 'sft.jsonl'), padId: tokenizer.padId, eosId: tokenizer.eosId }],
    ] as const) {
      const hf = await run(`fresh-${stage}`, { stage, initModelDir: folder, settings: longer, checkpointEvery: 10, ...(data ? { data } : {}) });
      expect([stage, hf.error]).toEqual([stage, undefined]);
      const losses = lossesOf(hf.events);
      expect(hf.done?.step).toBe(30);
      expect([stage, (hf.done?.loss as number) < (losses[0]?.[1] as number) * 0.8]).toEqual([stage, true]);
      expect(Object.keys((await readHfWeights(hf.done?.model as string)).weights)).toContain('wte');
    }
  });

  test('SIGTERM makes it checkpoint the current step and exit 0 without done', async () => {
    const { folder, model } = await base('sigterm-base', 2);
    model.dispose();
    const abort = new AbortController();
    const events: TrainerEvent[] = [];
    const result = runExternalTrainer({
      command: [python, trainer],
      job: job('sigterm', { initModelDir: folder, settings: { ...settings, totalSteps: 100_000 }, checkpointEvery: 50_000 }),
      workDir: path.join(dir, 'sigterm'),
      env: { DACP_TORCH_THREADS: '1' },
      stderrFile: path.join(dir, 'sigterm.stderr.log'),
      signal: abort.signal,
      killGraceMs: 60_000,
      onProgress: (e) => {
        events.push(e);
        abort.abort();
      },
      onCheckpoint: async (e) => {
        events.push(e);
      },
    });
    const error = await result.then(() => undefined, (e: unknown) => e);
    // The runner settles with the abort once the trainer has exited, after the checkpoint it wrote on SIGTERM.
    expect((error as Error).name).toBe('AbortError');
    const last = events[events.length - 1] as Extract<TrainerEvent, { event: 'checkpoint' }>;
    expect(last.event).toBe('checkpoint');
    expect(last.step).toBeGreaterThan(0);
    expect(last.step).toBeLessThan(50_000);
    expect(readFileSync(path.join(dir, 'sigterm.stderr.log'), 'utf8')).toContain(`stopped at step ${last.step} of 100000`);
  });
});
