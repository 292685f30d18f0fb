import { sourceRoots } from '../workers/policy';
import { ApplicationFailure } from '@temporalio/common';
import { Context } from '@temporalio/activity';
import { upsertDataset } from '../db/records';
import type { DatasetRef, DatasetRole } from '../schemas/pipeline';
import type { RunSpec } from '../schemas/runSpec';
import { inputsFolders, isStaged } from './inputs';
import { languageCode } from '../schemas/languages';
import type { ActivityDeps } from './context';
import { readChoiceSet, storeChoiceSet, type ChoiceSetName, type ChoiceSetRef } from './choiceSets';
import { writeDataset, type DatasetDoc } from './datasets';
import { createHash } from 'node:crypto';
import { usesWatermark, type SourceSpec } from '../schemas/runSpec';
import { readSource, readSourceSince, type SourceDoc, type Watermark } from './sources';

/** Which watermark a scheduled run read a source past, and the one it leaves if it succeeds. */
export interface WatermarkUse {
  /** Null on a schedule's first run of this source: everything was read. */
  used: string | null;
  next: string;
  /** Files left out because their content is unchanged since the watermark. */
  skippedFiles?: number;
}

export interface CollectSummary {
  sources: { index: number; kind: string; role: DatasetRole; docs: number; name?: string; watermark?: WatermarkUse }[];
  docs: Record<DatasetRole, number>;
  bytes: Record<DatasetRole, number>;
  /** Questions per multiple-choice set the spec names (`evaluation.choices`). */
  choiceItems?: Partial<Record<ChoiceSetName, number>>;
}

export type CollectedChoiceSets = Partial<Record<ChoiceSetName, ChoiceSetRef>>;

/** Re-throws a reader's failure with the spec field it came from, so the user knows which setting to fix. */
function withField(field: string, err: unknown): never {
  if (err instanceof ApplicationFailure) {
    throw ApplicationFailure.create({ message: `${field}: ${err.message}`, type: err.type ?? 'SourceInvalid', nonRetryable: Boolean(err.nonRetryable) });
  }
  throw err;
}

/** `source` only where the run weighs its domain sources (domainRatio), so other datasets keep their hashes. */
function toDatasetDoc(doc: SourceDoc, source: string | undefined, languages: string[] | undefined): DatasetDoc {
  const expect = languages ? { languages } : {};
  if (!('text' in doc)) return { prompt: doc.prompt, response: doc.response, ...expect };
  return source !== undefined ? { text: doc.text, source, ...expect } : { text: doc.text, ...expect };
}

/** collect: read every source, group documents by role, and store them as content-addressed shards. */
export function collectActivities({ pool, store }: ActivityDeps) {
  return {
    async collectSources(input: { runId: string; spec: RunSpec; baseDir: string; scheduleId?: string }): Promise<{
      datasets: DatasetRef[];
      /** The spec's multiple-choice sets, validated and stored as JSON arrays of {question, choices, answer: index}. */
      choiceSets: CollectedChoiceSets;
      summary: CollectSummary;
    }> {
      const { spec } = input;
      // Staged inputs (`dacp run start`) are read from this host's copy of them, and only there:
      // they passed the data roots of the host that staged them. Otherwise the worker's data roots
      // (DACP_DATA_ROOTS, else the spec's folder), narrowed by the spec's dataRoots.
      // A schedule's file sources are read anew at each firing from its live folder (on this host,
      // under the worker's data roots); its choice sets were staged when it was created.
      const folders = await inputsFolders(store, input.baseDir, { scheduled: input.scheduleId !== undefined });
      const stagedRoots = isStaged(input.baseDir) ? [folders.staged] : sourceRoots({ baseDir: folders.staged, specRoots: spec.dataRoots });
      const sourcesAt = folders.live === null
        ? { baseDir: folders.staged, allowedRoots: stagedRoots }
        : { baseDir: folders.live, allowedRoots: sourceRoots({ baseDir: folders.live, specRoots: spec.dataRoots }) };
      const byRole: Record<DatasetRole, DatasetDoc[]> = { domain: [], replay: [], instruct: [] };
      const summary: CollectSummary = {
        sources: [],
        docs: { domain: 0, replay: 0, instruct: 0 },
        bytes: { domain: 0, replay: 0, instruct: 0 },
      };
      for (const [index, source] of spec.sources.entries()) {
        Context.current().heartbeat({ source: index });
        let docs: SourceDoc[];
        let watermark: WatermarkUse | undefined;
        try {
          if (input.scheduleId !== undefined && usesWatermark(source)) {
            // A scheduled run reads what is new since the schedule's last successful run.
            const key = watermarkKey(index, source);
            const last = await pool.query('SELECT value, run_id FROM schedule_watermarks WHERE schedule_id = $1 AND source_key = $2', [input.scheduleId, key]);
            const used = (last.rows[0]?.value as Watermark | undefined) ?? null;
            const read = await readSourceSince(source, sourcesAt, used);
            docs = read.docs;
            await pool.query(
              `INSERT INTO run_watermarks (run_id, schedule_id, source_key, kind, used, used_run_id, next) VALUES ($1, $2, $3, $4, $5, $6, $7)
               ON CONFLICT (run_id, source_key) DO UPDATE SET used = EXCLUDED.used, used_run_id = EXCLUDED.used_run_id, next = EXCLUDED.next`,
              [input.runId, input.scheduleId, key, source.kind, used === null ? null : JSON.stringify(used), (last.rows[0]?.run_id as string | undefined) ?? null, JSON.stringify(read.next)],
            );
            watermark = { used: used === null ? null : describeWatermark(used), next: describeWatermark(read.next), ...(source.kind !== 'postgres' ? { skippedFiles: read.skippedFiles } : {}) };
          } else {
            docs = await readSource(source, sourcesAt);
          }
        } catch (err) {
          if (err instanceof ApplicationFailure) {
            throw ApplicationFailure.create({
              message: `sources[${index}] (${source.kind}, role ${source.role}): ${err.message}`,
              type: err.type ?? 'SourceInvalid',
              nonRetryable: Boolean(err.nonRetryable),
            });
          }
          throw err;
        }
        const sourceTag = spec.domainRatio !== undefined && source.role === 'domain' ? source.name : undefined;
        // The source's expected languages travel with its documents to the quality stage, which judges them.
        const languages = source.languages?.map((code) => languageCode(code) as string);
        for (const doc of docs) {
          const entry = toDatasetDoc(doc, sourceTag, languages);
          if (source.role === 'instruct' && !('prompt' in entry)) {
            throw ApplicationFailure.nonRetryable(
              `sources[${index}]: role "instruct" needs prompt/response pairs, but ${doc.origin} gave plain text; use a JSONL file with prompt and response fields`,
              'SourceInvalid',
            );
          }
          if (source.role !== 'instruct' && !('text' in entry)) {
            throw ApplicationFailure.nonRetryable(`sources[${index}]: role "${source.role}" needs text documents`, 'SourceInvalid');
          }
          byRole[source.role].push(entry);
        }
        summary.sources.push({
          index, kind: source.kind, role: source.role, docs: docs.length,
          ...(source.name !== undefined ? { name: source.name } : {}),
          ...(watermark ? { watermark } : {}),
        });
      }
      if (input.scheduleId !== undefined && byRole.domain.length === 0 && summary.sources.some((s) => s.role === 'domain' && s.watermark)) {
        throw ApplicationFailure.nonRetryable(
          `no new domain documents since the last successful run of schedule ${input.scheduleId} (${summary.sources.filter((s) => s.watermark).map((s) => `sources[${s.index}]: ${s.watermark?.used ?? 'first read'}`).join('; ')}); nothing to adapt to, so this update stops here`,
          'NothingNew',
        );
      }
      const datasets: DatasetRef[] = [];
      for (const role of ['domain', 'replay', 'instruct'] as const) {
        const ref = await writeDataset(store, role, 'train', byRole[role]);
        await upsertDataset(pool, input.runId, 'collect', ref);
        summary.docs[role] = ref.docs;
        summary.bytes[role] = ref.dataBytes;
        datasets.push(ref);
      }
      const choiceSets: CollectedChoiceSets = {};
      for (const name of ['domain', 'general'] as const) {
        const file = spec.evaluation.choices[name];
        if (file === undefined) continue;
        Context.current().heartbeat({ choices: name });
        const items = await readChoiceSet(file, { baseDir: folders.staged, allowedRoots: stagedRoots }).catch((err: unknown) => withField(`evaluation.choices.${name}`, err));
        choiceSets[name] = await storeChoiceSet(store, items);
        summary.choiceItems = { ...summary.choiceItems, [name]: items.length };
      }
      return { datasets, choiceSets, summary };
    },
  };
}

/** A source's watermark key: its place in the spec and a digest of what it reads, so an edited source starts afresh. */
export function watermarkKey(index: number, source: SourceSpec): string {
  const what = source.kind === 'files' ? { paths: source.paths } : source.kind === 's3' ? { bucket: source.bucket, prefix: source.prefix, glob: source.glob } : { query: source.query, column: source.watermarkColumn };
  return `sources[${index}]:${createHash('sha256').update(JSON.stringify({ kind: source.kind, role: source.role, ...what })).digest('hex').slice(0, 16)}`;
}

function describeWatermark(w: Watermark): string {
  return w.kind === 'files' ? `${Object.keys(w.files).length} files by sha256` : `${w.column} > ${w.max ?? '(none)'}`;
}
