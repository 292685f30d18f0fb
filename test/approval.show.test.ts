import { spawn } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import path from 'node:path';
import { WorkflowNotFoundError } from '@temporalio/client';
import { ArtifactStore } from '../activities/artifacts';
import type { ApprovalView } from '../cli/approval';
import { checkQuorumReachable } from '../cli/runs';
import { insertRun } from '../db/records';
import type { InstructReport } from '../schemas/pipeline';
import { parseRunSpec, type RunSpecInput } from '../schemas/runSpec';
import { approvalGate } from '../workflows/approval';
import { approvalRequestQuery, approveUpdate } from '../workflows/messages';
import { sampleApprovalRequest } from './helpers/approvalRequest';
import { tinySpec } from './helpers/fixtures';
import { startHarness, type Harness } from './helpers/harness';
import { eventually, GiveUp } from './helpers/temporal';

const dacpBin = path.resolve(__dirname, '..', 'bin', 'dacp.js');
const HOUR = 3_600_000;

describe('checkQuorumReachable', () => {
  const spec = (approval: RunSpecInput['approval']) => parseRunSpec(tinySpec({ approval }), 'spec');

  test('counts the approvers other than the initiator', () => {
    expect(() => checkQuorumReachable(spec({ approvers: ['alice', 'bob', 'carol'], quorum: 2 }), 'alice')).not.toThrow();
    expect(() => checkQuorumReachable(spec({ approvers: ['alice', 'bob'], quorum: 2 }), 'alice')).toThrow(
      'approval.quorum is 2 but approval.approvers has only 1 approver(s) besides the initiator alice',
    );
  });
});

/**
 * The real `dacp` command (dist/, spawned) against a harness: a dev server, a fresh database and
 * in-process workers running a real tiny pipeline up to its approval gate.
 */
describe('dacp approval show and the quorum check at `run start`, through the real command', () => {
  let h: Harness;

  beforeAll(async () => {
    h = await startHarness({ inProcessGpu: true });
  }, 180_000);

  afterAll(async () => {
    await h?.stop();
  });

  /** Runs the command without blocking this process: the workers that answer it run here. */
  function dacp(args: string[], extraEnv: NodeJS.ProcessEnv = {}): Promise<{ code: number | null; stdout: string; stderr: string }> {
    const child = spawn(process.execPath, [dacpBin, ...args], { env: { ...process.env, ...h.env, ...extraEnv }, cwd: h.home });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d) => (stdout += d));
    child.stderr.on('data', (d) => (stderr += d));
    return new Promise((resolve, reject) => {
      child.once('error', reject);
      child.once('close', (code) => resolve({ code, stdout, stderr: stderr.trim() }));
    });
  }

  function writeSpec(name: string, over: Partial<RunSpecInput>): string {
    writeFileSync(path.join(h.home, name), JSON.stringify(tinySpec(over)));
    return name;
  }

  const show = async (runId: string): Promise<ApprovalView> => {
    const r = await dacp(['approval', 'show', runId, '--json']);
    if (r.code !== 0) throw new Error(`approval show ${runId} exited ${r.code}: ${r.stderr}`);
    return JSON.parse(r.stdout) as ApprovalView;
  };

  async function nothingStarted(runId: string): Promise<void> {
    await expect(h.client.workflow.getHandle(runId).describe()).rejects.toBeInstanceOf(WorkflowNotFoundError);
    const { rows } = await h.db.pool.query('SELECT count(*)::int AS n FROM runs WHERE run_id = $1', [runId]);
    expect(rows[0].n).toBe(0);
  }

  test('run start refuses a quorum that the approvers other than the initiator cannot reach, and starts nothing', async () => {
    const spec = writeSpec('self-approved.json', { approval: { approvers: ['engineer', 'approver-1'], quorum: 2, timeout: '1h' } });
    const r = await dacp(['run', 'start', '--spec', spec, '--id', 'quorum-1', '--as', 'engineer']);
    expect(r.code).toBe(2);
    expect(r.stderr.split('\n')).toHaveLength(1);
    expect(r.stderr).toMatch(/^dacp: approval\.quorum is 2 but approval\.approvers has only 1 approver\(s\) besides the initiator engineer, who cannot vote on their own run/);
    await nothingStarted('quorum-1');
  });

  test('without --as, the initiator is DACP_USER, and an approver list of only that user is refused', async () => {
    const spec = writeSpec('only-me.json', { approval: { approvers: ['approver-1'], quorum: 1, timeout: '1h' } });
    const r = await dacp(['run', 'start', '--spec', spec, '--id', 'quorum-2'], { DACP_USER: 'approver-1' });
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(/approval\.quorum is 1 but approval\.approvers has only 0 approver\(s\) besides the initiator approver-1/);
    await nothingStarted('quorum-2');
  });

  test('shows the run at its gate: hashes, reports, sample answers, votes and time left; then the closed gate; then from history', async () => {
    const spec = writeSpec('gate.json', {
      approval: { approvers: ['approver-1', 'approver-2'], quorum: 2, timeout: '1h', remindEvery: '20m', escalation: { after: '40m', approvers: ['approver-3'] } },
    });
    const started = await dacp(['run', 'start', '--spec', spec, '--id', 'show-1', '--as', 'engineer']);
    expect(started.stderr).toBe('');
    expect(started.code).toBe(0);

    const early = await dacp(['approval', 'show', 'show-1']);
    expect(early.code).toBe(2);
    expect(early.stderr).toMatch(/^dacp: run show-1 has not reached its approval gate \(stage \w+, state running\); see `dacp run status show-1`$/);
    expect((await dacp(['approval', 'show', 'no-such-run'])).stderr).toBe('dacp: no run with id no-such-run; see `dacp run list`');

    await eventually(async () => {
      const r = await dacp(['approval', 'show', 'show-1', '--json']);
      if (r.code === 0) return true;
      if (!/has not reached its approval gate \(stage \w+, state running\)/.test(r.stderr)) throw new GiveUp(r.stderr);
      return undefined;
    }, 'show-1 to reach its approval gate', 300_000, 1_000);

    const approved = await dacp(['approve', 'show-1', '--as', 'approver-1', '--comment', 'numbers look right']);
    expect({ code: approved.code, stderr: approved.stderr }).toEqual({ code: 0, stderr: '' });

    // What the gate itself holds, and the report artifact, read without the command.
    const gate = h.client.workflow.getHandle('show-1-approval');
    const held = await gate.query(approvalRequestQuery);
    const openedAt = (await gate.describe()).startTime.getTime();
    const report = await new ArtifactStore(path.join(h.home, 'artifacts')).getJson<InstructReport>(held.request.artifacts.instructReport);

    const before = Date.now();
    const view = await show('show-1');
    const after = Date.now();
    expect(view).toMatchObject({ runId: 'show-1', state: 'open', source: 'query', queryError: null, initiator: 'engineer', quorum: 2, approvals: 1 });
    expect(view.artifacts).toEqual(held.request.artifacts);
    expect(view.forgetting).toEqual(held.request.forgetting);
    expect(view.instruct).toEqual(held.request.instruct);
    expect(view.samples).toEqual(report.samples);
    expect(report.samples.length).toBeGreaterThan(0);
    expect(view.votes).toEqual([{ principal: 'approver-1', decision: 'approve', comment: 'numbers look right', at: held.decisions[0].at }]);
    expect(view.timeout).toMatchObject({ timeoutMs: HOUR, openedAt: new Date(openedAt).toISOString(), deadline: new Date(openedAt + HOUR).toISOString(), closedAt: null });
    expect(view.timeout.remainingMs).toBeLessThanOrEqual(openedAt + HOUR - before);
    expect(view.timeout.remainingMs).toBeGreaterThanOrEqual(openedAt + HOUR - after);

    // Reminders and escalation: what was sent, what comes next.
    expect(view.reminders).toMatchObject({
      everyMs: 20 * 60_000,
      escalation: { afterMs: 40 * 60_000, approvers: ['approver-3'], escalated: false },
      notices: [{ kind: 'requested', to: ['approver-1', 'approver-2'] }],
    });
    // The gate's clock: the request went out when it opened, the first reminder is due 20 minutes later.
    expect(Date.parse(view.reminders!.nextReminderAt!)).toBe(Date.parse(view.reminders!.notices[0]!.at) + 20 * 60_000);
    expect(Math.abs(Date.parse(view.reminders!.notices[0]!.at) - openedAt)).toBeLessThan(5_000);

    const text = await dacp(['approval', 'show', 'show-1']);
    expect(text.code).toBe(0);
    expect(text.stdout).toMatch(/reminders and escalation\n  a reminder every 20m 0s to approvers who have not voted; next at \S+\n  escalation to approver-3 after 40m 0s: not yet\n  at the deadline the gate rejects the run/);
    expect(text.stdout).toMatch(/ requested to approver-1, approver-2/);
    const status = await dacp(['run', 'status', 'show-1']);
    expect(status.stdout).toMatch(/approval notices {4}requested \S+Z/);
    expect(text.stdout).toMatch(/^approval gate of run show-1: open, 1 of 2 approvals; time left \d+m \d+s \(until /);
    const a = held.request.artifacts;
    for (const sha of [a.baseModel.sha256, a.adaptedModel.sha256, a.tunedModel.sha256, a.forgettingReport.sha256, ...a.datasets.map((d) => d.sha256)]) {
      expect(text.stdout).toContain(sha);
    }
    expect(text.stdout).toContain(`budget at most ${(held.request.forgetting.budgets.maxGeneralRegression * 100).toFixed(1)} %`);
    expect(text.stdout).toContain(`prompt     ${JSON.stringify(report.samples[0].prompt)}`);
    expect(text.stdout).toContain(`expected   ${JSON.stringify(report.samples[0].expected)}`);
    expect(text.stdout).toContain(`generated  ${JSON.stringify(report.samples[0].generated)}`);
    expect(text.stdout).toContain(`approver-1  approve  ${held.decisions[0].at}  "numbers look right"`);

    // A gate of its own, open with one vote, whose report artifact is not in this home.
    const bare = await openBareGate(h, 'bare-1');
    const carol = await bare.executeUpdate(approveUpdate, { args: [{ principal: 'carol' }] });

    // Closed: the gate's outcome, both votes, no time left.
    expect((await dacp(['reject', 'show-1', '--as', 'approver-2', '--reason', 'general perplexity too close to budget'])).code).toBe(0);
    await gate.result();
    const closed = await show('show-1');
    expect(closed).toMatchObject({ state: 'rejected', source: 'query', approvals: 1 });
    expect(closed.reason).toMatch(/^rejected by approver-2: general perplexity too close to budget/);
    expect(closed.votes.map((v) => [v.principal, v.decision])).toEqual([
      ['approver-1', 'approve'],
      ['approver-2', 'reject'],
    ]);
    expect(closed.timeout.remainingMs).toBeNull();
    expect(closed.timeout.closedAt).not.toBeNull();
    expect((await dacp(['approval', 'show', 'show-1'])).stdout).toMatch(/^approval gate of run show-1: closed, rejected \(rejected by approver-2/);

    // No worker: the command says so and reads the same from the gates' histories.
    await h.stopWorkers();
    const fromHistory = await show('show-1');
    expect(fromHistory.source).toBe('history');
    expect(fromHistory.queryError).toBeTruthy();
    expect({ ...fromHistory, source: 'query', queryError: null }).toEqual(closed);

    const bareView = await show('bare-1');
    expect(bareView).toMatchObject({ state: 'open', source: 'history', approvals: 1, quorum: 2, samples: null });
    expect(bareView.votes).toEqual([{ principal: 'carol', decision: 'approve', at: carol.at, comment: null }]);
    expect(bareView.samplesError).toMatch(/artifact .* is missing/);
    expect(bareView.timeout.remainingMs).toBeGreaterThan(0);
    const bareText = await dacp(['approval', 'show', 'bare-1']);
    expect(bareText.stdout).toMatch(/^approval gate of run bare-1: open, 1 of 2 approvals; time left \d+m \d+s/);
    expect(bareText.stdout).toMatch(/\nno worker answered the gate's query \(no answer within 5s: .+\); read from the gate's history instead\n/);
    expect(bareText.stdout).toMatch(/sample answers\n {2}unavailable: artifact .* is missing/);
  });
});

/** An approval gate started on its own (no pipeline), with artifact references this home does not hold. */
async function openBareGate(h: Harness, runId: string) {
  await insertRun(h.db.pool, { runId, workflowId: runId, spec: {}, specSha256: 'x', initiator: 'alice' });
  const request = sampleApprovalRequest(runId, { approvers: ['bob', 'carol'], quorum: 2, timeoutMs: HOUR });
  return h.client.workflow.start(approvalGate, { taskQueue: 'dacp-control', workflowId: `${runId}-approval`, args: [request] });
}
