import { formatInstructionPrompt, mixedLmBatches, sftBatches, sftRow } from '../ml/mixing';
import { ByteTokenizer } from '../ml/tokenizer';

describe('ByteTokenizer', () => {
  const tokenizer = new ByteTokenizer();

  test('has 256 byte ids followed by eos and pad', () => {
    expect([tokenizer.eosId, tokenizer.padId, tokenizer.vocabSize]).toEqual([256, 257, 258]);
  });

  test('round-trips any text through UTF-8 bytes', () => {
    const text = 'Grüße, 世界! 🚀\n\ttabs';
    expect(tokenizer.decode(tokenizer.encode(text))).toBe(text);
    expect(tokenizer.encode('é')).toEqual([0xc3, 0xa9]);
  });

  test('decode skips special tokens and tolerates a cut multi-byte character', () => {
    expect(tokenizer.decode([104, 256, 105, 257])).toBe('hi');
    expect(tokenizer.decode([0xc3])).toBe('\ufffd');
  });

  test('toJSON/fromJSON round-trip and invalid JSON is rejected', () => {
    expect(ByteTokenizer.fromJSON(JSON.parse(JSON.stringify(tokenizer.toJSON()))).vocabSize).toBe(258);
    expect(() => ByteTokenizer.fromJSON({ kind: 'bpe', version: 1 })).toThrow(/invalid tokenizer JSON.*kind/);
  });
});

describe('mixedLmBatches', () => {
  // Disjoint alphabets tell the two streams apart.
  const domain = Array.from({ length: 500 }, (_, i) => i % 100);
  const replay = Array.from({ length: 300 }, (_, i) => 100 + (i % 100));
  const isReplayRow = (row: number[]): boolean => row.every((t) => t >= 100);

  test('holds round(batchSize × replayRatio) replay rows in every batch', () => {
    const batches = mixedLmBatches({ domain, replay, replayRatio: 0.3, batchSize: 10, contextLength: 16, seed: 7 });
    for (const step of [0, 1, 57]) {
      const batch = batches(step);
      expect(batch.inputs.filter(isReplayRow)).toHaveLength(3);
      expect(batch.inputs).toHaveLength(10);
      expect(batch.inputs.every((row) => row.length === 16)).toBe(true);
    }
  });

  test('targets are inputs shifted by one and every position counts', () => {
    const batch = mixedLmBatches({ domain, replay, replayRatio: 0.5, batchSize: 4, contextLength: 8, seed: 1 })(3);
    batch.inputs.forEach((row, r) => expect(row.slice(1)).toEqual(batch.targets[r]?.slice(0, -1)));
    expect(batch.mask.flat().every((m) => m === 1)).toBe(true);
  });

  test('a batch is a pure function of (seed, step)', () => {
    const options = { domain, replay, replayRatio: 0.25, batchSize: 8, contextLength: 16, seed: 11 };
    const first = mixedLmBatches(options);
    const again = mixedLmBatches(options);
    expect(again(5)).toEqual(first(5));
    expect(first(5)).not.toEqual(first(6));
    expect(mixedLmBatches({ ...options, seed: 12 })(5)).not.toEqual(first(5));
  });

  test('falls back to the other stream when one is empty, and reads short streams cyclically', () => {
    const onlyDomain = mixedLmBatches({ domain, replay: [], replayRatio: 0.9, batchSize: 4, contextLength: 8, seed: 1 })(0);
    expect(onlyDomain.inputs.some(isReplayRow)).toBe(false);
    const short = mixedLmBatches({ domain: [], replay: [101, 102, 103], replayRatio: 0, batchSize: 2, contextLength: 8, seed: 1 })(0);
    expect(short.inputs.every(isReplayRow)).toBe(true);
    expect(() => mixedLmBatches({ domain: [], replay: [], replayRatio: 0, batchSize: 1, contextLength: 8, seed: 1 })).toThrow(/both domain and replay streams are empty/);
    expect(() => mixedLmBatches({ domain, replay, replayRatio: 1.5, batchSize: 1, contextLength: 8, seed: 1 })).toThrow(/replayRatio/);
  });
});

describe('mixedLmBatches with weighted domain sources (domainParts)', () => {
  // Three alphabets: part a (0–99), part b (200–299), replay (100–199).
  const a = Array.from({ length: 400 }, (_, i) => i % 100);
  const b = Array.from({ length: 400 }, (_, i) => 200 + (i % 100));
  const replay = Array.from({ length: 300 }, (_, i) => 100 + (i % 100));
  const partOf = (row: number[]) => (row.every((t) => t < 100) ? 'a' : row.every((t) => t >= 200) ? 'b' : row.every((t) => t >= 100 && t < 200) ? 'replay' : 'mixed');
  const rowsOf = (weights: { a: number; b: number }, replayRatio = 0.25, steps = 200) => {
    const batches = mixedLmBatches({
      domain: [],
      domainParts: [{ name: 'a', tokens: a, weight: weights.a }, { name: 'b', tokens: b, weight: weights.b }],
      replay, replayRatio, batchSize: 8, contextLength: 16, seed: 5,
    });
    const counts: Record<string, number> = { a: 0, b: 0, replay: 0, mixed: 0 };
    for (let step = 0; step < steps; step++) for (const row of batches(step).inputs) counts[partOf(row)]++;
    return counts;
  };

  test('each domain row comes from one source, drawn by weight; the replay rows stay round(batchSize × replayRatio)', () => {
    const counts = rowsOf({ a: 0.7, b: 0.3 });
    expect(counts.mixed).toBe(0);
    expect(counts.replay).toBe(200 * 2);
    // 1,200 domain rows; 70 % of them from a, within a few standard deviations (±~16 rows each).
    expect(counts.a / (counts.a + counts.b)).toBeGreaterThan(0.65);
    expect(counts.a / (counts.a + counts.b)).toBeLessThan(0.75);
  });

  test('weights are relative, and a source of weight 0 is never drawn', () => {
    expect(rowsOf({ a: 7, b: 3 })).toEqual(rowsOf({ a: 0.7, b: 0.3 }));
    expect(rowsOf({ a: 0, b: 1 }).a).toBe(0);
    expect(rowsOf({ a: 1, b: 0 }).b).toBe(0);
  });

  test('a batch is a pure function of (seed, step), and bad parts are refused naming the part', () => {
    const o = { domain: [], domainParts: [{ name: 'a', tokens: a, weight: 1 }, { name: 'b', tokens: b, weight: 2 }], replay, replayRatio: 0.5, batchSize: 4, contextLength: 8, seed: 3 };
    expect(mixedLmBatches(o)(9)).toEqual(mixedLmBatches(o)(9));
    expect(() => mixedLmBatches({ ...o, domainParts: [{ name: 'a', tokens: [], weight: 1 }] })).toThrow(/domain part "a" has weight 1 but no text/);
    expect(() => mixedLmBatches({ ...o, domainParts: [{ name: 'a', tokens: a, weight: 0 }] })).toThrow(/at least one a weight above 0/);
    expect(() => mixedLmBatches({ ...o, domainParts: [{ name: 'b', tokens: b, weight: -1 }] })).toThrow(/domain part "b": weight must be a number ≥ 0/);
  });
});

describe('sftBatches', () => {
  const pad = 257;
  const eos = 256;

  test('mask is 1 only on response and eos targets, 0 on prompt and padding', () => {
    const row = sftRow({ prompt: [1, 2, 3], response: [4, 5] }, { contextLength: 8, padId: pad, eosId: eos });
    expect(row.inputs).toEqual([1, 2, 3, 4, 5, eos, pad, pad]);
    expect(row.targets).toEqual([2, 3, 4, 5, eos, pad, pad, pad]);
    expect(row.mask).toEqual([0, 0, 1, 1, 1, 0, 0, 0]);
  });

  test('a long prompt loses its start so the response keeps at least half the window', () => {
    const row = sftRow({ prompt: Array.from({ length: 20 }, (_, i) => i), response: [90, 91, 92] }, { contextLength: 8, padId: pad, eosId: eos });
    expect(row.inputs).toEqual([15, 16, 17, 18, 19, 90, 91, 92]);
    expect(row.targets.slice(-4)).toEqual([90, 91, 92, eos]);
    expect(row.mask).toEqual([0, 0, 0, 0, 1, 1, 1, 1]);
  });

  test('visits every example once per epoch, deterministically', () => {
    const examples = Array.from({ length: 6 }, (_, i) => ({ prompt: [i], response: [10 + i] }));
    const batches = sftBatches({ examples, batchSize: 3, contextLength: 4, seed: 5, padId: pad, eosId: eos });
    const firstEpoch = [...batches(0).inputs, ...batches(1).inputs].map((row) => row[0]);
    expect([...firstEpoch].sort()).toEqual([0, 1, 2, 3, 4, 5]);
    expect(sftBatches({ examples, batchSize: 3, contextLength: 4, seed: 5, padId: pad, eosId: eos })(7)).toEqual(batches(7));
  });

  describe('with replay text mixed in', () => {
    // Replay ids (100..199) never occur in the pairs (0..29 and the specials), so rows tell their kind.
    const examples = Array.from({ length: 10 }, (_, i) => ({ prompt: [i, i + 1], response: [20 + (i % 10)] }));
    const replay = Array.from({ length: 400 }, (_, i) => 100 + ((i * 7) % 100));
    const options = { examples, batchSize: 8, contextLength: 12, seed: 3, padId: pad, eosId: eos, replay };
    const isReplayRow = (row: number[]): boolean => row.every((t) => t >= 100 && t < 200);

    test('holds round(batchSize × replayRatio) replay rows first, then pair rows', () => {
      const batches = sftBatches({ ...options, replayRatio: 0.3 });
      for (const step of [0, 1, 9, 1234]) {
        const batch = batches(step);
        expect(batch.inputs.map(isReplayRow)).toEqual([true, true, false, false, false, false, false, false]);
        expect(batch.inputs.every((row) => row.length === 12)).toBe(true);
      }
    });

    test('replay rows are consecutive windows of the stream with every target counting; pair rows mask the prompt', () => {
      const batch = sftBatches({ ...options, replayRatio: 0.5 })(4);
      for (let r = 0; r < 4; r++) {
        const window = [...(batch.inputs[r] as number[]), (batch.targets[r] as number[])[11] as number];
        const start = replay.indexOf(window[0] as number);
        expect(window).toEqual(replay.slice(start, start + 13));
        expect(batch.targets[r]).toEqual(window.slice(1));
        expect(batch.mask[r]).toEqual(new Array(12).fill(1));
      }
      for (let r = 4; r < 8; r++) {
        // prompt (2) + response (1) + eos: targets 1 and 2 count, the prompt's and the padding's do not.
        expect(batch.mask[r]).toEqual([0, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
      }
    });

    test('pair rows still visit every example once per epoch, at the pair rows per step', () => {
      const batches = sftBatches({ ...options, batchSize: 4, replayRatio: 0.5 });
      const firstEpoch = Array.from({ length: 5 }, (_, step) => batches(step).inputs.slice(2).map((row) => row[0]));
      expect(firstEpoch.flat().sort((a, b) => (a as number) - (b as number))).toEqual([0, 1, 2, 3, 4, 5, 6, 7, 8, 9]);
    });

    test('a batch is a pure function of (seed, step), so a resumed run sees the same rows', () => {
      const first = sftBatches({ ...options, replayRatio: 0.25 });
      expect(sftBatches({ ...options, replayRatio: 0.25 })(17)).toEqual(first(17));
      expect(first(17).inputs.slice(0, 2)).not.toEqual(first(18).inputs.slice(0, 2));
      expect(sftBatches({ ...options, replayRatio: 0.25, seed: 4 })(17).inputs.slice(0, 2)).not.toEqual(first(17).inputs.slice(0, 2));
    });

    test('ratio 0, and an empty replay stream, give exactly the batches of pure SFT', () => {
      const pure = sftBatches({ examples, batchSize: 8, contextLength: 12, seed: 3, padId: pad, eosId: eos });
      const zero = sftBatches({ ...options, replayRatio: 0 });
      const empty = sftBatches({ ...options, replay: [], replayRatio: 0.5 });
      for (const step of [0, 3, 50]) {
        expect(zero(step)).toEqual(pure(step));
        expect(empty(step)).toEqual(pure(step));
      }
    });

    test('every batch keeps at least one pair row; bad ratios and a missing stream are named', () => {
      const tiny = sftBatches({ ...options, batchSize: 2, replayRatio: 0.9 })(0);
      expect(tiny.inputs.map(isReplayRow)).toEqual([true, false]);
      expect(() => sftBatches({ ...options, replayRatio: 1 })).toThrow(/replayRatio must be in \[0, 1\).*got 1/);
      expect(() => sftBatches({ ...options, replayRatio: -0.1 })).toThrow(/replayRatio must be in \[0, 1\)/);
      expect(() => sftBatches({ ...options, replay: undefined, replayRatio: 0.2 })).toThrow(/replayRatio 0.2 needs a replay token stream/);
    });
  });

  test('the instruction template is the one documented', () => {
    expect(formatInstructionPrompt('Say hi')).toBe('### Instruction:\nSay hi\n\n### Response:\n');
  });
});
