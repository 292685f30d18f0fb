import { demoQualityExpectations, generateDemoCorpus, mulberry32 } from '../ml/demoCorpus';
import { cleanDocuments, defaultQualitySettings, normalizeForDedup, removalReasons } from '../ml/quality';

const corpus = generateDemoCorpus();
const bytes = (docs: string[]): number => docs.reduce((n, d) => n + Buffer.byteLength(d, 'utf8'), 0);

describe('generateDemoCorpus', () => {
  it('is deterministic for a seed and differs between seeds', () => {
    expect(generateDemoCorpus()).toEqual(corpus);
    expect(generateDemoCorpus({ seed: 7 })).toEqual(generateDemoCorpus({ seed: 7 }));
    expect(generateDemoCorpus({ seed: 7 }).domain).not.toEqual(corpus.domain);
  });

  it('mulberry32 yields the same numbers in [0, 1) for the same seed', () => {
    const a = mulberry32(42);
    const b = mulberry32(42);
    const xs = Array.from({ length: 100 }, () => a());
    expect(xs).toEqual(Array.from({ length: 100 }, () => b()));
    expect(xs.every((x) => x >= 0 && x < 1)).toBe(true);
  });

  it('has the default sizes: 150–250 KB per text set and about 150 instruction pairs', () => {
    expect(bytes(corpus.domain)).toBeGreaterThanOrEqual(150_000);
    expect(bytes(corpus.domain)).toBeLessThanOrEqual(250_000);
    expect(bytes(corpus.general)).toBeGreaterThanOrEqual(150_000);
    expect(bytes(corpus.general)).toBeLessThanOrEqual(250_000);
    expect(corpus.instructions).toHaveLength(150);
  });

  it('honours requested counts, adding the deliberate bad documents to the domain set', () => {
    const small = generateDemoCorpus({ domainDocs: 10, generalDocs: 4, instructionPairs: 5 });
    expect(small.domain).toHaveLength(10 + demoQualityExpectations.badDomainDocs);
    expect(small.general).toHaveLength(4);
    expect(small.instructions).toHaveLength(5);
    expect(generateDemoCorpus({ domainDocs: 0 }).domain).toEqual([]);
  });

  it('speaks telecom in the domain set and everyday English in the general set', () => {
    const domain = corpus.domain.join(' ');
    const general = corpus.general.join(' ');
    for (const term of ['gNB', 'PRB', 'handover', 'QoS', 'slice', 'alarm', 'KPI']) expect(domain).toContain(term);
    for (const term of ['gNB', 'PRB', 'QoS']) expect(general).not.toContain(term);
    expect(general).toMatch(/recipe/i);
    expect(general).toMatch(/weather/i);
  });

  it('contains exactly the deliberate bad documents it declares', () => {
    const e = demoQualityExpectations;
    const duplicate = corpus.domain[e.duplicateOfIndex];
    expect(corpus.domain.filter((d) => d === duplicate)).toHaveLength(2);
    expect(corpus.domain.filter((d) => d === e.tooShortText)).toHaveLength(1);
    expect(corpus.domain.filter((d) => d.includes(e.piiEmail) && d.includes(e.piiPhone))).toHaveLength(1);
  });

  it('every domain document except the deliberate bad ones survives the quality stage with defaults', () => {
    const { kept, report } = cleanDocuments(corpus.domain.map((text) => ({ text })), defaultQualitySettings);
    const e = demoQualityExpectations;
    const nothingRemoved: Record<string, number> = Object.fromEntries(removalReasons.map((r) => [r, 0]));
    expect(report.removed).toEqual({ ...nothingRemoved, ...e.removed });
    expect(report.redactions).toEqual(e.redactions);
    expect(kept).toHaveLength(corpus.domain.length - e.removed.duplicate - e.removed.too_short);
    expect(kept.some((d) => d.text.includes('[EMAIL]') && d.text.includes('[PHONE]'))).toBe(true);
  });

  it('general documents and instruction pairs all survive the quality stage with defaults', () => {
    expect(cleanDocuments(corpus.general.map((text) => ({ text })), defaultQualitySettings).report.kept).toBe(corpus.general.length);
    expect(cleanDocuments(corpus.instructions, defaultQualitySettings).report.kept).toBe(corpus.instructions.length);
  });

  it('instruction pairs are distinct short telecom questions with answers', () => {
    const prompts = new Set(corpus.instructions.map((p) => normalizeForDedup(p.prompt)));
    expect(prompts.size).toBe(corpus.instructions.length);
    expect(corpus.instructions).toContainEqual({ prompt: 'What does PRB stand for?', response: 'PRB stands for Physical Resource Block.' });
    for (const pair of corpus.instructions) expect(pair.response.length).toBeLessThan(200);
  });
});
