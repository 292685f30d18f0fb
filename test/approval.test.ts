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
import { createHash } from 'node:crypto';
import { keyIdOf } from '../db/principals';
import type { ApprovalRequest, DecisionInput, RejectionInput } from '../schemas/pipeline';
import { candidateHashes, decisionStatement, publicKeyOf, signStatement, verifyStatement, type CandidateHashes } from '../schemas/signing';
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

  describe('signed votes (gates since signed decisions)', () => {
    const keyOf = (seed: number) => {
      const privateKey = createHash('sha256').update(`test key ${seed}`).digest('hex');
      const publicKey = publicKeyOf(privateKey);
      return { privateKey, publicKey, keyId: keyIdOf(publicKey) };
    };
    const bob = keyOf(1);
    const carol = keyOf(2);
    const alice = keyOf(3);
    // dave is listed as an approver but held no active key when the gate opened.
    const signing = { keys: { bob: [bob], carol: [carol], alice: [alice] } };

    // The time-skipping server's clock runs ahead of the machine's once a test has skipped time.
    let now = Date.now();
    beforeEach(async () => {
      now = await env.currentTimeMs();
    });

    function signed(
      runId: string,
      o: { principal: string; key: { privateKey: string; keyId: string }; decision?: 'approve' | 'reject'; comment?: string; reason?: string; candidate?: CandidateHashes; signedAt?: string },
    ) {
      const decision = o.decision ?? 'approve';
      const unsigned = {
        keyId: o.key.keyId,
        signedAt: o.signedAt ?? new Date(now).toISOString(),
        candidate: o.candidate ?? candidateHashes(request(runId).artifacts),
        via: 'cli' as const,
      };
      const statement = decisionStatement({ runId, decision, principal: o.principal, comment: o.comment, reason: o.reason, signature: unsigned });
      return {
        principal: o.principal,
        ...(o.comment ? { comment: o.comment } : {}),
        ...(o.reason ? { reason: o.reason } : {}),
        signature: { ...unsigned, signature: signStatement(statement, o.key.privateKey) },
      };
    }

    test('two signed approvals approve, and each vote is recorded with its signed statement', async () => {
      const { runId, handle } = await openGate({ signing });
      await handle.executeUpdate(approveUpdate, { args: [signed(runId, { principal: 'bob', key: bob, comment: 'hashes checked' })] });
      await handle.executeUpdate(approveUpdate, { args: [signed(runId, { principal: 'carol', key: carol })] });
      expect((await handle.result()).outcome).toBe('approved');
      const { rows } = await db.pool.query('SELECT principal, signature FROM approvals WHERE run_id = $1 ORDER BY principal', [runId]);
      expect(rows.map((r) => r.principal)).toEqual(['bob', 'carol']);
      expect(rows[0].signature).toMatchObject({ publicKey: bob.publicKey, statement: { runId, principal: 'bob', decision: 'approve', comment: 'hashes checked', keyId: bob.keyId } });
      expect(verifyStatement(rows[0].signature.statement, rows[0].signature.signature, bob.publicKey)).toBe(true);
    });

    test('refused: no signature, a stranger, an approver without a key, another key, a bad signature, other hashes, an old signature, the initiator, a second vote', async () => {
      const { runId, handle } = await openGate({ signing });
      const approve = (input: unknown) => refusal(handle.executeUpdate(approveUpdate, { args: [input as DecisionInput] }));
      expect(await approve({ principal: 'bob' })).toMatch(/must be signed/);
      expect(await approve(signed(runId, { principal: 'mallory', key: keyOf(9) }))).toMatch(/mallory is not an approver/);
      expect(await approve(signed(runId, { principal: 'dave', key: keyOf(4) }))).toMatch(/dave had no active key and approver role when the gate/);
      expect(await approve(signed(runId, { principal: 'bob', key: carol }))).toMatch(new RegExp(`signed with key ${carol.keyId}, which is not one of bob's keys`));
      const forged = signed(runId, { principal: 'bob', key: bob, comment: 'ok' });
      expect(await approve({ ...forged, comment: 'ok, and ship it tonight' })).toMatch(/signature on bob's vote does not verify/);
      const otherCandidate = { ...candidateHashes(request(runId).artifacts), tunedModel: '9'.repeat(64) };
      expect(await approve(signed(runId, { principal: 'bob', key: bob, candidate: otherCandidate }))).toMatch(/bound to other artifacts .*tunedModel 999999999999 is not the gate's 333333333333/);
      const otherRun = signed(`${runId}-elsewhere`, { principal: 'bob', key: bob });
      expect(await approve(otherRun)).toMatch(/does not verify/);
      expect(await approve(signed(runId, { principal: 'bob', key: bob, signedAt: new Date(now - 3_600_000).toISOString() }))).toMatch(/more than 10 minutes from the gate's clock/);
      expect(await approve(signed(runId, { principal: 'alice', key: alice }))).toMatch(/separation of duties/);
      // A signature made for an approval does not reject.
      const flipped = signed(runId, { principal: 'bob', key: bob, decision: 'approve' });
      expect(await refusal(handle.executeUpdate(rejectUpdate, { args: [{ ...flipped, reason: 'no' }] }))).toMatch(/does not verify/);

      await handle.executeUpdate(approveUpdate, { args: [signed(runId, { principal: 'bob', key: bob })] });
      expect(await approve(signed(runId, { principal: 'bob', key: bob }))).toMatch(/bob has already decided/);
      const view = await handle.query(approvalRequestQuery);
      expect(view.decisions.map((d) => d.principal)).toEqual(['bob']);
      // Nothing refused reached the records.
      expect((await db.pool.query('SELECT principal FROM approvals WHERE run_id = $1', [runId])).rows).toEqual([{ principal: 'bob' }]);
    });

    test('a signed rejection rejects, with its reason under the signature', async () => {
      const { runId, handle } = await openGate({ signing });
      await handle.executeUpdate(rejectUpdate, { args: [signed(runId, { principal: 'carol', key: carol, decision: 'reject', reason: 'domain gain too small' }) as RejectionInput] });
      const outcome = await handle.result();
      expect(outcome).toMatchObject({ outcome: 'rejected', reason: expect.stringMatching(/domain gain too small/) });
      expect(outcome.decisions[0].signature?.statement).toMatchObject({ decision: 'reject', reason: 'domain gain too small' });
    });
  });
});
