import { spawnSync } from 'node:child_process';
import { chmodSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import type { RunStatus } from '../schemas/pipeline';
import { startDacpDev, type DacpDev } from './helpers/dacpDev';
import { createTestDatabase, type TestDatabase } from './helpers/db';
import { tinySpec, writeTinyCorpus } from './helpers/fixtures';
import { eventually, GiveUp, tempHome } from './helpers/temporal';

const dacpBin = path.resolve(__dirname, '..', 'bin', 'dacp.js');

describe('a user drives a run with the dacp command against `dacp dev`', () => {
  let db: TestDatabase;
  let home: string;
  let env: NodeJS.ProcessEnv;
  let dev: DacpDev;

  beforeAll(async () => {
    db = await createTestDatabase();
    home = tempHome();
    writeTinyCorpus(home);
    dev = await startDacpDev({ home, databaseUrl: db.url });
    env = dev.env;
  });

  afterAll(async () => {
    await dev?.kill();
    await db?.drop();
    rmSync(home, { recursive: true, force: true });
  });

  function dacp(...args: string[]) {
    const r = spawnSync(process.execPath, [dacpBin, ...args], { env, cwd: home, encoding: 'utf8' });
    return { code: r.status, stdout: r.stdout, stderr: r.stderr.trim() };
  }

  const status = (runId: string): RunStatus => {
    const r = dacp('run', 'status', runId, '--json');
    if (r.code !== 0) throw new Error(r.stderr);
    return JSON.parse(r.stdout) as RunStatus;
  };

  const untilState = (runId: string, states: RunStatus['state'][], timeoutMs = 300_000) =>
    eventually(async () => {
      const s = status(runId);
      if (s.state === 'failed') throw new GiveUp(`run failed: ${String(s.metrics.error)}`);
      return states.includes(s.state) ? s : undefined;
    }, `${runId} to be ${states.join('/')}`, timeoutMs, 500);

  test('principals and keys, then start, watch, approve, deploy, list, audit — all from the command line', async () => {
    // An administrator registers the people; each creates a key.
    for (const [name, role] of [['engineer', 'operator'], ['approver-1', 'approver'], ['approver-2', 'approver'], ['ada', 'auditor']]) {
      expect(dacp('principals', 'add', name, '--role', role).code).toBe(0);
    }
    for (const name of ['engineer', 'approver-1', 'approver-2', 'ada']) expect(dacp('keys', 'init', '--as', name).code).toBe(0);
    writeFileSync(path.join(home, 'spec.json'), JSON.stringify(tinySpec()));

    // Only an operator with a key starts runs.
    const byApprover = dacp('run', 'start', '--spec', 'spec.json', '--id', 'cli-0', '--as', 'approver-1');
    expect(byApprover.code).toBe(2);
    expect(byApprover.stderr).toMatch(/approver-1 holds the role approver, not operator, so cannot start runs/);
    expect(dacp('run', 'start', '--spec', 'spec.json', '--id', 'cli-0', '--as', 'stranger').stderr).toMatch(/stranger is not a registered principal/);
    expect(dacp('run', 'start', '--spec', 'spec.json', '--id', 'cli-0', '--as', 'ada').stderr).toMatch(/ada holds the role auditor, not operator/);

    const started = dacp('run', 'start', '--spec', 'spec.json', '--id', 'cli-1', '--as', 'engineer', '--json');
    expect(started.stderr).toBe('');
    expect(JSON.parse(started.stdout)).toEqual({ runId: 'cli-1' });

    const waiting = await untilState('cli-1', ['awaiting_approval']);
    expect(waiting).toMatchObject({ runId: 'cli-1', stage: 'approval' });

    const self = dacp('approve', 'cli-1', '--as', 'engineer');
    expect(self.code).toBe(2);
    expect(self.stderr).toMatch(/engineer holds the role operator, not approver, so cannot vote on run cli-1/);
    // A key file others can read is refused before it signs anything.
    const keyFile = path.join(process.env.DACP_KEYS_DIR!, 'approver-2.ed25519.json');
    chmodSync(keyFile, 0o644);
    expect(dacp('approve', 'cli-1', '--as', 'approver-2').stderr).toMatch(/approver-2.ed25519.json has permissions 644, readable by others; `chmod 600/);
    chmodSync(keyFile, 0o600);
    // A revoked key signs nothing.
    const revokedKey = JSON.parse(readFileSync(keyFile, 'utf8')) as unknown;
    expect(dacp('keys', 'revoke', '--as', 'approver-2', '--reason', 'test').code).toBe(0);
    writeFileSync(keyFile, JSON.stringify(revokedKey), { mode: 0o600 });
    expect(dacp('approve', 'cli-1', '--as', 'approver-2').stderr).toMatch(/approver-2's key \w+ .* is not an active registered key/);
    // Refused attempts leave no history, so the audit log keeps them: who, why, when.
    const refusals = (await db.pool.query("SELECT actor, details, created_at FROM audit_log WHERE run_id = 'cli-1' AND event = 'vote_refused' ORDER BY id")).rows;
    expect(refusals.map((r) => r.actor)).toEqual(['engineer', 'approver-2', 'approver-2']);
    expect(refusals[0].details).toMatchObject({ decision: 'approve', reason: expect.stringMatching(/not approver/), via: 'cli' });

    const approved = dacp('approve', 'cli-1', '--as', 'approver-1', '--comment', 'numbers look right');
    expect(approved.code).toBe(0);
    expect(approved.stdout).toMatch(/approved run cli-1 as approver-1/);

    const done = await untilState('cli-1', ['completed']);
    expect(done.stage).toBe('deploy');
    expect((done.metrics.deploy as { versionId: string }).versionId).toBe('tiny:v1');

    const models = JSON.parse(dacp('models', 'list', '--json').stdout) as { versionId: string; aliases: string[] }[];
    expect(models.find((m) => m.versionId === 'tiny:v1')?.aliases).toEqual(['production']);

    const listed = await eventually(async () => {
      const runs = JSON.parse(dacp('run', 'list', '--json').stdout) as { runId: string; state: string }[];
      const run = runs.find((r) => r.runId === 'cli-1');
      return run?.state === 'completed' ? run : undefined;
    }, 'run list to show cli-1 completed', 30_000, 500);
    expect(listed).toMatchObject({ runId: 'cli-1', state: 'completed' });

    // Auditors export; the bundle is signed by the installation's export key, published with `audit key`.
    const bundleFile = path.join(home, 'audit.json');
    expect(dacp('audit', 'export', 'cli-1', '--out', bundleFile, '--as', 'engineer').stderr).toMatch(/engineer holds the role operator, not auditor, so cannot export audit bundles/);
    const exported = dacp('audit', 'export', 'cli-1', '--out', bundleFile, '--as', 'ada');
    expect(exported.stdout).toMatch(/signed by export key [0-9a-f]{16}/);
    const published = path.join(home, 'export-key.json');
    writeFileSync(published, dacp('audit', 'key', '--json').stdout);
    const integrity = dacp('audit', 'verify', bundleFile);
    expect(integrity.stdout).toMatch(/verified; integrity only: authenticity was not checked/);
    expect(integrity.code).toBe(0);
    const verified = dacp('audit', 'verify', bundleFile, '--key', published);
    expect(verified.stdout).toMatch(/verified, signed by the published export key/);
    expect(verified.stdout).toMatch(/checked: 1 votes/);
    expect(verified.code).toBe(0);
    const other = dacp('audit', 'verify', bundleFile, '--key', 'ab'.repeat(32));
    expect(other.code).toBe(1);
    expect(other.stdout).toMatch(/NOT verified[\s\S]*not by the published key given with --key/);
  });

  test('cancelling a run stops training, keeps its checkpoint and records the cancellation', async () => {
    writeFileSync(
      path.join(home, 'long.json'),
      JSON.stringify(tinySpec({ baseModel: { ref: 'production' }, dacp: { steps: 5000, batchSize: 8, learningRate: 1e-3, checkpointEvery: 50 } })),
    );
    expect(dacp('run', 'start', '--spec', 'long.json', '--id', 'cli-2', '--as', 'engineer').code).toBe(0);
    await eventually(async () => {
      const s = status('cli-2');
      return s.stage === 'dacp' && s.progress.step > 0 ? s : undefined;
    }, 'cli-2 to be training', 120_000, 300);

    const cancelled = dacp('run', 'cancel', 'cli-2');
    expect(cancelled.code).toBe(0);
    const s = await untilState('cli-2', ['cancelled'], 60_000);
    expect(s.stage).toBe('dacp');
    expect(s.progress.step).toBeLessThan(5000);

    const q = (sql: string) => db.pool.query(sql).then((r) => r.rows);
    expect(await q("SELECT state FROM runs WHERE run_id = 'cli-2'")).toEqual([{ state: 'cancelled' }]);
    expect((await q("SELECT event FROM audit_log WHERE run_id = 'cli-2' ORDER BY id")).map((r) => r.event)).toContain('run_cancelled');
    const [ckpt] = await q("SELECT max(step)::int AS step FROM checkpoints WHERE run_id = 'cli-2' AND stage = 'dacp'");
    expect(ckpt.step).toBeGreaterThan(0);
    expect(ckpt.step).toBeLessThan(5000);

    expect(dacp('run', 'cancel', 'cli-2').stderr).toMatch(/run cli-2 is cancelled; only running runs can be cancelled/);
  });

  test('dacp dev stops cleanly on SIGINT', async () => {
    dev.child.kill('SIGINT');
    expect(await dev.exited).toBe(0);
    expect(dev.output()).toMatch(/stopped/);
  });
});
