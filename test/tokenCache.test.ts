import { rmSync } from 'node:fs';
import { sftExamplesOf, tokenizerSha256, tokenStreamOf } from '../activities/datasets';
import { formatInstructionPrompt } from '../ml/mixing';
import { BpeTokenizer, ByteTokenizer, encodeDocuments } from '../ml/tokenizer';
import { startTrainingBench, type TrainingBench } from './helpers/trainingBench';

/**
 * Token streams are cached as artifacts keyed by (tokenizer, dataset sha256), so a retried attempt
 * reads the ids instead of tokenizing its corpus again.
 */

const text = (i: number) => `Record ${i}: the pump on line ${i % 7} was serviced and its seal replaced. `.repeat(3);

let bench: TrainingBench;

beforeAll(async () => {
  bench = await startTrainingBench();
});

afterAll(async () => {
  await bench?.stop();
});

afterEach(() => {
  jest.restoreAllMocks();
});

const cacheRows = async () =>
  (await bench.db.pool.query('SELECT tokenizer_sha256, dataset_sha256, layout, uri, sha256, tokens::int FROM token_cache ORDER BY dataset_sha256, layout')).rows;

describe('token streams are cached as artifacts', () => {
  test('a retried training attempt reads its token streams from the cache and does not tokenize', async () => {
    const tokenizer = new ByteTokenizer();
    const runId = await bench.newRun('cache');
    const input = {
      runId,
      round: 0,
      spec: bench.spec({ dacp: { steps: 4, batchSize: 4, learningRate: 1e-3, checkpointEvery: 2 } }),
      baseDir: '.',
      replayRatio: 0.25,
      baseModel: await bench.baseModel(tokenizer),
      domain: await bench.dataset('domain', Array.from({ length: 30 }, (_, i) => text(i))),
      replay: await bench.dataset('replay', Array.from({ length: 20 }, (_, i) => text(500 + i))),
    };
    const encode = jest.spyOn(ByteTokenizer.prototype, 'encode');

    const first = await bench.attempt(() => bench.activities.continualPretrain(input));
    expect(first.error).toBeUndefined();
    expect(encode).toHaveBeenCalledTimes(50);
    const rows = await cacheRows();
    expect(rows.map((r) => [r.dataset_sha256, r.layout])).toEqual(
      [[input.domain.sha256, 'lm/1'], [input.replay.sha256, 'lm/1']].sort((a, b) => (a[0] as string).localeCompare(b[0] as string)),
    );
    expect(new Set(rows.map((r) => r.tokenizer_sha256))).toEqual(new Set([tokenizerSha256(tokenizer)]));

    encode.mockClear();
    const second = await bench.attempt(() => bench.activities.continualPretrain(input), { attempt: 2 });
    expect(second.error).toBeUndefined();
    expect(encode).not.toHaveBeenCalled();
    expect(second.result?.attempt).toBe(2);
    expect(second.result?.finalStep).toBe(4);
    expect(await cacheRows()).toEqual(rows);
  });

  test('the cached stream is exactly what tokenizing gives, and a cache whose artifact is gone is rebuilt', async () => {
    const texts = Array.from({ length: 12 }, (_, i) => text(1000 + i));
    const dataset = await bench.dataset('replay', texts);
    const tokenizer = BpeTokenizer.train(texts, { vocabSize: 300 });
    const expected = await encodeDocuments(tokenizer, texts);
    const encode = jest.spyOn(BpeTokenizer.prototype, 'encode');
    const read = () => bench.attempt(() => tokenStreamOf(bench.deps, tokenizer, dataset));

    expect((await read()).result).toEqual(expected);
    expect(encode).toHaveBeenCalledTimes(texts.length);
    encode.mockClear();
    expect((await read()).result).toEqual(expected);
    expect(encode).not.toHaveBeenCalled();

    const { rows } = await bench.db.pool.query('SELECT uri FROM token_cache WHERE dataset_sha256 = $1', [dataset.sha256]);
    expect(rows).toHaveLength(1);
    rmSync(bench.store.pathOf(rows[0].uri));
    expect((await read()).result).toEqual(expected);
    expect(encode).toHaveBeenCalledTimes(texts.length);
    // The same ids, so the same content address: the rebuilt artifact is back where the row points.
    const rebuilt = (await cacheRows()).find((r) => r.dataset_sha256 === dataset.sha256);
    expect(rebuilt?.uri).toBe(rows[0].uri);
    expect(await bench.store.verify({ uri: rebuilt?.uri, sha256: rebuilt?.sha256 })).toBe(true);
  });

  test('instruction pairs are cached too, as prompt (in the instruction template) and response ids', async () => {
    const pairs = Array.from({ length: 9 }, (_, i) => ({ prompt: `What was serviced on line ${i}?`, response: `The pump on line ${i}.` }));
    const dataset = await bench.pairs(pairs);
    const tokenizer = new ByteTokenizer();
    const expected = pairs.map((p) => ({ prompt: tokenizer.encode(formatInstructionPrompt(p.prompt)), response: tokenizer.encode(p.response) }));
    const encode = jest.spyOn(ByteTokenizer.prototype, 'encode');

    expect((await bench.attempt(() => sftExamplesOf(bench.deps, tokenizer, dataset))).result).toEqual(expected);
    encode.mockClear();
    expect((await bench.attempt(() => sftExamplesOf(bench.deps, tokenizer, dataset))).result).toEqual(expected);
    expect(encode).not.toHaveBeenCalled();
  });
});
