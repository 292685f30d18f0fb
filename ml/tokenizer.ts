import { setImmediate as yieldToEventLoop } from 'timers/promises';
import { z } from 'zod';
import { BpeTokenizer, BYTE_COUNT } from './bpe';
import { HfTokenizer, type HfTokenizerJson } from './hfTokenizer';

/**
 * Tokenizers map text to ids and back. Both kinds put the two special tokens last
 * (eos = vocabSize − 2, pad = vocabSize − 1) and are stored with the model as TokenizerJson:
 * - `bytes`: ids 0..255 are the UTF-8 bytes; no training, vocabSize 258.
 * - `bpe`: byte-level BPE learned on the base corpus (bpe.ts); DACP and instruction tuning
 *   keep the base model's tokenizer, so ids mean the same thing at every stage.
 */

export { BpeTokenizer, BYTE_COUNT };

export interface Tokenizer {
  readonly vocabSize: number;
  /** End of a document or of a response; generation stops here. */
  readonly eosId: number;
  /** Fills rows shorter than the context; never a training target. */
  readonly padId: number;
  encode(text: string): number[];
  /** Skips special and out-of-range ids; invalid UTF-8 (a cut multi-byte char) becomes U+FFFD. */
  decode(ids: number[]): string;
  toJSON(): TokenizerJson;
  /** An instruction laid out by the model's own chat template, where it has one (hfTokenizer.ts). */
  encodeInstruction?(prompt: string): number[] | undefined;
}

const bytesJsonSchema = z.object({ kind: z.literal('bytes'), version: z.literal(1) });
const bpeJsonSchema = z.object({
  kind: z.literal('bpe'),
  version: z.literal(1),
  /** Merge i creates id 256 + i from the pair; vocabSize = 256 + merges.length + 2. */
  merges: z.array(z.tuple([z.number().int().nonnegative(), z.number().int().nonnegative()])),
});
/** An imported model's own tokenizer (hfTokenizer.ts): its tokenizer.json and tokenizer_config.json. */
const hfJsonSchema = z.object({
  kind: z.literal('hf'),
  version: z.literal(1),
  tokenizer: z.record(z.unknown()),
  config: z.record(z.unknown()),
  vocabSize: z.number().int().positive(),
});
export const tokenizerJsonSchema = z.discriminatedUnion('kind', [bytesJsonSchema, bpeJsonSchema, hfJsonSchema]);
export type TokenizerJson = { kind: 'bytes'; version: 1 } | { kind: 'bpe'; version: 1; merges: [number, number][] } | HfTokenizerJson;

/** Validates stored tokenizer JSON (model files, checkpoints) and builds the tokenizer. */
export function tokenizerFromJSON(json: unknown): Tokenizer {
  const parsed = tokenizerJsonSchema.safeParse(json);
  if (!parsed.success) {
    throw new Error(`invalid tokenizer JSON (expected {"kind":"bytes","version":1} or {"kind":"bpe","version":1,"merges":[[a,b],…]}): ${formatIssues(parsed.error)}`);
  }
  if (parsed.data.kind === 'bytes') return new ByteTokenizer();
  try {
    if (parsed.data.kind === 'hf') return new HfTokenizer(parsed.data);
    return BpeTokenizer.fromMerges(parsed.data.merges);
  } catch (error) {
    throw new Error(`invalid tokenizer JSON: ${error instanceof Error ? error.message : String(error)}`);
  }
}

export interface PaceOptions {
  /** Awaited between slices of work (about every `sliceMs`) with the items done so far: the place to heartbeat. */
  onProgress?: (p: { done: number; total: number }) => void | Promise<void>;
  /** How long one slice of synchronous work may run before the event loop gets a turn (default 50 ms). */
  sliceMs?: number;
}

const DEFAULT_SLICE_MS = 50;

/**
 * Runs `each` over `items`, giving the event loop a turn about every `sliceMs`. Tokenizing a corpus
 * is minutes of synchronous work; an activity doing it must keep heartbeating meanwhile.
 */
export async function forEachPaced<T>(items: readonly T[], each: (item: T, index: number) => void, o: PaceOptions = {}): Promise<void> {
  const sliceMs = o.sliceMs ?? DEFAULT_SLICE_MS;
  let sliceStart = Date.now();
  for (let i = 0; i < items.length; i++) {
    each(items[i] as T, i);
    if (Date.now() - sliceStart >= sliceMs) {
      await o.onProgress?.({ done: i + 1, total: items.length });
      await yieldToEventLoop();
      sliceStart = Date.now();
    }
  }
}

/** Documents → one token stream, each document closed by the end-of-text token (the `lm` data layout). */
export async function encodeDocuments(tokenizer: Tokenizer, texts: readonly string[], o: PaceOptions = {}): Promise<number[]> {
  const out: number[] = [];
  await forEachPaced(texts, (text) => {
    for (const id of tokenizer.encode(text)) out.push(id);
    out.push(tokenizer.eosId);
  }, o);
  return out;
}

export class ByteTokenizer implements Tokenizer {
  readonly eosId: number = BYTE_COUNT;
  readonly padId: number = BYTE_COUNT + 1;
  readonly vocabSize: number = BYTE_COUNT + 2;

  encode(text: string): number[] {
    return Array.from(Buffer.from(text, 'utf8'));
  }

  decode(ids: number[]): string {
    const bytes = ids.filter((id) => Number.isInteger(id) && id >= 0 && id < BYTE_COUNT);
    return Buffer.from(bytes).toString('utf8');
  }

  toJSON(): TokenizerJson {
    return { kind: 'bytes', version: 1 };
  }

  /** Accepts only `{kind:'bytes'}`; use tokenizerFromJSON for any stored tokenizer. */
  static fromJSON(json: unknown): ByteTokenizer {
    const parsed = bytesJsonSchema.safeParse(json);
    if (!parsed.success) throw new Error(`invalid tokenizer JSON (expected {"kind":"bytes","version":1}): ${formatIssues(parsed.error)}`);
    return new ByteTokenizer();
  }
}

function formatIssues(error: z.ZodError): string {
  return error.issues.map((issue) => `${issue.path.join('.') || '(root)'}: ${issue.message}`).join('; ');
}
