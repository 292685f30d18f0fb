import { ApplicationFailure } from '@temporalio/common';
import { withTransaction } from '../db/pool';
import { moveAlias, restoreWatermarks } from '../db/records';
import type { ArtifactRef, DatasetRef } from '../schemas/pipeline';
import type { RunSpec } from '../schemas/runSpec';
import { encodeChat, Generator, loadVersion, TextStream } from '../serve/engine';
import type { ActivityDeps } from './context';
import { readDataset, type PairDoc } from './datasets';

export interface SmokeSummary {
  passed: boolean;
  /** Why it failed, without quoting prompts or answers (they are data). */
  reasons: string[];
  prompts: number;
  /** Characters of each answer; the answers themselves are in `report`. */
  answerChars: number[];
  report: ArtifactRef;
}

/**
 * The smoke test after a deploy: the deployed version loaded and asked its prompts through the code
 * `dacp serve` uses (serve/engine.ts), on the gpu queue. No server needs to run.
 */
export function smokeActivities({ pool, store }: ActivityDeps) {
  return {
    async smokeTestDeployed(input: { runId: string; spec: RunSpec; versionId: string; heldout: DatasetRef }): Promise<SmokeSummary> {
      // Specs stored before the smoke test existed have no `deploy.smoke`: its defaults apply.
      const stored = (input.spec.deploy as { smoke?: Partial<RunSpec['deploy']['smoke']> }).smoke ?? {};
      const smoke: RunSpec['deploy']['smoke'] = { enabled: true, maxNewTokens: 16, requireAnswers: false, ...stored };
      const prompts = smoke.prompts ?? (await readDataset<PairDoc>(store, input.heldout)).slice(0, 3).map((p) => p.prompt);
      const reasons: string[] = [];
      const answers: string[] = [];
      let generator: Generator | undefined;
      try {
        generator = new Generator(await loadVersion(pool, store.root, input.versionId));
        const { tokenizer, contextLength } = generator.loaded;
        for (const [i, prompt] of prompts.entries()) {
          let ids = encodeChat(tokenizer, [{ role: 'user', content: prompt }]);
          const maxTokens = Math.min(smoke.maxNewTokens, contextLength - 1);
          if (ids.length > contextLength - maxTokens) ids = ids.slice(-(contextLength - maxTokens));
          const text = new TextStream(tokenizer);
          try {
            await generator.generate({ promptIds: ids, maxTokens, temperature: 0, topP: 1, seed: 0, onToken: (id) => (text.push(id), true) });
          } catch (err) {
            reasons.push(`prompt ${i + 1} of ${prompts.length}: generation failed (${(err as Error).message})`);
          }
          text.flush();
          answers.push(text.text);
        }
      } catch (err) {
        reasons.push(`the deployed version could not be loaded as dacp serve loads it (${(err as Error).message.split('\n')[0]})`);
      } finally {
        generator?.retire();
      }
      if (answers.length === prompts.length && reasons.length === 0) {
        if (smoke.requireAnswers && answers.every((a) => a.trim() === '')) reasons.push(`every one of the ${prompts.length} answers was empty`);
        if (smoke.expect !== undefined) {
          const missing = answers.map((a, i) => (a.includes(smoke.expect as string) ? -1 : i + 1)).filter((i) => i > 0);
          if (missing.length) reasons.push(`answer${missing.length > 1 ? 's' : ''} ${missing.join(', ')} of ${prompts.length} lack${missing.length > 1 ? '' : 's'} the expected text (deploy.smoke.expect)`);
        }
      }
      const report = await store.putJson('reports', { kind: 'smoke', runId: input.runId, versionId: input.versionId, prompts, answers, reasons });
      return { passed: reasons.length === 0, reasons, prompts: prompts.length, answerChars: answers.map((a) => a.length), report };
    },

    /**
     * Put the alias back where it was before this run's deploy, if it still points at what the run
     * deployed; with nothing before, the alias is removed, so a failing model never serves. Recorded
     * in the alias's history as a rollback by dacp, with the reason (a removal as a row without a
     * version). A scheduled run's watermarks go back to where the run found them: it did not succeed.
     */
    async rollbackDeploy(input: { runId: string; alias: string; versionId: string; previousVersionId: string | null; reason: string }): Promise<{ rolledBack: boolean; restoredVersionId: string | null; current: string | null }> {
      return withTransaction(pool, async (client) => {
        const key = `rollback:${input.runId}`;
        await restoreWatermarks(client, input.runId);
        const done = await client.query('SELECT version_id FROM deployments WHERE run_id = $1 AND alias = $2', [key, input.alias]);
        if (done.rows.length) {
          const restored = (done.rows[0].version_id as string | null) ?? null;
          return { rolledBack: true, restoredVersionId: restored, current: restored };
        }
        const current = await client.query('SELECT version_id FROM model_aliases WHERE alias = $1 FOR UPDATE', [input.alias]);
        const now = (current.rows[0]?.version_id as string | undefined) ?? null;
        if (now !== input.versionId) return { rolledBack: false, restoredVersionId: null, current: now };
        if (input.previousVersionId === null) {
          await client.query('DELETE FROM model_aliases WHERE alias = $1', [input.alias]);
          await client.query(
            `INSERT INTO deployments (run_id, alias, version_id, previous_version_id, kind, actor, note) VALUES ($1, $2, NULL, $3, 'rollback', 'dacp', $4)`,
            [key, input.alias, input.versionId, input.reason.slice(0, 500)],
          );
          return { rolledBack: true, restoredVersionId: null, current: null };
        }
        await moveAlias(client, { runId: key, alias: input.alias, versionId: input.previousVersionId, kind: 'rollback', actor: 'dacp', note: input.reason.slice(0, 500) });
        return { rolledBack: true, restoredVersionId: input.previousVersionId, current: input.previousVersionId };
      }).catch((err: unknown) => {
        throw ApplicationFailure.retryable(`rollback of ${input.alias} failed: ${(err as Error).message}`, 'RollbackFailed');
      });
    },
  };
}
