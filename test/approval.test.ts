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
import http from 'node:http';
import { webhookSignature } from '../activities/records';
import { freePort } from '../cli/devServer';
import { keyIdOf } from '../db/principals';
import type { ApprovalRequest, DecisionInput, RejectionInput } from '../schemas/pipeline';
import { candidateHashes, decisionStatement, publicKeyOf, signStatement, verifyStatement, type CandidateHashes } from '../schemas/signing';
import { approvalGate } from '../workflows/approval';
import { approvalRequestQuery, approveUpdate, rejectUpdate } from '../workflows/messages';
import { createTestDatabase, type TestDatabase } from './helpers/db';
import { sampleApprovalRequest as request } from './helpers/approvalRequest';
import { bundleWorkflows, eventually } from './helpers/temporal';

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

  describe('reminders, escalation and auto-reject, through the outbox and a signed webhook', () => {
    const HOUR = 3_600_000;
    const secret = 'webhook-shared-secret';
    let server: http.Server;
    let url: string;
    const received: { headers: http.IncomingHttpHeaders; body: string }[] = [];

    beforeAll(async () => {
      server = http.createServer((req, res) => {
        let body = '';
        req.on('data', (d) => (body += d));
        req.on('end', () => {
          received.push({ headers: req.headers, body });
          res.writeHead(204).end();
        });
      });
      await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
      url = `http://127.0.0.1:${(server.address() as { port: number }).port}/hooks/dacp`;
    });
    afterAll(async () => {
      delete process.env.DACP_APPROVAL_WEBHOOK_URL;
      delete process.env.DACP_APPROVAL_WEBHOOK_SECRET;
      await new Promise((resolve) => server?.close(resolve));
    });

    test('the request goes out, reminders go to who has not voted, escalation lets more approvers vote', async () => {
      process.env.DACP_APPROVAL_WEBHOOK_URL = url;
      process.env.DACP_APPROVAL_WEBHOOK_SECRET = secret;
      received.length = 0;
      const { runId, handle } = await openGate({ timeoutMs: 5 * HOUR, reminders: { everyMs: HOUR, escalation: { afterMs: 2.5 * HOUR, approvers: ['erin'] } } });
      await eventually(async () => ((await handle.query(approvalRequestQuery)).notices?.length === 1 ? true : undefined), 'the request notice', 30_000, 100);
      expect(await refusal(handle.executeUpdate(approveUpdate, { args: [{ principal: 'erin' }] }))).toMatch(/erin may vote on run .* only after its escalation, 150 minutes after the gate opened/);
      await handle.executeUpdate(approveUpdate, { args: [{ principal: 'bob' }] });

      await env.sleep(2.75 * HOUR);
      const view = await eventually(async () => {
        const q = await handle.query(approvalRequestQuery);
        return q.notices?.length === 4 ? q : undefined;
      }, 'two reminders and the escalation', 60_000, 200);
      expect(view.notices!.map((n) => [n.kind, n.to])).toEqual([
        ['requested', ['bob', 'carol', 'dave']],
        ['reminder', ['carol', 'dave']],
        ['reminder', ['carol', 'dave']],
        ['escalated', ['carol', 'dave', 'erin']],
      ]);
      expect(view.escalated).toBe(true);
      await handle.executeUpdate(approveUpdate, { args: [{ principal: 'erin', comment: 'escalated to me' }] });
      expect((await handle.result()).outcome).toBe('approved');

      // The outbox holds every notice; each went to the webhook, signed with the shared secret.
      const { rows } = await db.pool.query('SELECT kind, recipients, webhook_status, payload FROM approval_notifications WHERE run_id = $1 ORDER BY id', [runId]);
      expect(rows.map((r) => [r.kind, r.webhook_status])).toEqual([['requested', 'delivered'], ['reminder', 'delivered'], ['reminder', 'delivered'], ['escalated', 'delivered']]);
      expect(received).toHaveLength(4);
      for (const r of received) {
        const timestamp = String(r.headers['x-dacp-timestamp']);
        expect(r.headers['x-dacp-signature']).toBe(`sha256=${webhookSignature(secret, timestamp, r.body)}`);
        expect(r.headers['x-dacp-signature']).not.toBe(`sha256=${webhookSignature('another secret', timestamp, r.body)}`);
        expect(JSON.parse(r.body)).toMatchObject({ runId, show: `dacp approval show ${runId}` });
      }
      expect(JSON.parse(received[3]!.body)).toMatchObject({ event: 'dacp.approval.escalated', to: ['carol', 'dave', 'erin'], approvals: 1, quorum: 2 });
      expect(JSON.stringify(rows)).not.toContain(secret);
    });

    test('with no decision the gate rejects at its timeout and says so; a webhook that is down never holds it up', async () => {
      process.env.DACP_APPROVAL_WEBHOOK_URL = `http://127.0.0.1:${await freePort()}/down`;
      const { runId, handle } = await openGate({ timeoutMs: 2.5 * HOUR, reminders: { everyMs: HOUR } });
      const outcome = await handle.result();
      expect(outcome).toMatchObject({ outcome: 'rejected', reason: expect.stringMatching(/approval timed out after 9000s with 0 of 2 approvals/) });
      const { rows } = await db.pool.query('SELECT kind, webhook_status, webhook_attempts, webhook_error FROM approval_notifications WHERE run_id = $1 ORDER BY id', [runId]);
      expect(rows.map((r) => r.kind)).toEqual(['requested', 'reminder', 'reminder', 'timed_out']);
      for (const r of rows) expect(r).toMatchObject({ webhook_status: 'failed', webhook_attempts: 3, webhook_error: expect.stringMatching(/cannot reach the webhook/) });
    });
  });
});
