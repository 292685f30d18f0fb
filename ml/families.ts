import { GPT, parameterSpecs, parseModelConfig, type ModelConfig, type ParameterSpec } from './model';
import { Llama, llamaParameterSpecs, parseLlamaConfig, type LlamaConfig } from './llama';

/**
 * The model families the built-in engine trains, one readable file each: `model.ts` (GPT-2) and
 * `llama.ts` (Llama, Qwen2, SmolLM, Mistral). A stored config says which: the Llama family's
 * carries `family: "llama"`; GPT-2's has no `family`, as it had before there were two.
 */

export type CausalLM = GPT | Llama;
export type AnyModelConfig = ModelConfig | LlamaConfig;

export function isLlamaConfig(config: AnyModelConfig): config is LlamaConfig {
  return (config as { family?: string }).family === 'llama';
}

export function familyOfConfig(config: AnyModelConfig): 'gpt2' | 'llama' {
  return isLlamaConfig(config) ? 'llama' : 'gpt2';
}

export function parseAnyModelConfig(json: unknown): AnyModelConfig {
  return (json as { family?: unknown } | null)?.family === 'llama' ? parseLlamaConfig(json) : parseModelConfig(json);
}

export function specsOf(config: AnyModelConfig): ParameterSpec[] {
  return isLlamaConfig(config) ? llamaParameterSpecs(config) : parameterSpecs(config);
}

export function modelFromWeights(config: AnyModelConfig, weights: Record<string, Float32Array>): CausalLM {
  return isLlamaConfig(config) ? Llama.fromWeights(config, weights) : GPT.fromWeights(config, weights);
}

export function createModel(config: AnyModelConfig, seed: number): CausalLM {
  return isLlamaConfig(config) ? Llama.create(config, seed) : GPT.create(config, seed);
}

export function parameterCountOf(config: AnyModelConfig): number {
  return specsOf(config).reduce((sum, p) => sum + p.shape.reduce((a, b) => a * b, 1), 0);
}
