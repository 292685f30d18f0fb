import { spawn, spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { Client, Connection } from '@temporalio/client';
import { freePort } from '../cli/devServer';
import { isProcessAlive } from '../db/lockfile';
import { createTestDatabase, type TestDatabase } from './helpers/db';
import { tinySpec, writeTinyCorpus } from './helpers/fixtures';
import { eventually, startTestDevServer, tempHome } from './helpers/temporal';

const dacpBin = path.resolve(__dirname, '..', 'bin', 'dacp.js');

describe('the dacp command refuses bad input with one clear line and starts nothing', () => {
  let server: Awaited<ReturnType<typeof startTestDevServer>>;
  let client: Client;
  let home: string;
  let env: NodeJS.ProcessEnv;

  beforeAll(async () => {
    home = tempHome();
    writeTinyCorpus(home);
    server = await startTestDevServer();
    client = new Client({ connection: await Connection.connect({ address: server.address }) });
    env = { ...process.env, TEMPORAL_ADDRESS: server.address, DACP_HOME: path.join(home, '.dacp') };
  });

  afterAll(async () => {
    await client?.connection.close();
    await server?.cleanup();
    rmSync(home, { recursive: true, force: true });
  });

  function dacp(...args: string[]) {
    const r = spawnSync(process.execPath, [dacpBin, ...args], { env, cwd: home, encoding: 'utf8' });
    return { code: r.status, stdout: r.stdout, stderr: r.stderr.trim() };
  }

  function writeSpec(name: string, spec: unknown): string {
    const file = path.join(home, name);
    writeFileSync(file, typeof spec === 'string' ? spec : JSON.stringify(spec));
    return file;
  }

  async function startedRuns(): Promise<number> {
    return (await client.workflow.count()).count;
  }

  test('a spec that is not JSON', () => {
    const r = dacp('run', 'start', '--spec', writeSpec('broken.json', '{"name": "x",'));
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(/^dacp: spec .*broken\.json is not valid JSON/);
    expect(r.stderr.split('\n')).toHaveLength(1);
  });

  test('every wrong field is named, with what to do', () => {
    const spec = { ...tinySpec(), replayRatio: 1.5, colour: 'blue', dacp: { steps: 0, batchSize: 8, learningRate: 1e-3, checkpointEvery: 5 } };
    delete (spec as Record<string, unknown>).approval;
    const r = dacp('run', 'start', '--spec', writeSpec('bad.json', spec));
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(/replayRatio: keep at least 5 % domain data/);
    expect(r.stderr).toMatch(/unknown field\(s\) "colour"/);
    expect(r.stderr).toMatch(/dacp\.steps/);
    expect(r.stderr).toMatch(/approval: Required/);
    expect(r.stderr.split('\n')).toHaveLength(1);
  });

  test('a spec without a replay source', () => {
    const spec = tinySpec();
    spec.sources = spec.sources.filter((s) => s.role !== 'replay');
    const r = dacp('run', 'start', '--spec', writeSpec('noreplay.json', spec));
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(/sources: add a source with role "replay"/);
  });

  test('a source path that matches nothing', () => {
    const spec = tinySpec();
    spec.sources[0] = { kind: 'files', role: 'domain', paths: ['data/missing/*.txt'] };
    const r = dacp('run', 'start', '--spec', writeSpec('missing.json', spec));
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(/sources\[0\]: .*data\/missing\/\*\.txt/);
  });

  test('a binary source file', () => {
    mkdirSync(path.join(home, 'bin-data'), { recursive: true });
    writeFileSync(path.join(home, 'bin-data', 'blob.txt'), Buffer.from([0x50, 0x4b, 0x03, 0x04, 0x00, 0x00, 0xff]));
    const spec = tinySpec();
    spec.sources[0] = { kind: 'files', role: 'domain', paths: ['bin-data/blob.txt'] };
    const r = dacp('run', 'start', '--spec', writeSpec('binary.json', spec));
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(/sources\[0\]: .*blob\.txt.*binary/i);
  });

  test('a database source whose connection variable is not set', () => {
    const spec = tinySpec();
    spec.sources.push({ kind: 'postgres', role: 'domain', query: 'SELECT body AS text FROM tickets', connectionEnv: 'TICKETS_DB_URL' });
    const r = dacp('run', 'start', '--spec', writeSpec('db.json', spec));
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(/sources\[3\]: environment variable TICKETS_DB_URL is not set/);
  });

  test('a malformed multiple-choice set, named by file:line and field', () => {
    const planted = 'planted sentence from a private ticket';
    writeFileSync(
      path.join(home, 'data', 'choices-bad.jsonl'),
      `${JSON.stringify({ question: 'q', choices: ['a', 'b'], answer: 1 })}\n{"question": "${planted}", "choices": ["a", "b"], "answer": 2}\n`,
    );
    const spec = tinySpec({ evaluation: { choices: { domain: 'data/choices-domain.jsonl', general: 'data/choices-bad.jsonl' } } });
    const r = dacp('run', 'start', '--spec', writeSpec('badchoices.json', spec));
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(/^dacp: evaluation\.choices\.general: data\/choices-bad\.jsonl:2: "answer" is 2, not an index of the 2 choices/);
    expect(r.stderr.split('\n')).toHaveLength(1);
    expect(r.stderr).not.toContain('planted');
  });

  test('a missing spec file and unknown options', () => {
    expect(dacp('run', 'start', '--spec', 'nope.json').stderr).toMatch(/cannot read spec nope\.json \(ENOENT\)/);
    const unknown = dacp('run', 'start', '--sepc', 'x');
    expect(unknown.code).toBe(2);
    expect(unknown.stderr).toMatch(/--sepc/);
    expect(dacp('frobnicate').stderr).toBe("dacp: unknown command 'frobnicate'; see `dacp --help`");
  });

  test('unknown run ids', () => {
    const status = dacp('run', 'status', 'no-such-run');
    expect(status.code).toBe(2);
    expect(status.stderr).toBe('dacp: no run with id no-such-run; see `dacp run list`');
    expect(dacp('approve', 'no-such-run', '--as', 'bob').stderr).toMatch(/no run with id no-such-run/);
    expect(dacp('run', 'status', 'bad id!').stderr).toMatch(/run id "bad id!" is invalid/);
  });

  test('none of the refused commands started a run', async () => {
    expect(await startedRuns()).toBe(0);
    const listed = dacp('run', 'list', '--json');
    expect(listed.code).toBe(0);
    expect(JSON.parse(listed.stdout)).toEqual([]);
  });
});

describe('dacp server', () => {
  let db: TestDatabase;

  beforeAll(async () => {
    db = await createTestDatabase();
  });
  afterAll(async () => {
    await db?.drop();
  });

  test('says clearly when its port is taken', async () => {
    const port = await freePort();
    const blocker = net.createServer().listen(port, '127.0.0.1');
    await new Promise((r) => blocker.once('listening', r));
    const home = tempHome();
    const r = spawnSync(process.execPath, [dacpBin, 'server'], {
      env: { ...process.env, DATABASE_URL: db.url, DACP_HOME: home, DACP_TEMPORAL_PORT: String(port) },
      encoding: 'utf8',
    });
    blocker.close();
    rmSync(home, { recursive: true, force: true });
    expect(r.status).toBe(1);
    expect(r.stderr.trim()).toBe(
      `dacp: port ${port} is taken (another Temporal server or \`dacp dev\` is running?): stop it, or choose another port with DACP_TEMPORAL_PORT`,
    );
  });

  test('starts the dev server with embedded Postgres, prints the UI address, and stops cleanly on SIGINT', async () => {
    const home = tempHome();
    const port = await freePort();
    const uiPort = await freePort();
    const env: NodeJS.ProcessEnv = { ...process.env, DACP_HOME: home, DACP_TEMPORAL_PORT: String(port), DACP_TEMPORAL_UI_PORT: String(uiPort) };
    delete env.DATABASE_URL;
    const child = spawn(process.execPath, [dacpBin, 'server'], { env, stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    child.stdout!.on('data', (d) => (out += d));
    child.stderr!.on('data', (d) => (out += d));
    const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
    await eventually(async () => (out.includes('ready') ? true : undefined), 'dacp server to be ready', 120_000);
    expect(out).toMatch(/database: embedded PostgreSQL/);
    expect(out).toContain(`temporal UI: http://127.0.0.1:${uiPort}`);

    // The search attributes the project uses are registered.
    const connection = await Connection.connect({ address: `127.0.0.1:${port}` });
    const attrs = await connection.operatorService.listSearchAttributes({ namespace: 'default' });
    expect(Object.keys(attrs.customAttributes ?? {})).toEqual(expect.arrayContaining(['DacpStage', 'DacpState']));
    await connection.close();

    const pgState = JSON.parse(readFileSync(path.join(home, 'postgres', 'server.json'), 'utf8')) as { pid: number };
    expect(isProcessAlive(pgState.pid)).toBe(true);
    child.kill('SIGINT');
    expect(await exited).toBe(0);
    expect(out).toMatch(/stopped/);
    // Nothing is left listening: the port is free again, and the embedded Postgres is down.
    const probe = net.createServer().listen(port, '127.0.0.1');
    await new Promise((resolve, reject) => {
      probe.once('listening', resolve);
      probe.once('error', reject);
    });
    probe.close();
    expect(existsSync(path.join(home, 'postgres', 'server.json'))).toBe(false);
    expect(isProcessAlive(pgState.pid)).toBe(false);
    rmSync(home, { recursive: true, force: true });
  });
});
