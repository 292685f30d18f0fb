import { evaluationActivities } from '../activities/evaluation';
import { initBackend } from '../ml/backend';
import { instructionScore, perplexity } from '../ml/evaluate';
import { GPT } from '../ml/model';
import { ByteTokenizer } from '../ml/tokenizer';
import { startTrainingBench, type TrainingBench } from './helpers/trainingBench';

/**
 * Evaluation does not block the worker's event loop: it yields between forward passes, so timers
 * (and with them heartbeats and cancellation) keep running during a long evaluation.
 */

const tokenizer = new ByteTokenizer();
const config = { vocabSize: tokenizer.vocabSize, contextLength: 16, dModel: 16, nLayers: 1, nHeads: 2 };
const longText = tokenizer.encode('Evaluation must leave the event loop free for heartbeats. '.repeat(60));

/** Counts ticks of a 1 ms interval while `work` runs: with synchronous work, none can fire. */
async function ticksDuring(work: () => Promise<unknown>): Promise<number> {
  let ticks = 0;
  const timer = setInterval(() => ticks++, 1);
  try {
    await work();
  } finally {
    clearInterval(timer);
  }
  return ticks;
}

let bench: TrainingBench;

beforeAll(async () => {
  await initBackend('wasm');
  bench = await startTrainingBench();
});

afterAll(async () => {
  await bench?.stop();
});

describe('evaluation yields to the event loop', () => {
  test('perplexity over many windows lets timers fire and reports each forward pass', async () => {
    const model = GPT.create(config, 1);
    const progress: number[] = [];
    const windows = Math.ceil((longText.length - 1) / config.contextLength);
    try {
      const ticks = await ticksDuring(() => perplexity(model, longText, { onProgress: ({ done }) => progress.push(done) }));
      expect(ticks).toBeGreaterThan(0);
    } finally {
      model.dispose();
    }
    expect(progress.length).toBe(Math.ceil(windows / 8));
    expect(progress.at(-1)).toBe(windows);
  });

  test('instructionScore lets timers fire while it generates', async () => {
    const model = GPT.create(config, 1);
    const pairs = [{ prompt: 'Say hi', response: 'hi' }, { prompt: 'Count', response: '1 2 3' }];
    const done: number[] = [];
    try {
      const ticks = await ticksDuring(() => instructionScore(model, tokenizer, pairs, { maxNewTokens: 16, onProgress: (p) => done.push(p.done) }));
      expect(ticks).toBeGreaterThan(0);
    } finally {
      model.dispose();
    }
    expect(done).toEqual([1, 2]);
  });

  test('the forgetting evaluation heartbeats between windows, for each model and held-out set', async () => {
    const runId = await bench.newRun('eval');
    const text = (i: number) => `Held-out record ${i} about valves and pumps. `.repeat(5);
    const input = {
      runId,
      round: 0,
      spec: bench.spec({ forgetting: { maxGeneralRegression: 5, minDomainGain: -1, maxEvalWindows: 64 } }),
      replayRatio: 0.25,
      baseModel: await bench.baseModel(tokenizer, { contextLength: 16, dModel: 16, nLayers: 1, nHeads: 2 }),
      adaptedModel: await bench.baseModel(tokenizer, { contextLength: 16, dModel: 16, nLayers: 1, nHeads: 2 }),
      domainHeldout: await bench.dataset('domain', Array.from({ length: 20 }, (_, i) => text(i))),
      generalHeldout: await bench.dataset('replay', Array.from({ length: 20 }, (_, i) => text(100 + i))),
    };
    const { evaluateForgetting } = evaluationActivities(bench.deps);
    const attempt = await bench.attempt(() => evaluateForgetting(input));
    expect(attempt.error).toBeUndefined();
    const windows = attempt.heartbeats
      .map((h) => h.details as { model?: string; set?: string; done?: number })
      .filter((d) => typeof d.done === 'number' && d.done > 0);
    for (const model of ['base', 'adapted']) {
      for (const set of ['general', 'domain']) {
        const passes = windows.filter((d) => d.model === model && d.set === set).map((d) => d.done);
        // 64 windows, 8 per forward pass: a heartbeat after each of the 8 passes.
        expect(passes).toEqual([8, 16, 24, 32, 40, 48, 56, 64]);
      }
    }
  });
});
