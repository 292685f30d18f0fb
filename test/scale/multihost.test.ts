import { execFile, execFileSync } from 'node:child_process';
import { chownSync, cpSync, existsSync, mkdtempSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { CreateMultipartUploadCommand, HeadObjectCommand, ListMultipartUploadsCommand, PutObjectCommand } from '@aws-sdk/client-s3';
import { Client, Connection } from '@temporalio/client';
import pg from 'pg';
import { startDevServer, type DevServer } from '../../cli/devServer';
import { runStatus } from '../../cli/runs';
import type { RunContext } from '../../cli/status';
import { migrate } from '../../db/migrate';
import type { RunStatus } from '../../schemas/pipeline';
import { checkpointSha, newestCheckpoint, trainingAttempts } from '../faults/helpers/gpuRecords';
import { GpuWorkerProcess, writeStepProbe } from '../faults/helpers/gpuWorker';
import { sharedTinyBase, tinySpec, writeTinyCorpus } from '../helpers/fixtures';
import { enrolTestPrincipals } from '../helpers/identities';
import { startS3Server, type S3Server } from '../helpers/s3';
import { eventually, GiveUp, historyText as historyOf } from '../helpers/temporal';
import { createHosts, netnsUnavailable, type Hosts } from './netns';

const run = promisify(execFile);
const repoRoot = path.resolve(__dirname, '..', '..');
const dacpBin = path.join(repoRoot, 'bin', 'dacp.js');
const STEPS = 150;
const EVERY = 20;
const KILL_AT = 70;

const unavailable = netnsUnavailable();
if (unavailable) console.warn(`multi-host test skipped (not run, not passed): ${unavailable}`);
const describeHosts = unavailable ? describe.skip : describe;

/** Debian's PostgreSQL server binaries (the machine's own cluster is not used: it lives in the root namespace). */
function pgBin(): string {
  const versions = readdirSync('/usr/lib/postgresql').sort((a, b) => Number(b) - Number(a));
  return path.join('/usr/lib/postgresql', versions[0], 'bin');
}

describeHosts('several hosts (network namespaces): core, ctl, gpu1, gpu2, sharing no state on disk', () => {
  let net: Hosts;
  let temporal: DevServer;
  let s3: S3Server;
  let stopPostgres: (() => void) | undefined;
  let pool: pg.Pool;
  let client: Client;
  const dirs: string[] = [];
  const workers: GpuWorkerProcess[] = [];
  let env: Record<string, string>;
  let operatorHome: string;
  let runs: RunContext;
  let homes: Record<'ctl' | 'gpu1' | 'gpu2', string>;
  /** Where ctl mounts the data the operator has in its home (a copy with fewer domain files, so the folder read shows). */
  let ctlData: string;
  const homeOf = (name: string) => {
    const dir = mkdtempSync(path.join(os.tmpdir(), `dacp-${name}-`));
    dirs.push(dir);
    return dir;
  };

  beforeAll(async () => {
    net = createHosts(['core', 'ctl', 'gpu1', 'gpu2']);
    const core = net.hosts.core;

    // core: PostgreSQL, the Temporal dev server and the S3 server, each listening on core's address only.
    const pgData = homeOf('pg');
    chownSync(pgData, Number(execFileSync('id', ['-u', 'postgres']).toString()), Number(execFileSync('id', ['-g', 'postgres']).toString()));
    const data = path.join(pgData, 'data');
    execFileSync('runuser', ['-u', 'postgres', '--', path.join(pgBin(), 'initdb'), '-D', data, '-A', 'trust', '-U', 'postgres'], { stdio: 'ignore', cwd: '/' });
    // Reachable from the other hosts (the test's own subnet only).
    writeFileSync(path.join(data, 'pg_hba.conf'), `local all all trust\nhost all all ${core.ip.replace(/\.\d+$/, '.0')}/24 trust\n`);
    const pgCtl = (...args: string[]) =>
      execFileSync('ip', ['netns', 'exec', core.netns, 'runuser', '-u', 'postgres', '--', path.join(pgBin(), 'pg_ctl'), '-D', data, ...args], { stdio: 'ignore', cwd: '/', timeout: 90_000 });
    pgCtl('-l', path.join(pgData, 'postgres.log'), '-o', `-h ${core.ip} -p 5432 -k ${pgData} -c max_connections=200`, '-w', 'start');
    stopPostgres = () => pgCtl('-m', 'immediate', '-w', 'stop');
    const databaseUrl = `postgres://postgres@${core.ip}:5432/postgres`;
    pool = new pg.Pool({ connectionString: databaseUrl, max: 4 });
    await eventually(async () => (await pool.query('SELECT 1'), true), 'PostgreSQL on core', 60_000, 250);
    await migrate(pool);
    await enrolTestPrincipals(pool);

    [temporal, s3] = await Promise.all([
      startDevServer({ stateDir: homeOf('temporal'), port: 7233, ip: core.ip, listenIp: '0.0.0.0', netns: core.netns }),
      startS3Server({ ip: core.ip, netns: core.netns, ports: [9333, 8080, 8888, 8333] }),
    ]);
    await s3.createBucket('dacp-artifacts');
    await s3.createBucket('dacp-data');
    client = new Client({ connection: await Connection.connect({ address: temporal.address }) });

    env = {
      ...s3.env,
      DATABASE_URL: databaseUrl,
      TEMPORAL_ADDRESS: temporal.address,
      DACP_ARTIFACTS: 's3://dacp-artifacts/team-a',
      DACP_KEYS_DIR: process.env.DACP_KEYS_DIR as string,
    };
    // The operator's machine is this process (on the bridge): it holds the spec and its data.
    operatorHome = homeOf('operator');
    homes = { ctl: homeOf('ctl'), gpu1: homeOf('gpu1'), gpu2: homeOf('gpu2') };
    writeTinyCorpus(operatorHome);
    runs = { client, pool, artifactsDir: path.join(operatorHome, 'artifacts') };
    ctlData = homeOf('ctl-data');
    cpSync(path.join(operatorHome, 'data'), path.join(ctlData, 'data'), { recursive: true });
    for (const f of readdirSync(path.join(ctlData, 'data', 'domain')).sort().slice(0, 3)) rmSync(path.join(ctlData, 'data', 'domain', f));

    // A domain source in object storage, read by whichever host runs collect.
    await s3.client.send(new PutObjectCommand({ Bucket: 'dacp-data', Key: 'manuals/m1.txt', Body: 'The pump manual says: open the valve before priming the pump, then close it.' }));
    await s3.client.send(new PutObjectCommand({ Bucket: 'dacp-data', Key: 'manuals/m2.txt', Body: 'The valve manual says: a closed valve must never be primed; prime the pump first.' }));
    writeFileSync(
      path.join(operatorHome, 'spec.json'),
      JSON.stringify(
        tinySpec({
          sources: [
            { kind: 'files', role: 'domain', paths: ['data/domain/*.txt'] },
            { kind: 's3', role: 'domain', bucket: 'dacp-data', prefix: 'manuals/', glob: '*.txt' },
            { kind: 'files', role: 'replay', paths: ['data/general.jsonl'] },
            { kind: 'files', role: 'instruct', paths: ['data/pairs.jsonl'] },
          ],
          baseModel: sharedTinyBase,
          dacp: { steps: STEPS, batchSize: 8, learningRate: 3e-3, checkpointEvery: EVERY },
          heartbeatTimeout: '3s',
        }),
      ),
    );
  }, 240_000);

  afterAll(async () => {
    const bounded = (p: Promise<unknown> | undefined) => Promise.race([p?.catch(() => undefined), new Promise((r) => setTimeout(r, 20_000))]);
    await bounded(Promise.all(workers.map((w) => w.stop())));
    await bounded(client?.connection.close());
    await bounded(pool?.end());
    await bounded(Promise.all([temporal?.stop(), s3?.stop()]));
    try {
      stopPostgres?.();
    } catch {
      // net.remove() kills what is left on core
    }
    net?.remove();
    for (const dir of dirs) rmSync(dir, { recursive: true, force: true });
  });

  /**
   * A worker on `host`, as an operator starts it there: its own DACP_HOME, the shared services by
   * address. The hosts share this machine's file system, so each worker gets a mount namespace in
   * which the operator's folder and the other hosts' homes are empty: it can read only the network.
   */
  async function startWorker(host: 'ctl' | 'gpu1' | 'gpu2', queue: 'gpu' | 'control', extra: Record<string, string> = {}): Promise<GpuWorkerProcess & { home: string }> {
    const home = homes[host];
    const hidden = [operatorHome, ...Object.entries(homes).filter(([name]) => name !== host).map(([, dir]) => dir)];
    const isolate = ['sh', '-c', `${hidden.map((dir) => `mount -t tmpfs -o size=1m dacp-hidden ${dir}`).join(' && ')} && exec "$@"`, 'sh'];
    const worker = new GpuWorkerProcess({ ...env, DACP_HOME: home, ...extra }, writeStepProbe(home), [...net.prefix(host), ...isolate], queue);
    workers.push(worker);
    await worker.ready;
    return Object.assign(worker, { home });
  }

  async function dacp(args: string[], extra: Record<string, string> = {}): Promise<string> {
    const { stdout } = await run(process.execPath, [dacpBin, ...args], { cwd: operatorHome, env: { ...process.env, ...env, DACP_HOME: operatorHome, DACP_DEBUG: '1', ...extra }, timeout: 120_000 });
    return stdout;
  }

  async function until(runId: string, states: RunStatus['state'][], timeoutMs = 400_000): Promise<RunStatus> {
    return eventually(async () => {
      const s = await runStatus(runs, runId);
      if (!states.includes(s.state) && (s.state === 'failed' || s.state === 'cancelled' || s.state === 'rejected')) throw new GiveUp(`run ${runId} is ${s.state}: ${String(s.metrics.error)}`);
      return states.includes(s.state) ? s : undefined;
    }, `run ${runId} to be ${states.join(' or ')}`, timeoutMs, 500);
  }

  const historyText = (runId: string) => historyOf(client, runId);

  let referenceSha: string;
  let gpu1: GpuWorkerProcess & { home: string };

  test('an uninterrupted run, started from the operator machine, trains on gpu1 from staged inputs and an s3 source', async () => {
    // ctl names where it mounts the data a schedule reads by name (the last test).
    await startWorker('ctl', 'control', { DACP_DATA_ROOTS: `corpus=${ctlData}` });
    gpu1 = await startWorker('gpu1', 'gpu');
    await eventually(async () => (gpu1.log.includes('artifacts in s3://dacp-artifacts/team-a') ? true : undefined), 'gpu1 to name its artifact store', 10_000, 50);
    await dacp(['run', 'start', '--spec', 'spec.json', '--as', 'engineer', '--id', 'reference']);
    const status = await until('reference', ['awaiting_approval']);
    expect(status.metrics.baseModel).toBe('tiny-base:v1');
    referenceSha = (await checkpointSha(pool, 'reference', 'dacp', STEPS))!;
    expect(referenceSha).toMatch(/^[0-9a-f]{64}$/);
    // Both domain sources were read on ctl: the staged files, and the two objects of the s3 source.
    const history = await historyText('reference');
    expect(history).toContain('"index":1,"kind":"s3","role":"domain","docs":2');
    expect(history).toContain(`"index":0,"kind":"files","role":"domain","docs":${readdirSync(path.join(operatorHome, 'data', 'domain')).length}`);
    await client.workflow.getHandle('reference').cancel();
  });

  test('gpu1 is SIGKILLed mid-training; gpu2, with an empty disk, resumes from the checkpoint in object storage; the final checkpoint equals the uninterrupted one and the run deploys', async () => {
    expect(referenceSha).toBeDefined();
    const kill = gpu1.killAtStep(STEPS, KILL_AT);
    kill.catch(() => undefined);
    await dacp(['run', 'start', '--spec', 'spec.json', '--as', 'engineer', '--id', 'moved']);
    const killed = await kill;
    expect(killed.killedAtStep).toBeGreaterThanOrEqual(KILL_AT);
    const newest = await newestCheckpoint(pool, 'moved', 'dacp');
    expect(newest).not.toBeNull();
    expect(newest!.step).toBeGreaterThanOrEqual(KILL_AT - EVERY);
    // The checkpoint is in the bucket, which is all gpu2 shares with gpu1.
    const key = `team-a/checkpoints/${newest!.sha256.slice(0, 2)}/${newest!.sha256}.safetensors`;
    expect((await s3.client.send(new HeadObjectCommand({ Bucket: 'dacp-artifacts', Key: key }))).ContentLength).toBe(newest!.bytes);

    // What a worker killed mid-upload leaves: parts of an upload never completed. gpu2 sweeps it as it starts.
    const stale = await s3.client.send(new CreateMultipartUploadCommand({ Bucket: 'dacp-artifacts', Key: 'team-a/checkpoints/00/stale.safetensors' }));
    expect(stale.UploadId).toBeTruthy();
    const gpu2 = await startWorker('gpu2', 'gpu', { DACP_S3_UPLOAD_MAX_AGE_HOURS: '0' });
    await eventually(async () => {
      const open = await s3.client.send(new ListMultipartUploadsCommand({ Bucket: 'dacp-artifacts', Prefix: 'team-a/' }));
      return (open.Uploads ?? []).some((u) => u.Key === 'team-a/checkpoints/00/stale.safetensors') ? undefined : true;
    }, 'gpu2 to sweep the unfinished upload', 30_000, 200);
    const cached = path.join(gpu2.home, 'artifacts', 'checkpoints', newest!.sha256.slice(0, 2), `${newest!.sha256}.safetensors`);
    // gpu2 has never seen that checkpoint: the resume below reads it from object storage.
    expect(existsSync(cached)).toBe(false);
    const waiting = await until('moved', ['awaiting_approval']);
    const resumed = (await trainingAttempts(pool, 'moved', 'dacp')).at(-1)!;
    expect(resumed.resumedFromStep).toBe(newest!.step);
    expect(waiting.resumedFromStep).toBe(newest!.step);
    expect(await checkpointSha(pool, 'moved', 'dacp', STEPS)).toBe(referenceSha);

    await dacp(['approve', 'moved', '--as', 'approver-1']);
    const done = await until('moved', ['completed']);
    expect(done.state).toBe('completed');
    const deployed = await pool.query(`SELECT count(*)::int AS n FROM deployments WHERE run_id = 'moved'`);
    expect(deployed.rows[0].n).toBeGreaterThanOrEqual(1);

    // No machine's folder in history: the run names its inputs by artifact URI.
    const history = await historyText('moved');
    expect(history).toMatch(/artifact:inputs\/[0-9a-f]{64}\.json/);
    expect(history).not.toContain(operatorHome);
    expect(history).not.toContain(gpu1.home);
    expect(history).not.toContain(gpu2.home);
  });

  test("a schedule's firing reads its file sources on ctl, from where ctl mounts the named data root; no host's folder is in its history", async () => {
    const created = await dacp(['schedule', 'create', '--spec', 'spec.json', '--every', '7d', '--id', 'nightly', '--as', 'engineer'], { DACP_DATA_ROOTS: `corpus=${operatorHome}` });
    expect(created).toMatch(/data root "corpus"/);
    await dacp(['schedule', 'trigger', 'nightly', '--as', 'engineer']);
    const runId = await eventually(async () => (await pool.query(`SELECT run_id FROM runs WHERE schedule_id = 'nightly'`)).rows[0]?.run_id as string | undefined, 'the firing\'s run', 60_000, 250);
    const collected = await eventually(async () => {
      const s = await runStatus(runs, runId);
      if (s.state === 'failed') throw new GiveUp(`run ${runId} failed: ${String(s.metrics.error)}`);
      const pending = (await client.workflow.getHandle(runId).describe()).raw.pendingActivities ?? [];
      const failure = pending.map((a) => a.lastFailure?.message).find(Boolean);
      if (failure) throw new GiveUp(`run ${runId}: ${failure}`);
      return s.metrics.collect as { sources: { index: number; docs: number }[] } | undefined;
    }, `${runId} to collect`, 120_000, 250);
    await client.workflow.getHandle(runId).terminate('test over');
    await dacp(['schedule', 'delete', 'nightly', '--as', 'engineer']);
    // ctl's copy, not the operator's folder (which ctl cannot see).
    expect(collected.sources.find((x) => x.index === 0)?.docs).toBe(readdirSync(path.join(ctlData, 'data', 'domain')).length);
    expect(readdirSync(path.join(ctlData, 'data', 'domain')).length).toBe(readdirSync(path.join(operatorHome, 'data', 'domain')).length - 3);
    const history = await historyText(runId);
    expect(history).toMatch(/artifact:inputs\/[0-9a-f]{64}\.json/);
    expect(history).not.toContain(operatorHome);
    expect(history).not.toContain(ctlData);
  });
});
