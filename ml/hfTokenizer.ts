import { Template } from '@huggingface/jinja';
import { Tokenizer as HfCore } from '@huggingface/tokenizers';
import type { Tokenizer } from './tokenizer';

/**
 * Hugging Face tokenizers in dacp: a model's own `tokenizer.json` run by the maintained
 * `@huggingface/tokenizers` library (ids equal to Python's `tokenizers`), and dacp's own byte and
 * BPE tokenizers written as a `tokenizer.json` that Hugging Face loads with the same ids.
 */

export type JsonObject = Record<string, unknown>;

/** How an imported tokenizer is stored with its model: the two files as Hugging Face wrote them. */
export interface HfTokenizerJson {
  kind: 'hf';
  version: 1;
  /** `tokenizer.json`. */
  tokenizer: JsonObject;
  /** `tokenizer_config.json` (eos, pad, chat template …). */
  config: JsonObject;
  /** Rows of the model's embedding: may exceed the tokenizer's own vocabulary (padded for speed). */
  vocabSize: number;
}

/** A special token as tokenizer_config.json writes it: a string, or an AddedToken object. */
function tokenContent(value: unknown): string | undefined {
  if (typeof value === 'string') return value;
  if (value && typeof value === 'object' && typeof (value as { content?: unknown }).content === 'string') return (value as { content: string }).content;
  return undefined;
}

export class HfTokenizer implements Tokenizer {
  readonly eosId: number;
  readonly padId: number;
  private readonly core: HfCore;
  private readonly known: number;

  constructor(private readonly json: HfTokenizerJson) {
    try {
      this.core = new HfCore(json.tokenizer, json.config);
    } catch (error) {
      throw new Error(`tokenizer.json cannot be loaded: ${error instanceof Error ? error.message : String(error)}`);
    }
    const idOf = (field: string): number | undefined => {
      const content = tokenContent(json.config[field]);
      return content === undefined ? undefined : this.core.token_to_id(content);
    };
    const eos = idOf('eos_token');
    if (eos === undefined) throw new Error('tokenizer_config.json names no eos_token that tokenizer.json knows; dacp ends every document and response with it');
    this.eosId = eos;
    this.padId = idOf('pad_token') ?? eos;
    const vocab = (json.tokenizer.model as { vocab?: Record<string, number> | unknown[] } | undefined)?.vocab;
    const added = (json.tokenizer.added_tokens as { id: number }[] | undefined) ?? [];
    const modelSize = Array.isArray(vocab) ? vocab.length : vocab ? Object.keys(vocab).length : 0;
    this.known = Math.max(modelSize, ...added.map((t) => t.id + 1));
    if (this.known > json.vocabSize) {
      throw new Error(`tokenizer.json has ${this.known} tokens but the model's vocabulary has ${json.vocabSize} rows (config.json vocab_size)`);
    }
  }

  get vocabSize(): number {
    return this.json.vocabSize;
  }

  encode(text: string): number[] {
    return this.core.encode(text, { add_special_tokens: false }).ids;
  }

  decode(ids: number[]): string {
    const known = ids.filter((id) => Number.isInteger(id) && id >= 0 && id < this.known);
    // The library refuses an empty list; a generation that stopped at once decodes to nothing.
    return known.length ? this.core.decode(known, { skip_special_tokens: true, clean_up_tokenization_spaces: false }) : '';
  }

  /** The chat template of tokenizer_config.json, if it has one. */
  get chatTemplate(): string | undefined {
    const template = this.json.config.chat_template;
    return typeof template === 'string' ? template : undefined;
  }

  /**
   * An instruction as the model's chat template lays out one user turn and the start of the
   * answer (transformers' `apply_chat_template(..., add_generation_prompt=True, tokenize=True)`),
   * or undefined where tokenizer_config.json has no template.
   */
  encodeInstruction(prompt: string): number[] | undefined {
    const source = this.chatTemplate;
    if (source === undefined) return undefined;
    this.template ??= new Template(source);
    const special = Object.fromEntries(
      ['bos_token', 'eos_token', 'pad_token', 'unk_token'].map((field) => [field, tokenContent(this.json.config[field]) ?? '']),
    );
    const text = this.template.render({ messages: [{ role: 'user', content: prompt }], add_generation_prompt: true, ...special });
    // Special tokens written by the template (</s>, <|im_start|> …) are matched as such.
    return this.encode(text);
  }

  /** A whole conversation laid out by the chat template, ending where the assistant's answer starts; undefined without a template. */
  encodeChat(messages: { role: string; content: string }[]): number[] | undefined {
    const source = this.chatTemplate;
    if (source === undefined) return undefined;
    this.template ??= new Template(source);
    const special = Object.fromEntries(
      ['bos_token', 'eos_token', 'pad_token', 'unk_token'].map((field) => [field, tokenContent(this.json.config[field]) ?? '']),
    );
    return this.encode(this.template.render({ messages, add_generation_prompt: true, ...special }));
  }

  private template: Template | undefined;

  toJSON(): HfTokenizerJson {
    return this.json;
  }
}

/** GPT-2's map from bytes to printable characters: byte-level BPE vocabularies are written in it. */
function bytesToUnicode(): string[] {
  const printable: number[] = [];
  for (const [lo, hi] of [[0x21, 0x7e], [0xa1, 0xac], [0xae, 0xff]] as const) for (let b = lo; b <= hi; b++) printable.push(b);
  const chars = new Array<string>(256);
  let extra = 0;
  for (let b = 0; b < 256; b++) chars[b] = String.fromCodePoint(printable.includes(b) ? b : 256 + extra++);
  return chars;
}

export const EOS_TOKEN = '<|endoftext|>';
export const PAD_TOKEN = '<|pad|>';

/**
 * dacp's byte or BPE tokenizer as the two Hugging Face files. Ids 0..255 are the bytes (written in
 * GPT-2's byte-to-character map), then the merges in order, then eos and pad; the pre-tokenizer is
 * GPT-2's ByteLevel split, which is the split dacp's BPE uses.
 */
export function hfFilesOfDacpTokenizer(
  merges: readonly (readonly [number, number])[],
  contextLength: number,
): { tokenizer: JsonObject; config: JsonObject } {
  const strings = bytesToUnicode();
  const vocab: Record<string, number> = {};
  strings.forEach((s, id) => (vocab[s] = id));
  const mergeList: string[] = [];
  for (const [rank, [a, b]] of merges.entries()) {
    const merged = `${strings[a]}${strings[b]}`;
    if (vocab[merged] !== undefined) {
      throw new Error(`merge ${rank} makes "${merged}", which id ${vocab[merged]} already is; Hugging Face BPE needs every token once, so this tokenizer cannot be exported`);
    }
    vocab[merged] = strings.push(merged) - 1;
    mergeList.push(`${strings[a]} ${strings[b]}`);
  }
  const eos = strings.length;
  const added = [EOS_TOKEN, PAD_TOKEN].map((content, i) => ({
    id: eos + i, content, single_word: false, lstrip: false, rstrip: false, normalized: false, special: true,
  }));
  const byteLevel = { type: 'ByteLevel', add_prefix_space: false, trim_offsets: true, use_regex: true };
  return {
    tokenizer: {
      version: '1.0',
      truncation: null,
      padding: null,
      added_tokens: added,
      normalizer: null,
      pre_tokenizer: byteLevel,
      post_processor: { ...byteLevel, trim_offsets: false },
      decoder: byteLevel,
      model: {
        type: 'BPE', dropout: null, unk_token: null, continuing_subword_prefix: null, end_of_word_suffix: null,
        fuse_unk: false, byte_fallback: false, ignore_merges: false, vocab, merges: mergeList,
      },
    },
    config: {
      tokenizer_class: 'PreTrainedTokenizerFast',
      bos_token: EOS_TOKEN,
      eos_token: EOS_TOKEN,
      pad_token: PAD_TOKEN,
      model_max_length: contextLength,
      add_prefix_space: false,
      clean_up_tokenization_spaces: false,
      added_tokens_decoder: Object.fromEntries(added.map(({ id, ...token }) => [String(id), token])),
    },
  };
}
