import { promises as fs } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { ApplicationFailure } from '@temporalio/common';
import { readChoiceSet } from '../activities/choiceSets';

/**
 * Reading a multiple-choice set (`evaluation.choices.*`): JSON lines of {question, choices, answer},
 * validated per line, answers normalised to indices, refused outside dataRoots like file sources,
 * and every refusal names file:line and field without quoting the file's text.
 */

let dir: string;

async function write(relative: string, content: string): Promise<string> {
  const file = path.join(dir, relative);
  await fs.mkdir(path.dirname(file), { recursive: true });
  await fs.writeFile(file, content);
  return file;
}

const line = (record: unknown): string => JSON.stringify(record);
const good = { question: 'Which alarm points at the fronthaul?', choices: ['fan failure', 'CPRI link degraded', 'tulips'], answer: 1 };

/** The failure a read rejects with: non-retryable, one line. */
async function failureOf(promise: Promise<unknown>): Promise<ApplicationFailure> {
  const err: unknown = await promise.then(() => undefined, (e: unknown) => e);
  expect(err).toBeInstanceOf(ApplicationFailure);
  const failure = err as ApplicationFailure;
  expect(failure.nonRetryable).toBe(true);
  expect(failure.message).not.toContain('\n');
  return failure;
}

beforeEach(async () => {
  dir = await fs.mkdtemp(path.join(os.tmpdir(), 'dacp-choices-'));
});

afterEach(async () => {
  await fs.rm(dir, { recursive: true, force: true });
});

describe('reading a choice set', () => {
  it('reads each line as {question, choices, answer: index}, skipping blank lines and ignoring extra fields', async () => {
    await write('sets/domain.jsonl', [line(good), '', line({ id: 'q2', question: 'Pick the KPI', choices: ['average CQI', 'roses'], answer: 0 })].join('\n') + '\n');
    expect(await readChoiceSet('sets/domain.jsonl', { baseDir: dir })).toEqual([
      good,
      { question: 'Pick the KPI', choices: ['average CQI', 'roses'], answer: 0 },
    ]);
  });

  it('maps an answer given as text to the index of the choice it equals', async () => {
    await write('text.jsonl', line({ question: 'Which is a flower?', choices: ['Kyoto', 'dahlias', 'PRB utilisation'], answer: 'dahlias' }));
    const [item] = await readChoiceSet('text.jsonl', { baseDir: dir });
    expect(item?.answer).toBe(1);
  });

  it('refuses a file with no questions', async () => {
    await write('empty.jsonl', '\n\n');
    const f = await failureOf(readChoiceSet('empty.jsonl', { baseDir: dir }));
    expect(f.type).toBe('SourceInvalid');
    expect(f.message).toMatch(/^empty\.jsonl holds no questions; write one JSON object/);
  });

  it('refuses a missing file, naming the path and what it was resolved against', async () => {
    const f = await failureOf(readChoiceSet('nope.jsonl', { baseDir: dir }));
    expect(f.type).toBe('SourceNotFound');
    expect(f.message).toMatch(/^nope\.jsonl: no such file .*relative to /);
  });

  it('refuses a file outside dataRoots, also through ../ and through a symlink', async () => {
    await write('data/inside.jsonl', line(good));
    await write('elsewhere/outside.jsonl', line(good));
    await fs.symlink(path.join(dir, 'elsewhere', 'outside.jsonl'), path.join(dir, 'data', 'link.jsonl'));
    const o = { baseDir: dir, allowedRoots: ['data'] };
    expect(await readChoiceSet('data/inside.jsonl', o)).toHaveLength(1);
    for (const file of ['elsewhere/outside.jsonl', 'data/../elsewhere/outside.jsonl', 'data/link.jsonl']) {
      const f = await failureOf(readChoiceSet(file, o));
      expect(f.type).toBe('SourceOutsideRoots');
      expect(f.message).toMatch(/is outside the allowed source roots .*a spec's dataRoots only narrow that/);
    }
  });
});

describe('a bad line is named by file:line and field, with the fix', () => {
  const cases: [string, string, RegExp][] = [
    ['invalid JSON', '{"question": "q", "choices": ["a", "b"], answer: 0}', /:2: invalid JSON \(.*at column \d+\); each line must be one JSON object/],
    ['an array instead of an object', '["q", ["a", "b"], 0]', /:2: expected a JSON object .* per line, got an array$/],
    ['a missing question', line({ choices: ['a', 'b'], answer: 0 }), /:2: "question" is missing; add the question text$/],
    ['an empty question', line({ question: '  ', choices: ['a', 'b'], answer: 0 }), /:2: "question" is empty; write the question$/],
    ['choices that are not a list', line({ question: 'q', choices: 'a or b', answer: 0 }), /:2: "choices" must be a list of 2–10 strings$/],
    ['a single choice', line({ question: 'q', choices: ['a'], answer: 0 }), /:2: "choices" needs at least 2 choices; add more or drop the question$/],
    ['eleven choices', line({ question: 'q', choices: 'abcdefghijk'.split(''), answer: 0 }), /:2: "choices" has more than 10 choices; keep at most 10$/],
    ['a choice that is not text', line({ question: 'q', choices: ['a', 7], answer: 0 }), /:2: "choices\[1\]" must be a string; write each choice as text$/],
    ['an empty choice', line({ question: 'q', choices: ['a', ''], answer: 0 }), /:2: "choices\[1\]" is empty; every choice needs text$/],
    ['the same choice twice', line({ question: 'q', choices: ['a', 'b', 'a '], answer: 0 }), /:2: "choices\[2\]" repeats choices\[0\]; make every choice different$/],
    ['a missing answer', line({ question: 'q', choices: ['a', 'b'] }), /:2: "answer" is missing; add the right choice's index \(0-based\) or its exact text$/],
    ['an answer that is neither a number nor text', line({ question: 'q', choices: ['a', 'b'], answer: true }), /:2: "answer" must be the right choice's index \(a number, 0-based\) or its exact text/],
    ['an index past the last choice', line({ question: 'q', choices: ['a', 'b', 'c', 'd'], answer: 4 }), /:2: "answer" is 4, not an index of the 4 choices; give 0–3 \(0-based\)/],
    ['a fractional index', line({ question: 'q', choices: ['a', 'b'], answer: 0.5 }), /:2: "answer" is 0\.5, not an index of the 2 choices/],
    ['an answer text that equals no choice', line({ question: 'q', choices: ['a', 'b'], answer: 'c' }), /:2: "answer" is text that equals none of the 2 choices; copy the right choice exactly or give its index \(0–1\)$/],
  ];

  it.each(cases)('%s', async (_name, bad, expected) => {
    await write('sets/bad.jsonl', `${line(good)}\n${bad}\n${line(good)}\n`);
    const f = await failureOf(readChoiceSet('sets/bad.jsonl', { baseDir: dir }));
    expect(f.type).toBe('SourceInvalid');
    expect(f.message.startsWith('sets/bad.jsonl:2: ')).toBe(true);
    expect(f.message).toMatch(expected);
  });

  it('lists every problem of the line, not only the first', async () => {
    await write('two.jsonl', line({ choices: ['a'], answer: 0 }));
    const f = await failureOf(readChoiceSet('two.jsonl', { baseDir: dir }));
    expect(f.message).toMatch(/^two\.jsonl:1: "question" is missing.*; "choices" needs at least 2 choices/);
  });

  it('never quotes the text of the line: not from a malformed line, not from a question or answer', async () => {
    const planted = 'the vault code is 4417 planted sentence';
    const malformed = `{"question": "${planted}", "choices": ["${planted}", 'b'], "answer": 0}`;
    await write('leak1.jsonl', `${line(good)}\n${malformed}\n`);
    const f1 = await failureOf(readChoiceSet('leak1.jsonl', { baseDir: dir }));
    expect(f1.message).toMatch(/^leak1\.jsonl:2: invalid JSON/);
    await write('leak2.jsonl', line({ question: planted, choices: [planted, 'b'], answer: `${planted}!` }));
    const f2 = await failureOf(readChoiceSet('leak2.jsonl', { baseDir: dir }));
    expect(f2.message).toMatch(/^leak2\.jsonl:1: "answer" is text that equals none/);
    for (const message of [f1.message, f2.message]) {
      for (const fragment of ['vault', '4417', 'planted']) expect(message).not.toContain(fragment);
    }
  });
});
