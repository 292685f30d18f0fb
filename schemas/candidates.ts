/**
 * The candidates a run trains: one per (replay ratio, domain mix) of its spec. Pure and free of
 * zod, so that the workflow bundle can use it.
 */

/** A weight per named domain source. */
export type DomainMix = Record<string, number>;

/** A mix's weights scaled to sum to 1, in name order; rounded to 6 places so that the same mix reads the same. */
export function normalizeDomainMix(mix: DomainMix): DomainMix {
  const total = Object.values(mix).reduce((sum, w) => sum + w, 0);
  return Object.fromEntries(
    Object.keys(mix)
      .sort()
      .map((name) => [name, Math.round(((mix[name] as number) / total) * 1e6) / 1e6]),
  );
}

/** The domain mixes a spec trains candidates for, normalised; `[undefined]` where the domain sources are one pool. */
export function domainMixes(spec: { domainRatio?: DomainMix | DomainMix[] }): (DomainMix | undefined)[] {
  if (spec.domainRatio === undefined) return [undefined];
  return (Array.isArray(spec.domainRatio) ? spec.domainRatio : [spec.domainRatio]).map(normalizeDomainMix);
}

/** One point to train: a replay ratio, and a domain mix where the spec has one. */
export interface CandidatePoint {
  replayRatio: number;
  domainMix?: DomainMix;
}

/** Every (replay ratio, domain mix) the spec asks for, replay ratio outermost. */
export function candidatePoints(spec: { replayRatio: number | number[]; domainRatio?: DomainMix | DomainMix[] }): CandidatePoint[] {
  const ratios = Array.isArray(spec.replayRatio) ? spec.replayRatio : [spec.replayRatio];
  return ratios.flatMap((replayRatio) => domainMixes(spec).map((domainMix) => (domainMix ? { replayRatio, domainMix } : { replayRatio })));
}

/** "manuals 0.70 / tickets 0.30": a mix as status lines and tables show it. */
export function formatDomainMix(mix: DomainMix): string {
  return Object.entries(mix)
    .map(([name, weight]) => `${name} ${weight.toFixed(2)}`)
    .join(' / ');
}
