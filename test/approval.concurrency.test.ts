import { mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { Client, WorkflowFailedError, WorkflowUpdateFailedError, type WorkflowHandle } from '@temporalio/client';
import { CancelledFailure, WorkflowNotFoundError } from '@temporalio/common';
import { temporal } from '@temporalio/proto';
import { TestWorkflowEnvironment } from '@temporalio/testing';
import { DefaultLogger, Runtime, Worker, type WorkflowBundleWithSourceMap } from '@temporalio/worker';
import { createActivities } from '../activities';
import { ArtifactStore } from '../activities/artifacts';
import { ensureTool, TEMPORAL_TEST_SERVER } from '../cli/temporalTools';
import { migrate } from '../db/migrate';
import { insertRun } from '../db/records';
import type { ApprovalOutcome, ApprovalRequest, Decision } from '../schemas/pipeline';
import { approvalGate, VOTES_COUNT_ON_ACCEPTANCE } from '../workflows/approval';
import { approvalRequestQuery, approveUpdate, rejectUpdate } from '../workflows/messages';
import { createTestDatabase, type TestDatabase } from './helpers/db';
import { sampleApprovalRequest } from './helpers/approvalRequest';
import { bundleWorkflows, eventually } from './helpers/temporal';

/** Three approvers besides the initiator, one approval decides. */
const request = (runId: string, over: Partial<ApprovalRequest>): ApprovalRequest =>
  sampleApprovalRequest(runId, { approvers: ['bob', 'carol', 'dave'], quorum: 1, ...over });

Runtime.install({ logger: new DefaultLogger('WARN') });

const EventType = temporal.api.enums.v1.EventType;

type Gate = WorkflowHandle<typeof approvalGate>;
interface Vote {
  principal: string;
  decision: 'approve' | 'reject';
}
/** What the gate did with one vote: accepted (the decision it returned) or refused (why). */
type Settled = { vote: Vote; accepted: Decision; refused?: undefined } | { vote: Vote; refused: string; accepted?: undefined };

const ROUNDS = 10;

describe('concurrent votes at the approval gate (time-skipping test server, real Postgres)', () => {
  let env: TestWorkflowEnvironment;
  /**
   * A plain client: the environment's own client skips time while it awaits a result, which would
   * fire the timeouts of the other gates still waiting for their votes.
   */
  let client: Client;
  let db: TestDatabase;
  let bundle: WorkflowBundleWithSourceMap;
  let worker: Worker;
  let running: Promise<void>;
  let artifacts: string;
  let counter = 0;
  /** Runs whose votes are held before they are recorded, until the test releases them. */
  const held = new Map<string, { released: Promise<void>; release: () => void }>();

  beforeAll(async () => {
    db = await createTestDatabase();
    await migrate(db.pool);
    artifacts = mkdtempSync(path.join(os.tmpdir(), 'dacp-artifacts-'));
    env = await TestWorkflowEnvironment.createTimeSkipping({
      server: { executable: { type: 'existing-path', path: ensureTool(TEMPORAL_TEST_SERVER) } },
    });
    client = new Client({ connection: env.connection });
    bundle = await bundleWorkflows();
    const real = createActivities({ pool: db.pool, store: new ArtifactStore(artifacts) });
    worker = await Worker.create({
      connection: env.nativeConnection,
      taskQueue: 'dacp-control',
      workflowBundle: bundle,
      activities: {
        ...real,
        recordDecision: async (input: Parameters<typeof real.recordDecision>[0]) => {
          await held.get(input.runId)?.released;
          return real.recordDecision(input);
        },
      },
    });
    running = worker.run();
  });

  afterAll(async () => {
    for (const h of held.values()) h.release();
    worker?.shutdown();
    await running;
    await env?.teardown();
    await db?.drop();
    if (artifacts) rmSync(artifacts, { recursive: true, force: true });
  });

  async function openGate(over: Partial<ApprovalRequest> = {}, o: { hold?: boolean } = {}): Promise<{ runId: string; gate: Gate }> {
    const runId = `concurrency-${++counter}`;
    await insertRun(db.pool, { runId, workflowId: runId, spec: {}, specSha256: 'x', initiator: 'alice' });
    if (o.hold) {
      let release = () => undefined as void;
      const released = new Promise<void>((resolve) => (release = resolve));
      held.set(runId, { released, release });
    }
    const gate = await client.workflow.start(approvalGate, { taskQueue: 'dacp-control', workflowId: `${runId}-approval`, args: [request(runId, over)] });
    return { runId, gate };
  }

  async function cast(gate: Gate, vote: Vote): Promise<Settled> {
    try {
      const accepted =
        vote.decision === 'approve'
          ? await gate.executeUpdate(approveUpdate, { args: [{ principal: vote.principal }] })
          : await gate.executeUpdate(rejectUpdate, { args: [{ principal: vote.principal, reason: 'not convinced' }] });
      return { vote, accepted };
    } catch (err) {
      // Refused by the validator, or the gate had already finished when the vote reached it.
      if (err instanceof WorkflowUpdateFailedError) return { vote, refused: (err.cause as Error).message };
      if (err instanceof WorkflowNotFoundError) return { vote, refused: err.message };
      throw err;
    }
  }

  const recorded = async (runId: string) =>
    (await db.pool.query('SELECT principal, decision FROM approvals WHERE run_id = $1 ORDER BY principal', [runId])).rows as Vote[];

  const audited = async (runId: string) =>
    (await db.pool.query('SELECT event, actor FROM audit_log WHERE run_id = $1 ORDER BY id', [runId])).rows as { event: string; actor: string }[];

  const byPrincipal = (a: { principal: string }, b: { principal: string }) => a.principal.localeCompare(b.principal);

  /**
   * The gate's one outcome agrees with the votes it accepted, and so do the records: every accepted
   * vote, and no refused one, is in the approvals table and the audit log, before the outcome.
   */
  async function expectConsistent(runId: string, outcome: ApprovalOutcome, settled: Settled[]): Promise<void> {
    const accepted = settled.flatMap((s) => (s.accepted ? [s.accepted] : []));
    const refused = settled.filter((s) => s.refused !== undefined);
    expect([...outcome.decisions].sort(byPrincipal)).toEqual([...accepted].sort(byPrincipal));
    expect(outcome.outcome).toBe(accepted.some((d) => d.decision === 'reject') ? 'rejected' : 'approved');
    const rows = await recorded(runId);
    expect(rows).toEqual(accepted.map((d) => ({ principal: d.principal, decision: d.decision })).sort(byPrincipal));
    for (const r of refused) expect(rows.map((row) => row.principal)).not.toContain(r.vote.principal);
    const events = await audited(runId);
    expect(events.slice(0, -1).map((e) => e.actor).sort()).toEqual(accepted.map((d) => d.principal).sort());
    expect(events[events.length - 1]).toEqual({ event: `approval_${outcome.outcome}`, actor: 'dacp' });
  }

  /** The gate's history, as the server keeps it, replays against the workflow code and took the new path. */
  async function expectReplays(gate: Gate): Promise<void> {
    const history = await gate.fetchHistory();
    const markers = (history.events ?? []).filter((e) => e.eventType === EventType.EVENT_TYPE_MARKER_RECORDED);
    const patchIds = markers.map((e) => Buffer.from(e.markerRecordedEventAttributes?.details?.['patch-data']?.payloads?.[0]?.data ?? []).toString('utf8'));
    expect(patchIds.join(' ')).toContain(VOTES_COUNT_ON_ACCEPTANCE);
    await expect(Worker.runReplayHistory({ workflowBundle: bundle }, history, gate.workflowId)).resolves.toBeUndefined();
  }

  test(`an approve and a reject at the same moment give exactly one outcome, recorded as counted (${ROUNDS} gates)`, async () => {
    const winners: string[] = [];
    await Promise.all(
      Array.from({ length: ROUNDS }, async (_, round) => {
        const { runId, gate } = await openGate({ quorum: 1 });
        const votes: Vote[] = [
          { principal: 'bob', decision: 'approve' },
          { principal: 'carol', decision: 'reject' },
        ];
        // Alternate which vote is sent first, so that either may win.
        if (round % 2) votes.reverse();
        const settled = await Promise.all(votes.map((v) => cast(gate, v)));
        const outcome = await gate.result();
        expect(settled.filter((s) => s.accepted)).toHaveLength(1);
        for (const s of settled) if (s.refused) expect(s.refused).toMatch(/not awaiting approval any more|already completed/);
        await expectConsistent(runId, outcome, settled);
        await expectReplays(gate);
        winners.push(outcome.outcome);
      }),
    );
    expect(winners).toHaveLength(ROUNDS);
  });

  test(`two approvals at the same moment with quorum 1: one counts, the other is refused and not recorded (${ROUNDS} gates)`, async () => {
    await Promise.all(
      Array.from({ length: ROUNDS }, async () => {
        const { runId, gate } = await openGate({ quorum: 1 });
        const settled = await Promise.all([cast(gate, { principal: 'bob', decision: 'approve' }), cast(gate, { principal: 'carol', decision: 'approve' })]);
        const outcome = await gate.result();
        expect(settled.filter((s) => s.accepted)).toHaveLength(1);
        expect(outcome.outcome).toBe('approved');
        expect(outcome.decisions).toHaveLength(1);
        await expectConsistent(runId, outcome, settled);
        await expectReplays(gate);
      }),
    );
  });

  test(`three approvals at the same moment with quorum 2: exactly two count (${ROUNDS} gates)`, async () => {
    await Promise.all(
      Array.from({ length: ROUNDS }, async () => {
        const { runId, gate } = await openGate({ quorum: 2 });
        const settled = await Promise.all(['bob', 'carol', 'dave'].map((p) => cast(gate, { principal: p, decision: 'approve' })));
        const outcome = await gate.result();
        expect(settled.filter((s) => s.accepted)).toHaveLength(2);
        expect(outcome.outcome).toBe('approved');
        await expectConsistent(runId, outcome, settled);
        await expectReplays(gate);
      }),
    );
  });

  test('a vote counts when it is accepted, before it is recorded; the deciding vote closes the gate at once', async () => {
    const { runId, gate } = await openGate({ quorum: 2 }, { hold: true });
    await gate.startUpdate(approveUpdate, { args: [{ principal: 'bob' }], waitForStage: 'ACCEPTED' });
    let view = await gate.query(approvalRequestQuery);
    expect(view.decisions.map((d) => d.principal)).toEqual(['bob']);
    expect(view.open).toBe(true);
    expect(await recorded(runId)).toEqual([]);

    const carol = await gate.startUpdate(approveUpdate, { args: [{ principal: 'carol' }], waitForStage: 'ACCEPTED' });
    view = await gate.query(approvalRequestQuery);
    expect(view.decisions.map((d) => d.principal)).toEqual(['bob', 'carol']);
    expect(view.open).toBe(false);
    const late = await cast(gate, { principal: 'dave', decision: 'reject' });
    expect(late.refused).toMatch(/not awaiting approval any more \(quorum of 2 reached\)/);

    held.get(runId)!.release();
    expect((await carol.result()).principal).toBe('carol');
    const outcome = await gate.result();
    expect(outcome.outcome).toBe('approved');
    await expectConsistent(runId, outcome, [{ vote: { principal: 'bob', decision: 'approve' }, accepted: outcome.decisions[0] }, { vote: { principal: 'carol', decision: 'approve' }, accepted: outcome.decisions[1] }, late]);
    await expectReplays(gate);
  });

  test('a gate cancelled while a vote is being recorded still records the vote, and refuses later ones', async () => {
    const { runId, gate } = await openGate({ quorum: 2 }, { hold: true });
    await gate.startUpdate(approveUpdate, { args: [{ principal: 'bob' }], waitForStage: 'ACCEPTED' });
    await gate.cancel();
    // Wait until the gate has handled the cancellation (a workflow task completed after the request).
    await eventually(async () => {
      const types = ((await gate.fetchHistory()).events ?? []).map((e) => e.eventType);
      const requested = types.indexOf(EventType.EVENT_TYPE_WORKFLOW_EXECUTION_CANCEL_REQUESTED);
      return requested >= 0 && types.slice(requested).includes(EventType.EVENT_TYPE_WORKFLOW_TASK_COMPLETED) ? true : undefined;
    }, 'the gate to handle its cancellation', 30_000, 100);
    const late = await cast(gate, { principal: 'carol', decision: 'approve' });
    expect(late.refused).toMatch(/not awaiting approval any more \(the run was cancelled\)/);

    held.get(runId)!.release();
    const ended = await gate.result().then(
      () => new Error('the cancelled gate completed'),
      (err: unknown) => err,
    );
    expect(ended).toBeInstanceOf(WorkflowFailedError);
    expect((ended as WorkflowFailedError).cause).toBeInstanceOf(CancelledFailure);
    expect(await recorded(runId)).toEqual([{ principal: 'bob', decision: 'approve' }]);
    expect((await audited(runId)).map((e) => e.event)).toEqual(['approved_by']);
    const types = ((await gate.fetchHistory()).events ?? []).map((e) => e.eventType);
    expect(types).not.toContain(EventType.EVENT_TYPE_ACTIVITY_TASK_CANCEL_REQUESTED);
    await expectReplays(gate);
  });
});
