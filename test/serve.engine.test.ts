import { initBackend } from '../ml/backend';
import { createModel, type AnyModelConfig } from '../ml/families';
import { ByteTokenizer } from '../ml/tokenizer';
import { Generator, nucleus, type LoadedModel } from '../serve/engine';

/**
 * The serving loop batches every active request into one forward pass, padding shorter windows on
 * the right. Under the causal mask that changes nothing: each request generates exactly what it
 * generates alone, for both families.
 */

const tokenizer = new ByteTokenizer();

function loaded(config: AnyModelConfig): LoadedModel {
  const model = createModel(config, 3);
  return { versionId: 'test:v1', sha256: 'x'.repeat(64), model, tokenizer, contextLength: config.contextLength };
}

async function tokensOf(gen: Generator, prompt: string, maxTokens: number): Promise<number[]> {
  const out: number[] = [];
  await gen.generate({ promptIds: tokenizer.encode(prompt), maxTokens, temperature: 0, topP: 1, seed: 0, onToken: (id) => (out.push(id), true) });
  return out;
}

beforeAll(async () => {
  await initBackend('cpu');
});

test.each([
  ['GPT-2', { vocabSize: tokenizer.vocabSize, contextLength: 24, dModel: 16, nLayers: 2, nHeads: 2 }],
  ['Llama', { family: 'llama', vocabSize: tokenizer.vocabSize, contextLength: 24, dModel: 16, nLayers: 2, nHeads: 2, nKvHeads: 1, headDim: 8, ffnDim: 32, rmsNormEps: 1e-5, ropeTheta: 10000, ropeScaling: null, tiedEmbeddings: true, attentionBias: 'none' }],
] as const)('%s: requests of different lengths batched together generate what each generates alone', async (_, config) => {
  const gen = new Generator(loaded(config as unknown as AnyModelConfig));
  const prompts = ['a', 'the alarm', 'site 12 lost its link', 'x'.repeat(20)];
  const alone: number[][] = [];
  for (const p of prompts) alone.push(await tokensOf(gen, p, 8));
  const before = { ...gen.stats };
  const together = await Promise.all(prompts.map((p) => tokensOf(gen, p, 8)));
  expect(together).toEqual(alone);
  // They shared passes: more rows than passes.
  expect(gen.stats.rows - before.rows).toBeGreaterThan(gen.stats.passes - before.passes);
  gen.retire();
});

test('nucleus sampling keeps the smallest set reaching top_p', () => {
  const logits = new Float32Array([Math.log(0.5), Math.log(0.3), Math.log(0.2)]);
  // top_p 0.5 keeps only the first token, whatever the draw.
  for (const u of [0, 0.5, 0.99]) expect(nucleus(logits, 1, 0.5, u)).toBe(0);
  // top_p 1: the draw walks the whole distribution.
  expect([nucleus(logits, 1, 1, 0.1), nucleus(logits, 1, 1, 0.6), nucleus(logits, 1, 1, 0.95)]).toEqual([0, 1, 2]);
});
