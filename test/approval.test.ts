import { Runtime, DefaultLogger, Worker } from '@temporalio/worker';
import { TestWorkflowEnvironment } from '@temporalio/testing';
import { WorkflowUpdateFailedError } from '@temporalio/client';
import { mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { createActivities } from '../activities';
import { ArtifactStore } from '../activities/artifacts';
import { ensureTool, TEMPORAL_TEST_SERVER } from '../cli/temporalTools';
import { migrate } from '../db/migrate';
import { insertRun } from '../db/records';
import type { ApprovalRequest } from '../schemas/pipeline';
import { approvalGate } from '../workflows/approval';
import { approvalRequestQuery, approveUpdate, rejectUpdate } from '../workflows/messages';
import { createTestDatabase, type TestDatabase } from './helpers/db';
import { sampleApprovalRequest as request } from './helpers/approvalRequest';
import { bundleWorkflows } from './helpers/temporal';

Runtime.install({ logger: new DefaultLogger('WARN') });


describe('approval gate (time-skipping test server, real Postgres)', () => {
  let env: TestWorkflowEnvironment;
  let db: TestDatabase;
  let worker: Worker;
  let running: Promise<void>;
  let artifacts: string;
  let counter = 0;

  beforeAll(async () => {
    db = await createTestDatabase();
    await migrate(db.pool);
    artifacts = mkdtempSync(path.join(os.tmpdir(), 'dacp-artifacts-'));
    env = await TestWorkflowEnvironment.createTimeSkipping({
      server: { executable: { type: 'existing-path', path: ensureTool(TEMPORAL_TEST_SERVER) } },
    });
    worker = await Worker.create({
      connection: env.nativeConnection,
      taskQueue: 'dacp-control',
      workflowBundle: await bundleWorkflows(),
      activities: createActivities({ pool: db.pool, store: new ArtifactStore(artifacts) }),
    });
    running = worker.run();
  });

  afterAll(async () => {
    worker?.shutdown();
    await running;
    await env?.teardown();
    await db?.drop();
    rmSync(artifacts, { recursive: true, force: true });
  });

  async function openGate(over: Partial<ApprovalRequest> = {}) {
    const runId = `approval-test-${++counter}`;
    await insertRun(db.pool, { runId, workflowId: runId, spec: {}, specSha256: 'x', initiator: 'alice' });
    const handle = await env.client.workflow.start(approvalGate, {
      taskQueue: 'dacp-control',
      workflowId: `${runId}-approval`,
      args: [request(runId, over)],
    });
    return { runId, handle };
  }

  async function refusal(promise: Promise<unknown>): Promise<string> {
    try {
      await promise;
    } catch (err) {
      expect(err).toBeInstanceOf(WorkflowUpdateFailedError);
      return ((err as WorkflowUpdateFailedError).cause as Error).message;
    }
    throw new Error('expected the update to be refused');
  }

  test('quorum: one approval leaves the gate open, the second approves', async () => {
    const { runId, handle } = await openGate();
    const first = await handle.executeUpdate(approveUpdate, { args: [{ principal: 'bob', comment: 'looks good' }] });
    expect(first).toMatchObject({ principal: 'bob', decision: 'approve', comment: 'looks good' });
    const view = await handle.query(approvalRequestQuery);
    expect(view.open).toBe(true);
    expect(view.decisions).toHaveLength(1);
    await handle.executeUpdate(approveUpdate, { args: [{ principal: 'carol' }] });
    const outcome = await handle.result();
    expect(outcome.outcome).toBe('approved');
    expect(outcome.decisions.map((d) => d.principal)).toEqual(['bob', 'carol']);
    const { rows } = await db.pool.query('SELECT principal, decision FROM approvals WHERE run_id = $1 ORDER BY id', [runId]);
    expect(rows).toEqual([
      { principal: 'bob', decision: 'approve' },
      { principal: 'carol', decision: 'approve' },
    ]);
  });

  test('the initiator cannot approve their own run, even when listed as an approver', async () => {
    const { runId, handle } = await openGate();
    const message = await refusal(handle.executeUpdate(approveUpdate, { args: [{ principal: 'alice' }] }));
    expect(message).toMatch(/alice started run .* \(separation of duties\)/);
    const { rows } = await db.pool.query('SELECT count(*)::int AS n FROM approvals WHERE run_id = $1', [runId]);
    expect(rows[0].n).toBe(0);
  });

  test('a principal who is not an approver is refused', async () => {
    const { handle } = await openGate();
    const message = await refusal(handle.executeUpdate(approveUpdate, { args: [{ principal: 'mallory' }] }));
    expect(message).toMatch(/mallory is not an approver/);
    expect((await handle.query(approvalRequestQuery)).decisions).toHaveLength(0);
  });

  test('an approver votes once', async () => {
    const { handle } = await openGate();
    await handle.executeUpdate(approveUpdate, { args: [{ principal: 'bob' }] });
    const message = await refusal(handle.executeUpdate(approveUpdate, { args: [{ principal: 'bob' }] }));
    expect(message).toMatch(/bob has already decided/);
    const again = await refusal(handle.executeUpdate(rejectUpdate, { args: [{ principal: 'bob', reason: 'changed my mind' }] }));
    expect(again).toMatch(/bob has already decided/);
    expect((await handle.query(approvalRequestQuery)).decisions).toHaveLength(1);
  });

  test('malformed decisions are refused with the field named', async () => {
    const { handle } = await openGate();
    const noReason = await refusal(handle.executeUpdate(rejectUpdate, { args: [{ principal: 'bob', reason: '' }] }));
    expect(noReason).toMatch(/reason: give a reason/);
    const badPrincipal = await refusal(handle.executeUpdate(approveUpdate, { args: [{ principal: 'x y;drop' }] }));
    expect(badPrincipal).toMatch(/principal/);
  });

  test('one rejection rejects the run with the reason', async () => {
    const { runId, handle } = await openGate();
    await handle.executeUpdate(approveUpdate, { args: [{ principal: 'bob' }] });
    await handle.executeUpdate(rejectUpdate, { args: [{ principal: 'dave', reason: 'general perplexity too close to budget' }] });
    const outcome = await handle.result();
    expect(outcome.outcome).toBe('rejected');
    expect(outcome.reason).toMatch(/rejected by dave: general perplexity too close to budget/);
    const { rows } = await db.pool.query("SELECT event FROM audit_log WHERE run_id = $1 ORDER BY id", [runId]);
    expect(rows.map((r) => r.event)).toEqual(['approved_by', 'rejected_by', 'approval_rejected']);
  });

  test('no quorum before the timeout rejects the run', async () => {
    const { handle } = await openGate({ timeoutMs: 24 * 3_600_000 });
    await handle.executeUpdate(approveUpdate, { args: [{ principal: 'bob' }] });
    // The time-skipping server jumps the 24 h timer while we wait for the result.
    const outcome = await handle.result();
    expect(outcome.outcome).toBe('rejected');
    expect(outcome.reason).toMatch(/timed out after 86400s with 1 of 2 approvals/);
  });

  test('a closed gate refuses late votes', async () => {
    const { handle } = await openGate({ quorum: 1 });
    await handle.executeUpdate(approveUpdate, { args: [{ principal: 'bob' }] });
    await handle.result();
    await expect(handle.executeUpdate(approveUpdate, { args: [{ principal: 'carol' }] })).rejects.toThrow();
  });
});
