import { z } from 'zod';

/**
 * Byte-level tokenizer: ids 0..255 are the UTF-8 bytes, followed by the special tokens.
 * Every string round-trips and no training is needed; a learned BPE can replace it later
 * behind the same TokenizerJson `kind` switch.
 */

export const BYTE_COUNT = 256;

export const tokenizerJsonSchema = z.object({
  kind: z.literal('bytes'),
  version: z.literal(1),
});
export type TokenizerJson = z.infer<typeof tokenizerJsonSchema>;

export class ByteTokenizer {
  /** End of a document or of a response; generation stops here. */
  readonly eosId = BYTE_COUNT;
  /** Fills rows shorter than the context; never a training target. */
  readonly padId = BYTE_COUNT + 1;
  readonly vocabSize = BYTE_COUNT + 2;

  encode(text: string): number[] {
    return Array.from(Buffer.from(text, 'utf8'));
  }

  /** Skips special and out-of-range ids; invalid UTF-8 (a cut multi-byte char) becomes U+FFFD. */
  decode(ids: number[]): string {
    const bytes = ids.filter((id) => Number.isInteger(id) && id >= 0 && id < BYTE_COUNT);
    return Buffer.from(bytes).toString('utf8');
  }

  toJSON(): TokenizerJson {
    return { kind: 'bytes', version: 1 };
  }

  static fromJSON(json: unknown): ByteTokenizer {
    const parsed = tokenizerJsonSchema.safeParse(json);
    if (!parsed.success) {
      const issues = parsed.error.issues.map((issue) => `${issue.path.join('.') || '(root)'}: ${issue.message}`);
      throw new Error(`invalid tokenizer JSON (expected {"kind":"bytes","version":1}): ${issues.join('; ')}`);
    }
    return new ByteTokenizer();
  }
}
