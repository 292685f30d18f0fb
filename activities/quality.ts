import { Context } from '@temporalio/activity';
import { createHash } from 'node:crypto';
import { ApplicationFailure } from '@temporalio/common';
import { upsertDataset } from '../db/records';
import type { Pool } from 'pg';
import { createReadStream, promises as fs } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { createInterface } from 'node:readline';
import { shardPool } from '../ml/qualityParallel';
import {
  addToTally,
  emptyTally,
  MINHASH_ALGORITHM,
  minhashSignature,
  MinhashIndex,
  normalizeForDedup,
  QualityStream,
  shardPass,
  type Candidate,
  type MinhashShape,
  type PassTally,
  type PiiCounts,
  type QualityDetails,
  type QualityReport,
  type QualitySettings,
  type ShardResult,
} from '../ml/quality';
import { qualityPartRange, type ArtifactRef, type DatasetRef, type DatasetRole } from '../schemas/pipeline';
import { domainMixes } from '../schemas/candidates';
import type { RunSpec } from '../schemas/runSpec';
import { sha256Hex, type ArtifactStore } from './artifacts';
import type { ActivityDeps } from './context';
import { datasetRange, datasetShards, DatasetWriter, docText, readDataset, type DatasetDoc } from './datasets';

export interface QualitySummary {
  report: ArtifactRef;
  /**
   * Where the domain data was also checked against what earlier successful updates trained on: how
   * many runs and documents (the runs themselves are listed in the stored report).
   */
  earlier?: { schedule?: string; runs: number; documents: number; olderRunsLeftOut?: number };
  /** `parts`: where the role's pass ran as separate activities (quality.partMB), how many. */
  perRole: Record<DatasetRole, QualityReport & { train: number; heldout: number; parts?: number }>;
  /** Where the run weighs its domain sources: what each kept, by source name. */
  domainSources?: Record<string, { train: number; heldout: number }>;
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

/**
 * One split of a cleaned dataset, written as documents arrive. The last document is held back until
 * the next one comes, so that `balance` can still move it to the other split; each document's
 * MinHash signature goes to a file beside it where `signatureDir` is given.
 */
class SplitWriter {
  private readonly writer: DatasetWriter;
  private pending: { doc: DatasetDoc; signature: Uint32Array | undefined } | null = null;
  private readonly signatureFile: string | null;
  private signatureBuffer: Buffer[] = [];
  private missingSignature = false;
  private readonly sources: Record<string, number> = {};
  count = 0;

  constructor(store: ArtifactStore, role: DatasetRole, split: 'train' | 'heldout', signatureDir: string | null) {
    this.writer = new DatasetWriter(store, role, split);
    this.signatureFile = signatureDir ? path.join(signatureDir, `${role}-${split}.bin`) : null;
  }

  async add(doc: DatasetDoc, signature: Uint32Array | undefined): Promise<void> {
    await this.release();
    this.pending = { doc, signature };
    this.count++;
  }

  private async release(): Promise<void> {
    if (!this.pending) return;
    const { doc, signature } = this.pending;
    this.pending = null;
    await this.writer.add(doc);
    const source = 'text' in doc ? doc.source : undefined;
    if (source !== undefined) this.sources[source] = (this.sources[source] ?? 0) + 1;
    if (this.signatureFile) {
      if (!signature) this.missingSignature = true;
      else this.signatureBuffer.push(Buffer.from(signature.buffer, signature.byteOffset, signature.byteLength));
      if (this.signatureBuffer.length >= 1024) await this.flushSignatures();
    }
  }

  private async flushSignatures(): Promise<void> {
    if (!this.signatureFile || this.signatureBuffer.length === 0) return;
    // Little-endian uint32 on every platform Node runs on here; packSignatures' layout.
    await fs.appendFile(this.signatureFile, Buffer.concat(this.signatureBuffer));
    this.signatureBuffer = [];
  }

  /** If one side is empty and the other has more than one document, move the other's last one over. */
  static async balance(train: SplitWriter, heldout: SplitWriter): Promise<void> {
    for (const [from, to] of [[train, heldout], [heldout, train]] as const) {
      if (to.count === 0 && from.count > 1 && from.pending) {
        const moved = from.pending;
        from.pending = null;
        from.count--;
        await to.add(moved.doc, moved.signature);
      }
    }
  }

  async finish(): Promise<{ ref: DatasetRef; signatures: string | null; sources: Record<string, number> }> {
    await this.release();
    await this.flushSignatures();
    const ref = await this.writer.finish();
    const signatures = this.signatureFile && !this.missingSignature ? this.signatureFile : null;
    if (signatures && this.count === 0) await fs.writeFile(signatures, Buffer.alloc(0));
    return { ref, signatures, sources: this.sources };
  }
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

/** keepSignatures for signatures written to a file as the documents passed. */
async function keepSignatureFile(pool: Pool, store: ArtifactStore, dataset: { sha256: string }, shape: MinhashShape, file: string, docs: number): Promise<void> {
  const ref = await store.putFile('signatures', file, 'bin');
  await pool.query(
    `INSERT INTO minhash_signatures (dataset_sha256, bands, rows_per_band, algorithm, docs, uri, sha256, bytes) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
     ON CONFLICT (dataset_sha256, bands, rows_per_band, algorithm) DO NOTHING`,
    [dataset.sha256, shape.bands, shape.rows, MINHASH_ALGORITHM, docs, ref.uri, ref.sha256, ref.bytes],
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

/** The quality settings of a run's spec. */
function settingsOf(spec: RunSpec): QualitySettings {
  return {
    minChars: spec.quality.minChars,
    maxChars: spec.quality.maxChars,
    maxRepetitionRatio: spec.quality.maxRepetitionRatio,
    maxSymbolRatio: spec.quality.maxSymbolRatio,
    redactPii: spec.quality.redactPii,
    nearDuplicateThreshold: spec.quality.nearDuplicateThreshold,
    // Runs from before quality.minhash keep their index shape (32 × 4).
    minhash: spec.quality.minhash ?? SHAPE_BEFORE,
    // Runs from before carry no heuristics: off, as they ran.
    heuristics: spec.quality.heuristics ?? null,
    minLanguageScore: spec.quality.minLanguageScore ?? 0.8,
  };
}

/**
 * The per-document pass (shardPass) over chunks of documents, handed to `onPass` in their order:
 * on worker threads (DACP_QUALITY_THREADS, one per core), a few chunks ahead; on this thread, in
 * slices, so heartbeats keep flowing either way.
 */
async function passChunks(
  chunks: AsyncIterable<DatasetDoc[]>,
  settings: QualitySettings,
  beat: () => void,
  onPass: (docs: DatasetDoc[], pass: ShardResult<DatasetDoc>) => Promise<void>,
): Promise<void> {
  const threads = shardPool<DatasetDoc>(settings);
  const timer = threads ? setInterval(beat, 1_000) : undefined;
  try {
    const ahead: { docs: DatasetDoc[]; pass: Promise<ShardResult<DatasetDoc>> }[] = [];
    const next = async () => {
      const { docs, pass } = ahead.shift() as (typeof ahead)[number];
      await onPass(docs, await pass);
      beat();
    };
    for await (const docs of chunks) {
      if (threads) {
        const pass = threads.run(docs);
        pass.catch(() => undefined); // awaited in order below; this only keeps an early failure from going unhandled
        ahead.push({ docs, pass });
        if (ahead.length > threads.threads) await next();
        continue;
      }
      for (let i = 0; i < docs.length; i += 256) {
        const slice = docs.slice(i, i + 256);
        await onPass(slice, shardPass(slice, settings));
        beat();
        await new Promise<void>((resolve) => setImmediate(resolve));
      }
    }
    while (ahead.length) await next();
  } finally {
    if (timer) clearInterval(timer);
    await threads?.close();
  }
}

/** A quality part's result: its stored survivors and tally, the documents it judged (`from` to `to`, exclusive) and counts (what history holds of it). */
export interface QualityPartRef extends ArtifactRef {
  from: number;
  to: number;
  input: number;
  kept: number;
}

/** The parts of a dataset, in order, must be its documents, each once. */
function checkParts(raw: DatasetRef, parts: QualityPartRef[]): void {
  let next = 0;
  for (const part of parts) {
    if (part.from !== next || part.to < part.from || part.input !== part.to - part.from) {
      throw ApplicationFailure.nonRetryable(`quality parts of the ${raw.role} dataset: a part covers documents ${part.from} to ${part.to} where ${next} comes next`, 'InputInvalid');
    }
    next = part.to;
  }
  if (next !== raw.docs) throw ApplicationFailure.nonRetryable(`quality parts of the ${raw.role} dataset cover ${next} of its ${raw.docs} documents`, 'InputInvalid');
}

/** One survivor of a part's pass, as a line of its file: the document, its exact hash, signature and redactions. */
interface PartLine {
  d: DatasetDoc;
  k: string;
  s?: string;
  r?: PiiCounts;
}

/**
 * A part's stored pass, in order: survivors a batch at a time to `onSurvivors`, then its tally.
 * The file is hashed as it is read, and refused at the end unless it has the part's sha256 (nothing
 * is published before every part has been read).
 */
async function readPart(
  store: ArtifactStore,
  ref: QualityPartRef,
  onSurvivors: (kept: Candidate<DatasetDoc>[]) => Promise<void>,
  beat: () => void,
): Promise<PassTally> {
  const file = await store.localFile(ref);
  let tally: PassTally | undefined;
  let batch: Candidate<DatasetDoc>[] = [];
  const hash = createHash('sha256');
  const input = createReadStream(file);
  input.on('data', (chunk) => hash.update(chunk));
  const lines = createInterface({ input, crlfDelay: Infinity });
  const corrupted = (why: string) => ApplicationFailure.nonRetryable(`quality part ${ref.uri} ${why}: the stored file was changed`, 'ArtifactCorrupted');
  try {
    for await (const line of lines) {
      if (!line) continue;
      if (tally) throw corrupted('has lines after its tally');
      let row: PartLine | { tally: PassTally };
      try {
        row = JSON.parse(line) as PartLine | { tally: PassTally };
      } catch {
        throw corrupted('has a line that is not JSON');
      }
      if ('tally' in row) {
        tally = row.tally;
        continue;
      }
      const c: Candidate<DatasetDoc> = { doc: row.d, text: docText(row.d), exactKey: Buffer.from(row.k, 'hex') };
      if (row.s !== undefined) c.signature = new Uint32Array(new Uint8Array(Buffer.from(row.s, 'base64')).buffer);
      if (row.r) c.redactions = row.r;
      batch.push(c);
      if (batch.length >= 1024) {
        await onSurvivors(batch);
        batch = [];
        beat();
      }
    }
  } finally {
    lines.close();
    input.destroy();
  }
  if (hash.digest('hex') !== ref.sha256) throw corrupted('does not match its sha256');
  if (batch.length) await onSurvivors(batch);
  if (!tally || tally.input !== ref.input) throw ApplicationFailure.nonRetryable(`quality part ${ref.uri} ends without its tally of ${ref.input} documents`, 'ArtifactInvalid');
  return tally;
}

/**
 * quality: filter, redact PII, remove exact and near-duplicates (within the run, and for the domain
 * data against earlier updates' too), then split held-out sets; fail clearly when too little
 * survives. Counts per reason land in summary.perRole[role].removed.
 */
export function qualityActivities({ pool, store }: ActivityDeps) {
  return {
    /**
     * Part `part` of `parts` of one collected dataset: the steps that judge each document alone, on
     * this worker's threads; its survivors (with their exact hashes and MinHash signatures) and its
     * tally stored as one artifact, which qualityFilter merges in order. Retried anywhere, it
     * stores the same bytes.
     */
    async qualityPart(input: { runId: string; spec: RunSpec; raw: DatasetRef; part: number; parts: number }): Promise<QualityPartRef> {
      const { raw, part, parts } = input;
      if (!Number.isInteger(parts) || parts < 1 || !Number.isInteger(part) || part < 0 || part >= parts) {
        throw ApplicationFailure.nonRetryable(`quality part ${part} of ${parts}: not a part of the dataset`, 'InputInvalid');
      }
      const settings = settingsOf(input.spec);
      const { from, to } = qualityPartRange(raw.docs, part, parts);
      const beat = () => Context.current().heartbeat({ role: raw.role, part });
      const tempDir = await fs.mkdtemp(path.join(os.tmpdir(), 'dacp-quality-part-'));
      const file = path.join(tempDir, 'part.jsonl');
      const tally = emptyTally();
      let kept = 0;
      try {
        let lines: string[] = [];
        const flush = async () => {
          if (lines.length) await fs.appendFile(file, lines.join(''));
          lines = [];
        };
        await fs.writeFile(file, '');
        await passChunks(datasetRange<DatasetDoc>(store, raw, from, to), settings, beat, async (docs, pass) => {
          addToTally(tally, docs, pass);
          for (const c of pass.kept) {
            const row: PartLine = { d: c.doc, k: Buffer.from(c.exactKey ?? []).toString('hex') };
            if (c.signature) row.s = Buffer.from(c.signature.buffer, c.signature.byteOffset, c.signature.byteLength).toString('base64');
            if (c.redactions) row.r = c.redactions;
            lines.push(`${JSON.stringify(row)}\n`);
            kept++;
          }
          if (lines.length >= 1024) await flush();
        });
        lines.push(`${JSON.stringify({ tally })}\n`);
        await flush();
        if (tally.input !== to - from) throw ApplicationFailure.nonRetryable(`quality part ${part} of ${parts}: read ${tally.input} documents of ${to - from}; the dataset's manifest does not match its reference`, 'ArtifactInvalid');
        const ref = await store.putFile('quality-parts', file, 'jsonl');
        return { uri: ref.uri, sha256: ref.sha256, bytes: ref.bytes, from, to, input: tally.input, kept };
      } finally {
        await fs.rm(tempDir, { recursive: true, force: true });
      }
    },

    /**
     * `parts`: for each raw dataset (same order), the qualityPart results its pass was cut into, or
     * null where this activity runs the pass itself.
     */
    async qualityFilter(input: { runId: string; spec: RunSpec; raw: DatasetRef[]; parts?: (QualityPartRef[] | null)[] }): Promise<{
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
      // Kept signatures are written here as documents pass, then stored.
      const tempDir = await fs.mkdtemp(path.join(os.tmpdir(), 'dacp-quality-'));
      // Runs from before quality.minhash keep their index shape (32 × 4) and never look at earlier updates.
      const fromBefore = spec.quality.minhash === undefined;
      const shape = spec.quality.minhash ?? SHAPE_BEFORE;
      const against = fromBefore ? null : await earlierRuns(pool, input.runId, spec);
      let earlier: { index: MinhashIndex; documents: number; used: string[]; leftOut: number } | undefined;
      if (against && against.runs.length > 0) {
        earlier = await earlierIndex(pool, store, against.runs, shape, () => Context.current().heartbeat({ earlier: against.runs.length }));
      }
      const settings = settingsOf(spec);
      if (input.parts && input.parts.length !== input.raw.length) {
        throw ApplicationFailure.nonRetryable(`quality: ${input.parts.length} lists of parts for ${input.raw.length} datasets`, 'InputInvalid');
      }
      try {
        for (const [i, raw] of input.raw.entries()) {
          const beat = () => Context.current().heartbeat({ role: raw.role });
          beat();
          // Only the domain data is new with each update; replay and instructions are meant to recur.
          const stream = new QualityStream<DatasetDoc>(settings, raw.role === 'domain' ? earlier?.index : undefined);
          const keep = raw.role === 'domain' && !fromBefore && settings.nearDuplicateThreshold !== null;
          const out = {
            train: new SplitWriter(store, raw.role, 'train', keep ? tempDir : null),
            heldout: new SplitWriter(store, raw.role, 'heldout', keep ? tempDir : null),
          };
          const bySource = Object.fromEntries(names.map((name) => [name, { train: 0, heldout: 0 }]));
          const emit = async (survivors: Candidate<DatasetDoc>[]) => {
            for (const c of survivors) {
              // The expected languages were for this stage only: the cleaned datasets are as before.
              let doc: DatasetDoc = c.doc;
              if ('languages' in doc) {
                const rest: DatasetDoc & { languages?: string[] } = { ...doc };
                delete rest.languages;
                doc = rest;
              }
              await out[isHeldout(doc, spec.heldoutFraction) ? 'heldout' : 'train'].add(doc, c.signature);
            }
          };
          const parts = input.parts?.[i] ?? null;
          if (parts) {
            checkParts(raw, parts);
            // Its pass ran as separate activities (qualityPart): merged here in order.
            for (const part of parts) stream.addTally(await readPart(store, part, (kept) => emit(stream.merge(kept)), beat));
          } else {
            await passChunks(datasetShards<DatasetDoc>(store, raw), settings, beat, (docs, pass) => emit(stream.add(docs, pass)));
          }
          // Both sides must be non-empty for training and evaluation: move the last document over if the hash split is lopsided.
          await SplitWriter.balance(out.train, out.heldout);
          const { report, details: roleDetails } = stream.result();
          if (report.kept < spec.quality.minDocs) {
            const reasons = Object.entries(report.removed)
              .filter(([, n]) => n > 0)
              .map(([reason, n]) => `${reason}: ${n}`)
              .join(', ');
            problems.push(
              `${raw.role}: ${report.kept} of ${report.input} documents survived (need quality.minDocs = ${spec.quality.minDocs}; removed ${reasons || 'none'})`,
            );
          }
          details[raw.role] = roleDetails;
          for (const split of ['train', 'heldout'] as const) {
            const { ref, signatures, sources } = await out[split].finish();
            for (const [name, n] of Object.entries(sources)) if (bySource[name]) bySource[name][split] += n;
            // What a later update checks its domain data against, kept by this dataset's hash.
            if (signatures) await keepSignatureFile(pool, store, ref, shape, signatures, out[split].count);
            await upsertDataset(pool, input.runId, 'quality', ref);
            datasets.push(ref);
          }
          perRole[raw.role] = { ...report, train: out.train.count, heldout: out.heldout.count, ...(parts ? { parts: parts.length } : {}) };
          if (raw.role === 'domain' && spec.domainRatio !== undefined) {
            domainSources = bySource;
            for (const name of names.filter((n) => weighted.includes(n) && domainSources?.[n]?.train === 0)) {
              problems.push(`domain source "${name}": no document left to train on, but domainRatio gives it weight`);
            }
          }
        }
      } finally {
        await fs.rm(tempDir, { recursive: true, force: true });
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
