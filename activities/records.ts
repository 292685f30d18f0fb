import { createHmac } from 'node:crypto';
import { WorkflowNotFoundError } from '@temporalio/client';
import { ApplicationFailure } from '@temporalio/common';
import { approvalRequestQuery, approvalWorkflowId, supersedeSignal } from '../workflows/messages';
import * as records from '../db/records';
import type { ApprovalRequest, ArtifactRef, Decision, PipelineInput, RunState, Stage } from '../schemas/pipeline';
import { loadRunReport, runReportHtml } from '../reports/runReport';
import type { RunSpec } from '../schemas/runSpec';
import { activeKeys } from '../db/principals';
import { SERVER_SIGNER, verifyStatement, type PublicKeyRef } from '../schemas/signing';
import { sha256Hex } from './artifacts';
import type { ActivityDeps } from './context';

/** Activities that write the run's own records: the run row, transitions and approval decisions. */
export function recordActivities({ pool, client, store }: ActivityDeps) {
  return {
    /**
     * The newer run of a schedule has reached its gate: the older runs of that schedule still waiting
     * at theirs are closed (a signal to each gate), naming it. Returns the runs it closed.
     */
    async supersedeEarlierRuns(input: { runId: string; scheduleId: string }): Promise<string[]> {
      if (!client) throw new Error('supersedeEarlierRuns needs the worker\'s Temporal client');
      const { rows } = await pool.query(
        `SELECT run_id FROM runs
          WHERE schedule_id = $1 AND state = 'awaiting_approval' AND run_id <> $2
            AND created_at < (SELECT created_at FROM runs WHERE run_id = $2)
          ORDER BY created_at`,
        [input.scheduleId, input.runId],
      );
      const closed: string[] = [];
      for (const row of rows) {
        const older = row.run_id as string;
        try {
          const gate = client.workflow.getHandle(approvalWorkflowId(older));
          await gate.signal(supersedeSignal, {
            by: input.runId,
            reason: `superseded by ${input.runId}, a newer run of schedule ${input.scheduleId} that reached its approval gate; review that one instead`,
          });
          // Counted only if the gate took it: one whose votes had already decided keeps its outcome.
          for (let tries = 0; tries < 50; tries++) {
            const after = await gate.query(approvalRequestQuery).catch(() => null);
            if (after?.supersededBy === input.runId) {
              closed.push(older);
              break;
            }
            if (after && !after.open) break; // decided by its votes before the signal
            await new Promise((resolve) => setTimeout(resolve, 100));
          }
        } catch (err) {
          if (!(err instanceof WorkflowNotFoundError)) throw err; // its gate closed meanwhile
        }
      }
      return closed;
    },

    /**
     * The run's row, written once per run id. Returns where the deploy alias pointed when the run
     * started: the deploy moves it only if it still points there.
     */
    async registerRun(input: {
      runId: string;
      workflowId: string;
      executionId?: string;
      spec: RunSpec;
      initiator: string;
      scheduleId?: string;
      startSignature?: PipelineInput['startSignature'];
      baseDir?: string;
    }): Promise<{ aliasAtStart: string | null }> {
      // A run id that belongs to another execution is refused first, whatever the new one carries.
      const owner = await pool.query('SELECT execution_id FROM runs WHERE run_id = $1', [input.runId]);
      if (owner.rows.length && input.executionId && owner.rows[0].execution_id !== input.executionId) {
        throw ApplicationFailure.nonRetryable(`run id ${input.runId} already belongs to another run; start this one under a new id`, 'RunIdTaken');
      }
      // A manual run starts only with its initiator's signature, by an active operator key, over this
      // run, this spec and this folder; a scheduled run's creator was checked when it was created.
      if (input.startSignature) {
        const { statement, signature, publicKey } = input.startSignature;
        const keys = (await activeKeys(pool, [input.initiator], 'operator'))[input.initiator] ?? [];
        const key = keys.find((k) => k.keyId === statement.keyId && k.publicKey === publicKey);
        const specSha256 = sha256Hex(JSON.stringify(input.spec));
        const problem = !key
          ? `key ${statement.keyId} is not an active operator key of ${input.initiator}`
          : !verifyStatement(statement, signature, publicKey)
            ? 'the signature does not verify'
            : statement.runId !== input.runId || statement.initiator !== input.initiator || statement.specSha256 !== specSha256 || statement.baseDir !== input.baseDir
              ? 'it covers another run, initiator, spec or folder'
              : null;
        if (problem) throw ApplicationFailure.nonRetryable(`run ${input.runId} has no valid start signature (${problem}); start runs with \`dacp run start --as OPERATOR\``, 'StartNotSigned');
      } else if (!input.scheduleId) {
        throw ApplicationFailure.nonRetryable(`run ${input.runId} was started without its initiator's signature; start runs with \`dacp run start --as OPERATOR\``, 'StartNotSigned');
      }
      const registered = await records.insertRun(pool, {
        ...input,
        specSha256: sha256Hex(JSON.stringify(input.spec)),
        deployAlias: input.spec.deploy.alias,
      });
      if (!registered.fresh && input.executionId && registered.executionId !== input.executionId) {
        throw ApplicationFailure.nonRetryable(
          `run id ${input.runId} already belongs to another run; start this one under a new id`,
          'RunIdTaken',
        );
      }
      if (input.startSignature) {
        // The operator's signed start, first in the run's audit chain.
        const { statement, signature, publicKey } = input.startSignature;
        await records.appendAuditEntry(pool, {
          runId: input.runId,
          key: `${input.runId}:start-signature`,
          event: 'run_start_signed',
          stage: 'collect',
          actor: input.initiator,
          details: { statement, signature, publicKey },
        });
      }
      return { aliasAtStart: registered.aliasAtStart };
    },

    async recordTransition(input: {
      runId: string;
      key: string;
      event: string;
      stage: Stage;
      state?: RunState;
      actor: string;
      details: Record<string, unknown>;
      snapshot?: { metrics: Record<string, unknown>; stageSeconds: Record<string, number | undefined> };
    }): Promise<void> {
      await records.recordTransition(pool, input);
    },

    /**
     * The active Ed25519 keys of the listed approvers who hold the approver role and are not
     * disabled, captured as the gate opens. Anyone else listed gets none, and cannot vote.
     */
    async approverKeys(input: { approvers: string[] }): Promise<Record<string, PublicKeyRef[]>> {
      const keys = activeKeys(pool, input.approvers, 'approver');
      // The HTTP API's server keys, under a name no principal can have: votes it signs for the approvers it authenticated.
      const server = await pool.query(`SELECT key_id, public_key FROM service_keys WHERE purpose = 'server' ORDER BY created_at, key_id`);
      return { ...(await keys), ...(server.rows.length ? { [SERVER_SIGNER]: server.rows.map((r) => ({ keyId: r.key_id as string, publicKey: r.public_key as string })) } : {}) };
    },

    /**
     * A notice of the approval gate: written to the outbox (approval_notifications) once per key,
     * then, when this worker has DACP_APPROVAL_WEBHOOK_URL, POSTed there signed with HMAC-SHA256
     * (DACP_APPROVAL_WEBHOOK_SECRET) in the X-Dacp-Signature header over "<timestamp>.<body>". A
     * webhook that stays down is recorded as failed; the gate goes on.
     */
    async notifyApprovers(input: {
      runId: string;
      key: string;
      kind: 'requested' | 'reminder' | 'escalated' | 'timed_out';
      to: string[];
      at: string;
      deadline: string;
      approvals: number;
      quorum: number;
    }): Promise<{ webhook: 'delivered' | 'failed' | 'not_configured' }> {
      const payload = {
        event: `dacp.approval.${input.kind}`,
        runId: input.runId,
        to: input.to,
        at: input.at,
        deadline: input.deadline,
        approvals: input.approvals,
        quorum: input.quorum,
        show: `dacp approval show ${input.runId}`,
      };
      const inserted = await pool.query(
        `INSERT INTO approval_notifications (run_id, idempotency_key, kind, recipients, payload) VALUES ($1, $2, $3, $4, $5)
         ON CONFLICT (idempotency_key) DO NOTHING RETURNING id`,
        [input.runId, input.key, input.kind, input.to, JSON.stringify(payload)],
      );
      const existing = await pool.query('SELECT webhook_status FROM approval_notifications WHERE idempotency_key = $1', [input.key]);
      if (!inserted.rowCount && existing.rows[0]?.webhook_status) return { webhook: existing.rows[0].webhook_status };
      const url = process.env.DACP_APPROVAL_WEBHOOK_URL;
      if (!url) {
        await pool.query(`UPDATE approval_notifications SET webhook_status = 'not_configured' WHERE idempotency_key = $1`, [input.key]);
        return { webhook: 'not_configured' };
      }
      const result = await postSigned(url, process.env.DACP_APPROVAL_WEBHOOK_SECRET ?? '', JSON.stringify(payload));
      await pool.query(
        `UPDATE approval_notifications SET webhook_status = $2, webhook_attempts = $3, webhook_error = $4, delivered_at = CASE WHEN $2 = 'delivered' THEN now() END
          WHERE idempotency_key = $1`,
        [input.key, result.ok ? 'delivered' : 'failed', result.attempts, result.error],
      );
      return { webhook: result.ok ? 'delivered' : 'failed' };
    },

    /** The run's HTML report as it stands when its gate opens, stored for the approval request to link. */
    async writeRunReport(input: { runId: string }): Promise<ArtifactRef> {
      const data = await loadRunReport(pool, store.root, input.runId);
      if (!data) throw ApplicationFailure.nonRetryable(`run ${input.runId} has no row to report on`, 'RunMissing');
      return store.put('reports', Buffer.from(runReportHtml(data)), 'html');
    },

    async recordDecision(input: { runId: string; decision: Decision; request: ApprovalRequest }): Promise<void> {
      const signed = {
        baseModel: input.request.artifacts.baseModel.sha256,
        tunedModel: input.request.artifacts.tunedModel.sha256,
        forgettingReport: input.request.artifacts.forgettingReport.sha256,
        instructReport: input.request.artifacts.instructReport.sha256,
      };
      const fresh = await records.insertDecision(pool, input.runId, input.decision, signed);
      if (!fresh) {
        const { rows } = await pool.query('SELECT decision FROM approvals WHERE run_id = $1 AND principal = $2', [
          input.runId,
          input.decision.principal,
        ]);
        if (rows[0]?.decision !== input.decision.decision) {
          throw ApplicationFailure.nonRetryable(
            `${input.decision.principal} already recorded a different decision on ${input.runId}`,
            'DecisionConflict',
          );
        }
      }
      await records.recordTransition(pool, {
        runId: input.runId,
        key: `${input.runId}:decision:${input.decision.principal}`,
        event: input.decision.decision === 'approve' ? 'approved_by' : 'rejected_by',
        stage: 'approval',
        actor: input.decision.principal,
        details: {
          comment: input.decision.comment ?? null,
          artifacts: signed,
          at: input.decision.at,
          ...(input.decision.signature ? { keyId: input.decision.signature.statement.keyId, via: input.decision.signature.statement.via } : {}),
        },
      });
    },
  };
}

/** HMAC-SHA256 of "<timestamp>.<body>", hex: what a receiver recomputes with the shared secret. */
export function webhookSignature(secret: string, timestamp: string, body: string): string {
  return createHmac('sha256', secret).update(`${timestamp}.${body}`).digest('hex');
}

/** POST with up to three tries, ten seconds each; never throws. Errors name the status, never the secret. */
async function postSigned(url: string, secret: string, body: string): Promise<{ ok: boolean; attempts: number; error: string | null }> {
  let error: string | null = null;
  for (let attempt = 1; attempt <= 3; attempt++) {
    const timestamp = String(Math.floor(Date.now() / 1000));
    try {
      const res = await fetch(url, {
        method: 'POST',
        headers: {
          'content-type': 'application/json',
          'x-dacp-timestamp': timestamp,
          ...(secret ? { 'x-dacp-signature': `sha256=${webhookSignature(secret, timestamp, body)}` } : {}),
        },
        body,
        signal: AbortSignal.timeout(10_000),
      });
      if (res.ok) return { ok: true, attempts: attempt, error: null };
      error = `HTTP ${res.status}`;
    } catch (err) {
      error = (err as Error).name === 'TimeoutError' ? 'no answer within 10s' : `cannot reach the webhook (${(err as { cause?: { code?: string } }).cause?.code ?? (err as Error).message})`;
    }
    if (attempt < 3) await new Promise((resolve) => setTimeout(resolve, 500 * attempt));
  }
  return { ok: false, attempts: 3, error };
}
