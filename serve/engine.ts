import { setImmediate as yieldToEventLoop } from 'timers/promises';
import * as tf from '@tensorflow/tfjs';
import type { Pool } from 'pg';
import { openArtifactStore } from '../activities/objectStore';
import { findModelVersion } from '../db/records';
import type { CausalLM } from '../ml/families';
import { formatInstructionPrompt } from '../ml/mixing';
import { modelFromFileTensors } from '../ml/modelFile';
import { mulberry32 } from '../ml/random';
import type { Tokenizer } from '../ml/tokenizer';

/**
 * Generation as `dacp serve` does it, and as the post-deploy smoke test does it (the same code):
 * a registry version loaded into the built-in engine (TensorFlow.js), and a loop that advances every
 * active request one token per step, all of them in one forward pass (a batch). There is no KV
 * cache: each step reads the window again.
 */

export interface LoadedModel {
  versionId: string;
  sha256: string;
  model: CausalLM;
  tokenizer: Tokenizer;
  contextLength: number;
}

/** A version (or the version an alias points at) from the registry, verified by sha256 as it is read. */
export async function loadVersion(pool: Pool, artifactsDir: string, ref: string): Promise<LoadedModel> {
  const version = await findModelVersion(pool, ref);
  if (!version) throw new Error(`no model version or alias "${ref}" in the registry; deploy or import one first`);
  const store = openArtifactStore(artifactsDir);
  const { model, tokenizer } = modelFromFileTensors(await store.getSafetensors({ uri: version.uri, sha256: version.sha256 }));
  return { versionId: version.versionId, sha256: version.sha256, model, tokenizer, contextLength: model.config.contextLength };
}

export type ChatMessage = { role: 'system' | 'user' | 'assistant' | 'developer'; content: string };

/**
 * A conversation as the prompt the model continues: its chat template where the tokenizer has one,
 * else the plain instruction layout dacp tunes with (earlier turns as instruction/response pairs,
 * system text before the first instruction).
 */
export function encodeChat(tokenizer: Tokenizer, messages: ChatMessage[]): number[] {
  const viaTemplate = (tokenizer as Tokenizer & { encodeChat?: (m: ChatMessage[]) => number[] | undefined }).encodeChat?.(messages);
  if (viaTemplate) return viaTemplate;
  const system = messages.filter((m) => m.role === 'system' || m.role === 'developer').map((m) => m.content.trim()).join('\n\n');
  let text = '';
  let pendingSystem = system;
  for (const m of messages) {
    if (m.role === 'user') {
      text += formatInstructionPrompt(pendingSystem ? `${pendingSystem}\n\n${m.content}` : m.content);
      pendingSystem = '';
    } else if (m.role === 'assistant') {
      text += `${m.content.trim()}\n\n`;
    }
  }
  return tokenizer.encode(text);
}

export interface GenerationRequest {
  promptIds: number[];
  maxTokens: number;
  /** 0: greedy. */
  temperature: number;
  /** Nucleus sampling: the smallest set of tokens whose probability reaches top_p (1: all). */
  topP: number;
  seed: number;
  /** Called with each new token id, in order; return false to stop (a stop sequence was met). */
  onToken: (id: number) => boolean;
}

export type FinishReason = 'stop' | 'length';

interface Active {
  request: GenerationRequest;
  ids: number[];
  produced: number;
  uniform: () => number;
  done: (reason: FinishReason) => void;
  fail: (error: Error) => void;
}

/** One loaded version and its generation loop; `retire()` lets active requests finish, then frees the weights. */
export class Generator {
  private readonly active: Active[] = [];
  private running = false;
  private retired = false;
  private disposed = false;
  /** Forward passes and the rows they carried (for the batch figures of bench:serve). */
  readonly stats = { passes: 0, rows: 0, tokens: 0 };

  constructor(readonly loaded: LoadedModel) {}

  get inFlight(): number {
    return this.active.length;
  }

  generate(request: GenerationRequest): Promise<FinishReason> {
    if (this.retired) return Promise.reject(new Error('this model version was swapped out; retry'));
    return new Promise<FinishReason>((resolve, reject) => {
      this.active.push({ request, ids: [...request.promptIds], produced: 0, uniform: mulberry32(request.seed >>> 0), done: resolve, fail: reject });
      if (!this.running) void this.loop();
    });
  }

  /** No new requests; the weights are freed once the active ones have finished. */
  retire(): void {
    this.retired = true;
    if (this.active.length === 0) this.dispose();
  }

  private dispose(): void {
    if (this.disposed) return;
    this.disposed = true;
    this.loaded.model.dispose();
  }

  private async loop(): Promise<void> {
    this.running = true;
    try {
      while (this.active.length > 0) {
        // Every active request shares one forward pass. Shorter windows are padded on the right:
        // under the causal mask no position attends to a later one, so the logits at each row's
        // last real token are those of the row alone.
        const T = this.loaded.contextLength;
        const group = [...this.active];
        const windows = group.map((a) => a.ids.slice(-T));
        const width = Math.max(...windows.map((w) => w.length));
        const pad = this.loaded.tokenizer.padId;
        let logits: Float32Array;
        try {
          logits = tf.tidy(() => {
            const rows = windows.map((w) => (w.length === width ? w : [...w, ...new Array<number>(width - w.length).fill(pad)]));
            const out = this.loaded.model.logits(tf.tensor2d(rows, undefined, 'int32')); // [B,width,V]
            const V = out.shape[2] as number;
            const last = tf.tensor1d(windows.map((w, r) => r * width + w.length - 1), 'int32');
            return tf.gather(out.reshape([group.length * width, V]), last).dataSync() as Float32Array; // [B,V]
          });
        } catch (err) {
          for (const a of group) this.finish(a, err as Error);
          continue;
        }
        this.stats.passes += 1;
        this.stats.rows += group.length;
        const V = logits.length / group.length;
        group.forEach((a, row) => this.advance(a, logits.subarray(row * V, (row + 1) * V)));
        await yieldToEventLoop();
      }
    } finally {
      this.running = false;
      if (this.retired) this.dispose();
    }
  }

  private advance(a: Active, logits: Float32Array): void {
    const { request } = a;
    const next = request.temperature > 0 ? nucleus(logits, request.temperature, request.topP, a.uniform()) : argmaxOf(logits);
    if (!Number.isFinite(logits[next] as number)) return this.finish(a, new Error('the model produced non-finite logits'));
    if (next === this.loaded.tokenizer.eosId) return this.finish(a, 'stop');
    a.ids.push(next);
    a.produced += 1;
    this.stats.tokens += 1;
    let more: boolean;
    try {
      more = request.onToken(next);
    } catch (err) {
      return this.finish(a, err as Error);
    }
    if (!more) return this.finish(a, 'stop');
    if (a.produced >= request.maxTokens) return this.finish(a, 'length');
  }

  private finish(a: Active, outcome: FinishReason | Error): void {
    const i = this.active.indexOf(a);
    if (i >= 0) this.active.splice(i, 1);
    if (outcome instanceof Error) a.fail(outcome);
    else a.done(outcome);
  }
}

function argmaxOf(values: Float32Array): number {
  let best = 0;
  for (let i = 1; i < values.length; i++) if ((values[i] as number) > (values[best] as number)) best = i;
  return best;
}

/** One draw from softmax(logits / temperature), limited to the smallest set of tokens whose probability reaches topP. */
export function nucleus(logits: Float32Array, temperature: number, topP: number, u: number): number {
  let max = Number.NEGATIVE_INFINITY;
  for (const v of logits) if (v > max) max = v;
  const order = Array.from({ length: logits.length }, (_, i) => i).sort((a, b) => (logits[b] as number) - (logits[a] as number) || a - b);
  const weights = order.map((id) => Math.exp(((logits[id] as number) - max) / temperature));
  const total = weights.reduce((x, y) => x + y, 0);
  let kept = order.length;
  if (topP < 1) {
    let acc = 0;
    for (let i = 0; i < order.length; i++) {
      acc += (weights[i] as number) / total;
      if (acc >= topP) {
        kept = i + 1;
        break;
      }
    }
  }
  const keptTotal = weights.slice(0, kept).reduce((x, y) => x + y, 0);
  let acc = 0;
  for (let i = 0; i < kept; i++) {
    acc += (weights[i] as number) / keptTotal;
    if (u < acc) return order[i] as number;
  }
  return order[kept - 1] as number;
}

/**
 * Incremental decoding: the text added by the newest ids, held back while it ends in a cut
 * multi-byte character, so a stream never carries U+FFFD for a character that completes later.
 */
export class TextStream {
  private readonly ids: number[] = [];
  private emitted = '';

  constructor(private readonly tokenizer: Tokenizer) {}

  push(id: number): string {
    this.ids.push(id);
    const text = this.tokenizer.decode(this.ids);
    if (text.endsWith('\uFFFD')) return '';
    const delta = text.slice(this.emitted.length);
    this.emitted = text;
    return delta;
  }

  /** Whatever is left (a character that never completed shows as U+FFFD). */
  flush(): string {
    const text = this.tokenizer.decode(this.ids);
    const delta = text.slice(this.emitted.length);
    this.emitted = text;
    return delta;
  }

  get text(): string {
    return this.emitted;
  }
}
