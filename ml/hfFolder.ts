import { createHash } from 'node:crypto';
import { promises as fs } from 'node:fs';
import path from 'node:path';
import { isLlamaConfig, modelFromWeights, parseAnyModelConfig, specsOf, type AnyModelConfig, type CausalLM } from './families';
import { MODEL_FORMAT, readReserved } from './modelFile';
import { Llama, llamaParameterSpecs, parseLlamaConfig, type LlamaConfig } from './llama';
import { GPT, parameterSpecs, valuesOf, type ModelConfig } from './model';
import { encodeSafetensors, type SafetensorsTensor } from './safetensors';
import { readSafetensorsFile, writeSafetensorsFile } from './safetensorsFile';
import { hfFilesOfDacpTokenizer, HfTokenizer, type JsonObject } from './hfTokenizer';
import type { Tokenizer } from './tokenizer';

/**
 * The Hugging Face model folder: what `transformers.AutoModelForCausalLM.from_pretrained(dir)` and
 * `AutoTokenizer.from_pretrained(dir)` load. dacp's built-in model is GPT-2's architecture (learned
 * positions, pre-LayerNorm with ε 1e-5, tanh-GELU MLP of 4×, fused qkv, tied embeddings), so its
 * weights map one to one onto `GPT2LMHeadModel`'s, in the same [in, out] layout (GPT-2's Conv1D).
 */

export const MODEL_FILES = ['config.json', 'model.safetensors', 'tokenizer.json', 'tokenizer_config.json', 'generation_config.json'] as const;

/** A model folder refused: one line naming the architecture, the field or the tensor, and the fix. */
export class UnsupportedModelError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'UnsupportedModelError';
  }
}

/** dacp parameter name → GPT-2 tensor name (without the `transformer.` prefix). */
function gpt2Names(config: ModelConfig): [dacp: string, hf: string][] {
  const names: [string, string][] = [['wte', 'wte.weight'], ['wpe', 'wpe.weight']];
  for (let l = 0; l < config.nLayers; l++) {
    const [d, h] = [`h.${l}`, `h.${l}`];
    names.push(
      [`${d}.ln1.gamma`, `${h}.ln_1.weight`], [`${d}.ln1.beta`, `${h}.ln_1.bias`],
      [`${d}.attn.wqkv`, `${h}.attn.c_attn.weight`], [`${d}.attn.bqkv`, `${h}.attn.c_attn.bias`],
      [`${d}.attn.wo`, `${h}.attn.c_proj.weight`], [`${d}.attn.bo`, `${h}.attn.c_proj.bias`],
      [`${d}.ln2.gamma`, `${h}.ln_2.weight`], [`${d}.ln2.beta`, `${h}.ln_2.bias`],
      [`${d}.mlp.wfc`, `${h}.mlp.c_fc.weight`], [`${d}.mlp.bfc`, `${h}.mlp.c_fc.bias`],
      [`${d}.mlp.wproj`, `${h}.mlp.c_proj.weight`], [`${d}.mlp.bproj`, `${h}.mlp.c_proj.bias`],
    );
  }
  names.push(['lnf.gamma', 'ln_f.weight'], ['lnf.beta', 'ln_f.bias']);
  return names;
}

/** Tensors and metadata of a safetensors file not yet written: written tensor by tensor, never as one Buffer. */
export interface TensorFile {
  tensors: Record<string, SafetensorsTensor>;
  metadata: Record<string, string>;
}

/** A model folder's files: the weights as tensors, the rest as bytes. */
export type FolderFiles = Record<Exclude<(typeof MODEL_FILES)[number], 'model.safetensors'>, Buffer> & { 'model.safetensors': TensorFile };

/** One file's bytes (the weights encoded whole: for small models and tests). */
export function folderFileBytes(file: Buffer | TensorFile): Buffer {
  return Buffer.isBuffer(file) ? file : encodeSafetensors(file.tensors, file.metadata);
}

/** The files of a model folder for a dacp GPT and its tokenizer. */
export function gpt2FolderFiles(model: GPT, tokenizer: Tokenizer): FolderFiles {
  return gpt2Files(model.config, model.weights(), tokenizer);
}

function gpt2Files(modelConfig: ModelConfig, weights: Record<string, Float32Array>, tokenizer: Tokenizer): FolderFiles {
  const { vocabSize, contextLength, dModel, nLayers, nHeads } = modelConfig;
  const shapes = new Map(parameterSpecs(modelConfig).map(({ name, shape }) => [name, shape]));
  const tensors: Record<string, SafetensorsTensor> = {};
  for (const [dacpName, hfName] of gpt2Names(modelConfig)) {
    const data = weights[dacpName];
    if (!data) throw new Error(`model has no parameter "${dacpName}"`);
    tensors[`transformer.${hfName}`] = { dtype: 'F32', shape: shapes.get(dacpName) as number[], data };
  }
  const config = {
    architectures: ['GPT2LMHeadModel'],
    model_type: 'gpt2',
    vocab_size: vocabSize,
    n_positions: contextLength,
    n_ctx: contextLength,
    n_embd: dModel,
    n_layer: nLayers,
    n_head: nHeads,
    n_inner: null,
    activation_function: 'gelu_new',
    layer_norm_epsilon: 1e-5,
    resid_pdrop: 0,
    embd_pdrop: 0,
    attn_pdrop: 0,
    initializer_range: 0.02,
    scale_attn_weights: true,
    scale_attn_by_inverse_layer_idx: false,
    reorder_and_upcast_attn: false,
    tie_word_embeddings: true,
    bos_token_id: tokenizer.eosId,
    eos_token_id: tokenizer.eosId,
    pad_token_id: tokenizer.padId,
    torch_dtype: 'float32',
  };
  const generation = { bos_token_id: tokenizer.eosId, eos_token_id: tokenizer.eosId, pad_token_id: tokenizer.padId };
  return folderOf(config, tensors, tokenizer, contextLength, generation);
}

/** The five files: the config, the weights, the tokenizer (its own files, or dacp's written as them), generation defaults. */
function folderOf(
  config: JsonObject,
  tensors: Record<string, SafetensorsTensor>,
  tokenizer: Tokenizer,
  contextLength: number,
  generation: JsonObject,
): FolderFiles {
  const stored = tokenizer.toJSON();
  const tokenizerFiles = stored.kind === 'hf' ? { tokenizer: stored.tokenizer, config: stored.config } : hfFilesOfDacpTokenizer(stored.kind === 'bpe' ? stored.merges : [], contextLength);
  return {
    'config.json': json(config),
    'model.safetensors': { tensors, metadata: { format: 'pt' } },
    'tokenizer.json': json(tokenizerFiles.tokenizer),
    'tokenizer_config.json': json(tokenizerFiles.config),
    'generation_config.json': json(generation),
  };
}

const json = (value: unknown) => Buffer.from(`${JSON.stringify(value, null, 2)}\n`, 'utf8');

/** Writes the files into `dir` (created; files already there are replaced), weights tensor by tensor; returns each file's sha256. */
export async function writeFolder(dir: string, files: Record<string, Buffer | TensorFile>): Promise<Record<string, string>> {
  await fs.mkdir(dir, { recursive: true });
  const written: Record<string, string> = {};
  for (const [name, data] of Object.entries(files)) {
    const temp = path.join(dir, `.${name}.tmp-${process.pid}`);
    if (Buffer.isBuffer(data)) {
      await fs.writeFile(temp, data);
      written[name] = sha256Of(data);
    } else {
      written[name] = (await writeSafetensorsFile(temp, data.tensors, data.metadata)).sha256;
    }
    await fs.rename(temp, path.join(dir, name));
  }
  return written;
}

export const sha256Of = (data: Buffer) => createHash('sha256').update(data).digest('hex');

// ---------------------------------------------------------------------------------------------
// reading a folder

export interface LoadedFolder {
  model: CausalLM;
  tokenizer: HfTokenizer;
  family: 'gpt2' | 'llama';
  /** The dtype the weights were stored in (they are trained in float32). */
  dtype: 'F32' | 'F16' | 'BF16';
  parameters: number;
  /** sha256 of each file read, by name. */
  files: Record<string, string>;
}

async function readJson(dir: string, name: string, files: Record<string, string>): Promise<JsonObject> {
  let data: Buffer;
  try {
    data = await fs.readFile(path.join(dir, name));
  } catch {
    throw new UnsupportedModelError(`${dir} has no ${name}; a Hugging Face model folder needs config.json, model.safetensors (or shards with model.safetensors.index.json), tokenizer.json and tokenizer_config.json`);
  }
  files[name] = sha256Of(data);
  try {
    const parsed = JSON.parse(data.toString('utf8')) as unknown;
    if (!parsed || typeof parsed !== 'object' || Array.isArray(parsed)) throw new Error('not an object');
    return parsed as JsonObject;
  } catch (error) {
    throw new UnsupportedModelError(`${path.join(dir, name)} is not a JSON object (${error instanceof Error ? error.message : String(error)})`);
  }
}

/**
 * tokenizer_config.json with its chat template as one string: newer transformers keep the template
 * in chat_template.jinja, and some models list named templates (the one named "default" is used,
 * as transformers does). Export writes it back inside tokenizer_config.json, where transformers reads it too.
 */
async function withChatTemplate(dir: string, config: JsonObject, files: Record<string, string>): Promise<JsonObject> {
  let template = config.chat_template;
  if (template === undefined) {
    const data = await fs.readFile(path.join(dir, 'chat_template.jinja')).catch(() => null);
    if (data) {
      files['chat_template.jinja'] = sha256Of(data);
      template = data.toString('utf8');
    }
  }
  if (Array.isArray(template)) {
    const named = template as { name?: unknown; template?: unknown }[];
    template = named.find((t) => t.name === 'default')?.template ?? named[0]?.template;
  }
  if (template === undefined || template === null) {
    const rest = { ...config };
    delete rest.chat_template;
    return rest;
  }
  if (typeof template !== 'string') throw new UnsupportedModelError('tokenizer_config.json: chat_template is neither a string nor a list of {name, template}');
  return { ...config, chat_template: template };
}

/** Every tensor of the folder's safetensors file(s), widened to float32. */
async function readTensors(dir: string, files: Record<string, string>): Promise<{ tensors: Record<string, SafetensorsTensor>; dtypes: Set<string> }> {
  const single = path.join(dir, 'model.safetensors');
  let shardNames: string[];
  try {
    await fs.access(single);
    shardNames = ['model.safetensors'];
  } catch {
    const index = await readJson(dir, 'model.safetensors.index.json', files).catch(() => {
      throw new UnsupportedModelError(`${dir} has neither model.safetensors nor model.safetensors.index.json; dacp reads safetensors weights only (convert .bin weights with transformers' save_pretrained(safe_serialization=True))`);
    });
    const map = (index.weight_map ?? {}) as Record<string, string>;
    shardNames = [...new Set(Object.values(map))].sort();
    if (shardNames.some((name) => name.includes('/') || name.includes('\\'))) throw new UnsupportedModelError('model.safetensors.index.json names a shard outside the folder');
  }
  const tensors: Record<string, SafetensorsTensor> = {};
  const dtypes = new Set<string>();
  for (const name of shardNames) {
    // Shard by shard and tensor by tensor: a shard of several GB is never one Buffer.
    const decoded = await readSafetensorsFile(path.join(dir, name), { widenHalf: true });
    files[name] = decoded.sha256;
    Object.assign(tensors, decoded.tensors);
    for (const dtype of Object.values(decoded.storedDtypes)) dtypes.add(dtype);
  }
  return { tensors, dtypes };
}

const num = (config: JsonObject, field: string): number => {
  const value = config[field];
  if (typeof value !== 'number' || !Number.isInteger(value) || value <= 0) throw new UnsupportedModelError(`config.json: ${field} must be a positive integer, got ${JSON.stringify(value)}`);
  return value;
};

/** model_type values of the Llama family: the same computation, with Qwen2's q/k/v biases. */
const LLAMA_TYPES = ['llama', 'qwen2', 'mistral'] as const;

/** The model family of a config.json, or an error naming what it is. */
export function familyOf(config: JsonObject): 'gpt2' | 'llama' {
  const type = String(config.model_type ?? '(none)');
  const architecture = Array.isArray(config.architectures) ? String(config.architectures[0]) : type;
  if (type === 'gpt2') return 'gpt2';
  if ((LLAMA_TYPES as readonly string[]).includes(type)) return 'llama';
  throw new UnsupportedModelError(`${architecture} (model_type ${type}) is not supported; dacp imports the GPT-2 family (gpt2) and the Llama family (llama, qwen2, mistral; SmolLM is llama)`);
}

/** GPT-2 settings that dacp's model does not have: refused by name rather than computed differently. */
function checkGpt2Config(config: JsonObject, C: number): void {
  const refuse = (field: string, want: string) => {
    throw new UnsupportedModelError(`config.json: ${field} is ${JSON.stringify(config[field])}; dacp's GPT-2 needs ${want}`);
  };
  if (!['gelu_new', 'gelu_pytorch_tanh'].includes(String(config.activation_function ?? 'gelu_new'))) refuse('activation_function', '"gelu_new"');
  if ((config.layer_norm_epsilon ?? 1e-5) !== 1e-5) refuse('layer_norm_epsilon', '1e-5');
  if (config.n_inner !== undefined && config.n_inner !== null && config.n_inner !== 4 * C) refuse('n_inner', `null or ${4 * C} (4 × n_embd)`);
  if (config.scale_attn_by_inverse_layer_idx === true) refuse('scale_attn_by_inverse_layer_idx', 'false');
  if (config.scale_attn_weights === false) refuse('scale_attn_weights', 'true');
  if (config.tie_word_embeddings === false) refuse('tie_word_embeddings', 'true (GPT-2 ties its output to the token embedding)');
}

const sameValues = (a: Float32Array, b: Float32Array) => a.length === b.length && a.every((v, i) => v === b[i]);

/**
 * Reads a Hugging Face model folder into dacp's model and the folder's own tokenizer. Refuses,
 * with one line, an architecture dacp cannot run, a setting it does not have, or a tensor whose
 * shape disagrees with config.json.
 */
export async function readHfFolder(dir: string): Promise<LoadedFolder> {
  const { config, weights, ...rest } = await readHfWeights(dir);
  const model = modelFromWeights(config, weights);
  return { model, ...rest, parameters: model.parameterCount() };
}

/**
 * readHfFolder without building a TensorFlow.js model: dacp's config and weights (float32, dacp's
 * names and layout) and the folder's tokenizer, checked the same way. For callers that only store
 * the weights (the hf engine's trained folder becomes a model file without TensorFlow).
 */
export async function readHfWeights(dir: string): Promise<Omit<LoadedFolder, 'model' | 'parameters'> & { config: AnyModelConfig; weights: Record<string, Float32Array> }> {
  const files: Record<string, string> = {};
  const config = await readJson(dir, 'config.json', files);
  const family = familyOf(config);
  const read = family === 'gpt2' ? gpt2Weights(config) : llamaWeights(config);
  const tokenizerJson = await readJson(dir, 'tokenizer.json', files);
  const tokenizerConfig = await withChatTemplate(dir, await readJson(dir, 'tokenizer_config.json', files), files);
  const { tensors, dtypes } = await readTensors(dir, files);
  if (![...dtypes].every((d) => ['F32', 'F16', 'BF16'].includes(d))) throw new UnsupportedModelError(`weights are stored as ${[...dtypes].join(', ')}; dacp reads F32, BF16 or F16`);
  const weights = read.take(tensors);
  const dtype = dtypes.has('BF16') ? 'BF16' : dtypes.has('F16') ? 'F16' : 'F32';
  const tokenizer = new HfTokenizer({ kind: 'hf', version: 1, tokenizer: tokenizerJson, config: tokenizerConfig, vocabSize: read.config.vocabSize });
  if (tokenizer.chatTemplate !== undefined) {
    // A template that cannot render would fail instruction tuning on every attempt: refuse it now.
    try {
      tokenizer.encodeInstruction('Is this template usable?');
    } catch (error) {
      throw new UnsupportedModelError(`the chat template cannot be rendered: ${error instanceof Error ? error.message.split('\n')[0] : String(error)}`);
    }
  }
  // Every parameter, named and shaped as dacp's model needs it (the builder checks again).
  valuesOf(specsOf(read.config), weights, 'config.json');
  return { config: read.config, weights, tokenizer, family, dtype, files };
}

/** A family's reading of a folder: dacp's config, and how its tensors become dacp's weights. */
interface FamilyReader {
  config: AnyModelConfig;
  take(tensors: Record<string, SafetensorsTensor>): Record<string, Float32Array>;
}

function shapeError(name: string, actual: number[], expected: number[], about: string): UnsupportedModelError {
  return new UnsupportedModelError(`tensor ${name} has shape [${actual.join(', ')}] but config.json (${about}) needs [${expected.join(', ')}]`);
}

/** [rows, cols] → [cols, rows]: transformers' Linear keeps [out, in], dacp keeps [in, out]. */
function transposed(data: Float32Array, rows: number, cols: number): Float32Array {
  const out = new Float32Array(data.length);
  for (let r = 0; r < rows; r++) for (let c = 0; c < cols; c++) out[c * rows + r] = data[r * cols + c] as number;
  return out;
}

function gpt2Weights(config: JsonObject): FamilyReader {
  const V = num(config, 'vocab_size');
  const C = num(config, 'n_embd');
  const modelConfig: ModelConfig = { vocabSize: V, contextLength: num(config, 'n_positions'), dModel: C, nLayers: num(config, 'n_layer'), nHeads: num(config, 'n_head') };
  if (C % modelConfig.nHeads !== 0) throw new UnsupportedModelError(`config.json: n_embd ${C} is not a multiple of n_head ${modelConfig.nHeads}`);
  checkGpt2Config(config, C);
  return {
    config: modelConfig,
    take(tensors) {
      const prefix = Object.keys(tensors).some((name) => name.startsWith('transformer.')) ? 'transformer.' : '';
      const weights: Record<string, Float32Array> = {};
      const used = new Set<string>();
      const expected = new Map(parameterSpecs(modelConfig).map(({ name, shape }) => [name, shape]));
      for (const [dacpName, hfName] of gpt2Names(modelConfig)) {
        const name = `${prefix}${hfName}`;
        const tensor = tensors[name];
        const shape = expected.get(dacpName) as number[];
        if (!tensor) throw new UnsupportedModelError(`model.safetensors has no tensor ${name}, which a GPT-2 of this config.json needs`);
        if (tensor.shape.join(',') !== shape.join(',')) throw shapeError(name, tensor.shape, shape, `n_embd ${C}, n_positions ${modelConfig.contextLength}, vocab_size ${V}`);
        weights[dacpName] = tensor.data as Float32Array;
        used.add(name);
      }
      for (const [name, tensor] of Object.entries(tensors)) {
        if (used.has(name)) continue;
        // Causal-mask buffers that older transformers versions saved; dacp builds its own mask.
        if (/\.attn\.(masked_)?bias$/.test(name) && !name.endsWith('c_attn.bias')) continue;
        if (name === 'lm_head.weight' && sameValues(tensor.data as Float32Array, weights.wte as Float32Array)) continue;
        throw new UnsupportedModelError(
          name === 'lm_head.weight'
            ? 'lm_head.weight differs from the token embedding; dacp\'s GPT-2 ties them (untied output heads are not supported)'
            : `model.safetensors has a tensor dacp's GPT-2 does not know: ${name}`,
        );
      }
      return weights;
    },
  };
}

/** The longest window dacp trains and evaluates a Llama-family model on; its own maximum may be far longer. */
export const MAX_LLAMA_WINDOW = 1024;

/** A Llama-family config.json as dacp's LlamaConfig; settings dacp does not compute are refused by name. */
export function llamaConfigOf(config: JsonObject): LlamaConfig {
  const refuse = (field: string, want: string) => {
    throw new UnsupportedModelError(`config.json: ${field} is ${JSON.stringify(config[field])}; dacp's Llama needs ${want}`);
  };
  const type = String(config.model_type);
  if ((config.hidden_act ?? 'silu') !== 'silu') refuse('hidden_act', '"silu" (SwiGLU)');
  if (config.mlp_bias === true) refuse('mlp_bias', 'false');
  if ((config.pretraining_tp ?? 1) !== 1) refuse('pretraining_tp', '1');
  const C = num(config, 'hidden_size');
  const H = num(config, 'num_attention_heads');
  const K = config.num_key_value_heads === undefined || config.num_key_value_heads === null ? H : num(config, 'num_key_value_heads');
  const D = config.head_dim === undefined || config.head_dim === null ? C / H : num(config, 'head_dim');
  if (!Number.isInteger(D)) throw new UnsupportedModelError(`config.json: hidden_size ${C} is not a multiple of num_attention_heads ${H}, and no head_dim is given`);
  if (H % K !== 0) throw new UnsupportedModelError(`config.json: num_attention_heads ${H} is not a multiple of num_key_value_heads ${K}`);
  const raw = config.rope_scaling as JsonObject | null | undefined;
  let ropeScaling: LlamaConfig['ropeScaling'] = null;
  if (raw) {
    const kind = String(raw.rope_type ?? raw.type ?? 'default');
    if (kind === 'linear') ropeScaling = { type: 'linear', factor: Number(raw.factor) };
    else if (kind === 'llama3') {
      ropeScaling = {
        type: 'llama3',
        factor: Number(raw.factor),
        lowFreqFactor: Number(raw.low_freq_factor),
        highFreqFactor: Number(raw.high_freq_factor),
        originalContext: Number(raw.original_max_position_embeddings),
      };
    } else if (kind !== 'default') {
      throw new UnsupportedModelError(`config.json: rope_scaling type "${kind}" is not supported; dacp computes default, linear and llama3 rotary scaling`);
    }
  }
  // Qwen2 biases q, k and v; Llama biases all four projections when attention_bias is set.
  const attentionBias = type === 'qwen2' ? 'qkv' : config.attention_bias === true ? 'all' : 'none';
  const maxPositions = num(config, 'max_position_embeddings');
  const window = config.sliding_window !== undefined && config.sliding_window !== null && (type !== 'qwen2' || config.use_sliding_window === true) ? num(config, 'sliding_window') : Infinity;
  try {
    return parseLlamaConfig({
      family: 'llama',
      vocabSize: num(config, 'vocab_size'),
      contextLength: Math.min(maxPositions, window, MAX_LLAMA_WINDOW),
      dModel: C,
      nLayers: num(config, 'num_hidden_layers'),
      nHeads: H,
      nKvHeads: K,
      headDim: D,
      ffnDim: num(config, 'intermediate_size'),
      rmsNormEps: Number(config.rms_norm_eps ?? 1e-6),
      ropeTheta: Number(config.rope_theta ?? 10000),
      ropeScaling,
      tiedEmbeddings: config.tie_word_embeddings === true,
      attentionBias,
      source: config,
    });
  } catch (error) {
    throw new UnsupportedModelError(`config.json: ${error instanceof Error ? error.message : String(error)}`);
  }
}

/** dacp parameter name → transformers tensor name, and whether it is a Linear weight ([out, in] there). */
function llamaNames(c: LlamaConfig): [dacp: string, hf: string, linear: boolean][] {
  const names: [string, string, boolean][] = [['embed', 'model.embed_tokens.weight', false]];
  for (let l = 0; l < c.nLayers; l++) {
    const [d, h] = [`layers.${l}`, `model.layers.${l}`];
    names.push([`${d}.attnNorm`, `${h}.input_layernorm.weight`, false]);
    for (const x of ['q', 'k', 'v'] as const) {
      names.push([`${d}.w${x}`, `${h}.self_attn.${x}_proj.weight`, true]);
      if (c.attentionBias !== 'none') names.push([`${d}.b${x}`, `${h}.self_attn.${x}_proj.bias`, false]);
    }
    names.push([`${d}.wo`, `${h}.self_attn.o_proj.weight`, true]);
    if (c.attentionBias === 'all') names.push([`${d}.bo`, `${h}.self_attn.o_proj.bias`, false]);
    names.push(
      [`${d}.mlpNorm`, `${h}.post_attention_layernorm.weight`, false],
      [`${d}.wgate`, `${h}.mlp.gate_proj.weight`, true],
      [`${d}.wup`, `${h}.mlp.up_proj.weight`, true],
      [`${d}.wdown`, `${h}.mlp.down_proj.weight`, true],
    );
  }
  names.push(['norm', 'model.norm.weight', false]);
  if (!c.tiedEmbeddings) names.push(['lmHead', 'lm_head.weight', false]);
  return names;
}

function llamaWeights(config: JsonObject): FamilyReader {
  const modelConfig = llamaConfigOf(config);
  const about = `hidden_size ${modelConfig.dModel}, ${modelConfig.nHeads} heads, ${modelConfig.nKvHeads} key/value heads, intermediate_size ${modelConfig.ffnDim}, vocab_size ${modelConfig.vocabSize}`;
  return {
    config: modelConfig,
    take(tensors) {
      const weights: Record<string, Float32Array> = {};
      const used = new Set<string>();
      const expected = new Map(llamaParameterSpecs(modelConfig).map(({ name, shape }) => [name, shape]));
      for (const [dacpName, hfName, linear] of llamaNames(modelConfig)) {
        const tensor = tensors[hfName];
        const shape = expected.get(dacpName) as number[];
        const hfShape = linear ? [shape[1] as number, shape[0] as number] : shape;
        if (!tensor) throw new UnsupportedModelError(`model.safetensors has no tensor ${hfName}, which a ${String(config.model_type)} model of this config.json needs`);
        if (tensor.shape.join(',') !== hfShape.join(',')) throw shapeError(hfName, tensor.shape, hfShape, about);
        weights[dacpName] = linear ? transposed(tensor.data as Float32Array, hfShape[0] as number, hfShape[1] as number) : (tensor.data as Float32Array);
        used.add(hfName);
      }
      for (const [name, tensor] of Object.entries(tensors)) {
        if (used.has(name) || name.endsWith('.rotary_emb.inv_freq')) continue;
        if (name === 'lm_head.weight' && modelConfig.tiedEmbeddings && sameValues(tensor.data as Float32Array, weights.embed as Float32Array)) continue;
        throw new UnsupportedModelError(`model.safetensors has a tensor dacp's Llama does not know: ${name}`);
      }
      return weights;
    },
  };
}

/** A Llama-family model as a folder: its source config.json back, the weights in transformers' names and layout. */
export function llamaFolderFiles(model: Llama, tokenizer: Tokenizer): FolderFiles {
  return llamaFiles(model.config, model.weights(), tokenizer);
}

function llamaFiles(c: LlamaConfig, weights: Record<string, Float32Array>, tokenizer: Tokenizer): FolderFiles {
  const specs = new Map(llamaParameterSpecs(c).map(({ name, shape }) => [name, shape]));
  const tensors: Record<string, SafetensorsTensor> = {};
  for (const [dacpName, hfName, linear] of llamaNames(c)) {
    const shape = specs.get(dacpName) as number[];
    const data = weights[dacpName] as Float32Array;
    tensors[hfName] = linear
      ? { dtype: 'F32', shape: [shape[1] as number, shape[0] as number], data: transposed(data, shape[0] as number, shape[1] as number) }
      : { dtype: 'F32', shape, data };
  }
  // A model that never had a config.json: Qwen2 is the family member with biases on q, k and v only.
  const fresh = c.attentionBias === 'qkv'
    ? { architectures: ['Qwen2ForCausalLM'], model_type: 'qwen2', use_sliding_window: false }
    : { architectures: ['LlamaForCausalLM'], model_type: 'llama', attention_bias: c.attentionBias === 'all' };
  const source: Record<string, unknown> = { ...(c.source ?? fresh) };
  delete source.dtype;
  const config = {
    ...source,
    vocab_size: c.vocabSize,
    hidden_size: c.dModel,
    intermediate_size: c.ffnDim,
    num_hidden_layers: c.nLayers,
    num_attention_heads: c.nHeads,
    num_key_value_heads: c.nKvHeads,
    head_dim: c.headDim,
    max_position_embeddings: source.max_position_embeddings ?? c.contextLength,
    rms_norm_eps: c.rmsNormEps,
    rope_theta: c.ropeTheta,
    tie_word_embeddings: c.tiedEmbeddings,
    torch_dtype: 'float32',
  };
  const generation = { bos_token_id: source.bos_token_id, eos_token_id: source.eos_token_id ?? tokenizer.eosId, pad_token_id: source.pad_token_id ?? tokenizer.padId };
  return folderOf(config, tensors, tokenizer, c.contextLength, generation);
}

/** The files of a model folder for either family. */
export function modelFolderFiles(model: CausalLM, tokenizer: Tokenizer): FolderFiles {
  return model instanceof Llama ? llamaFolderFiles(model, tokenizer) : gpt2FolderFiles(model, tokenizer);
}

/**
 * The folder of a dacp model file, straight from its tensors: no TensorFlow.js model is built, so
 * the registry can convert on a worker that trains nothing.
 */
export function folderFilesOfModelFile({ tensors, metadata }: TensorFile): FolderFiles {
  const { config, tokenizer } = readReserved(metadata, MODEL_FORMAT, tensors, 'model file');
  const weights: Record<string, Float32Array> = {};
  for (const [name, tensor] of Object.entries(tensors)) weights[name] = tensor.data as Float32Array;
  const parsed = parseAnyModelConfig(config);
  return isLlamaConfig(parsed) ? llamaFiles(parsed, weights, tokenizer) : gpt2Files(parsed, weights, tokenizer);
}
