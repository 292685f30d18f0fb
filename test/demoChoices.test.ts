import { parseChoiceLines } from '../activities/choiceSets';
import { generateDemoChoiceSets } from '../data/demoChoices';
import { demoCategories, demoVocabulary, generateDemoCorpus } from '../ml/demoCorpus';

/** The demo's multiple-choice sets, as `dacp demo --prepare` writes them (seed 7). */

const sets = generateDemoChoiceSets({ seed: 7 });
const corpus = generateDemoCorpus({ seed: 7 });
const kinds = [
  { name: 'domain', items: sets.domain, terms: demoVocabulary.domain, categories: Object.values(demoCategories.domain), docs: corpus.domain },
  { name: 'general', items: sets.general, terms: demoVocabulary.general, categories: Object.values(demoCategories.general), docs: corpus.general },
] as const;

describe.each(kinds)('the demo $name set', ({ items, terms, categories, docs }) => {
  it('has 40 questions of 4 different choices, each with an answer index in range', () => {
    expect(items).toHaveLength(40);
    for (const item of items) {
      expect(item.choices).toHaveLength(4);
      expect(new Set(item.choices).size).toBe(4);
      expect(Number.isInteger(item.answer)).toBe(true);
      expect(item.answer).toBeGreaterThanOrEqual(0);
      expect(item.answer).toBeLessThan(4);
      expect(item.question.split('___')).toHaveLength(2);
    }
  });

  it('puts the right answer at every position, so always picking one position scores about chance', () => {
    const counts = [0, 1, 2, 3].map((position) => items.filter((item) => item.answer === position).length);
    for (const count of counts) expect(count).toBeGreaterThanOrEqual(4);
  });

  it('has as right answer a term of its kind that occurs in the demo corpus of that kind; the wrong ones are of the same kind, each of another category', () => {
    for (const item of items) {
      const right = item.choices[item.answer] as string;
      expect(terms).toContain(right);
      expect(docs.some((doc) => doc.includes(right))).toBe(true);
      const categoryOf = (term: string) => categories.findIndex((c) => c.includes(term));
      const wrong = item.choices.filter((_, i) => i !== item.answer);
      for (const w of wrong) expect(terms).toContain(w);
      const used = [right, ...wrong].map(categoryOf);
      expect(new Set(used).size).toBe(4);
    }
  });

  it('passes the reader that collect uses, unchanged, once written as JSON lines', () => {
    const jsonl = items.map((item) => JSON.stringify(item)).join('\n') + '\n';
    expect(parseChoiceLines(jsonl, 'choices.jsonl')).toEqual(items);
  });
});

describe('generateDemoChoiceSets', () => {
  it('never shows the answer in its question, on any of several seeds', () => {
    for (const seed of [1, 2, 3, 7, 11]) {
      const { domain, general } = generateDemoChoiceSets({ seed });
      for (const item of [...domain, ...general]) expect(item.question).not.toContain(item.choices[item.answer]);
    }
  });

  it('is deterministic per seed and differs between seeds', () => {
    expect(generateDemoChoiceSets({ seed: 7 })).toEqual(sets);
    const other = generateDemoChoiceSets({ seed: 8 });
    expect(other.domain).not.toEqual(sets.domain);
    expect(other.general).not.toEqual(sets.general);
  });
});
