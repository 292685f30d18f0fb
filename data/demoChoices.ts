import { demoCategories, generateDemoCorpus, mulberry32 } from '../ml/demoCorpus';
import type { ChoiceItem } from '../ml/choices';

/**
 * The demo's multiple-choice task sets, generated with its corpus (JSONL: question, choices,
 * answer). Each question is a sentence of a fresh document from the same generator (another seed,
 * so not a training sentence verbatim) with one known term blanked out. The right choice is that
 * term; the three others are terms of other categories of the same kind (an alarm against a KPI,
 * an action and a team; a flower against a dish, a town and an era). So the domain set measures
 * what the model knows of the domain's text, not whether it prefers domain words, and the general
 * set measures what it still knows of general text. Scored by length-normalised log-likelihood
 * (ml/choices.ts), as lm-evaluation-harness's acc_norm.
 */
export function generateDemoChoiceSets(o: { seed?: number; items?: number } = {}): { domain: ChoiceItem[]; general: ChoiceItem[] } {
  const seed = o.seed ?? 7;
  const items = o.items ?? 40;
  const corpus = generateDemoCorpus({ seed: seed + 1_000, domainDocs: 60, generalDocs: 60, instructionPairs: 0 });
  const random = mulberry32(seed + 2_000);
  return {
    domain: cloze(corpus.domain, Object.values(demoCategories.domain), items, random),
    general: cloze(corpus.general, Object.values(demoCategories.general), items, random),
  };
}

function cloze(docs: string[], categories: readonly (readonly string[])[], limit: number, random: () => number): ChoiceItem[] {
  const out: ChoiceItem[] = [];
  const seen = new Set<string>();
  // Longest terms first, so "sweet peas" is blanked rather than a shorter term inside it.
  const byLength = categories.flat().sort((a, b) => b.length - a.length);
  for (const doc of docs) {
    for (const sentence of doc.split(/(?<=\.)\s+|\n+/)) {
      const term = byLength.find((t) => sentence.includes(t));
      // A term that occurs twice would still show the answer next to its blank.
      if (!term || sentence.length > 220 || sentence.indexOf(term) !== sentence.lastIndexOf(term)) continue;
      const question = sentence.replace(term, '___').trim();
      if (seen.has(question)) continue;
      seen.add(question);
      // One wrong choice from each of three other categories.
      const others = pick(categories.filter((c) => !c.includes(term)), 3, random);
      const wrong = others.map((category) => pick(category, 1, random)[0] as string);
      const answer = Math.floor(random() * 4);
      const choices = [...wrong];
      choices.splice(answer, 0, term);
      out.push({ question: `Fill in the blank: ${question}`, choices, answer });
      if (out.length >= limit) return out;
    }
  }
  return out;
}

function pick<T>(items: readonly T[], k: number, random: () => number): T[] {
  const pool = [...items];
  for (let i = pool.length - 1; i > 0; i--) {
    const j = Math.floor(random() * (i + 1));
    [pool[i], pool[j]] = [pool[j] as T, pool[i] as T];
  }
  return pool.slice(0, k);
}
