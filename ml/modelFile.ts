import { modelFromWeights, parseAnyModelConfig, specsOf, type AnyModelConfig, type CausalLM } from './families';
import { decodeSafetensors, encodeSafetensors, SafetensorsTensor, tensorsDigest } from './safetensors';
import { readSafetensorsHeader } from './safetensorsFile';
import { type Tokenizer, tokenizerFromJSON } from './tokenizer';
import { isFloat32Array } from './typedArrays';

/**
 * A model artifact is one safetensors file: the weights as F32 tensors named like
 * GPT.variables, and in __metadata__ the keys below. Any other metadata keys are the caller's
 * (lineage, run id …) and come back unchanged in `meta`.
 */
export const MODEL_FORMAT = 'dacp-gpt/1';
export const RESERVED_KEYS = { format: 'format', config: 'dacp.config', tokenizer: 'dacp.tokenizer', digest: 'dacp.sha256' } as const;
/** `format` and every `dacp.*` key belong to the file format; callers use any other name. */
export const isReservedKey = (key: string): boolean => key === RESERVED_KEYS.format || key.startsWith('dacp.');

/** A model file's tensors and metadata, for a streamed write (ArtifactStore.putSafetensors) or one buffer. */
export function modelFileTensors(model: CausalLM, tokenizer: Tokenizer, meta: Record<string, string> = {}): { tensors: Record<string, SafetensorsTensor>; metadata: Record<string, string> } {
  return modelFileTensorsOf(model.config, model.weights(), tokenizer, meta);
}

/** The same from a config and its weights, with no TensorFlow.js model built (the weights must match the config). */
export function modelFileTensorsOf(
  config: AnyModelConfig,
  weights: Record<string, Float32Array>,
  tokenizer: Tokenizer,
  meta: Record<string, string> = {},
): { tensors: Record<string, SafetensorsTensor>; metadata: Record<string, string> } {
  const tensors: Record<string, SafetensorsTensor> = {};
  for (const spec of specsOf(config)) {
    const data = weights[spec.name];
    if (data === undefined || data.length !== spec.shape.reduce((a, b) => a * b, 1)) throw new Error(`model file: weight "${spec.name}" is missing or mis-sized`);
    tensors[spec.name] = { dtype: 'F32', shape: [...spec.shape], data };
  }
  return { tensors, metadata: withReserved(meta, MODEL_FORMAT, { config, tokenizer: tokenizer.toJSON(), tensors }) };
}

export function serializeModel(model: CausalLM, tokenizer: Tokenizer, meta: Record<string, string> = {}): Buffer {
  const { tensors, metadata } = modelFileTensors(model, tokenizer, meta);
  return encodeSafetensors(tensors, metadata);
}

export function deserializeModel(buf: Buffer): { model: CausalLM; tokenizer: Tokenizer; meta: Record<string, string> } {
  return modelFromFileTensors(decodeSafetensors(buf));
}

/** A model from a model file's decoded tensors and metadata (ArtifactStore.getSafetensors streams them in). */
export function modelFromFileTensors({ tensors, metadata }: { tensors: Record<string, SafetensorsTensor>; metadata: Record<string, string> }): { model: CausalLM; tokenizer: Tokenizer; meta: Record<string, string> } {
  const { config, tokenizer, meta } = readReserved(metadata, MODEL_FORMAT, tensors, 'model file');
  const weights: Record<string, Float32Array> = {};
  for (const [name, tensor] of Object.entries(tensors)) {
    if (!isFloat32Array(tensor.data)) throw new Error(`model file: tensor "${name}" is ${tensor.dtype}, expected F32`);
    weights[name] = tensor.data;
  }
  const model = modelFromWeights(parseAnyModelConfig(config), weights);
  if (model.config.vocabSize !== tokenizer.vocabSize) {
    model.dispose();
    throw new Error(`model file: model vocabSize ${model.config.vocabSize} does not match the tokenizer's ${tokenizer.vocabSize}`);
  }
  return { model, tokenizer, meta };
}

/** Shared with checkpoints: the caller's keys, the format's own (`extra`), and a digest of all tensors. */
export function withReserved(
  meta: Record<string, string>,
  format: string,
  o: { config: object; tokenizer: object; tensors: Record<string, SafetensorsTensor>; extra?: Record<string, string> },
): Record<string, string> {
  const clash = Object.keys(meta).filter(isReservedKey);
  if (clash.length > 0) throw new Error(`metadata keys ${clash.join(', ')} are reserved by the ${format} format ("format" and "dacp.*")`);
  return {
    ...meta,
    ...o.extra,
    [RESERVED_KEYS.format]: format,
    [RESERVED_KEYS.config]: JSON.stringify(o.config),
    [RESERVED_KEYS.tokenizer]: JSON.stringify(o.tokenizer),
    [RESERVED_KEYS.digest]: tensorsDigest(o.tensors),
  };
}

export function readReserved(
  metadata: Record<string, string>,
  format: string,
  tensors: Record<string, SafetensorsTensor>,
  what: string,
): { config: unknown; tokenizer: Tokenizer; meta: Record<string, string> } {
  const found = metadata[RESERVED_KEYS.format];
  if (found !== format) throw new Error(`${what}: metadata format is ${found === undefined ? 'missing' : `"${found}"`}, expected "${format}"`);
  const digest = metadata[RESERVED_KEYS.digest];
  if (digest !== undefined && digest !== tensorsDigest(tensors)) {
    throw new Error(`${what}: tensor data does not match its sha256 (${RESERVED_KEYS.digest}); the file is corrupted`);
  }
  const parse = (key: string): unknown => {
    const text = metadata[key];
    if (text === undefined) throw new Error(`${what}: metadata "${key}" is missing`);
    try {
      return JSON.parse(text);
    } catch {
      throw new Error(`${what}: metadata "${key}" is not JSON`);
    }
  };
  const config = parse(RESERVED_KEYS.config);
  const tokenizer = tokenizerFromJSON(parse(RESERVED_KEYS.tokenizer));
  const meta: Record<string, string> = {};
  for (const [key, value] of Object.entries(metadata)) if (!isReservedKey(key)) meta[key] = value;
  return { config, tokenizer, meta };
}

/**
 * A model file's config and tokenizer from its header alone, without reading the weights (their
 * digest is checked whenever they are read). For callers that hand the weights to another engine.
 */
export async function readModelFileHeader(file: string): Promise<{ config: AnyModelConfig; tokenizer: Tokenizer }> {
  const { metadata } = await readSafetensorsHeader(file);
  const found = metadata[RESERVED_KEYS.format];
  if (found !== MODEL_FORMAT) throw new Error(`model file ${file}: metadata format is ${found === undefined ? 'missing' : `"${found}"`}, expected "${MODEL_FORMAT}"`);
  const json = (key: string): unknown => JSON.parse(metadata[key] ?? 'null');
  return { config: parseAnyModelConfig(json(RESERVED_KEYS.config)), tokenizer: tokenizerFromJSON(json(RESERVED_KEYS.tokenizer)) };
}
