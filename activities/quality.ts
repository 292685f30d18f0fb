import { Context } from '@temporalio/activity';
import { ApplicationFailure } from '@temporalio/common';
import { upsertDataset } from '../db/records';
import { cleanDocumentsPaced, normalizeForDedup, type QualityDetails, type QualityReport } from '../ml/quality';
import type { ArtifactRef, DatasetRef, DatasetRole } from '../schemas/pipeline';
import { domainMixes } from '../schemas/candidates';
import type { RunSpec } from '../schemas/runSpec';
import { sha256Hex } from './artifacts';
import type { ActivityDeps } from './context';
import { docText, readDataset, writeDataset, type DatasetDoc } from './datasets';

export interface QualitySummary {
  report: ArtifactRef;
  perRole: Record<DatasetRole, QualityReport & { train: number; heldout: number }>;
  /** Where the run weighs its domain sources: what each kept, by source name. */
  domainSources?: Record<string, { train: number; heldout: number }>;
}

/** Train and held-out documents per domain source name. */
function countBySource(train: DatasetDoc[], heldout: DatasetDoc[], names: string[]): Record<string, { train: number; heldout: number }> {
  const counts = Object.fromEntries(names.map((name) => [name, { train: 0, heldout: 0 }]));
  for (const [split, docs] of [['train', train], ['heldout', heldout]] as const) {
    for (const doc of docs) {
      const source = 'text' in doc ? doc.source : undefined;
      if (source !== undefined && counts[source]) counts[source][split]++;
    }
  }
  return counts;
}

/**
 * Held-out membership is a pure function of the document's normalised text, so a document lands on
 * the same side in every run and retry. Exact and near-duplicate removal run before the split, so no
 * copy of a held-out document (verbatim or lightly edited) is left in train to flatter its perplexity.
 */
function isHeldout(doc: DatasetDoc, fraction: number): boolean {
  const h = sha256Hex(normalizeForDedup(docText(doc)));
  return parseInt(h.slice(0, 8), 16) / 0x1_0000_0000 < fraction;
}

function splitHeldout(docs: DatasetDoc[], fraction: number): { train: DatasetDoc[]; heldout: DatasetDoc[] } {
  const train: DatasetDoc[] = [];
  const heldout: DatasetDoc[] = [];
  for (const doc of docs) (isHeldout(doc, fraction) ? heldout : train).push(doc);
  // Both sides must be non-empty for training and evaluation; move one document if the hash split is lopsided.
  if (heldout.length === 0 && train.length > 1) heldout.push(train.pop() as DatasetDoc);
  if (train.length === 0 && heldout.length > 1) train.push(heldout.pop() as DatasetDoc);
  return { train, heldout };
}

/**
 * quality: filter, redact PII, remove exact and near-duplicates, then split held-out sets; fail
 * clearly when too little survives. Counts per reason land in summary.perRole[role].removed.
 */
export function qualityActivities({ pool, store }: ActivityDeps) {
  return {
    async qualityFilter(input: { runId: string; spec: RunSpec; raw: DatasetRef[] }): Promise<{
      datasets: DatasetRef[];
      summary: QualitySummary;
    }> {
      const { spec } = input;
      const datasets: DatasetRef[] = [];
      const perRole = {} as QualitySummary['perRole'];
      // Examples and histograms go to the stored report only; the summary (in history) keeps counts.
      const details: Partial<Record<DatasetRole, QualityDetails>> = {};
      let domainSources: QualitySummary['domainSources'];
      const problems: string[] = [];
      // Weighted domain sources (domainRatio): each one with a weight must keep training text.
      const weighted = spec.domainRatio === undefined ? [] : domainMixes(spec).flatMap((mix) => Object.keys(mix ?? {}).filter((name) => (mix?.[name] ?? 0) > 0));
      const names = spec.sources.filter((s) => s.role === 'domain' && s.name !== undefined).map((s) => s.name as string);
      for (const raw of input.raw) {
        Context.current().heartbeat({ role: raw.role });
        const docs = await readDataset(store, raw);
        // Paced, so the heartbeat timer of this activity keeps running on a large corpus.
        const { kept, report, details: roleDetails } = await cleanDocumentsPaced(docs, {
          minChars: spec.quality.minChars,
          maxChars: spec.quality.maxChars,
          maxRepetitionRatio: spec.quality.maxRepetitionRatio,
          maxSymbolRatio: spec.quality.maxSymbolRatio,
          redactPii: spec.quality.redactPii,
          nearDuplicateThreshold: spec.quality.nearDuplicateThreshold,
          // Runs from before carry no heuristics: off, as they ran.
          heuristics: spec.quality.heuristics ?? null,
          minLanguageScore: spec.quality.minLanguageScore ?? 0.8,
        }, { onProgress: () => Context.current().heartbeat({ role: raw.role }) });
        if (kept.length < spec.quality.minDocs) {
          const reasons = Object.entries(report.removed)
            .filter(([, n]) => n > 0)
            .map(([reason, n]) => `${reason}: ${n}`)
            .join(', ');
          problems.push(
            `${raw.role}: ${kept.length} of ${docs.length} documents survived (need quality.minDocs = ${spec.quality.minDocs}; removed ${reasons || 'none'})`,
          );
        }
        details[raw.role] = roleDetails;
        // The expected languages were for this stage only: the cleaned datasets are as before.
        const cleaned = kept.map((doc) => {
          if (!('languages' in doc)) return doc;
          const rest: DatasetDoc & { languages?: string[] } = { ...doc };
          delete rest.languages;
          return rest;
        });
        const { train, heldout } = splitHeldout(cleaned, spec.heldoutFraction);
        perRole[raw.role] = { ...report, train: train.length, heldout: heldout.length };
        if (raw.role === 'domain' && spec.domainRatio !== undefined) {
          domainSources = countBySource(train, heldout, names);
          for (const name of names.filter((n) => weighted.includes(n) && domainSources?.[n]?.train === 0)) {
            problems.push(`domain source "${name}": no document left to train on, but domainRatio gives it weight`);
          }
        }
        for (const [split, part] of [['train', train], ['heldout', heldout]] as const) {
          const ref = await writeDataset(store, raw.role, split, part);
          await upsertDataset(pool, input.runId, 'quality', ref);
          datasets.push(ref);
        }
      }
      const reportRef = await store.putJson('reports', { kind: 'quality', runId: input.runId, perRole, ...(domainSources ? { domainSources } : {}), details });
      if (problems.length) {
        throw ApplicationFailure.nonRetryable(
          `too few documents survived quality filtering — ${problems.join('; ')}. Add data or relax the quality settings.`,
          'TooFewDocuments',
        );
      }
      return { datasets, summary: { report: reportRef, perRole, ...(domainSources ? { domainSources } : {}) } };
    },
  };
}
