import { spawnSync } from 'node:child_process';
import { cpSync, mkdirSync, readdirSync, readFileSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { DefaultLogger, Runtime } from '@temporalio/worker';
import { decide, runStatus } from '../cli/runs';
import type { RunListing } from '../cli/runs';
import type { ScheduleView } from '../cli/schedules';
import type { CollectSummary } from '../activities/collect';
import type { QualitySummary } from '../activities/quality';
import type { DatasetRef, RunStatus } from '../schemas/pipeline';
import { ArtifactStore } from '../activities/artifacts';
import { readDataset } from '../activities/datasets';
import { tinySpec } from './helpers/fixtures';
import { startHarness, type Harness } from './helpers/harness';
import { eventually, GiveUp, historyText as historyOf } from './helpers/temporal';

Runtime.install({ logger: new DefaultLogger('WARN') });

/**
 * Continual operation through `dacp schedule` on the dev server (the time-skipping test server has
 * no Schedules): firings of one schedule chain runs, each continuing from the model the previous
 * update deployed and reading only the domain files that are new since the last successful run.
 * A rejected run leaves the watermark where it was.
 */

const root = path.resolve(__dirname, '..');
let h: Harness;
/** Domain files present before the first update (the corpus has a few besides d0–d79). */
let n0: number;

beforeAll(async () => {
  h = await startHarness({ inProcessGpu: true });
  // The corpus arrives in batches: the first update sees d0–d29, later ones the files moved in.
  mkdirSync(path.join(h.home, 'incoming'), { recursive: true });
  for (let i = 30; i < 80; i++) renameSync(path.join(h.home, 'data', 'domain', `d${i}.txt`), path.join(h.home, 'incoming', `d${i}.txt`));
  n0 = readdirSync(path.join(h.home, 'data', 'domain')).length;
  // A third of the replay documents come from earlier updates' domain data.
  writeFileSync(path.join(h.home, 'spec.json'), JSON.stringify(tinySpec({ name: 'weekly-telecom', replayFromEarlierUpdates: 0.3 })));
}, 120_000);

afterAll(async () => {
  await h?.stop();
});

function dacp(...args: string[]) {
  const r = spawnSync(process.execPath, [path.join(root, 'bin', 'dacp.js'), ...args], { env: { ...process.env, ...h.env }, cwd: h.home, encoding: 'utf8' });
  return { code: r.status, stdout: r.stdout, stderr: r.stderr.trim() };
}

/** The contents of the domain folder now: what a run that succeeds now leaves as its watermark. */
const contents = () => readdirSync(path.join(h.home, 'data', 'domain')).map((f) => readFileSync(path.join(h.home, 'data', 'domain', f), 'utf8'));

/** What a run reading past `seen` collects now: files whose content is new (a copy of a read file is not), and those it skips. */
function expected(seen: string[]): { docs: number; skippedFiles: number } {
  const known = new Set(seen);
  const now = contents();
  const docs = now.filter((c) => !known.has(c)).length;
  return { docs, skippedFiles: now.length - docs };
}

const arrive = (from: number, to: number) => {
  for (let i = from; i < to; i++) renameSync(path.join(h.home, 'incoming', `d${i}.txt`), path.join(h.home, 'data', 'domain', `d${i}.txt`));
};

const runList = () => JSON.parse(dacp('run', 'list', '--json').stdout) as RunListing[];

/** Fire the schedule and return the new run's id (a firing names the run by the schedule and the second it fired). */
async function fire(known: Set<string>): Promise<string> {
  // Two firings in one second would get one id; wait for the next second.
  const second = Math.floor(Date.now() / 1000);
  await eventually(async () => (Math.floor(Date.now() / 1000) > second ? true : undefined), 'the next second', 5_000, 50);
  expect(dacp('schedule', 'trigger', 'weekly', '--as', 'ops-lead')).toMatchObject({ code: 0, stdout: expect.stringMatching(/schedule weekly fired/) });
  return eventually(async () => runList().find((r) => r.scheduleId === 'weekly' && !known.has(r.runId))?.runId, 'the firing\'s run to appear', 60_000, 200);
}

async function toGate(runId: string): Promise<RunStatus> {
  return eventually(async () => {
    const s = await runStatus(h.runs, runId);
    if (s.state === 'failed') throw new GiveUp(`run ${runId} failed: ${String(s.metrics.error)}`);
    return s.state === 'awaiting_approval' ? s : undefined;
  }, `${runId} to reach approval`, 300_000, 250);
}

const historyText = (runId: string) => historyOf(h.client, runId);

async function finished(runId: string, state: string): Promise<void> {
  await eventually(async () => ((await runStatus(h.runs, runId)).state === state ? true : undefined), `${runId} to be ${state}`, 120_000, 250);
}

/** A run's dataset documents (texts), by stage, role and optionally split. */
async function docsOf(runId: string, stage: string, role: string, split?: string): Promise<string[]> {
  const { rows } = await h.db.pool.query('SELECT * FROM datasets WHERE run_id = $1 AND stage = $2 AND role = $3 AND ($4::text IS NULL OR split = $4)', [runId, stage, role, split ?? null]);
  expect(rows.length).toBeGreaterThan(0);
  const store = new ArtifactStore(path.join(h.home, 'artifacts'));
  const texts: string[] = [];
  for (const r of rows) {
    const ref: DatasetRef = { uri: r.uri, sha256: r.sha256, bytes: 0, role: r.role, split: r.split, docs: r.docs, dataBytes: Number(r.bytes), tokens: Number(r.tokens) };
    for (const doc of await readDataset<{ text: string }>(store, ref)) texts.push(doc.text);
  }
  return texts;
}

const domainSource = (s: RunStatus) => (s.metrics.collect as CollectSummary).sources.find((x) => x.role === 'domain');

describe('dacp schedule', () => {
  test('refuses what it cannot schedule, naming the flag or the field', () => {
    expect(dacp('schedule', 'create', '--spec', 'spec.json', '--as', 'engineer')).toMatchObject({ code: 2, stderr: expect.stringMatching(/give exactly one of --every DURATION \(e\.g\. 7d\) or --cron EXPR/) });
    expect(dacp('schedule', 'create', '--spec', 'spec.json', '--every', '7d', '--cron', '0 3 * * 1', '--as', 'engineer').stderr).toMatch(/give exactly one of --every/);
    expect(dacp('schedule', 'create', '--spec', 'spec.json', '--every', 'weekly', '--as', 'engineer').stderr).toMatch(/--every "weekly": write a duration like/);
    // Only an operator, holding its key, creates schedules.
    expect(dacp('schedule', 'create', '--spec', 'spec.json', '--every', '7d', '--id', 'not-mine', '--as', 'approver-2').stderr).toMatch(/approver-2 holds the role approver, not operator, so cannot create schedules/);
    expect(dacp('schedule', 'create', '--spec', 'spec.json', '--every', '7d', '--overlap', 'sometimes', '--as', 'engineer').stderr).toMatch(/--overlap "sometimes": use one of skip, buffer-one/);
    writeFileSync(path.join(h.home, 'pg-spec.json'), JSON.stringify(tinySpec({
      sources: [
        { kind: 'postgres', role: 'domain', query: 'SELECT text FROM notes', connectionEnv: 'SOURCE_DATABASE_URL' },
        { kind: 'files', role: 'replay', paths: ['data/general.jsonl'] },
        { kind: 'files', role: 'instruct', paths: ['data/pairs.jsonl'] },
      ],
    })));
    const pg = spawnSync(process.execPath, [path.join(root, 'bin', 'dacp.js'), 'schedule', 'create', '--spec', 'pg-spec.json', '--every', '7d', '--as', 'engineer'], {
      env: { ...process.env, ...h.env, SOURCE_DATABASE_URL: h.db.url }, cwd: h.home, encoding: 'utf8',
    });
    expect(pg.stderr.trim()).toMatch(/^dacp: sources\[0\]\.watermarkColumn: a scheduled run collects only rows that are new since the last successful run; name the column/);
    expect(dacp('schedule', 'describe', 'nothing')).toMatchObject({ code: 2, stderr: 'dacp: no schedule "nothing"; see `dacp schedule list`' });
    expect(runList()).toEqual([]);
  });

  test('three firings chain three updates: each continues from the last deploy and reads only new files; a rejected one moves no watermark', async () => {
    const created = dacp('schedule', 'create', '--spec', 'spec.json', '--every', '7d', '--id', 'weekly', '--as', 'engineer', '--json');
    expect(created.stderr).toBe('');
    expect(JSON.parse(created.stdout)).toMatchObject({ scheduleId: 'weekly', reads: { folder: h.home }, nextRuns: expect.arrayContaining([expect.stringMatching(/^\d{4}-/)]) });
    expect(dacp('schedule', 'create', '--spec', 'spec.json', '--every', '7d', '--id', 'weekly', '--as', 'engineer').stderr).toMatch(/schedule weekly already exists/);
    const described = JSON.parse(dacp('schedule', 'describe', 'weekly', '--json').stdout) as ScheduleView;
    expect(described).toMatchObject({ scheduleId: 'weekly', paused: false, every: '7d', cron: null, overlap: 'skip', catchupWindowMs: 86_400_000, pauseOnFailure: false, initiator: 'engineer', recentRuns: [] });

    const known = new Set<string>();
    // Update 1: the first read of the files.
    const seen0 = contents();
    const first = await fire(known);
    known.add(first);
    expect(first).toMatch(/^weekly-\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z$/);
    const s1 = await toGate(first);
    expect(domainSource(s1)).toMatchObject({ docs: n0, watermark: { used: null, next: `${n0} files by sha256` } });
    // Its inputs are named by artifact URI: the spec's folder (where it read the files) is not in its history.
    expect(await historyText(first)).toMatch(/artifact:inputs\/[0-9a-f]{64}\.json/);
    expect(await historyText(first)).not.toContain(h.home);
    await decide(h.runs, { runId: first, principal: 'approver-1', decision: 'approve' });
    await finished(first, 'completed');

    // Update 2: twenty files arrive; only they are collected, and it continues the pretrained line of update 1.
    // One of them is a document update 1 trained on with a sentence added: a new file, but not new data.
    const trained1 = await docsOf(first, 'quality', 'domain');
    const nearCopy = `${trained1.reduce((a, b) => (b.length > a.length ? b : a))} Logged again by the night shift.`;
    writeFileSync(path.join(h.home, 'incoming', 'd30.txt'), nearCopy);
    arrive(30, 50);
    const want2 = expected(seen0);
    const second = await fire(known);
    known.add(second);
    const s2 = await toGate(second);
    expect(want2.docs).toBeGreaterThanOrEqual(15);
    expect(domainSource(s2)).toMatchObject({ docs: want2.docs, watermark: { used: `${n0} files by sha256`, next: `${n0 + 20} files by sha256`, skippedFiles: want2.skippedFiles } });
    expect(s2.metrics.baseModel).toBe('weekly-telecom-adapted:v1');
    // The near copy was collected, and removed by quality as data an earlier update of the schedule trained on.
    const quality2 = s2.metrics.quality as QualitySummary;
    expect(quality2.earlier).toEqual({ schedule: 'weekly', runs: 1, documents: trained1.length });
    expect(quality2.perRole.domain.removed.earlier_update).toBeGreaterThanOrEqual(1);
    expect(await docsOf(second, 'quality', 'domain')).not.toContain(nearCopy);
    // A first update had nothing earlier to check against.
    expect((s1.metrics.quality as QualitySummary).earlier).toEqual({ schedule: 'weekly', runs: 0, documents: 0 });
    // It trains on no domain document update 1 used, except those sampled into its replay.
    const [used1, domain2, replay2] = [await docsOf(first, 'quality', 'domain'), await docsOf(second, 'quality', 'domain', 'train'), await docsOf(second, 'mix', 'replay', 'train')];
    const earlier = new Set(used1);
    expect(domain2.filter((d) => earlier.has(d))).toEqual([]);
    const replayed = replay2.filter((d) => earlier.has(d));
    const replay = s2.metrics.replay as { versions: string[]; sampledDocs: number; pooledDocs: number; generalDocs: number; share: number };
    expect(replay).toMatchObject({ versions: ['weekly-telecom-adapted:v1'], share: 0.3 });
    expect(replay.sampledDocs).toBe(Math.min(replay.pooledDocs, Math.round((replay.generalDocs * 0.3) / 0.7)));
    expect(replay.sampledDocs).toBeGreaterThan(0);
    expect(replayed).toHaveLength(replay.sampledDocs);
    expect(replay2).toHaveLength(replay.generalDocs + replay.sampledDocs);
    // A first update had nothing earlier to replay: its replay set is the general text alone.
    expect(s1.metrics.replay).toMatchObject({ versions: [], sampledDocs: 0 });
    await decide(h.runs, { runId: second, principal: 'approver-1', decision: 'reject', reason: 'hold this one' });
    await finished(second, 'rejected');

    // A rejected update leaves the watermark: the next firing reads the same twenty files, and more.
    arrive(50, 60);
    const want3 = expected(seen0);
    const third = await fire(known);
    known.add(third);
    const s3 = await toGate(third);
    expect(domainSource(s3)).toMatchObject({ docs: want3.docs, watermark: { used: `${n0} files by sha256`, next: `${n0 + 30} files by sha256`, skippedFiles: want3.skippedFiles } });
    expect(want3.docs).toBeGreaterThan(want2.docs);
    expect(s3.metrics.baseModel).toBe('weekly-telecom-adapted:v1');
    await decide(h.runs, { runId: third, principal: 'approver-1', decision: 'approve' });
    await finished(third, 'completed');
    const seen3 = contents();

    // Update 3 of the line: only what arrived since update 2's success, continuing from its model.
    arrive(60, 70);
    const want4 = expected(seen3);
    const fourth = await fire(known);
    known.add(fourth);
    const s4 = await toGate(fourth);
    expect(domainSource(s4)).toMatchObject({ docs: want4.docs, watermark: { used: `${n0 + 30} files by sha256`, next: `${n0 + 40} files by sha256`, skippedFiles: want4.skippedFiles } });
    expect(s4.metrics.baseModel).toBe('weekly-telecom-adapted:v2');
    // Checked against both successful updates (the rejected one trained nothing that shipped).
    expect((s4.metrics.quality as QualitySummary).earlier).toMatchObject({ schedule: 'weekly', runs: 2 });
    // Replay pools the domain data of both earlier updates of the line.
    expect(s4.metrics.replay).toMatchObject({ versions: ['weekly-telecom-adapted:v2', 'weekly-telecom-adapted:v1'] });
    await decide(h.runs, { runId: fourth, principal: 'approver-1', decision: 'approve' });
    await finished(fourth, 'completed');
    const lineage = await h.db.pool.query(`SELECT version_id, parent_version_id FROM model_versions WHERE name LIKE 'weekly-telecom%' ORDER BY created_at`);
    expect(lineage.rows.map((r) => [r.version_id, r.parent_version_id])).toEqual([
      ['weekly-telecom-base:v1', null],
      ['weekly-telecom-adapted:v1', 'weekly-telecom-base:v1'],
      ['weekly-telecom:v1', 'weekly-telecom-adapted:v1'],
      ['weekly-telecom-adapted:v2', 'weekly-telecom-adapted:v1'],
      ['weekly-telecom:v2', 'weekly-telecom-adapted:v2'],
      ['weekly-telecom-adapted:v3', 'weekly-telecom-adapted:v2'],
      ['weekly-telecom:v3', 'weekly-telecom-adapted:v3'],
    ]);
    const watermark = await h.db.pool.query(`SELECT run_id, value FROM schedule_watermarks WHERE schedule_id = 'weekly'`);
    expect(watermark.rows).toEqual([expect.objectContaining({ run_id: fourth })]);
    expect(Object.keys(watermark.rows[0].value.files)).toHaveLength(n0 + 40);

    // run list: newest first, scheduled runs named by their schedule, manual runs with scheduleId null.
    const listed = runList();
    expect(listed.map((r) => r.runId)).toEqual([fourth, third, second, first]);
    for (const r of listed) expect(r).toMatchObject({ scheduleId: 'weekly', initiator: 'engineer', startedAt: expect.stringMatching(/^\d{4}-/), stage: expect.any(String) });
    expect(listed.map((r) => r.state)).toEqual(['completed', 'completed', 'rejected', 'completed']);
    const manual = dacp('run', 'start', '--spec', 'spec.json', '--id', 'manual-1', '--as', 'engineer');
    expect(manual.code).toBe(0);
    expect(runList()[0]).toMatchObject({ runId: 'manual-1', scheduleId: null, initiator: 'engineer' });
    await h.client.workflow.getHandle('manual-1').terminate('test over');

    // describe: the recent runs and their outcomes, newest first.
    const after = JSON.parse(dacp('schedule', 'describe', 'weekly', '--json').stdout) as ScheduleView;
    expect(after.recentRuns.map((r) => [r.runId, r.state])).toEqual([[fourth, 'completed'], [third, 'completed'], [second, 'rejected'], [first, 'completed']]);
    expect(dacp('schedule', 'describe', 'weekly').stdout).toMatch(/^weekly {2}active {2}every 7d {2}overlap skip/);
  }, 1_500_000);

  test('pause and unpause with a note, list, delete; only operators do', () => {
    for (const verb of ['pause', 'unpause', 'trigger', 'delete']) {
      expect(dacp('schedule', verb, 'weekly', '--as', 'approver-1')).toMatchObject({ code: 2, stderr: expect.stringMatching(new RegExp(`approver-1 holds the role approver, not operator, so cannot ${verb} schedules`)) });
    }
    expect(dacp('schedule', 'pause', 'weekly', '--note', 'data freeze', '--as', 'ops-lead').stdout).toMatch(/schedule weekly paused by ops-lead: data freeze/);
    expect(JSON.parse(dacp('schedule', 'describe', 'weekly', '--json').stdout)).toMatchObject({ paused: true, note: 'paused by ops-lead: data freeze' });
    expect(dacp('schedule', 'list').stdout).toMatch(/^weekly {2}PAUSED/);
    dacp('schedule', 'unpause', 'weekly', '--as', 'ops-lead');
    expect(JSON.parse(dacp('schedule', 'describe', 'weekly', '--json').stdout)).toMatchObject({ paused: false, note: 'unpaused by ops-lead' });
    expect(dacp('schedule', 'delete', 'weekly', '--as', 'ops-lead').stdout).toMatch(/schedule weekly deleted/);
    expect(JSON.parse(dacp('schedule', 'list', '--json').stdout)).toEqual([]);
    // Its runs and their records stay.
    expect(runList().filter((r) => r.scheduleId === 'weekly')).toHaveLength(4);
    expect(readdirSync(path.join(h.home, 'data', 'domain'))).toHaveLength(n0 + 40);
  });

  test('a newer run that reaches its gate supersedes an older one still waiting there; supersede: false keeps both', async () => {
    const known = new Set(runList().map((r) => r.runId));
    const once = async (id: string) => {
      const second = Math.floor(Date.now() / 1000);
      await eventually(async () => (Math.floor(Date.now() / 1000) > second ? true : undefined), 'the next second', 5_000, 50);
      expect(dacp('schedule', 'trigger', id, '--as', 'ops-lead').code).toBe(0);
      const runId = await eventually(async () => runList().find((r) => r.scheduleId === id && !known.has(r.runId))?.runId, 'the run', 60_000, 200);
      known.add(runId);
      return runId;
    };
    expect(dacp('schedule', 'create', '--spec', 'spec.json', '--every', '1d', '--id', 'nightly', '--as', 'engineer').code).toBe(0);
    const older = await once('nightly');
    await toGate(older);
    const newer = await once('nightly');
    const waiting = await toGate(newer);
    expect(waiting.metrics.supersedes).toEqual([older]);
    await finished(older, 'superseded');
    const status = await runStatus(h.runs, older);
    expect(status.metrics.approval).toMatchObject({ outcome: 'superseded', supersededBy: newer, reason: expect.stringMatching(new RegExp(`^superseded by ${newer}, a newer run of schedule nightly`)) });
    // The old request is closed, says why, and takes no votes.
    const request = JSON.parse(dacp('approval', 'show', older, '--json').stdout) as { state: string; reason: string };
    expect(request).toMatchObject({ state: 'superseded', reason: expect.stringContaining(newer) });
    expect(dacp('approve', older, '--as', 'approver-1').stderr).toMatch(/not awaiting approval|superseded/);
    const events = await h.db.pool.query(`SELECT event, details FROM audit_log WHERE run_id = $1 AND event IN ('approval_superseded', 'run_superseded') ORDER BY id`, [older]);
    expect(events.rows.map((r) => r.event)).toEqual(['approval_superseded', 'run_superseded']);
    expect(events.rows[0].details).toMatchObject({ supersededBy: newer });
    await decide(h.runs, { runId: newer, principal: 'approver-1', decision: 'approve' });
    await finished(newer, 'completed');
    dacp('schedule', 'delete', 'nightly', '--as', 'ops-lead');

    // Configurable: with supersede off, both requests stay open.
    writeFileSync(path.join(h.home, 'keep-spec.json'), JSON.stringify(tinySpec({ name: 'keep-both', approval: { approvers: ['approver-1', 'approver-2'], quorum: 1, timeout: '1h', supersede: false } })));
    expect(dacp('schedule', 'create', '--spec', 'keep-spec.json', '--cron', '0 3 * * 1', '--id', 'keep', '--as', 'engineer', '--overlap', 'allow-all', '--catchup-window', '2h', '--pause-on-failure').code).toBe(0);
    // The policies as given reach Temporal's schedule.
    expect(JSON.parse(dacp('schedule', 'describe', 'keep', '--json').stdout)).toMatchObject({ cron: '0 3 * * 1', every: null, overlap: 'allow-all', catchupWindowMs: 7_200_000, pauseOnFailure: true });
    const a = await once('keep');
    await toGate(a);
    const b = await once('keep');
    expect((await toGate(b)).metrics.supersedes).toBeUndefined();
    expect((await runStatus(h.runs, a)).state).toBe('awaiting_approval');
    for (const id of [a, b]) await h.client.workflow.getHandle(id).terminate('test over');
    dacp('schedule', 'delete', 'keep', '--as', 'ops-lead');
  }, 600_000);

  test('a schedule names its files by data root: each control worker reads them from the folder its DACP_DATA_ROOTS maps, and no folder lands in its runs\' history', async () => {
    // The same data, mounted elsewhere on the control worker's host (here: fewer domain files, so the folder read shows).
    const mirror = `${h.home}-mirror`;
    cpSync(path.join(h.home, 'data'), path.join(mirror, 'data'), { recursive: true });
    const mirrored = readdirSync(path.join(mirror, 'data', 'domain')).sort();
    for (const f of mirrored.slice(0, 10)) rmSync(path.join(mirror, 'data', 'domain', f));
    const operatorEnv = { ...process.env, ...h.env, DACP_DATA_ROOTS: `corpus=${h.home}` };
    const create = spawnSync(process.execPath, [path.join(root, 'bin', 'dacp.js'), 'schedule', 'create', '--spec', 'spec.json', '--every', '7d', '--id', 'mapped', '--as', 'engineer'], { env: operatorEnv, cwd: h.home, encoding: 'utf8' });
    expect(create.stderr).toBe('');
    expect(create.stdout).toMatch(/each firing reads the file sources from data root "corpus", as each control worker's DACP_DATA_ROOTS maps it/);
    const known = new Set(runList().map((r) => r.runId));
    const once = async () => {
      const second = Math.floor(Date.now() / 1000);
      await eventually(async () => (Math.floor(Date.now() / 1000) > second ? true : undefined), 'the next second', 5_000, 50);
      expect(dacp('schedule', 'trigger', 'mapped', '--as', 'ops-lead').code).toBe(0);
      const runId = await eventually(async () => runList().find((r) => r.scheduleId === 'mapped' && !known.has(r.runId))?.runId, 'the run', 60_000, 200);
      known.add(runId);
      return runId;
    };
    const saved = process.env.DACP_DATA_ROOTS;
    try {
      // A control worker that maps no such root refuses the run, naming the variable to set.
      delete process.env.DACP_DATA_ROOTS;
      const unmapped = await once();
      await finished(unmapped, 'failed');
      expect(String((await runStatus(h.runs, unmapped)).metrics.error)).toMatch(/DACP_DATA_ROOTS names no data root "corpus".*adds corpus=\/folder/);

      // Mapped: it reads the files in this host's folder.
      process.env.DACP_DATA_ROOTS = `corpus=${mirror}`;
      const mapped = await once();
      const collected = await eventually(async () => {
        const s = await runStatus(h.runs, mapped);
        if (s.state === 'failed') throw new GiveUp(`run ${mapped} failed: ${String(s.metrics.error)}`);
        return s.metrics.collect as CollectSummary | undefined;
      }, `${mapped} to collect`, 120_000, 250);
      expect(collected.sources.find((x) => x.role === 'domain')).toMatchObject({ docs: mirrored.length - 10 });
      await h.client.workflow.getHandle(mapped).terminate('test over');

      // Each run names its inputs by artifact URI; neither host's folder is in its history.
      for (const runId of [unmapped, mapped]) {
        const history = await historyText(runId);
        expect(history).toMatch(/artifact:inputs\/[0-9a-f]{64}\.json/);
        expect(history).not.toContain(h.home);
        expect(history).not.toContain(mirror);
      }
    } finally {
      if (saved === undefined) delete process.env.DACP_DATA_ROOTS;
      else process.env.DACP_DATA_ROOTS = saved;
      dacp('schedule', 'delete', 'mapped', '--as', 'ops-lead');
      rmSync(mirror, { recursive: true, force: true });
    }
  }, 600_000);
});
