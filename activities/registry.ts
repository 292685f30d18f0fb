import { createHash } from 'node:crypto';
import { Context } from '@temporalio/activity';
import { ApplicationFailure } from '@temporalio/common';
import type { PoolClient } from 'pg';
import { withTransaction } from '../db/pool';
import { advanceWatermarks, AliasMovedError, createModelVersion, findModelVersion, moveAlias, recordTransition, upsertDataset } from '../db/records';
import type { ArtifactRef, DatasetRef, DeployResult, FinalCheckReport, ForgettingReport, InstructSummary } from '../schemas/pipeline';
import type { RunSpec } from '../schemas/runSpec';
import type { ActivityDeps } from './context';
import { storeModelAsFolder } from './modelFolders';
import { readDataset, writeDataset, type TextDoc } from './datasets';
import { mulberry32 } from '../ml/random';

export type VersionedModel = ArtifactRef & { versionId: string };

/** Where a run starts, and what its final check compares against. */
export interface ResolvedBase extends VersionedModel {
  /** The version the ref named (e.g. what `production` points at); the start may be the adapted model behind it. */
  resolvedVersionId: string;
  line: 'pretrained' | 'deployed';
}

/** The model registry: resolving base models, registering versions, moving aliases. */
export function registryActivities({ pool, store }: ActivityDeps) {
  return {
    /**
     * The model a run starts from. With `line: 'pretrained'` (runs since the two-line registry) a
     * served version that was instruction-tuned from an adapted one resolves to that adapted
     * version, so DACP is never stacked on a chat model by accident; a version with none behind it
     * (bootstrapped, imported) is its own start. Runs from before pass no line and start from the
     * version itself, as they did.
     */
    async resolveBaseModel(input: { ref: string; line?: 'pretrained' | 'deployed' }): Promise<ResolvedBase | VersionedModel | null> {
      const named = await findModelVersion(pool, input.ref);
      if (!named) return null;
      const adaptedId = typeof named.lineage.adaptedVersionId === 'string' ? named.lineage.adaptedVersionId : null;
      const version = input.line === 'pretrained' && adaptedId ? await findModelVersion(pool, adaptedId) : named;
      if (!version) {
        throw ApplicationFailure.nonRetryable(`model ${named.versionId} names adapted version ${adaptedId}, which is not in the registry`, 'ModelMissing');
      }
      const ref = { uri: version.uri, sha256: version.sha256 };
      if (!(await store.verify(ref))) {
        throw ApplicationFailure.nonRetryable(
          `model ${version.versionId} (${version.uri}) is missing or corrupted in the artifact store`,
          'ArtifactCorrupted',
        );
      }
      const bytes = await store.sizeOf(ref);
      const start = { ...ref, bytes, versionId: version.versionId };
      return input.line ? { ...start, resolvedVersionId: named.versionId, line: input.line } : start;
    },

    /** The model the final check compares a candidate against: what the deploy alias serves now, if anything. */
    async resolveReference(input: { alias: string; aliasAtStart?: string | null }): Promise<(VersionedModel & { kind: 'production' }) | null> {
      // What the alias served when the run started (null: nothing, so the base is the reference);
      // runs from before did not record it, and read the alias now.
      if (input.aliasAtStart === null) return null;
      const version = await findModelVersion(pool, input.aliasAtStart ?? input.alias);
      if (!version) return null;
      return { uri: version.uri, sha256: version.sha256, bytes: 0, versionId: version.versionId, kind: 'production' };
    },

    async registerBaseModel(input: { runId: string; spec: RunSpec; model: ArtifactRef; corpus: DatasetRef }): Promise<VersionedModel> {
      const folder = await storeModelAsFolder(store, input.model);
      const versionId = await withTransaction(pool, (client) =>
        createModelVersion(client, {
          folder,
          name: `${input.spec.name}-base`,
          parentVersionId: null,
          runId: input.runId,
          model: input.model,
          lineage: {
            kind: 'bootstrap',
            runId: input.runId,
            corpus: { role: input.corpus.role, sha256: input.corpus.sha256, docs: input.corpus.docs },
            shape: input.spec.baseModel.shape,
          },
          metrics: {},
        }),
      );
      return { ...input.model, versionId };
    },

    /**
     * deploy: an immutable version with lineage, and the alias moved in the same transaction, only
     * if it still points where it pointed when the run started (`aliasAtStart`; undefined for runs
     * from before, which move it unconditionally). Otherwise the version stays registered for a
     * later promote and the run fails with AliasMoved, naming both versions.
     */
    async deployModel(input: {
      runId: string;
      spec: RunSpec;
      aliasAtStart?: string | null;
      model: ArtifactRef;
      /** The continually pretrained model the served one was tuned from; registered as its own version. Absent for runs from before. */
      adaptedModel?: ArtifactRef;
      finalCheck?: FinalCheckReport;
      baseModel: VersionedModel;
      datasets: DatasetRef[];
      forgetting: ForgettingReport;
      instruct: InstructSummary;
    }): Promise<DeployResult> {
      if (!(await store.verify(input.model))) {
        throw ApplicationFailure.nonRetryable(`model ${input.model.uri} failed verification; nothing was deployed`, 'ArtifactCorrupted');
      }
      const alias = input.spec.deploy.alias;
      const datasets = input.datasets.map((d) => ({ role: d.role, split: d.split, sha256: d.sha256, docs: d.docs }));
      /**
       * Two linked immutable versions: the adapted (continually pretrained) model, child of the
       * base, and the tuned model that serves, child of the adapted one. The next run continues
       * pretraining from the adapted line. Runs from before register the tuned model alone.
       */
      // Each version is kept as a Hugging Face folder too (what `dacp models export` writes out).
      const folder = await storeModelAsFolder(store, input.model);
      const adaptedFolder = input.adaptedModel ? await storeModelAsFolder(store, input.adaptedModel) : undefined;
      const register = async (client: PoolClient): Promise<{ versionId: string; adaptedVersionId?: string }> => {
        const adaptedVersionId = input.adaptedModel
          ? await createModelVersion(client, {
              folder: adaptedFolder,
              name: `${input.spec.name}-adapted`,
              parentVersionId: input.baseModel.versionId,
              runId: input.runId,
              model: input.adaptedModel,
              lineage: { kind: 'adapted', runId: input.runId, base: { versionId: input.baseModel.versionId, sha256: input.baseModel.sha256 }, datasets },
              metrics: { forgetting: input.forgetting },
            })
          : undefined;
        const versionId = await createModelVersion(client, {
          folder,
          name: input.spec.name,
          parentVersionId: adaptedVersionId ?? input.baseModel.versionId,
          runId: input.runId,
          model: input.model,
          lineage: {
            ...(adaptedVersionId ? { kind: 'tuned', adaptedVersionId } : {}),
            runId: input.runId,
            base: { versionId: input.baseModel.versionId, sha256: input.baseModel.sha256 },
            datasets,
          },
          metrics: { forgetting: input.forgetting, instruct: input.instruct, ...(input.finalCheck ? { finalCheck: input.finalCheck } : {}) },
        });
        return { versionId, ...(adaptedVersionId ? { adaptedVersionId } : {}) };
      };
      let result: DeployResult;
      try {
        result = await withTransaction(pool, async (client) => {
          const versions = await register(client);
          const moved = await moveAlias(client, { runId: input.runId, alias, versionId: versions.versionId, expectedTarget: input.aliasAtStart });
          // A scheduled run's success advances its schedule's watermarks, in the same transaction as
          // the deploy: a failed, rejected or cancelled run never moves them.
          await advanceWatermarks(client, input.runId);
          return { ...versions, alias, ...moved };
        });
      } catch (err) {
        if (!(err instanceof AliasMovedError)) throw err;
        // Keep the candidate: registered, unaliased, ready for `dacp models promote`.
        const { versionId } = await withTransaction(pool, register);
        await recordTransition(pool, {
          runId: input.runId,
          key: `${input.runId}:alias_moved:${alias}`,
          event: 'alias_moved',
          stage: 'deploy',
          actor: 'dacp',
          details: { alias, expected: err.expected, actual: err.actual, versionId },
        });
        throw ApplicationFailure.nonRetryable(
          `${err.message}; ${alias} was left as it is. ${versionId} is registered; promote it if it should serve`,
          'AliasMoved',
          { alias, expected: err.expected, actual: err.actual, versionId },
        );
      }
      await recordTransition(pool, {
        runId: input.runId,
        key: `${input.runId}:deployed:${alias}`,
        event: 'deployed',
        stage: 'deploy',
        actor: 'dacp',
        details: { ...result },
      });
      return result;
    },
  };
}

export interface EarlierUpdatesReplay {
  /** The replay training set: the general text, plus the sample of earlier updates' domain documents. */
  replayTrain: DatasetRef;
  summary: {
    share: number;
    /** The versions of the base model's line whose domain data was pooled, newest first. */
    versions: string[];
    /** sha256 of each earlier domain training set pooled. */
    datasets: string[];
    pooledDocs: number;
    sampledDocs: number;
    generalDocs: number;
  };
}

/**
 * Replay that keeps earlier updates: the domain training sets of the base model's line (found by
 * sha256 through the registry's lineage) are pooled, and a seeded sample of them joins the general
 * replay text, `share` of the replay documents in all. A first update has nothing earlier: the
 * general text is returned as it was.
 */
export function earlierUpdatesActivities({ pool, store }: ActivityDeps) {
  return {
    async mixEarlierUpdates(input: { runId: string; share: number; baseVersionId: string; replayTrain: DatasetRef }): Promise<EarlierUpdatesReplay> {
      const versions: string[] = [];
      const hashes: string[] = [];
      for (let at = await findModelVersion(pool, input.baseVersionId); at; at = at.parentVersionId ? await findModelVersion(pool, at.parentVersionId) : null) {
        const datasets = Array.isArray(at.lineage.datasets) ? (at.lineage.datasets as { role: string; split: string; sha256: string }[]) : [];
        const domain = datasets.filter((d) => d.role === 'domain' && d.split === 'train').map((d) => d.sha256).filter((h) => !hashes.includes(h));
        if (domain.length) versions.push(at.versionId);
        hashes.push(...domain);
        if (versions.length > 1_000) break;
      }
      const earlier: TextDoc[] = [];
      for (const sha256 of hashes) {
        const { rows } = await pool.query(`SELECT uri, sha256, docs, bytes, tokens FROM datasets WHERE sha256 = $1 AND role = 'domain' AND split = 'train' LIMIT 1`, [sha256]);
        if (!rows.length) throw ApplicationFailure.nonRetryable(`earlier domain dataset ${sha256} is named in the registry's lineage but has no record; it cannot be replayed`, 'DatasetMissing');
        const ref: DatasetRef = { uri: rows[0].uri, sha256, bytes: await store.sizeOf({ uri: rows[0].uri as string }), role: 'domain', split: 'train', docs: Number(rows[0].docs), dataBytes: Number(rows[0].bytes), tokens: Number(rows[0].tokens) };
        for (const doc of await readDataset<TextDoc>(store, ref)) earlier.push({ text: doc.text });
        Context.current().heartbeat({ pooled: earlier.length });
      }
      const general = await readDataset<TextDoc>(store, input.replayTrain);
      const wanted = Math.round((general.length * input.share) / (1 - input.share));
      // A seeded shuffle (per run), so a retried attempt samples the same documents.
      const random = mulberry32(seedOf(input.runId));
      const order = earlier.map((_, i) => i);
      for (let i = order.length - 1; i > 0; i--) {
        const j = Math.floor(random() * (i + 1));
        [order[i], order[j]] = [order[j] as number, order[i] as number];
      }
      const sampled = order.slice(0, Math.min(wanted, earlier.length)).sort((a, b) => a - b).map((i) => earlier[i] as TextDoc);
      const summary = { share: input.share, versions, datasets: hashes, pooledDocs: earlier.length, sampledDocs: sampled.length, generalDocs: general.length };
      if (sampled.length === 0) return { replayTrain: input.replayTrain, summary };
      const replayTrain = await writeDataset(store, 'replay', 'train', [...general.map((d) => ({ text: d.text })), ...sampled]);
      // On the run's record (stage "mix"), where an auditor finds what the update trained on.
      await upsertDataset(pool, input.runId, 'mix', replayTrain);
      return { replayTrain, summary };
    },
  };
}

function seedOf(text: string): number {
  return createHash('sha256').update(text).digest().readUInt32LE(0);
}
