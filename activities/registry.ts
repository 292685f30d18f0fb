import { ApplicationFailure } from '@temporalio/common';
import { withTransaction } from '../db/pool';
import { createModelVersion, findModelVersion, moveAlias, recordTransition } from '../db/records';
import type { ArtifactRef, DatasetRef, DeployResult, ForgettingReport, InstructSummary } from '../schemas/pipeline';
import type { RunSpec } from '../schemas/runSpec';
import type { ActivityDeps } from './context';

export type VersionedModel = ArtifactRef & { versionId: string };

/** The model registry: resolving base models, registering versions, moving aliases. */
export function registryActivities({ pool, store }: ActivityDeps) {
  return {
    async resolveBaseModel(input: { ref: string }): Promise<VersionedModel | null> {
      const version = await findModelVersion(pool, input.ref);
      if (!version) return null;
      const ref = { uri: version.uri, sha256: version.sha256 };
      if (!(await store.verify(ref))) {
        throw ApplicationFailure.nonRetryable(
          `model ${version.versionId} (${version.uri}) is missing or corrupted in the artifact store`,
          'ArtifactCorrupted',
        );
      }
      const bytes = (await store.get(ref)).length;
      return { ...ref, bytes, versionId: version.versionId };
    },

    async registerBaseModel(input: { runId: string; spec: RunSpec; model: ArtifactRef; corpus: DatasetRef }): Promise<VersionedModel> {
      const versionId = await withTransaction(pool, (client) =>
        createModelVersion(client, {
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

    /** deploy: an immutable version with lineage, and the alias moved in the same transaction. */
    async deployModel(input: {
      runId: string;
      spec: RunSpec;
      model: ArtifactRef;
      baseModel: VersionedModel;
      datasets: DatasetRef[];
      forgetting: ForgettingReport;
      instruct: InstructSummary;
    }): Promise<DeployResult> {
      if (!(await store.verify(input.model))) {
        throw ApplicationFailure.nonRetryable(`model ${input.model.uri} failed verification; nothing was deployed`, 'ArtifactCorrupted');
      }
      const alias = input.spec.deploy.alias;
      const result = await withTransaction(pool, async (client) => {
        const versionId = await createModelVersion(client, {
          name: input.spec.name,
          parentVersionId: input.baseModel.versionId,
          runId: input.runId,
          model: input.model,
          lineage: {
            runId: input.runId,
            base: { versionId: input.baseModel.versionId, sha256: input.baseModel.sha256 },
            datasets: input.datasets.map((d) => ({ role: d.role, split: d.split, sha256: d.sha256, docs: d.docs })),
          },
          metrics: { forgetting: input.forgetting, instruct: input.instruct },
        });
        const moved = await moveAlias(client, { runId: input.runId, alias, versionId });
        return { versionId, alias, ...moved };
      });
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
