import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { existsSync } from 'node:fs';
import path from 'node:path';
import { DefaultLogger, Runtime } from '@temporalio/worker';
import { exportAudit, verifyAudit, type AuditBundle } from '../cli/audit';
import { freePort } from '../cli/devServer';
import { runStatus, startRun } from '../cli/runs';
import type { PipelineResult, RunStatus } from '../schemas/pipeline';
import { parseRunSpec } from '../schemas/runSpec';
import { tinySpec } from './helpers/fixtures';
import { startHarness, type Harness } from './helpers/harness';
import { eventually, GiveUp } from './helpers/temporal';

Runtime.install({ logger: new DefaultLogger('WARN') });

const root = path.resolve(__dirname, '..');
const dacpBin = path.join(root, 'bin', 'dacp.js');
const schemathesis = path.join(root, '.tools', 'schemathesis', 'bin', 'schemathesis');

/**
 * dacp's HTTP API, as `dacp serve --api-only` answers it to people and tools with bearer tokens:
 * runs, run detail, the report, and decisions signed by the server for the approver it
 * authenticated. Checked against its own OpenAPI description with schemathesis.
 */
describe('the HTTP API: bearer tokens, runs, reports, decisions signed by the server', () => {
  let h: Harness;
  let server: ChildProcess;
  let base: string;
  const tokens: Record<string, string> = {};

  const dacp = (...args: string[]) => {
    const r = spawnSync(process.execPath, [dacpBin, ...args], { env: { ...process.env, ...h.env }, encoding: 'utf8' });
    return { code: r.status, stdout: r.stdout, stderr: r.stderr.trim() };
  };
  const call = (method: string, url: string, o: { token?: string; body?: unknown } = {}) =>
    fetch(`${base}${url}`, {
      method,
      headers: { ...(o.token ? { authorization: `Bearer ${o.token}` } : {}), ...(o.body !== undefined ? { 'content-type': 'application/json' } : {}) },
      ...(o.body !== undefined ? { body: JSON.stringify(o.body) } : {}),
    });
  const awaitingApproval = (runId: string) =>
    eventually<RunStatus>(async () => {
      const s = await runStatus(h.runs, runId);
      if (s.state === 'failed') throw new GiveUp(`run failed: ${String(s.metrics.error)}`);
      return s.state === 'awaiting_approval' ? s : undefined;
    }, `${runId} to await approval`, 300_000, 500);

  beforeAll(async () => {
    h = await startHarness({ inProcessGpu: true });
    for (const who of ['approver-1', 'approver-2', 'auditor']) {
      const created = dacp('tokens', 'create', '--as', who, '--label', 'test', '--json');
      expect(created.stderr).toBe('');
      tokens[who] = (JSON.parse(created.stdout) as { token: string }).token;
    }
    const port = await freePort();
    base = `http://127.0.0.1:${port}`;
    server = spawn(process.execPath, [dacpBin, 'serve', '--api-only', '--port', String(port)], { env: { ...process.env, ...h.env }, stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    server.stdout!.on('data', (d) => (out += d));
    server.stderr!.on('data', (d) => (out += d));
    await eventually(async () => (out.includes('listening') ? true : undefined), `dacp serve --api-only (output: ${out})`, 60_000, 100);
  }, 240_000);

  afterAll(async () => {
    server?.kill('SIGTERM');
    await h?.stop();
  });

  test('tokens are shown once and stored hashed; no token, a wrong one or a revoked one gets 401', async () => {
    const { rows } = await h.db.pool.query('SELECT principal, token_sha256 FROM api_tokens ORDER BY principal');
    expect(rows.map((r) => r.principal)).toEqual(['approver-1', 'approver-2', 'auditor']);
    expect(JSON.stringify(rows)).not.toContain(tokens.auditor!.slice(5));
    expect((await call('GET', '/api/v1/runs')).status).toBe(401);
    const wrong = await call('GET', '/api/v1/runs', { token: `dacp_${'x'.repeat(43)}` });
    expect(wrong.status).toBe(401);
    expect(wrong.headers.get('www-authenticate')).toMatch(/Bearer/);
    expect(await (await call('GET', '/api/v1/me', { token: tokens.auditor })).json()).toEqual({ principal: 'auditor', roles: ['auditor'] });

    const spare = JSON.parse(dacp('tokens', 'create', '--as', 'approver-2', '--json').stdout) as { token: string; tokenId: string };
    expect((await call('GET', '/api/v1/me', { token: spare.token })).status).toBe(200);
    expect(dacp('tokens', 'revoke', spare.tokenId, '--as', 'approver-2').code).toBe(0);
    expect((await call('GET', '/api/v1/me', { token: spare.token })).status).toBe(401);
    // Only the principal, with its own key, creates its tokens.
    expect(dacp('tokens', 'create', '--as', 'nobody').stderr).toMatch(/nobody is not a registered principal/);
  });

  test('list, detail and report; an approval signed by the server for the approver it authenticated; refusals', async () => {
    const runId = await startRun(h.runs, { spec: parseRunSpec(tinySpec()), baseDir: h.home, runId: 'api-1', initiator: 'engineer' });
    await awaitingApproval(runId);

    const list = (await (await call('GET', '/api/v1/runs', { token: tokens.auditor })).json()) as { runs: { runId: string; state: string }[] };
    expect(list.runs.find((r) => r.runId === runId)).toMatchObject({ state: 'awaiting_approval' });
    const detail = (await (await call('GET', `/api/v1/runs/${runId}`, { token: tokens.auditor })).json()) as Record<string, unknown>;
    expect(detail).toMatchObject({ runId, state: 'awaiting_approval', stage: 'approval', initiator: 'engineer', votes: [] });
    const report = await call('GET', `/api/v1/runs/${runId}/report`, { token: tokens.auditor });
    expect(report.headers.get('content-type')).toMatch(/^text\/html/);
    expect(await report.text()).toMatch(/^<!doctype html>[\s\S]*dacp run api-1/);
    expect((await call('GET', '/api/v1/runs/no-such-run', { token: tokens.auditor })).status).toBe(404);

    // Roles and bodies are checked before anything reaches the gate.
    const forbidden = await call('POST', `/api/v1/runs/${runId}/approve`, { token: tokens.auditor, body: {} });
    expect(forbidden.status).toBe(403);
    expect(((await forbidden.json()) as { error: { message: string } }).error.message).toMatch(/auditor holds the role auditor, not approver/);
    const noReason = await call('POST', `/api/v1/runs/${runId}/reject`, { token: tokens['approver-1'], body: {} });
    expect(noReason.status).toBe(400);
    expect(((await noReason.json()) as { error: { message: string } }).error.message).toMatch(/reason/);
    const extra = await call('POST', `/api/v1/runs/${runId}/approve`, { token: tokens['approver-1'], body: { comment: 'ok', weight: 3 } });
    expect([extra.status, await extra.text()]).toEqual([400, expect.stringMatching(/additional properties/)]);

    const approved = await call('POST', `/api/v1/runs/${runId}/approve`, { token: tokens['approver-1'], body: { comment: 'through the API' } });
    const vote = (await approved.json()) as { principal: string; via: string; signedWith: string; approvals: number; quorum: number };
    expect([approved.status, vote]).toEqual([200, expect.anything()]);
    const [serverKey] = (await h.db.pool.query(`SELECT key_id FROM service_keys WHERE purpose = 'server'`)).rows;
    expect(vote).toMatchObject({ principal: 'approver-1', via: 'api', signedWith: serverKey.key_id });
    expect(((await h.client.workflow.getHandle(runId).result()) as PipelineResult).state).toBe('completed');

    // A closed gate refuses, and the refusal is in the audit log.
    const late = await call('POST', `/api/v1/runs/${runId}/approve`, { token: tokens['approver-2'], body: {} });
    expect(late.status).toBe(409);
    expect(((await late.json()) as { error: { message: string } }).error.message).toMatch(/not awaiting approval/);

    // The record says who voted and that the server signed for them; audit verify tells the two apart.
    const bundle = await exportAudit(h.client, h.db.pool, runId, { home: h.home, artifactsDir: path.join(h.home, 'artifacts') });
    const verdict = verifyAudit(bundle);
    expect(verdict.ok).toBe(true);
    expect(verdict.checked.join('\n')).toMatch(/signed by the API server for approver-1/);
    const forged = JSON.parse(JSON.stringify(bundle)) as AuditBundle;
    const row = (forged.parts['records:approvals'] as { signature: { statement: { via: string } } }[])[0]!;
    row.signature.statement.via = 'cli';
    expect(verifyAudit(forged).problems.join('\n')).toMatch(/the vote of approver-1: key \w+ is not among the bundle's registered keys/);
  });

  test('a rejection through the API, with its reason, rejects the run', async () => {
    const runId = await startRun(h.runs, { spec: parseRunSpec(tinySpec()), baseDir: h.home, runId: 'api-2', initiator: 'engineer' });
    await awaitingApproval(runId);
    const rejected = await call('POST', `/api/v1/runs/${runId}/reject`, { token: tokens['approver-2'], body: { reason: 'general perplexity too close to budget' } });
    expect([rejected.status, await rejected.json()]).toEqual([200, expect.objectContaining({ principal: 'approver-2', decision: 'reject', via: 'api' })]);
    expect((await h.client.workflow.getHandle(runId).result()) as PipelineResult).toMatchObject({ state: 'rejected', reason: expect.stringMatching(/general perplexity too close to budget/) });
    const detail = (await (await call('GET', `/api/v1/runs/${runId}`, { token: tokens.auditor })).json()) as { state: string; votes: { principal: string; decision: string; via: string }[] };
    expect(detail).toMatchObject({ state: 'rejected', votes: [{ principal: 'approver-2', decision: 'reject', via: 'api' }] });
  });

  (existsSync(schemathesis) ? test : test.skip)('the API keeps to its OpenAPI description (schemathesis: status codes, content types, schemas, auth)', async () => {
    const run = spawnSync(
      schemathesis,
      [
        'run', `${base}/api/v1/openapi.json`,
        '--header', `Authorization: Bearer ${tokens.auditor}`,
        '--checks', 'all',
        // A random run id is rightly 404 and a vote by an auditor rightly 403: valid data is not always accepted.
        '--exclude-checks', 'positive_data_acceptance',
        '--phases', 'examples,coverage,fuzzing',
        '--max-examples', '30',
        '--workers', '1',
        '--seed', '1',
      ],
      { encoding: 'utf8', timeout: 300_000, env: { ...process.env, SCHEMATHESIS_HOOKS: '' } },
    );
    const output = `${run.stdout}\n${run.stderr}`;
    if (run.status !== 0) throw new Error(`schemathesis exited ${run.status}:\n${output.slice(-6000)}`);
    expect(output).toMatch(/passed/i);
  }, 360_000);
});
