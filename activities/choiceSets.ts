/**
 * Multiple-choice evaluation sets (`evaluation.choices` in the spec): JSON lines of
 * `{question, choices, answer}`, where answer is the right choice's 0-based index or its exact text.
 * Read under the same rules as file sources (resolved against the spec's folder, refused outside
 * dataRoots, size-limited UTF-8), validated line by line, and normalised to answer indices.
 * Messages name file, line and field and say what to fix; like sources.ts they never quote the
 * file's text, because questions may be real documents and messages land in history and logs.
 */
import { ApplicationFailure } from '@temporalio/common';
import { z } from 'zod';
import type { ChoiceItem } from '../ml/choices';
import type { ArtifactRef } from '../schemas/pipeline';
import type { ArtifactStore } from './artifacts';
import { jsonProblem, readNamedFile, type ReadSourceOptions } from './sources';

export type ChoiceSetName = 'domain' | 'general';
export type ChoiceSetRef = ArtifactRef & { items: number };

const minChoices = 2;
const maxChoices = 10;

const nonBlank = (s: string): boolean => s.trim().length > 0;

const ChoiceLine = z
  .object({
    question: z
      .string({ required_error: 'is missing; add the question text', invalid_type_error: 'must be a string; write the question as text' })
      .refine(nonBlank, 'is empty; write the question'),
    choices: z
      .array(
        z.string({ invalid_type_error: 'must be a string; write each choice as text' }).refine(nonBlank, 'is empty; every choice needs text'),
        {
          required_error: `is missing; add a list of ${minChoices}–${maxChoices} choices`,
          invalid_type_error: `must be a list of ${minChoices}–${maxChoices} strings`,
        },
      )
      .min(minChoices, `needs at least ${minChoices} choices; add more or drop the question`)
      .max(maxChoices, `has more than ${maxChoices} choices; keep at most ${maxChoices}`),
    answer: z.union([z.number(), z.string()], {
      errorMap: (_issue, ctx) => ({
        message:
          ctx.data === undefined
            ? "is missing; add the right choice's index (0-based) or its exact text"
            : "must be the right choice's index (a number, 0-based) or its exact text (a string)",
      }),
    }),
  })
  .superRefine((line, ctx) => {
    const trimmed = line.choices.map((c) => c.trim());
    const first = trimmed.findIndex((c, i) => trimmed.indexOf(c) !== i);
    if (first !== -1) {
      // Identical continuations score alike, so such a question cannot be answered by likelihood.
      ctx.addIssue({ code: z.ZodIssueCode.custom, path: ['choices', first], message: `repeats choices[${trimmed.indexOf(trimmed[first] as string)}]; make every choice different` });
    }
    const n = line.choices.length;
    if (typeof line.answer === 'number') {
      if (!Number.isInteger(line.answer) || line.answer < 0 || line.answer >= n) {
        ctx.addIssue({ code: z.ZodIssueCode.custom, path: ['answer'], message: `is ${line.answer}, not an index of the ${n} choices; give 0–${n - 1} (0-based) or the right choice's text` });
      }
    } else if (!trimmed.includes(line.answer.trim())) {
      ctx.addIssue({ code: z.ZodIssueCode.custom, path: ['answer'], message: `is text that equals none of the ${n} choices; copy the right choice exactly or give its index (0–${n - 1})` });
    }
  });

function fieldName(issuePath: (string | number)[]): string {
  return issuePath.map((p, i) => (typeof p === 'number' ? `[${p}]` : i === 0 ? p : `.${p}`)).join('');
}

function invalid(message: string): never {
  throw ApplicationFailure.nonRetryable(message, 'SourceInvalid');
}

/** Parse a choice file's text; `shown` is the file as messages name it. */
export function parseChoiceLines(text: string, shown: string): ChoiceItem[] {
  const items: ChoiceItem[] = [];
  const lines = text.split('\n');
  for (let i = 0; i < lines.length; i++) {
    const line = (lines[i] as string).trim();
    if (line === '') continue;
    const where = `${shown}:${i + 1}`;
    let record: unknown;
    try {
      record = JSON.parse(line);
    } catch (err) {
      const column = (lines[i] as string).length - (lines[i] as string).trimStart().length;
      invalid(`${where}: invalid JSON (${jsonProblem(err, column)}); each line must be one JSON object {"question", "choices", "answer"} with its strings double-quoted and escaped — fix that line or remove it`);
    }
    if (typeof record !== 'object' || record === null || Array.isArray(record)) {
      invalid(`${where}: expected a JSON object {"question", "choices", "answer"} per line, got ${Array.isArray(record) ? 'an array' : record === null ? 'null' : typeof record}`);
    }
    const parsed = ChoiceLine.safeParse(record);
    if (!parsed.success) {
      const problems = parsed.error.issues.map((issue) => `"${fieldName(issue.path)}" ${issue.message}`);
      invalid(`${where}: ${problems.join('; ')}`);
    }
    const { question, choices, answer } = parsed.data;
    const index = typeof answer === 'number' ? answer : choices.map((c) => c.trim()).indexOf(answer.trim());
    items.push({ question, choices, answer: index });
  }
  if (items.length === 0) invalid(`${shown} holds no questions; write one JSON object {"question", "choices", "answer"} per line`);
  return items;
}

/** Read and validate one choice file named by the spec (relative to its folder). */
export async function readChoiceSet(file: string, o: ReadSourceOptions): Promise<ChoiceItem[]> {
  const { text, shown } = await readNamedFile(file, o);
  return parseChoiceLines(text, shown);
}

/** Stores a validated set as a content-addressed JSON array of `{question, choices, answer: index}`. */
export async function storeChoiceSet(store: ArtifactStore, items: ChoiceItem[]): Promise<ChoiceSetRef> {
  return { ...(await store.putJson('evaluation', items)), items: items.length };
}

const StoredChoiceSet = z.array(z.object({ question: z.string(), choices: z.array(z.string()).min(minChoices), answer: z.number().int().min(0) }).strict());

/** Reads a set written by storeChoiceSet (the store verifies its sha256); the shape is checked, since evaluation trusts it. */
export async function loadChoiceSet(store: ArtifactStore, ref: ArtifactRef): Promise<ChoiceItem[]> {
  const parsed = StoredChoiceSet.safeParse(await store.getJson<unknown>(ref));
  if (!parsed.success || parsed.data.some((item) => item.answer >= item.choices.length)) {
    throw ApplicationFailure.nonRetryable(`artifact ${ref.uri} is not a choice set; was it written by collect?`, 'ArtifactInvalid');
  }
  return parsed.data;
}
