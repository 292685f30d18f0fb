import { gateFigures, gateReasons } from '../activities/gates';
import { tradeoffSvg, tradeoffTable, type TradeoffPoint } from '../reports/tradeoff';
import type { GateBudgets, GateFigures, ModelScores } from '../schemas/pipeline';
import { chooseCandidate } from '../workflows/candidate';

/** The gate rule, the choice among replay-ratio candidates and the trade-off report: pure functions, no Temporal. */

const scores = (s: Partial<ModelScores> = {}): ModelScores => ({ generalPerplexity: 20, domainPerplexity: 40, ...s });
type Measure = Exclude<keyof ModelScores, 'domainPerplexityBySource'>;
const withMeasure = (measure: Measure, value: number): ModelScores => {
  const s = scores();
  s[measure] = value;
  return s;
};

describe('gateFigures', () => {
  it('reports general regression as the relative rise of general perplexity', () => {
    expect(gateFigures(scores({ generalPerplexity: 20 }), scores({ generalPerplexity: 25 })).generalRegression).toBe(0.25);
  });

  it('reports an improvement of general perplexity as a negative regression', () => {
    expect(gateFigures(scores({ generalPerplexity: 20 }), scores({ generalPerplexity: 18 })).generalRegression).toBe(-0.1);
  });

  it('reports domain gain as the relative fall of domain perplexity', () => {
    expect(gateFigures(scores({ domainPerplexity: 40 }), scores({ domainPerplexity: 30 })).domainGain).toBe(0.25);
  });

  it('reports a rise of domain perplexity as a negative gain', () => {
    expect(gateFigures(scores({ domainPerplexity: 40 }), scores({ domainPerplexity: 44 })).domainGain).toBe(-0.1);
  });

  it('reports domain accuracy gain in absolute points, not relative to the reference', () => {
    // 0.40 → 0.50 is 10 points (relative would be 0.25).
    expect(gateFigures(scores({ domainAccuracy: 0.4 }), scores({ domainAccuracy: 0.5 })).domainAccuracyGain).toBe(0.1);
  });

  it('reports general accuracy drop in absolute points, positive when accuracy fell', () => {
    // 0.60 → 0.45 is 15 points (relative would be 0.25).
    expect(gateFigures(scores({ generalAccuracy: 0.6 }), scores({ generalAccuracy: 0.45 })).generalAccuracyDrop).toBe(0.15);
  });

  it('reports instruction regression relative to the reference instruction token accuracy', () => {
    // 0.80 → 0.60 is a 25 % relative fall (absolute would be 0.2).
    expect(gateFigures(scores({ instructionTokenAccuracy: 0.8 }), scores({ instructionTokenAccuracy: 0.6 })).instructionRegression).toBe(0.25);
  });

  it('rounds figures so floating-point error does not leak into reports', () => {
    // 22 / 20 - 1 is 0.10000000000000009 in floating point.
    expect(gateFigures(scores({ generalPerplexity: 20 }), scores({ generalPerplexity: 22 })).generalRegression).toBe(0.1);
  });

  it('omits every optional figure when neither side has the optional measures', () => {
    expect(Object.keys(gateFigures(scores(), scores())).sort()).toEqual(['domainGain', 'generalRegression']);
  });

  const optional: [Measure, keyof GateFigures][] = [
    ['domainAccuracy', 'domainAccuracyGain'],
    ['generalAccuracy', 'generalAccuracyDrop'],
    ['instructionTokenAccuracy', 'instructionRegression'],
  ];

  it.each(optional)('omits the figure when only the reference has %s (→ %s)', (measure, figure) => {
    expect(gateFigures(withMeasure(measure, 0.5), scores())).not.toHaveProperty(figure);
  });

  it.each(optional)('omits the figure when only the candidate has %s (→ %s)', (measure, figure) => {
    expect(gateFigures(scores(), withMeasure(measure, 0.5))).not.toHaveProperty(figure);
  });

  it.each(optional)('includes the figure when both sides have %s (→ %s)', (measure, figure) => {
    expect(gateFigures(withMeasure(measure, 0.5), withMeasure(measure, 0.5))).toHaveProperty(figure, 0);
  });

  it('omits instruction regression when the reference instruction accuracy is zero, rather than dividing by it', () => {
    expect(gateFigures(scores({ instructionTokenAccuracy: 0 }), scores({ instructionTokenAccuracy: 0.5 }))).not.toHaveProperty('instructionRegression');
  });
});

describe('gateReasons', () => {
  const budgets: GateBudgets = {
    maxGeneralRegression: 0.1,
    minDomainGain: 0.2,
    minDomainAccuracyGain: 0.02,
    maxGeneralAccuracyDrop: 0.03,
    maxInstructionRegression: 0.05,
  };
  /** Comfortably inside every budget. */
  const good: GateFigures = {
    generalRegression: 0.05,
    domainGain: 0.3,
    domainAccuracyGain: 0.06,
    generalAccuracyDrop: 0.01,
    instructionRegression: 0.02,
  };

  it('gives no reason when every figure is within its budget', () => {
    expect(gateReasons(good, budgets)).toEqual([]);
  });

  it.each<[string, Partial<GateFigures>, RegExp]>([
    ['general regression above its budget', { generalRegression: 0.15 }, /^general perplexity rose 15\.0 % \(budget 10\.0 %\)$/],
    ['domain gain below its floor', { domainGain: 0.12 }, /^domain perplexity fell only 12\.0 % \(floor 20\.0 %\)$/],
    ['domain accuracy gain below its floor', { domainAccuracyGain: -0.01 }, /^domain task accuracy changed -1\.0 points \(floor 2\.0 points\)$/],
    ['general accuracy drop above its budget', { generalAccuracyDrop: 0.05 }, /^general task accuracy fell 5\.0 points \(budget 3\.0 points\)$/],
    ['instruction regression above its budget', { instructionRegression: 0.08 }, /^instruction token accuracy fell 8\.0 % \(budget 5\.0 %\)$/],
  ])('gives one reason naming the measure, the figure and the budget for %s', (_name, broken, reason) => {
    const reasons = gateReasons({ ...good, ...broken }, budgets);
    expect(reasons).toHaveLength(1);
    expect(reasons[0]).toMatch(reason);
  });

  it.each<[string, Partial<GateFigures>]>([
    ['general regression', { generalRegression: 0.1 }],
    ['domain gain', { domainGain: 0.2 }],
    ['domain accuracy gain', { domainAccuracyGain: 0.02 }],
    ['general accuracy drop', { generalAccuracyDrop: 0.03 }],
    ['instruction regression', { instructionRegression: 0.05 }],
  ])('passes %s exactly at its budget', (_name, atBudget) => {
    expect(gateReasons({ ...good, ...atBudget }, budgets)).toEqual([]);
  });

  it('gives one reason per broken budget when several are broken', () => {
    const worst: GateFigures = { generalRegression: 0.2, domainGain: 0.1, domainAccuracyGain: 0, generalAccuracyDrop: 0.1, instructionRegression: 0.1 };
    expect(gateReasons(worst, budgets)).toHaveLength(5);
  });

  it('does not judge accuracies the figures do not have', () => {
    const perplexityOnly: GateFigures = { generalRegression: 0.05, domainGain: 0.3 };
    expect(gateReasons(perplexityOnly, { ...budgets, minDomainAccuracyGain: 1, maxGeneralAccuracyDrop: -1, maxInstructionRegression: -1 })).toEqual([]);
  });

  it('does not judge instruction regression when the budgets set no limit for it', () => {
    const forgettingBudgets: GateBudgets = { maxGeneralRegression: 0.1, minDomainGain: 0.2, minDomainAccuracyGain: 0.02, maxGeneralAccuracyDrop: 0.03 };
    expect(gateReasons({ ...good, instructionRegression: 0.9 }, forgettingBudgets)).toEqual([]);
  });

  it('passes a model measured exactly at the budget, floating-point error notwithstanding', () => {
    // 22 / 20 - 1 and 1 - 0.72 / 0.8 both exceed 0.1 by ~1e-16 before rounding.
    const figures = gateFigures(
      scores({ generalPerplexity: 20, domainPerplexity: 40, instructionTokenAccuracy: 0.8 }),
      scores({ generalPerplexity: 22, domainPerplexity: 28, instructionTokenAccuracy: 0.72 }),
    );
    expect(gateReasons(figures, { ...budgets, maxGeneralRegression: 0.1, maxInstructionRegression: 0.1 })).toEqual([]);
  });
});

describe('chooseCandidate', () => {
  const candidate = (replayRatio: number, domainGain: number, passed: boolean) => ({ replayRatio, report: { passed, domainGain } });

  it('chooses the passing candidate with the largest domain gain', () => {
    const best = candidate(0.25, 0.4, true);
    expect(chooseCandidate([candidate(0, 0.3, true), best, candidate(0.5, 0.2, true)])).toBe(best);
  });

  it('never chooses a failing candidate, however large its gain', () => {
    const passing = candidate(0.5, 0.2, true);
    expect(chooseCandidate([candidate(0, 0.6, false), passing, candidate(0.25, 0.5, false)])).toBe(passing);
  });

  it('breaks a tie in domain gain towards the larger replay ratio when it comes last', () => {
    const moreReplay = candidate(0.5, 0.3, true);
    expect(chooseCandidate([candidate(0.1, 0.3, true), moreReplay])).toBe(moreReplay);
  });

  it('breaks a tie in domain gain towards the larger replay ratio when it comes first', () => {
    const moreReplay = candidate(0.5, 0.3, true);
    expect(chooseCandidate([moreReplay, candidate(0.1, 0.3, true)])).toBe(moreReplay);
  });

  it('prefers a larger domain gain over a larger replay ratio', () => {
    const moreGain = candidate(0.1, 0.31, true);
    expect(chooseCandidate([candidate(0.5, 0.3, true), moreGain])).toBe(moreGain);
  });

  it('chooses the only passing candidate', () => {
    const only = candidate(0.25, 0.05, true);
    expect(chooseCandidate([only])).toBe(only);
  });

  it('gives null when no candidate passes', () => {
    expect(chooseCandidate([candidate(0, 0.4, false), candidate(0.5, 0.2, false)])).toBeNull();
  });

  it('gives null for no candidates', () => {
    expect(chooseCandidate([])).toBeNull();
  });
});

const point = (p: Partial<TradeoffPoint> & { replayRatio: number }): TradeoffPoint => ({
  domainGain: 0.3,
  generalRegression: 0.05,
  passed: true,
  chosen: false,
  ...p,
});

describe('tradeoffTable', () => {
  const points = [
    point({ replayRatio: 0.5, domainGain: 0.2, generalRegression: 0.01 }),
    point({ replayRatio: 0, domainGain: 0.45, generalRegression: 0.18, passed: false }),
    point({ replayRatio: 0.25, domainGain: 0.35, generalRegression: 0.06, chosen: true }),
  ];
  const rows = (table: string) => table.split('\n').slice(1);

  it('starts with a header naming the columns', () => {
    expect(tradeoffTable(points).split('\n')[0]).toBe('replay ratio  domain gain  general change  gate');
  });

  it('has one row per point, sorted by replay ratio', () => {
    expect(rows(tradeoffTable(points)).map((row) => row.trim().split(/\s+/)[0])).toEqual(['0.00', '0.25', '0.50']);
  });

  it('leaves the caller’s points in their order', () => {
    const copy = [...points];
    tradeoffTable(points);
    expect(points).toEqual(copy);
  });

  it('marks the chosen point’s row, and only that row, with "← chosen"', () => {
    const marked = rows(tradeoffTable(points)).filter((row) => row.includes('← chosen'));
    expect(marked).toHaveLength(1);
    expect(marked[0].trim().startsWith('0.25')).toBe(true);
  });

  it('marks no row when no point is chosen', () => {
    expect(tradeoffTable(points.map((p) => ({ ...p, chosen: false })))).not.toContain('chosen');
  });

  it('shows domain gain and general change as percentages with one decimal', () => {
    const [row] = rows(tradeoffTable([point({ replayRatio: 0.1, domainGain: 0.4235, generalRegression: 0.052 })]));
    expect(row).toMatch(/0\.10\s+42\.4 %\s+5\.2 %\s/);
  });

  it('shows an improvement of general perplexity as a negative percentage', () => {
    const [row] = rows(tradeoffTable([point({ replayRatio: 0.1, generalRegression: -0.013 })]));
    expect(row).toContain('-1.3 %');
  });

  it('shows whether each point passed the gate', () => {
    expect(rows(tradeoffTable(points)).map((row) => /\b(passed|failed)\b/.exec(row)?.[1])).toEqual(['failed', 'passed', 'passed']);
  });

  it('is only the header for no points', () => {
    expect(tradeoffTable([]).split('\n')).toHaveLength(1);
  });
});

/** What keeps an XML document from parsing: unbalanced or malformed tags, unquoted attributes, stray markup characters. */
function wellFormednessProblems(xml: string): string[] {
  const problems: string[] = [];
  const stack: string[] = [];
  let roots = 0;
  const rawAmpersand = /&(?!#\d+;|#x[0-9a-fA-F]+;|[A-Za-z]+;)/;
  const tag = /^<(\/)?([A-Za-z][\w:.-]*)((?:\s+[A-Za-z_:][\w:.-]*="[^"<]*")*)\s*(\/)?>$/;
  for (const token of xml.match(/<[^>]*>|[^<]+/g) ?? []) {
    if (!token.startsWith('<')) {
      if (stack.length === 0 && token.trim() !== '') problems.push(`text outside the root: ${token}`);
      if (token.includes('>')) problems.push(`raw > in text: ${token}`);
      if (rawAmpersand.test(token)) problems.push(`raw & in text: ${token}`);
      continue;
    }
    const m = tag.exec(token);
    if (!m) {
      problems.push(`malformed tag: ${token}`);
      continue;
    }
    const [, closing, name, attributes, selfClosing] = m;
    if (rawAmpersand.test(attributes)) problems.push(`raw & in attribute: ${token}`);
    if (closing) {
      if (attributes || selfClosing) problems.push(`malformed end tag: ${token}`);
      const open = stack.pop();
      if (open !== name) problems.push(`</${name}> closes <${open}>`);
      continue;
    }
    if (stack.length === 0) roots += 1;
    if (!selfClosing) stack.push(name);
  }
  if (xml.replace(/<[^>]*>|[^<]+/g, '') !== '') problems.push('stray <');
  if (stack.length) problems.push(`unclosed: ${stack.join(', ')}`);
  if (roots !== 1) problems.push(`${roots} root elements`);
  return problems;
}

const attr = (element: string, name: string): string | undefined => new RegExp(`\\s${name}="([^"]*)"`).exec(element)?.[1];
const elements = (svg: string, pattern: RegExp): string[] => svg.match(pattern) ?? [];
const candidateCircles = (svg: string) => elements(svg, /<circle class="candidate"[^>]*>/g);
const chosenRings = (svg: string) => elements(svg, /<[^>]*class="chosen"[^>]*>/g);
const budgetLine = (svg: string) => elements(svg, /<line class="budget"[^>]*>/g);
const circleAt = (svg: string, replayRatio: number) =>
  candidateCircles(svg).find((c) => attr(c, 'data-replay-ratio') === String(replayRatio)) ?? '';

describe('tradeoffSvg', () => {
  const budget = { maxGeneralRegression: 0.1 };
  const points = [
    point({ replayRatio: 0, domainGain: 0.45, generalRegression: 0.18, passed: false }),
    point({ replayRatio: 0.25, domainGain: 0.35, generalRegression: 0.06, chosen: true }),
    point({ replayRatio: 0.5, domainGain: 0.2, generalRegression: 0.01 }),
  ];

  it('is an svg document from its first character to its last', () => {
    const svg = tradeoffSvg(points, budget);
    expect(svg.startsWith('<svg')).toBe(true);
    expect(svg.endsWith('</svg>')).toBe(true);
  });

  it('is well-formed XML', () => {
    expect(wellFormednessProblems(tradeoffSvg(points, budget))).toEqual([]);
  });

  it('has the requested size', () => {
    const root = tradeoffSvg(points, budget, { width: 800, height: 600 }).split('\n')[0];
    expect([attr(root, 'width'), attr(root, 'height'), attr(root, 'viewBox')]).toEqual(['800', '600', '0 0 800 600']);
  });

  it('draws one candidate circle per point, carrying its replay ratio', () => {
    const ratios = candidateCircles(tradeoffSvg(points, budget)).map((c) => attr(c, 'data-replay-ratio'));
    expect(ratios.sort()).toEqual(['0', '0.25', '0.5']);
  });

  it('rings exactly one point when one point is chosen', () => {
    expect(chosenRings(tradeoffSvg(points, budget))).toHaveLength(1);
  });

  it('rings the chosen point where its candidate circle is', () => {
    const svg = tradeoffSvg(points, budget);
    const [ring] = chosenRings(svg);
    const chosen = circleAt(svg, 0.25);
    expect([attr(ring, 'cx'), attr(ring, 'cy')]).toEqual([attr(chosen, 'cx'), attr(chosen, 'cy')]);
  });

  it('rings no point when none is chosen', () => {
    expect(chosenRings(tradeoffSvg(points.map((p) => ({ ...p, chosen: false })), budget))).toHaveLength(0);
  });

  it('draws the general-regression budget as a vertical line, labelled with the budget', () => {
    const svg = tradeoffSvg(points, budget);
    const lines = budgetLine(svg);
    expect(lines).toHaveLength(1);
    expect(attr(lines[0], 'x1')).toBe(attr(lines[0], 'x2'));
    expect(svg).toContain('>budget 10.0 %</text>');
  });

  it('places a point exactly at the budget on the budget line', () => {
    const svg = tradeoffSvg([point({ replayRatio: 0.3, generalRegression: 0.1 })], budget);
    expect(attr(circleAt(svg, 0.3), 'cx')).toBe(attr(budgetLine(svg)[0], 'x1'));
  });

  it('places points that forget more than the budget right of the budget line, and the others left of it', () => {
    const svg = tradeoffSvg(points, budget);
    const bx = Number(attr(budgetLine(svg)[0], 'x1'));
    expect(Number(attr(circleAt(svg, 0), 'cx'))).toBeGreaterThan(bx);
    expect(Number(attr(circleAt(svg, 0.5), 'cx'))).toBeLessThan(bx);
  });

  it('draws a larger domain gain higher up', () => {
    const svg = tradeoffSvg(points, budget);
    expect(Number(attr(circleAt(svg, 0), 'cy'))).toBeLessThan(Number(attr(circleAt(svg, 0.5), 'cy')));
  });

  it('draws failing points in a different colour from passing ones', () => {
    const svg = tradeoffSvg(points, budget);
    expect(attr(circleAt(svg, 0), 'fill')).not.toBe(attr(circleAt(svg, 0.5), 'fill'));
  });

  it('draws every point inside the axes', () => {
    // The default 520 × 340 plot leaves margins of 64 left, 24 right, 28 top and 48 bottom.
    const svg = tradeoffSvg(points, budget);
    for (const c of candidateCircles(svg)) {
      expect(Number(attr(c, 'cx'))).toBeGreaterThanOrEqual(64);
      expect(Number(attr(c, 'cx'))).toBeLessThanOrEqual(520 - 24);
      expect(Number(attr(c, 'cy'))).toBeGreaterThanOrEqual(28);
      expect(Number(attr(c, 'cy'))).toBeLessThanOrEqual(340 - 48);
    }
  });

  it('joins the points in replay-ratio order, whatever order they come in', () => {
    const svg = tradeoffSvg([points[2], points[0], points[1]], budget);
    const d = attr(elements(svg, /<path [^>]*>/g)[0] ?? '', 'd') ?? '';
    const vertices = [...d.matchAll(/[ML](\S+) (\S+)/g)].map(([, x, y]) => `${x} ${y}`);
    const at = (ratio: number) => `${attr(circleAt(svg, ratio), 'cx')} ${attr(circleAt(svg, ratio), 'cy')}`;
    expect(vertices).toEqual([at(0), at(0.25), at(0.5)]);
  });

  it('leaves no raw markup characters in its text', () => {
    const svg = tradeoffSvg(points, budget);
    const texts = [...svg.matchAll(/<(text|title)[^>]*>([\s\S]*?)<\/\1>/g)].map((m) => m[2]);
    expect(texts.length).toBeGreaterThan(points.length);
    for (const text of texts) expect(text).not.toMatch(/[<>]|&(?!#\d+;)/);
  });

  describe('with a single point', () => {
    const one = [point({ replayRatio: 0.25, domainGain: 0.3, generalRegression: 0.05, chosen: true })];

    it('draws it without NaN or Infinity', () => {
      expect(tradeoffSvg(one, budget)).not.toMatch(/NaN|Infinity/);
    });

    it('draws one candidate circle and no curve', () => {
      const svg = tradeoffSvg(one, budget);
      expect(candidateCircles(svg)).toHaveLength(1);
      expect(svg).not.toContain('<path');
    });

    it('is well-formed XML', () => {
      expect(wellFormednessProblems(tradeoffSvg(one, budget))).toEqual([]);
    });
  });

  describe('with identical points', () => {
    const same = [point({ replayRatio: 0.25 }), point({ replayRatio: 0.25 })];

    it('draws them without NaN or Infinity', () => {
      expect(tradeoffSvg(same, budget)).not.toMatch(/NaN|Infinity/);
    });

    it('draws a candidate circle for each, at the same place', () => {
      const circles = candidateCircles(tradeoffSvg(same, budget));
      expect(circles).toHaveLength(2);
      expect([attr(circles[0], 'cx'), attr(circles[0], 'cy')]).toEqual([attr(circles[1], 'cx'), attr(circles[1], 'cy')]);
    });
  });

  it('draws a point at the origin with a zero budget without NaN or Infinity (every axis span is zero)', () => {
    const svg = tradeoffSvg([point({ replayRatio: 0, domainGain: 0, generalRegression: 0 })], { maxGeneralRegression: 0 });
    expect(svg).not.toMatch(/NaN|Infinity/);
    expect(candidateCircles(svg)).toHaveLength(1);
  });
});

describe('figures that are not numbers', () => {
  const budgets: GateBudgets = { maxGeneralRegression: 0.25, minDomainGain: 0, minDomainAccuracyGain: 0, maxGeneralAccuracyDrop: 0.05 };

  test('fail the gate instead of passing it by default', () => {
    const reasons = gateReasons({ generalRegression: Number.NaN, domainGain: 0.5 }, budgets);
    expect(reasons).toEqual([expect.stringMatching(/^generalRegression could not be measured \(NaN\)/)]);
  });

  test('a diverged model (a perplexity that is not finite) fails through gateFigures', () => {
    const before: ModelScores = { generalPerplexity: 2, domainPerplexity: 10 };
    const after: ModelScores = { generalPerplexity: Number.NaN, domainPerplexity: Number.POSITIVE_INFINITY };
    expect(gateReasons(gateFigures(before, after), budgets).length).toBeGreaterThanOrEqual(2);
  });

  test('a candidate whose domain gain is not a number is never chosen', () => {
    const candidate = (replayRatio: number, domainGain: number) => ({ replayRatio, report: { passed: true, domainGain } });
    expect(chooseCandidate([candidate(0, Number.NaN), candidate(0.3, 0.2)])).toEqual(candidate(0.3, 0.2));
  });
});
