import type { TrainingHeartbeat } from '../activities/checkpoints';
import { BpeTokenizer } from '../ml/tokenizer';
import { startTrainingBench, type TrainingBench } from './helpers/trainingBench';

/**
 * Preparing a stage's data (reading the corpus, training the BPE tokenizer, tokenizing) is long
 * synchronous work. It pauses to heartbeat, so a corpus that takes longer than the heartbeat
 * timeout to prepare does not fail every attempt.
 */

/** Longest silence allowed while preparing: well under any heartbeatTimeout a spec may set (≥ 1 s). */
const MAX_SILENCE_MS = 1_000;

let bench: TrainingBench;

beforeAll(async () => {
  bench = await startTrainingBench();
});

afterAll(async () => {
  await bench?.stop();
});

/** Many distinct made-up words, so BPE training and encoding have real work to do. */
function corpus(docs: number, seed: number): string[] {
  let state = seed >>> 0;
  const next = () => {
    state = (Math.imul(state, 1664525) + 1013904223) >>> 0;
    return state;
  };
  const letters = 'abcdefghijklmnopqrstuvwxyz';
  const word = () => Array.from({ length: 3 + (next() % 8) }, () => letters[next() % 26]).join('');
  return Array.from({ length: docs }, () => Array.from({ length: 120 }, word).join(' ') + '.');
}

/** Gaps between the start and each heartbeat sent before training began (no loss yet). */
function preparationSilences(attempt: { startedAt: number; heartbeats: { at: number; details: unknown }[] }) {
  const preparing = attempt.heartbeats.filter((h) => (h.details as TrainingHeartbeat).loss === null);
  const times = [attempt.startedAt, ...preparing.map((h) => h.at)];
  return { count: preparing.length, longest: Math.max(...times.slice(1).map((t, i) => t - (times[i] as number))), lasted: (times.at(-1) as number) - attempt.startedAt };
}

describe('data preparation heartbeats', () => {
  test('bootstrap keeps heartbeating while it trains its BPE tokenizer and tokenizes the corpus', async () => {
    const runId = await bench.newRun('prep');
    const spec = bench.spec({
      baseModel: {
        bootstrapIfMissing: true,
        shape: { contextLength: 16, dModel: 16, nLayers: 1, nHeads: 2 },
        tokenizer: { kind: 'bpe', vocabSize: 2048 },
        bootstrap: { steps: 1, batchSize: 2, learningRate: 1e-3, checkpointEvery: 1 },
      },
      heartbeatTimeout: '1s',
    });
    const corpusRef = await bench.dataset('replay', corpus(1_500, 3));
    const attempt = await bench.attempt(() => bench.activities.bootstrapBaseModel({ runId, spec, baseDir: '.', corpus: corpusRef }), {
      heartbeatTimeoutMs: 1_000,
    });
    expect(attempt.error).toBeUndefined();
    expect(attempt.result?.finalStep).toBe(1);
    const silences = preparationSilences(attempt);
    // Preparing took longer than two heartbeat timeouts, yet no silence came near one.
    expect(silences.lasted).toBeGreaterThan(2 * MAX_SILENCE_MS);
    expect(silences.count).toBeGreaterThan(3);
    expect(silences.longest).toBeLessThan(MAX_SILENCE_MS);
  });

  test('BPE training gives the event loop a turn and reports progress, and learns the same merges as before', async () => {
    const texts = corpus(400, 5);
    let ticks = 0;
    const ticker = setInterval(() => ticks++, 5);
    const phases = new Set<string>();
    try {
      const paced = await BpeTokenizer.trainAsync(texts, { vocabSize: 1024, sliceMs: 10, onProgress: (p) => void phases.add(p.phase) });
      expect(paced.toJSON()).toEqual(BpeTokenizer.train(texts, { vocabSize: 1024 }).toJSON());
    } finally {
      clearInterval(ticker);
    }
    expect(ticks).toBeGreaterThan(0);
    expect([...phases].sort()).toEqual(['counting', 'merging']);
  });
});
