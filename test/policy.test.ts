import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { ApplicationFailure } from '@temporalio/common';
import { collectActivities } from '../activities/collect';
import { inputsFolder, inputsFolders, stageInputs, type InputsManifest } from '../activities/inputs';
import { namedRootFolder, namedRootOf, workerPolicy } from '../workers/policy';
import { ByteTokenizer } from '../ml/tokenizer';
import { parseRunSpec, type RunSpec } from '../schemas/runSpec';
import { tinySpec } from './helpers/fixtures';
import { startTrainingBench, type TrainingBench } from './helpers/trainingBench';

/**
 * What a gpu or control worker lets a run spec do comes from the worker's own configuration
 * (workers/policy.ts): which trainer commands run, what environment they see, which folders file
 * sources may read and which databases Postgres sources may. Driven through the activities a
 * worker runs, with the worker's environment set as an administrator would set it.
 */

const root = path.resolve(__dirname, '..');
let bench: TrainingBench;
let specDir: string;
const saved = { ...process.env };

beforeAll(async () => {
  bench = await startTrainingBench();
  specDir = mkdtempSync(path.join(os.tmpdir(), 'dacp-policy-'));
});
afterAll(async () => {
  await bench?.stop();
  rmSync(specDir, { recursive: true, force: true });
});
afterEach(() => {
  for (const name of Object.keys(process.env)) if (!(name in saved)) delete process.env[name];
  Object.assign(process.env, saved);
});

const text = (i: number) => `Document ${i} says the cat sat on the mat. `.repeat(4);

async function trainWith(engine: RunSpec['engine'], baseDir = specDir) {
  const tokenizer = new ByteTokenizer();
  const runId = await bench.newRun('policy');
  const spec = { ...bench.spec({ dacp: { steps: 4, batchSize: 2, learningRate: 1e-3, checkpointEvery: 2 } }), engine };
  return bench.attempt(async () =>
    bench.activities.continualPretrain({
      runId,
      round: 0,
      spec,
      baseDir,
      replayRatio: 0.25,
      baseModel: await bench.baseModel(tokenizer),
      domain: await bench.dataset('domain', Array.from({ length: 8 }, (_, i) => text(i))),
      replay: await bench.dataset('replay', Array.from({ length: 8 }, (_, i) => text(100 + i))),
    }),
  );
}

function expectRefused(error: unknown, type: string, message: RegExp) {
  expect(error).toBeInstanceOf(ApplicationFailure);
  expect((error as ApplicationFailure).type).toBe(type);
  expect((error as ApplicationFailure).nonRetryable).toBe(true);
  expect((error as Error).message).toMatch(message);
}

/** A trainer in the spec's folder that writes the environment it was given, then stops. */
function envDumpingTrainer(): { script: string; dump: string } {
  const script = path.join(specDir, 'env-trainer.js');
  const dump = path.join(specDir, 'env.json');
  writeFileSync(script, `require('fs').writeFileSync(${JSON.stringify(dump)}, JSON.stringify(process.env)); process.exit(3);\n`);
  return { script, dump };
}

describe('trainer commands', () => {
  test('unconfigured, a worker runs only programs and scripts in the spec folder or dacp\'s trainers/', async () => {
    const inline = await trainWith({ kind: 'command', command: ['python3', '-c', 'import os; os.system("id")'], env: [], killGraceSeconds: 10 });
    expectRefused(inline.error, 'TrainerNotAllowed', /runs nothing inside the spec's folder .* see docs\/security\.md/);
    const elsewhere = await trainWith({ kind: 'command', command: ['sh', '/etc/profile'], env: [], killGraceSeconds: 10 });
    expectRefused(elsewhere.error, 'TrainerNotAllowed', /runs nothing inside the spec's folder/);
  });

  test('a trainer sees a scrubbed environment: none of dacp\'s settings or the worker\'s secrets, only what the spec names', async () => {
    process.env.DATABASE_URL = 'postgres://dacp:db-password@db.internal/dacp';
    process.env.TEMPORAL_API_KEY = 'temporal-api-key-secret';
    process.env.DACP_HOME = '/var/lib/dacp';
    process.env.WORKER_ONLY_SECRET = 'not-for-trainers';
    process.env.HF_TOKEN = 'hf_named_by_the_spec';
    const { script, dump } = envDumpingTrainer();
    const run = await trainWith({ kind: 'command', command: [process.execPath, script], env: ['HF_TOKEN'], killGraceSeconds: 10 });
    expect(run.error).toBeDefined(); // the trainer stops at once, on purpose
    const seen = JSON.parse(readFileSync(dump, 'utf8')) as Record<string, string>;
    expect(seen.HF_TOKEN).toBe('hf_named_by_the_spec');
    expect(seen.PATH).toBe(process.env.PATH);
    for (const name of ['DATABASE_URL', 'TEMPORAL_API_KEY', 'DACP_HOME', 'WORKER_ONLY_SECRET']) expect(seen[name]).toBeUndefined();
    expect(JSON.stringify(seen)).not.toMatch(/db-password|temporal-api-key-secret|not-for-trainers/);
  });

  test('DACP_TRAINER_COMMANDS decides instead: only its argv prefixes run, even from the spec folder', async () => {
    const { script } = envDumpingTrainer();
    process.env.DACP_TRAINER_COMMANDS = JSON.stringify([[process.execPath, path.join(root, 'trainers', 'hf', 'dacp_hf_trainer.py')]]);
    const refused = await trainWith({ kind: 'command', command: [process.execPath, script], env: [], killGraceSeconds: 10 });
    expectRefused(refused.error, 'TrainerNotAllowed', /is not in this gpu worker's DACP_TRAINER_COMMANDS; the worker's administrator adds its argv prefix there \(a spec cannot\)/);
    const file = path.join(specDir, 'allowed.json');
    writeFileSync(file, JSON.stringify([[process.execPath, script]]));
    process.env.DACP_TRAINER_COMMANDS = file;
    const allowed = await trainWith({ kind: 'command', command: [process.execPath, script], env: [], killGraceSeconds: 10 });
    expect((allowed.error as ApplicationFailure | undefined)?.type).not.toBe('TrainerNotAllowed');
  });

  test("a spec may not hand dacp's own settings to a trainer", () => {
    expect(() => parseRunSpec(tinySpec({ engine: { kind: 'command', command: ['python3', 'train.py'], env: ['HF_TOKEN', 'DATABASE_URL'] } }))).toThrow(
      /engine\.env\.1: that is one of dacp's own variables/,
    );
    expect(() => parseRunSpec(tinySpec({ engine: { kind: 'hf', env: ['TEMPORAL_API_KEY'] } }))).toThrow(/engine\.env\.0: that is one of dacp's own variables/);
    // The worker's object storage credentials: a trainer from the spec would reach every artifact.
    expect(() => parseRunSpec(tinySpec({ engine: { kind: 'command', command: ['python3', 'train.py'], env: ['AWS_SECRET_ACCESS_KEY'] } }))).toThrow(
      /engine\.env\.0: that is one of dacp's own variables \(its database, Temporal, its object storage credentials/,
    );
  });
});

describe('sources', () => {
  const collect = (spec: RunSpec, baseDir: string) =>
    bench.attempt(async () => collectActivities({ pool: bench.db.pool, store: bench.store }).collectSources({ runId: 'policy-collect', spec, baseDir }));

  function specFolder(): string {
    const dir = mkdtempSync(path.join(os.tmpdir(), 'dacp-policy-spec-'));
    mkdirSync(path.join(dir, 'data'));
    writeFileSync(path.join(dir, 'data', 'a.txt'), text(1));
    return dir;
  }

  test('unconfigured, file sources stay inside the spec folder', async () => {
    const dir = specFolder();
    const outside = mkdtempSync(path.join(os.tmpdir(), 'dacp-policy-outside-'));
    writeFileSync(path.join(outside, 'secret.txt'), 'not for training');
    const spec = parseRunSpec(tinySpec({ sources: [{ kind: 'files', role: 'domain', paths: [path.join(outside, '*.txt')] }, ...tinySpec().sources.slice(1)] }));
    const run = await collect(spec, dir);
    expectRefused(run.error, 'SourceOutsideRoots', /dacp-policy-outside-\w+\/\*\.txt is outside the allowed source roots .*without it the spec's folder/);
  });

  test('DACP_DATA_ROOTS bounds them, and a spec cannot widen it with its own dataRoots', async () => {
    const dir = specFolder();
    const workerRoot = mkdtempSync(path.join(os.tmpdir(), 'dacp-policy-root-'));
    process.env.DACP_DATA_ROOTS = workerRoot;
    const spec = parseRunSpec(tinySpec({ dataRoots: ['data'], sources: [{ kind: 'files', role: 'domain', paths: ['data/*.txt'] }, ...tinySpec().sources.slice(1)] }));
    const run = await collect(spec, dir);
    expectRefused(run.error, 'SourceOutsideRoots', new RegExp(`dataRoots .* lie outside the folders this worker reads \\(${workerRoot}, DACP_DATA_ROOTS\\)`));
  });

  test('DACP_DATA_ROOTS entries may carry names; a schedule refers to its files by the innermost named root that holds its spec, and never past it', async () => {
    const outer = mkdtempSync(path.join(os.tmpdir(), 'dacp-policy-named-'));
    const inner = path.join(outer, 'telecom');
    mkdirSync(path.join(inner, 'specs'), { recursive: true });
    const policy = workerPolicy({ DACP_DATA_ROOTS: `/srv/plain${path.delimiter}all=${outer}${path.delimiter}telecom=${inner}${path.delimiter}/srv/a=b` });
    expect(policy.dataRoots).toEqual(['/srv/plain', outer, inner, '/srv/a=b']);
    expect(policy.namedRoots).toEqual({ all: outer, telecom: inner });
    expect(namedRootOf(path.join(inner, 'specs'), policy)).toEqual({ name: 'telecom', folder: inner });
    expect(namedRootOf('/elsewhere', policy)).toBeUndefined();
    expect(namedRootFolder('telecom', policy)).toBe(inner);
    expect(() => namedRootFolder('missing', policy)).toThrow(/DACP_DATA_ROOTS names no data root "missing" \(it names all, telecom\).*adds missing=\/folder/);
    expect(() => workerPolicy({ DACP_DATA_ROOTS: `a=/x${path.delimiter}a=/y` })).toThrow(/DACP_DATA_ROOTS names "a" twice/);

    // Staged for a schedule: paths become relative to the root; one outside it is refused, naming the field.
    const specDir = path.join(inner, 'specs');
    const live = { root: 'telecom', folder: inner };
    const inside = parseRunSpec(tinySpec({ sources: [{ kind: 'files', role: 'domain', paths: ['../domain/*.txt'] }, ...tinySpec().sources.slice(1)] }));
    const staged = await stageInputs(bench.store, { ...inside, sources: inside.sources.slice(0, 1) }, specDir, [outer], { live });
    expect(staged.spec.sources[0]).toMatchObject({ paths: ['domain/*.txt'] });
    const manifest = await bench.store.getJson<InputsManifest>({ uri: staged.baseDir, sha256: /([0-9a-f]{64})/.exec(staged.baseDir)?.[1] as string });
    expect(manifest).toMatchObject({ format: 'dacp-inputs/2', live: { root: 'telecom' } });
    // Only collect, on a control worker, reads the live folder: a gpu worker that maps no such root still gets the staged folder.
    const gpuPolicy = workerPolicy({});
    expect(existsSync(await inputsFolder(bench.store, staged.baseDir))).toBe(true);
    await expect(inputsFolders(bench.store, staged.baseDir, { scheduled: true, policy: gpuPolicy })).rejects.toThrow(/names no data root "telecom"/);
    expect((await inputsFolders(bench.store, staged.baseDir, { scheduled: true, policy })).live).toBe(inner);
    // A live folder in the manifest of a run with no schedule is refused.
    await expect(inputsFolders(bench.store, staged.baseDir, { scheduled: false, policy })).rejects.toThrow(/only a schedule's runs read their files from a live folder/);
    // Names that are Object's own properties are names like any other.
    expect(() => namedRootFolder('constructor', policy)).toThrow(/names no data root "constructor"/);
    expect(workerPolicy({ DACP_DATA_ROOTS: 'toString=/x' }).namedRoots).toEqual({ toString: '/x' });
    // A spec reached through a link to the root is inside it all the same.
    const link = path.join(outer, 'link');
    symlinkSync(inner, link);
    const viaLink = await stageInputs(bench.store, { ...inside, sources: inside.sources.slice(0, 1) }, path.join(link, 'specs'), [outer], { live: { root: 'telecom', folder: namedRootOf(path.join(link, 'specs'), policy)!.folder } });
    expect(viaLink.spec.sources[0]).toMatchObject({ paths: ['domain/*.txt'] });
    const past = parseRunSpec(tinySpec({ sources: [{ kind: 'files', role: 'domain', paths: ['../../elsewhere/*.txt'] }, ...tinySpec().sources.slice(1)] }));
    await expect(stageInputs(bench.store, { ...past, sources: past.sources.slice(0, 1) }, specDir, [outer], { live })).rejects.toThrow(
      /sources\[0\]\.paths "\.\.\/\.\.\/elsewhere\/\*\.txt" lies outside data root "telecom"/,
    );
    rmSync(outer, { recursive: true, force: true });
  });

  test('a Postgres source names its own variable, never one of dacp\'s, and one the worker allows', async () => {
    // eslint-disable-next-line @typescript-eslint/no-explicit-any -- a spec as a user might write it, missing fields included
    const postgres = (connectionEnv?: string): any => ({ kind: 'postgres', role: 'domain', query: 'SELECT 1', ...(connectionEnv ? { connectionEnv } : {}) });
    expect(() => parseRunSpec(tinySpec({ sources: [postgres(), ...tinySpec().sources.slice(1)] }))).toThrow(/sources\.0\.connectionEnv: name the environment variable that holds the source database's URL/);
    expect(() => parseRunSpec(tinySpec({ sources: [postgres('DATABASE_URL'), ...tinySpec().sources.slice(1)] }))).toThrow(/sources\.0\.connectionEnv: that is one of dacp's own variables/);
    process.env.DACP_SOURCE_ENVS = 'KB_URL,CRM_URL';
    process.env.WIKI_URL = 'postgres://127.0.0.1:1/none';
    const spec = parseRunSpec(tinySpec({ sources: [postgres('WIKI_URL'), ...tinySpec().sources.slice(1)] }));
    const run = await collect(spec, specFolder());
    expectRefused(run.error, 'SourceNotAllowed', /connectionEnv WIKI_URL is not in this worker's DACP_SOURCE_ENVS \(KB_URL, CRM_URL\)/);
  });
});
