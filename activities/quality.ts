import { Context } from '@temporalio/activity';
import { ApplicationFailure } from '@temporalio/common';
import { upsertDataset } from '../db/records';
import type { Pool } from 'pg';
import { cleanDocumentsParallel } from '../ml/qualityParallel';
import { MINHASH_ALGORITHM, minhashSignature, MinhashIndex, normalizeForDedup, type MinhashShape, type QualityDetails, type QualityReport } from '../ml/quality';
import type { ArtifactRef, DatasetRef, DatasetRole } from '../schemas/pipeline';
import { domainMixes } from '../schemas/candidates';
import type { RunSpec } from '../schemas/runSpec';
import { sha256Hex, type ArtifactStore } from './artifacts';
import type { ActivityDeps } from './context';
import { docText, readDataset, writeDataset, type DatasetDoc } from './datasets';

export interface QualitySummary {
  report: ArtifactRef;
  /**
   * Where the domain data was also checked against what earlier successful updates trained on: how
   * many runs and documents (the runs themselves are listed in the stored report).
   */
  earlier?: { schedule?: string; runs: number; documents: number; olderRunsLeftOut?: number };
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

/** The index shape of runs from before `quality.minhash` existed. */
const SHAPE_BEFORE: MinhashShape = { bands: 32, rows: 4 };

/** Signatures as stored: each one's hashes as little-endian uint32, one after another. */
function packSignatures(signatures: Uint32Array[]): Buffer {
  const out = Buffer.alloc(signatures.reduce((n, sig) => n + sig.length * 4, 0));
  let offset = 0;
  for (const sig of signatures) for (const h of sig) offset = out.writeUInt32LE(h, offset);
  return out;
}

function unpackSignatures(data: Buffer, permutations: number): Uint32Array[] {
  if (data.length % (permutations * 4) !== 0) throw ApplicationFailure.nonRetryable(`a signatures artifact of ${data.length} bytes does not hold whole signatures of ${permutations} hashes`, 'ArtifactInvalid');
  const out: Uint32Array[] = [];
  for (let offset = 0; offset < data.length; offset += permutations * 4) {
    const sig = new Uint32Array(permutations);
    for (let i = 0; i < permutations; i++) sig[i] = data.readUInt32LE(offset + i * 4);
    out.push(sig);
  }
  return out;
}

/** Store a cleaned dataset's signatures, by its hash and the index shape (a retry stores the same). */
async function keepSignatures(pool: Pool, store: ArtifactStore, dataset: { sha256: string }, shape: MinhashShape, signatures: Uint32Array[]): Promise<void> {
  const ref = await store.put('signatures', packSignatures(signatures), 'bin');
  await pool.query(
    `INSERT INTO minhash_signatures (dataset_sha256, bands, rows_per_band, algorithm, docs, uri, sha256, bytes) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
     ON CONFLICT (dataset_sha256, bands, rows_per_band, algorithm) DO NOTHING`,
    [dataset.sha256, shape.bands, shape.rows, MINHASH_ALGORITHM, signatures.length, ref.uri, ref.sha256, ref.bytes],
  );
}

/**
 * The runs whose domain data this run's is checked against (quality.dedupAgainst): a scheduled
 * run's schedule's earlier successful runs unless the spec says otherwise; a manual run's only
 * where the spec names a schedule or runs.
 */
async function earlierRuns(pool: Pool, runId: string, spec: RunSpec): Promise<{ schedule?: string; runs: string[] } | null> {
  const against = spec.quality.dedupAgainst;
  if (against === false || spec.quality.nearDuplicateThreshold === null) return null;
  if (against?.runs) {
    // The run itself, if listed, is no earlier update.
    const listed = [...new Set(against.runs)].filter((id) => id !== runId);
    const { rows } = await pool.query('SELECT run_id, state FROM runs WHERE run_id = ANY($1)', [listed]);
    const states = new Map(rows.map((r) => [r.run_id as string, r.state as string]));
    const unusable = listed.filter((id) => states.get(id) !== 'completed');
    if (unusable.length) {
      throw ApplicationFailure.nonRetryable(
        `quality.dedupAgainst.runs: ${unusable.map((id) => `${id} (${states.get(id) ?? 'no such run'})`).join(', ')} did not complete; list runs that deployed (see \`dacp run list\`)`,
        'SpecInvalid',
      );
    }
    return { runs: listed };
  }
  let schedule = against?.schedule;
  if (schedule === undefined) {
    const { rows } = await pool.query('SELECT schedule_id FROM runs WHERE run_id = $1', [runId]);
    schedule = (rows[0]?.schedule_id as string | null | undefined) ?? undefined;
  }
  if (schedule === undefined) return null;
  // Newest first: where the look-back is capped, the oldest updates are the ones left out.
  const { rows } = await pool.query(`SELECT run_id FROM runs WHERE schedule_id = $1 AND state = 'completed' AND run_id <> $2 ORDER BY created_at DESC`, [schedule, runId]);
  return { schedule, runs: rows.map((r) => r.run_id as string) };
}

/**
 * The most earlier documents a run is checked against (about 1 KB of memory each): the newest runs
 * first, and the older ones left out once a run would pass it.
 */
export const EARLIER_MAX_DOCUMENTS = 500_000;

/**
 * An index holding the signatures of the domain documents `runs` trained on (train and held-out),
 * read by dataset hash; a dataset without stored signatures of this shape (a run from before, or
 * one whose signatures artifact is gone) is read again and its signatures stored.
 */
async function earlierIndex(
  pool: Pool,
  store: ArtifactStore,
  runs: string[],
  shape: MinhashShape,
  heartbeat: () => void,
): Promise<{ index: MinhashIndex; documents: number; used: string[]; leftOut: number }> {
  const index = new MinhashIndex(shape);
  const permutations = shape.bands * shape.rows;
  const { rows } = await pool.query(
    `SELECT d.run_id, d.uri, d.sha256, d.docs, d.bytes, d.split, s.uri AS sig_uri, s.sha256 AS sig_sha256
       FROM datasets d
       LEFT JOIN minhash_signatures s ON s.dataset_sha256 = d.sha256 AND s.bands = $2 AND s.rows_per_band = $3 AND s.algorithm = $4
      WHERE d.run_id = ANY($1) AND d.stage = 'quality' AND d.role = 'domain'`,
    [runs, shape.bands, shape.rows, MINHASH_ALGORITHM],
  );
  const seen = new Set<string>();
  const used: string[] = [];
  let leftOut = 0;
  for (const runId of runs) {
    const datasets = rows.filter((r) => r.run_id === runId && !seen.has(r.sha256 as string));
    const docs = datasets.reduce((n, r) => n + Number(r.docs), 0);
    if (index.size > 0 && index.size + docs > EARLIER_MAX_DOCUMENTS) {
      leftOut = runs.length - used.length;
      break;
    }
    used.push(runId);
    for (const r of datasets) {
      seen.add(r.sha256 as string);
      heartbeat();
      let signatures: Uint32Array[] | undefined;
      if (r.sig_uri) {
        try {
          signatures = unpackSignatures(await store.get({ uri: r.sig_uri as string, sha256: r.sig_sha256 as string }), permutations);
        } catch (err) {
          const type = (err as ApplicationFailure).type;
          if (type !== 'ArtifactMissing' && type !== 'ArtifactCorrupted') throw err;
        }
      }
      if (!signatures) {
        const ref: DatasetRef = { uri: r.uri, sha256: r.sha256, bytes: 0, role: 'domain', split: r.split, docs: r.docs, dataBytes: Number(r.bytes), tokens: 0 };
        const texts = (await readDataset(store, ref)).map((doc) => docText(doc));
        signatures = [];
        // In slices, so this activity's heartbeats keep flowing on a large dataset.
        for (let i = 0; i < texts.length; i += 256) {
          for (const text of texts.slice(i, i + 256)) signatures.push(minhashSignature(text, permutations));
          heartbeat();
          await new Promise<void>((resolve) => setImmediate(resolve));
        }
        await keepSignatures(pool, store, ref, shape, signatures);
      }
      for (const sig of signatures) index.add(sig, true);
    }
  }
  return { index, documents: index.size, used, leftOut };
}

/**
 * quality: filter, redact PII, remove exact and near-duplicates (within the run, and for the domain
 * data against earlier updates' too), then split held-out sets; fail clearly when too little
 * survives. Counts per reason land in summary.perRole[role].removed.
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
      // Runs from before quality.minhash keep their index shape (32 × 4) and never look at earlier updates.
      const fromBefore = spec.quality.minhash === undefined;
      const shape = spec.quality.minhash ?? SHAPE_BEFORE;
      const against = fromBefore ? null : await earlierRuns(pool, input.runId, spec);
      let earlier: { index: MinhashIndex; documents: number; used: string[]; leftOut: number } | undefined;
      if (against && against.runs.length > 0) {
        earlier = await earlierIndex(pool, store, against.runs, shape, () => Context.current().heartbeat({ earlier: against.runs.length }));
      }
      for (const raw of input.raw) {
        Context.current().heartbeat({ role: raw.role });
        const docs = await readDataset(store, raw);
        // On worker threads (DACP_QUALITY_THREADS, one per core by default), this thread free for
        // the activity's heartbeats; on one thread, paced so that they keep flowing.
        const { kept, signatures, report, details: roleDetails } = await cleanDocumentsParallel(docs, {
          minChars: spec.quality.minChars,
          maxChars: spec.quality.maxChars,
          maxRepetitionRatio: spec.quality.maxRepetitionRatio,
          maxSymbolRatio: spec.quality.maxSymbolRatio,
          redactPii: spec.quality.redactPii,
          nearDuplicateThreshold: spec.quality.nearDuplicateThreshold,
          minhash: shape,
          // Runs from before carry no heuristics: off, as they ran.
          heuristics: spec.quality.heuristics ?? null,
          minLanguageScore: spec.quality.minLanguageScore ?? 0.8,
        }, {
          onProgress: () => Context.current().heartbeat({ role: raw.role }),
          // Only the domain data is new with each update; replay and instructions are meant to recur.
          ...(raw.role === 'domain' && earlier ? { index: earlier.index } : {}),
        });
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
        const signatureOf = new Map<DatasetDoc, Uint32Array | undefined>();
        const cleaned = kept.map((doc, i) => {
          let out: DatasetDoc = doc;
          if ('languages' in doc) {
            const rest: DatasetDoc & { languages?: string[] } = { ...doc };
            delete rest.languages;
            out = rest;
          }
          signatureOf.set(out, signatures[i]);
          return out;
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
          // What a later update checks its domain data against, kept by this dataset's hash.
          const sigs = part.map((doc) => signatureOf.get(doc));
          if (raw.role === 'domain' && !fromBefore && sigs.every((sig) => sig !== undefined)) await keepSignatures(pool, store, ref, shape, sigs as Uint32Array[]);
          await upsertDataset(pool, input.runId, 'quality', ref);
          datasets.push(ref);
        }
      }
      const earlierSummary = against
        ? {
            ...(against.schedule !== undefined ? { schedule: against.schedule } : {}),
            runs: earlier?.used.length ?? 0,
            documents: earlier?.documents ?? 0,
            ...(earlier?.leftOut ? { olderRunsLeftOut: earlier.leftOut } : {}),
          }
        : undefined;
      const reportRef = await store.putJson('reports', {
        kind: 'quality', runId: input.runId, perRole, ...(domainSources ? { domainSources } : {}), details,
        ...(earlierSummary ? { earlier: { ...earlierSummary, runIds: earlier?.used ?? [] } } : {}),
      });
      if (problems.length) {
        throw ApplicationFailure.nonRetryable(
          `too few documents survived quality filtering — ${problems.join('; ')}. Add data or relax the quality settings.`,
          'TooFewDocuments',
        );
      }
      return { datasets, summary: { report: reportRef, perRole, ...(domainSources ? { domainSources } : {}), ...(earlierSummary ? { earlier: earlierSummary } : {}) } };
    },
  };
}
