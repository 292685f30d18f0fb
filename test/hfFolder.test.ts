import { spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import * as tf from '@tensorflow/tfjs';
import { initBackend } from '../ml/backend';
import { generateDemoCorpus } from '../ml/demoCorpus';
import { folderFileBytes, gpt2FolderFiles, llamaConfigOf, MAX_LLAMA_WINDOW, modelFolderFiles, readHfFolder, writeFolder } from '../ml/hfFolder';
import { Llama, type LlamaConfig } from '../ml/llama';
import { GPT } from '../ml/model';
import { Trainer } from '../ml/train';
import { deserializeModel, serializeModel } from '../ml/modelFile';
import { decodeSafetensors } from '../ml/safetensors';
import { BpeTokenizer, ByteTokenizer, tokenizerFromJSON, type Tokenizer } from '../ml/tokenizer';
import { encodeChat } from '../serve/engine';
import { MULTILINGUAL } from './helpers/multilingual';

/**
 * dacp's model as a Hugging Face folder: written, read back, and (where the project's Python has
 * transformers) loaded by transformers with the same ids and logits.
 */

const root = path.resolve(__dirname, '..');
const python = path.join(root, '.tools', 'venv', 'bin', 'python');
const check = path.join(root, 'scripts', 'hf-check.py');
const env = { ...process.env, TRANSFORMERS_VERBOSITY: 'error', TOKENIZERS_PARALLELISM: 'false' };


const corpus = generateDemoCorpus();
const bpe = BpeTokenizer.train([...corpus.domain, ...corpus.general, ...MULTILINGUAL], { vocabSize: 400 });
const config = { vocabSize: bpe.vocabSize, contextLength: 24, dModel: 16, nLayers: 2, nHeads: 2 };
let dir: string;

function pythonCheck(folder: string, mode: string, input: unknown): Record<string, unknown> {
  const run = spawnSync(python, [check, folder, mode], { env, input: JSON.stringify(input), encoding: 'utf8' });
  if (run.status !== 0) throw new Error(`hf-check.py ${mode} exited ${run.status}: ${run.stderr}`);
  return JSON.parse(run.stdout) as Record<string, unknown>;
}

const hasTransformers = existsSync(python) && spawnSync(python, ['-c', 'import transformers'], { env }).status === 0;

function logitsOf(model: GPT | Llama, ids: number[]): number[][] {
  return tf.tidy(() => model.logits(tf.tensor2d([ids], undefined, 'int32')).arraySync()[0] as number[][]);
}

const maxDifference = (a: number[][], b: number[][]) => Math.max(...a.flatMap((row, t) => row.map((v, j) => Math.abs(v - (b[t]?.[j] ?? Number.NaN)))));

beforeAll(async () => {
  await initBackend('cpu');
  dir = mkdtempSync(path.join(tmpdir(), 'dacp-hf-'));
});

afterAll(() => {
  if (dir !== undefined) rmSync(dir, { recursive: true, force: true });
});

async function exported(name: string, model: GPT, tokenizer: Tokenizer): Promise<string> {
  const folder = path.join(dir, name);
  await writeFolder(folder, gpt2FolderFiles(model, tokenizer));
  return folder;
}

describe('a dacp model as a Hugging Face GPT-2 folder', () => {
  test('writes the five files, and reads back the same weights and, through tokenizer.json, the same ids', async () => {
    const model = GPT.create(config, 5);
    const folder = await exported('bpe', model, bpe);
    for (const file of ['config.json', 'model.safetensors', 'tokenizer.json', 'tokenizer_config.json', 'generation_config.json']) expect(existsSync(path.join(folder, file))).toBe(true);
    expect(JSON.parse(readFileSync(path.join(folder, 'config.json'), 'utf8'))).toMatchObject({ model_type: 'gpt2', n_embd: 16, n_layer: 2, vocab_size: 400, eos_token_id: 398, pad_token_id: 399 });
    const back = await readHfFolder(folder);
    expect(back).toMatchObject({ family: 'gpt2', dtype: 'F32', parameters: model.parameterCount() });
    expect(back.model.weights()).toEqual(model.weights());
    // The library that runs imported tokenizers gives dacp's own BPE ids.
    for (const text of [...MULTILINGUAL, corpus.domain[0] as string]) {
      expect(back.tokenizer.encode(text)).toEqual(bpe.encode(text));
      expect(back.tokenizer.decode(bpe.encode(text))).toBe(text);
    }
    expect([back.tokenizer.eosId, back.tokenizer.padId]).toEqual([bpe.eosId, bpe.padId]);
    // Like dacp's own tokenizers: nothing (a generation that stopped at once), specials and out-of-range ids decode to text, never throw.
    expect(back.tokenizer.decode([])).toBe('');
    expect(back.tokenizer.decode([bpe.eosId, 10_000, -1, 1.5, ...bpe.encode('ok')])).toBe('ok');
    model.dispose();
    back.model.dispose();
  });

  test('the byte tokenizer exports too', async () => {
    const bytes = new ByteTokenizer();
    const model = GPT.create({ ...config, vocabSize: bytes.vocabSize }, 1);
    const back = await readHfFolder(await exported('bytes', model, bytes));
    for (const text of MULTILINGUAL) expect(back.tokenizer.encode(text)).toEqual(bytes.encode(text));
    model.dispose();
    back.model.dispose();
  });

  test('an imported model file keeps its tokenizer through dacp\'s model format, and exports the same files again', async () => {
    const model = GPT.create(config, 8);
    const folder = await exported('roundtrip', model, bpe);
    const loaded = await readHfFolder(folder);
    const file = serializeModel(loaded.model, loaded.tokenizer);
    const again = deserializeModel(file);
    expect(again.tokenizer.toJSON().kind).toBe('hf');
    expect(tokenizerFromJSON(again.tokenizer.toJSON()).encode(MULTILINGUAL[0] as string)).toEqual(bpe.encode(MULTILINGUAL[0] as string));
    const files = modelFolderFiles(again.model, again.tokenizer);
    for (const name of ['model.safetensors', 'tokenizer.json', 'config.json'] as const) expect(folderFileBytes(files[name]).equals(readFileSync(path.join(folder, name)))).toBe(true);
    for (const m of [model, loaded.model, again.model]) m.dispose();
  });

  test('a chat template kept in chat_template.jinja is read, rendered with the model\'s special tokens, and one that cannot render is refused', async () => {
    const model = GPT.create(config, 6);
    const folder = await exported('chat', model, bpe);
    model.dispose();
    const template = "{% for m in messages %}<|endoftext|>{{ m['role'] }}: {{ m['content'] }}{{ eos_token }}{% endfor %}{% if add_generation_prompt %}assistant: {% endif %}";
    writeFileSync(path.join(folder, 'chat_template.jinja'), template);
    const loaded = await readHfFolder(folder);
    expect(loaded.tokenizer.chatTemplate).toBe(template);
    expect(loaded.files['chat_template.jinja']).toMatch(/^[0-9a-f]{64}$/);
    // The eos written by the template is the special token, not its characters.
    expect(loaded.tokenizer.encodeInstruction('Hi')).toEqual([bpe.eosId, ...bpe.encode('user: Hi'), bpe.eosId, ...bpe.encode('assistant: ')]);
    // dacp serve's chat (and the smoke test) lay a whole conversation out with it.
    expect(encodeChat(loaded.tokenizer, [{ role: 'system', content: 'Be brief.' }, { role: 'user', content: 'Hi' }])).toEqual([
      bpe.eosId, ...bpe.encode('system: Be brief.'), bpe.eosId, bpe.eosId, ...bpe.encode('user: Hi'), bpe.eosId, ...bpe.encode('assistant: '),
    ]);
    // Without a template, the plain layout dacp tunes with.
    expect(bpe.decode(encodeChat(bpe, [{ role: 'system', content: 'Be brief.' }, { role: 'user', content: 'Hi' }]))).toBe('### Instruction:\nBe brief.\n\nHi\n\n### Response:\n');
    // Export keeps it, inside tokenizer_config.json.
    expect(JSON.parse(modelFolderFiles(loaded.model, loaded.tokenizer)['tokenizer_config.json'].toString('utf8')).chat_template).toBe(template);
    loaded.model.dispose();
    writeFileSync(path.join(folder, 'chat_template.jinja'), '{% for m in messages %}{{ m.content }');
    await expect(readHfFolder(folder)).rejects.toThrow(/^the chat template cannot be rendered: /);
  });

  test('F16 and BF16 weights are read widened to float32', async () => {
    const model = GPT.create(config, 3);
    const folder = await exported('half', model, bpe);
    const { tensors } = decodeSafetensors(readFileSync(path.join(folder, 'model.safetensors')));
    // bfloat16: the top 16 bits of each float32.
    const raw = Buffer.from(readFileSync(path.join(folder, 'model.safetensors')));
    const headerLength = Number(raw.readBigUInt64LE(0));
    const header = JSON.parse(raw.subarray(8, 8 + headerLength).toString('utf8')) as Record<string, { dtype: string; shape: number[]; data_offsets: [number, number] }>;
    const parts: Buffer[] = [];
    let offset = 0;
    const bfHeader: Record<string, unknown> = { __metadata__: { format: 'pt' } };
    for (const name of Object.keys(tensors).sort()) {
      const data = tensors[name]!.data as Float32Array;
      const out = Buffer.alloc(data.length * 2);
      const bits = new Uint32Array(data.buffer, data.byteOffset, data.length);
      for (let i = 0; i < data.length; i++) out.writeUInt16LE(bits[i]! >>> 16, i * 2);
      bfHeader[name] = { dtype: 'BF16', shape: header[name]!.shape, data_offsets: [offset, offset + out.length] };
      offset += out.length;
      parts.push(out);
    }
    const json = Buffer.from(JSON.stringify(bfHeader));
    const length = Buffer.alloc(8);
    length.writeBigUInt64LE(BigInt(json.length));
    writeFileSync(path.join(folder, 'model.safetensors'), Buffer.concat([length, json, ...parts]));
    const back = await readHfFolder(folder);
    expect(back.dtype).toBe('BF16');
    const w = back.model.weights()['h.0.attn.wqkv'] as Float32Array;
    const original = model.weights()['h.0.attn.wqkv'] as Float32Array;
    w.forEach((v, i) => expect(Math.abs(v - (original[i] as number))).toBeLessThanOrEqual(Math.abs(original[i] as number) / 128));
    for (const m of [model, back.model]) m.dispose();
  });

  test('a folder dacp cannot run is refused in one line naming the architecture, the setting or the tensor', async () => {
    const model = GPT.create(config, 2);
    const folder = await exported('refuse', model, bpe);
    model.dispose();
    const edit = (change: (c: Record<string, unknown>) => void) => {
      const c = JSON.parse(readFileSync(path.join(folder, 'config.json'), 'utf8')) as Record<string, unknown>;
      change(c);
      writeFileSync(path.join(folder, 'config.json'), JSON.stringify(c));
    };
    const original = readFileSync(path.join(folder, 'config.json'));
    edit((c) => Object.assign(c, { model_type: 'bert', architectures: ['BertForMaskedLM'] }));
    await expect(readHfFolder(folder)).rejects.toThrow(/^BertForMaskedLM \(model_type bert\) is not supported; dacp imports the GPT-2 family \(gpt2\) and the Llama family/);
    writeFileSync(path.join(folder, 'config.json'), original);
    edit((c) => (c.n_embd = 32));
    await expect(readHfFolder(folder)).rejects.toThrow(/^tensor transformer\.wte\.weight has shape \[400, 16\] but config\.json \(n_embd 32, .*\) needs \[400, 32\]$/);
    writeFileSync(path.join(folder, 'config.json'), original);
    edit((c) => (c.activation_function = 'relu'));
    await expect(readHfFolder(folder)).rejects.toThrow(/^config\.json: activation_function is "relu"; dacp's GPT-2 needs "gelu_new"$/);
    writeFileSync(path.join(folder, 'config.json'), original);
    rmSync(path.join(folder, 'tokenizer.json'));
    await expect(readHfFolder(folder)).rejects.toThrow(/has no tokenizer\.json/);
  });
});

const llamaConfig: LlamaConfig = {
  family: 'llama', vocabSize: bpe.vocabSize, contextLength: 24, dModel: 16, nLayers: 2, nHeads: 4, nKvHeads: 2, headDim: 4, ffnDim: 24,
  rmsNormEps: 1e-5, ropeTheta: 10000, ropeScaling: null, tiedEmbeddings: false, attentionBias: 'qkv',
};

describe('a dacp Llama as a Hugging Face folder', () => {
  test('reads back with the same weights and family; one that never had a config.json is written as the family member it is (q/k/v biases: Qwen2)', async () => {
    const model = Llama.create(llamaConfig, 4);
    const folder = path.join(dir, 'llama');
    await writeFolder(folder, modelFolderFiles(model, bpe));
    expect(JSON.parse(readFileSync(path.join(folder, 'config.json'), 'utf8'))).toMatchObject({ model_type: 'qwen2', architectures: ['Qwen2ForCausalLM'], num_key_value_heads: 2, head_dim: 4 });
    const back = await readHfFolder(folder);
    expect(back.family).toBe('llama');
    expect(back.model.weights()).toEqual(model.weights());
    model.dispose();
    back.model.dispose();
  });

  test('settings dacp\'s Llama does not compute, and mis-shaped tensors, are refused by name', async () => {
    const model = Llama.create({ ...llamaConfig, attentionBias: 'none' }, 4);
    const folder = path.join(dir, 'llama-refuse');
    await writeFolder(folder, modelFolderFiles(model, bpe));
    model.dispose();
    const original = readFileSync(path.join(folder, 'config.json'), 'utf8');
    const withConfig = async (change: Record<string, unknown>) => {
      writeFileSync(path.join(folder, 'config.json'), JSON.stringify({ ...JSON.parse(original), ...change }));
      return readHfFolder(folder).then((loaded) => loaded.model.dispose());
    };
    await expect(withConfig({ rope_scaling: { rope_type: 'yarn', factor: 4 } })).rejects.toThrow(/^config\.json: rope_scaling type "yarn" is not supported; dacp computes default, linear and llama3 rotary scaling$/);
    await expect(withConfig({ hidden_act: 'gelu' })).rejects.toThrow(/^config\.json: hidden_act is "gelu"; dacp's Llama needs "silu" \(SwiGLU\)$/);
    await expect(withConfig({ num_key_value_heads: 4 })).rejects.toThrow(/^tensor model\.layers\.0\.self_attn\.k_proj\.weight has shape \[8, 16\] but config\.json \(hidden_size 16, 4 heads, 4 key\/value heads, .*\) needs \[16, 16\]$/);
    await expect(withConfig({ num_key_value_heads: 3 })).rejects.toThrow(/num_attention_heads 4 is not a multiple of num_key_value_heads 3/);
    await expect(withConfig({ rope_scaling: { rope_type: 'linear', factor: 2 } })).resolves.toBeUndefined();
  });

  test('the window dacp trains a Llama on is its own maximum, capped at 1,024 tokens or its sliding window', () => {
    const base = { model_type: 'llama', vocab_size: 100, hidden_size: 16, intermediate_size: 24, num_hidden_layers: 1, num_attention_heads: 4 };
    expect(llamaConfigOf({ ...base, max_position_embeddings: 512 }).contextLength).toBe(512);
    expect(llamaConfigOf({ ...base, max_position_embeddings: 131_072 }).contextLength).toBe(MAX_LLAMA_WINDOW);
    expect(MAX_LLAMA_WINDOW).toBe(1024);
    expect(llamaConfigOf({ ...base, model_type: 'mistral', max_position_embeddings: 4096, sliding_window: 256 }).contextLength).toBe(256);
    // Qwen2 uses its sliding window only when use_sliding_window is set.
    expect(llamaConfigOf({ ...base, model_type: 'qwen2', max_position_embeddings: 512, sliding_window: 64 }).contextLength).toBe(512);
  });

  test('trains: the loss falls on a repeated text, with grouped-query heads and biases', () => {
    const model = Llama.create({ ...llamaConfig, attentionBias: 'qkv' }, 9);
    const trainer = Trainer.create(model, bpe, { totalSteps: 30, batchSize: 4, learningRate: 1e-2, warmupSteps: 2, minLrRatio: 0.1, weightDecay: 0, gradClip: 1, seed: 3 });
    const ids = bpe.encode(corpus.domain.slice(0, 3).join(' '));
    const batch = { inputs: [ids.slice(0, 24)], targets: [ids.slice(1, 25)], mask: [new Array<number>(24).fill(1)] };
    const first = trainer.trainStep(batch).loss;
    let last = first;
    for (let i = 1; i < 30; i++) last = trainer.trainStep(batch).loss;
    expect(last).toBeLessThan(first * 0.5);
    trainer.dispose();
  });
});

const withTransformers = hasTransformers ? describe : describe.skip;
if (!hasTransformers) console.warn(`skipping the transformers checks: ${python} cannot import transformers (run \`bash scripts/setup-python.sh\`)`);

withTransformers('transformers loads what dacp writes', () => {
  test('AutoTokenizer gives the same ids, and AutoModelForCausalLM the same logits (to 1e-4)', async () => {
    const model = GPT.create(config, 11);
    const folder = await exported('for-transformers', model, bpe);
    const { ids } = pythonCheck(folder, 'tokenize', { texts: MULTILINGUAL }) as { ids: number[][] };
    expect(ids).toEqual(MULTILINGUAL.map((text) => bpe.encode(text)));
    const sequence = bpe.encode(MULTILINGUAL[2] as string).slice(0, config.contextLength);
    const { logits } = pythonCheck(folder, 'logits', { ids: sequence }) as { logits: number[][] };
    expect(maxDifference(logitsOf(model, sequence), logits)).toBeLessThan(1e-4);
    model.dispose();
  });

  test.each([['qkv'], ['none']] as const)('a dacp Llama (attention bias %s) written out computes the same logits in transformers', async (attentionBias) => {
    const created = Llama.create({ ...llamaConfig, attentionBias }, 12);
    // Fresh biases are zero and norms one: perturb every weight, so a mapping mistake shows.
    const weights = created.weights();
    for (const values of Object.values(weights)) values.forEach((v, i) => (values[i] = v + 0.05 * Math.sin(i * 12.9898 + values.length)));
    created.dispose();
    const model = Llama.fromWeights({ ...llamaConfig, attentionBias }, weights);
    const folder = path.join(dir, `llama-for-transformers-${attentionBias}`);
    await writeFolder(folder, modelFolderFiles(model, bpe));
    const sequence = bpe.encode(MULTILINGUAL[0] as string).slice(0, llamaConfig.contextLength);
    const { logits } = pythonCheck(folder, 'logits', { ids: sequence }) as { logits: number[][] };
    expect(maxDifference(logitsOf(model, sequence), logits)).toBeLessThan(1e-4);
    model.dispose();
  });
});
