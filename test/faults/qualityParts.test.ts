import { mkdirSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { MockActivityEnvironment } from '@temporalio/testing';
import { ArtifactStore } from '../../activities/artifacts';
import { qualityActivities } from '../../activities/quality';
import { startRun } from '../../cli/runs';
import { insertRun } from '../../db/records';
import { generateDemoCorpus } from '../../ml/demoCorpus';
import { qualityPartCount, type DatasetRef } from '../../schemas/pipeline';
import { parseRunSpec } from '../../schemas/runSpec';
import { tinySpec } from '../helpers/fixtures';
import { eventually, runsFor } from '../helpers/temporal';
import { killHard, spawnWorker, startFaultWorld, waitForStatus, type FaultWorld, type WorkerProcess } from './helpers/harness';
import { ranOnProcess, startedActivities } from './helpers/orphans';

/**
 * The quality stage of a large dataset as separate activities on several control workers
 * (quality.partMB): two control worker processes take its parts at once; one is SIGKILLed while
 * it judges parts; the other redoes exactly those and merges. The cleaned datasets are the ones the
 * stage gives as one activity.
 */

const noiseDocs = 12_000;

/** Demo domain documents (with their planted duplicates and PII) among repetitive noise, which the repetition filter removes. */
function writeCorpus(dir: string): void {
  const corpus = generateDemoCorpus({ seed: 17, domainDocs: 400, generalDocs: 80, instructionPairs: 40 });
  mkdirSync(path.join(dir, 'data'), { recursive: true });
  const jsonl = (rows: unknown[]) => rows.map((r) => JSON.stringify(r)).join('\n');
  const words = ['signal', 'tower', 'fibre'];
  const domain: { text: string }[] = [];
  for (let i = 0; i < noiseDocs; i++) {
    if (i % 30 === 0 && corpus.domain[i / 30] !== undefined) domain.push({ text: corpus.domain[i / 30] as string });
    domain.push({ text: `${Array.from({ length: 160 }, (_, j) => words[(i + j) % words.length]).join(' ')} #${i}` });
  }
  writeFileSync(path.join(dir, 'data', 'domain.jsonl'), jsonl(domain));
  writeFileSync(path.join(dir, 'data', 'general.jsonl'), jsonl(corpus.general.map((text) => ({ text }))));
  writeFileSync(path.join(dir, 'data', 'pairs.jsonl'), jsonl(corpus.instructions));
}

const specInput = tinySpec({
  sources: [
    { kind: 'files', role: 'domain', paths: ['data/domain.jsonl'] },
    { kind: 'files', role: 'replay', paths: ['data/general.jsonl'] },
    { kind: 'files', role: 'instruct', paths: ['data/pairs.jsonl'] },
  ],
  // About 13 MB of domain text in parts of a quarter MB; the replay and instruction data are one part each.
  quality: { partMB: 0.25 },
  // Short, so a killed worker's parts are taken again soon.
  controlHeartbeatTimeout: '10s',
});

describe('faults: the quality stage in parts across control workers, one of them SIGKILLed', () => {
  let world: FaultWorld;
  const children: WorkerProcess[] = [];
  beforeAll(async () => (world = await startFaultWorld(writeCorpus)));
  afterAll(async () => world?.stop(children));

  test('both workers take parts; the killed one loses only the parts it was on, which the other redoes; the result equals the one-activity stage', async () => {
    const { server, db, client, home } = world;
    // One thread each: two processes on this machine's two cores.
    const env = { DATABASE_URL: db.url, TEMPORAL_ADDRESS: server.address, DACP_HOME: home, DACP_QUALITY_THREADS: '1' };
    const a = spawnWorker('control', env);
    const b = spawnWorker('control', env);
    children.push(a, b);
    await Promise.all([a.ready, b.ready]);
    const spec = parseRunSpec(specInput);
    const runs = runsFor(client, db.pool, home);
    const runId = await startRun(runs, { spec, baseDir: home, runId: 'quality-parts-1', initiator: 'engineer' });

    /** What history says of every finished part: which worker finished it, at which attempt. */
    const finishedParts = async () => {
      const history = await client.workflow.getHandle(runId).fetchHistory();
      const typeOf = new Map<string, { type: string; activityId: string }>();
      const parts: { activityId: string; attempt: number; identity: string }[] = [];
      for (const event of history.events ?? []) {
        const scheduled = event.activityTaskScheduledEventAttributes;
        if (scheduled) typeOf.set(String(event.eventId), { type: scheduled.activityType?.name ?? '?', activityId: scheduled.activityId ?? '' });
        const started = event.activityTaskStartedEventAttributes;
        const of = started ? typeOf.get(String(started.scheduledEventId)) : undefined;
        if (started && of?.type === 'qualityPart') parts.push({ activityId: of.activityId, attempt: started.attempt ?? 1, identity: started.identity ?? '' });
      }
      return parts;
    };

    // Both workers judging parts at the same moment, A having finished one; then A dies with its parts unfinished.
    const { mine: onA, doneByA } = await eventually(
      async () => {
        const started = (await startedActivities(client, runId)).filter((x) => x.type === 'qualityPart');
        const mine = started.filter((x) => ranOnProcess(x, a.pid!));
        if (mine.length === 0 || !started.some((x) => ranOnProcess(x, b.pid!))) return undefined;
        const doneByA = (await finishedParts()).filter((f) => f.identity.startsWith(`${a.pid}@`));
        return doneByA.length > 0 ? { mine, doneByA } : undefined;
      },
      'qualityPart activities to run on both control workers at once, after A finished one',
      300_000,
      20,
    );
    await killHard(a);
    const killedIds = new Set(onA.map((x) => x.activityId));

    const status = await waitForStatus(runs, runId, (s) => s.stage !== 'collect' && s.stage !== 'quality', 'the run to get past quality', 300_000, 200);
    await client.workflow.getHandle(runId).terminate('the test needs only the quality stage');

    const finished = new Map((await finishedParts()).map((f) => [f.activityId, f]));
    const { rows: collectedRows } = await db.pool.query("SELECT role, split, uri, sha256, docs, bytes, tokens FROM datasets WHERE run_id = $1 AND stage = 'collect' ORDER BY role", [runId]);
    const collected: DatasetRef[] = collectedRows.map((r) => ({ uri: r.uri, sha256: r.sha256, bytes: 0, role: r.role, split: r.split, docs: Number(r.docs), dataBytes: Number(r.bytes), tokens: Number(r.tokens) }));
    const domainRaw = collected.find((d) => d.role === 'domain') as DatasetRef;
    const expectedParts = qualityPartCount(domainRaw, spec.quality.partMB);
    expect(expectedParts).toBeGreaterThanOrEqual(40);
    expect(finished.size).toBe(expectedParts);
    expect((status.metrics.quality as { perRole: { domain: { parts?: number }; replay: { parts?: number } } }).perRole).toMatchObject({
      domain: { parts: expectedParts },
      replay: expect.not.objectContaining({ parts: expect.anything() }),
    });

    // The killed worker lost only the parts it was on (a control worker runs at most 4 activities at
    // once): each was finished by the other worker at a later attempt; every other part ran once.
    const redone = [...finished.entries()].filter(([, f]) => f.attempt > 1);
    expect(redone.length).toBeGreaterThanOrEqual(1);
    expect(redone.length).toBeLessThanOrEqual(4);
    for (const [, f] of redone) expect(f.identity.startsWith(`${b.pid}@`)).toBe(true);
    // Each part A was seen on either finished there just before the kill, or was redone by B.
    for (const id of killedIds) {
      const f = finished.get(id);
      const doneByAItself = f?.attempt === 1 && f.identity.startsWith(`${a.pid}@`);
      const redoneByB = (f?.attempt ?? 0) > 1 && (f?.identity.startsWith(`${b.pid}@`) ?? false);
      expect([id, doneByAItself || redoneByB]).toEqual([id, true]);
    }
    // What A finished before it died stands: not one of those parts ran again.
    for (const done of doneByA) expect(finished.get(done.activityId)).toEqual(done);
    const identities = [...finished.values()].map((f) => f.identity.split('@')[0]);

    // The cleaned datasets are exactly what the stage gives as one activity on the same collected data.
    const store = new ArtifactStore(path.join(home, 'artifacts'));
    const reference = 'quality-parts-reference';
    await insertRun(db.pool, { runId: reference, workflowId: reference, spec, specSha256: 'test', initiator: 'engineer' });
    const { qualityFilter } = qualityActivities({ pool: db.pool, store });
    type In = Parameters<typeof qualityFilter>[0];
    const one = await new MockActivityEnvironment().run<[In], Awaited<ReturnType<typeof qualityFilter>>, typeof qualityFilter>(qualityFilter, { runId: reference, spec, raw: collected });
    const { rows: cleanedRows } = await db.pool.query("SELECT role, split, sha256 FROM datasets WHERE run_id = $1 AND stage = 'quality'", [runId]);
    const bySide = (rows: { role: string; split: string; sha256: string }[]) => Object.fromEntries(rows.map((r) => [`${r.role}/${r.split}`, r.sha256]));
    expect(bySide(cleanedRows)).toEqual(bySide(one.datasets));
    expect(Object.keys(bySide(cleanedRows))).toHaveLength(6);

    console.log(
      [
        `FAULT quality-parts: ${expectedParts} domain parts on two control workers; worker A (pid ${a.pid}) SIGKILLed while on ${killedIds.size} part(s)`,
        `  parts finished: A ${identities.filter((p) => p === String(a.pid)).length}, B ${identities.filter((p) => p === String(b.pid)).length}; redone by B after the kill: ${redone.length}`,
        `  cleaned datasets equal to the one-activity stage's: ${Object.keys(bySide(cleanedRows)).join(', ')}`,
      ].join('\n'),
    );
  });
});
