import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import OpenAI from 'openai';
import { initBackend } from '../ml/backend';
import { gpt2FolderFiles, writeFolder } from '../ml/hfFolder';
import { GPT } from '../ml/model';
import { BpeTokenizer } from '../ml/tokenizer';
import { enrolTestPrincipals } from './helpers/identities';
import { createTestDatabase, type TestDatabase } from './helpers/db';
import { eventually } from './helpers/temporal';

/**
 * `dacp serve` as a user runs it: a spawned `dacp serve` on the home's registry (no Temporal), the
 * official OpenAI client against it, streaming and not, errors in OpenAI's shape, an API key, and a
 * hot swap when the alias moves under concurrent load with no failed request.
 */

const root = path.resolve(__dirname, '..');
let db: TestDatabase;
let home: string;
let env: NodeJS.ProcessEnv;
const servers: ChildProcess[] = [];

function dacp(...args: string[]) {
  const r = spawnSync(process.execPath, [path.join(root, 'bin', 'dacp.js'), ...args], { env, cwd: home, encoding: 'utf8' });
  return { code: r.status, stdout: r.stdout, stderr: r.stderr.trim() };
}

/** `dacp serve` on a free port; resolves with its base URL once it listens. */
async function startServe(...args: string[]): Promise<{ url: string; child: ChildProcess; output: () => string }> {
  const child = spawn(process.execPath, [path.join(root, 'bin', 'dacp.js'), 'serve', '--port', '0', ...args], { env, cwd: home, stdio: ['ignore', 'pipe', 'pipe'] });
  servers.push(child);
  let output = '';
  child.stdout!.on('data', (d) => (output += d));
  child.stderr!.on('data', (d) => (output += d));
  const url = await eventually(async () => {
    if (child.exitCode !== null) throw new Error(`dacp serve exited ${child.exitCode}: ${output}`);
    return /listening on (http:\/\/[^\s]+)/.exec(output)?.[1];
  }, 'dacp serve to listen', 60_000, 100);
  return { url, child, output: () => output };
}

beforeAll(async () => {
  db = await createTestDatabase();
  home = mkdtempSync(path.join(tmpdir(), 'dacp-serve-'));
  env = { ...process.env, DATABASE_URL: db.url, DACP_HOME: home, DACP_SERVE_POLL_MS: '200' };
  delete env.TEMPORAL_ADDRESS;
  await initBackend('cpu');
  // Two small models with the same tokenizer, imported as a user would.
  const tokenizer = BpeTokenizer.train(['the cell site alarm cleared after the reboot. '.repeat(30)], { vocabSize: 300 });
  for (const [name, seed] of [['serve-a', 1], ['serve-b', 2]] as const) {
    const model = GPT.create({ vocabSize: tokenizer.vocabSize, contextLength: 64, dModel: 32, nLayers: 1, nHeads: 2 }, seed);
    await writeFolder(path.join(home, name), gpt2FolderFiles(model, tokenizer));
    model.dispose();
    expect(dacp('models', 'import', name, '--from', path.join(home, name)).code).toBe(0);
  }
  // The operator who promotes (the imports above applied the migrations).
  await enrolTestPrincipals(db.pool);
  expect(dacp('models', 'promote', 'serve-a:v1', '--as', 'ops').code).toBe(0);
}, 120_000);

afterAll(async () => {
  for (const child of servers) if (child.exitCode === null) child.kill('SIGTERM');
  await Promise.all(servers.map((c) => (c.exitCode === null ? new Promise((r) => c.once('exit', r)) : undefined)));
  await db?.drop();
  if (home) rmSync(home, { recursive: true, force: true });
});

describe('dacp serve', () => {
  let url: string;
  let client: OpenAI;

  beforeAll(async () => {
    ({ url } = await startServe());
    client = new OpenAI({ baseURL: `${url}/v1`, apiKey: 'unused', maxRetries: 0 });
  }, 90_000);

  test('health and models name the served version; it listens on 127.0.0.1 by default', async () => {
    expect(url).toMatch(/^http:\/\/127\.0\.0\.1:\d+$/);
    expect(await (await fetch(`${url}/health`)).json()).toMatchObject({ status: 'ok', alias: 'production', version: 'serve-a:v1', sha256: expect.stringMatching(/^[0-9a-f]{64}$/) });
    const models = await client.models.list();
    expect(models.data.map((m) => m.id)).toEqual(['production', 'serve-a:v1']);
  });

  test('the OpenAI client: completions and chat, greedy answers equal streamed and not, usage counted', async () => {
    const completion = await client.completions.create({ model: 'production', prompt: 'the cell site', max_tokens: 8, temperature: 0 });
    expect(completion.object).toBe('text_completion');
    expect(completion.model).toBe('serve-a:v1');
    expect(completion.choices[0]).toMatchObject({ index: 0, text: expect.any(String), finish_reason: expect.stringMatching(/^(length|stop)$/) });
    expect(completion.usage?.completion_tokens).toBeGreaterThan(0);
    expect(completion.usage?.completion_tokens).toBeLessThanOrEqual(8);
    expect(completion.usage?.total_tokens).toBe((completion.usage?.prompt_tokens ?? 0) + (completion.usage?.completion_tokens ?? 0));

    const messages = [{ role: 'system' as const, content: 'Answer briefly.' }, { role: 'user' as const, content: 'Why did the alarm clear?' }];
    const chat = await client.chat.completions.create({ model: 'serve-a:v1', messages, max_tokens: 10, temperature: 0 });
    expect(chat.object).toBe('chat.completion');
    expect(chat.choices[0]?.message.role).toBe('assistant');
    const whole = chat.choices[0]?.message.content ?? '';

    const stream = await client.chat.completions.create({ model: 'production', messages, max_tokens: 10, temperature: 0, stream: true, stream_options: { include_usage: true } });
    let streamed = '';
    let finish: string | null = null;
    let usage: OpenAI.CompletionUsage | undefined;
    for await (const chunk of stream) {
      expect(chunk.object).toBe('chat.completion.chunk');
      streamed += chunk.choices[0]?.delta.content ?? '';
      finish = chunk.choices[0]?.finish_reason ?? finish;
      usage = chunk.usage ?? usage;
    }
    expect(streamed).toBe(whole);
    expect(finish).toBe(chat.choices[0]?.finish_reason);
    expect(usage?.completion_tokens).toBe(chat.usage?.completion_tokens);

    const textStream = await client.completions.create({ model: 'production', prompt: 'the cell site', max_tokens: 8, temperature: 0, stream: true });
    let text = '';
    for await (const chunk of textStream) text += chunk.choices[0]?.text ?? '';
    expect(text).toBe(completion.choices[0]?.text);

    // Seeded sampling repeats; a stop sequence cuts the answer before it.
    const sampled = () => client.completions.create({ model: 'production', prompt: 'the', max_tokens: 12, temperature: 0.9, top_p: 0.9, seed: 7 });
    expect((await sampled()).choices[0]?.text).toBe((await sampled()).choices[0]?.text);
    const long = (await client.completions.create({ model: 'production', prompt: 'the', max_tokens: 20, temperature: 0 })).choices[0]?.text ?? '';
    const stopAt = long.slice(3, 6);
    expect(stopAt.length).toBe(3);
    const stopped = await client.completions.create({ model: 'production', prompt: 'the', max_tokens: 20, temperature: 0, stop: [stopAt] });
    expect(stopped.choices[0]).toMatchObject({ text: long.slice(0, long.indexOf(stopAt)), finish_reason: 'stop' });
  });

  test('bad requests get a 4xx in OpenAI\'s error shape, and the server stays up', async () => {
    const post = (route: string, body: unknown) => fetch(`${url}${route}`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) });
    const missing = await post('/v1/completions', { model: 'production' });
    expect(missing.status).toBe(400);
    expect(await missing.json()).toEqual({ error: { message: expect.stringMatching(/^prompt: /), type: 'invalid_request_error', param: 'prompt', code: null } });
    const hot = await post('/v1/chat/completions', { model: 'production', messages: [{ role: 'user', content: 'x' }], temperature: 9 });
    expect([hot.status, ((await hot.json()) as { error: { param: string } }).error.param]).toEqual([400, 'temperature']);
    const notJson = await fetch(`${url}/v1/completions`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: '{"model": ' });
    expect(notJson.status).toBe(400);
    expect(((await notJson.json()) as { error: { type: string } }).error.type).toBe('invalid_request_error');
    const tooLong = await post('/v1/completions', { model: 'production', prompt: 'alarm '.repeat(200) });
    expect(((await tooLong.json()) as { error: { code: string } }).error.code).toBe('context_length_exceeded');
    await expect(client.completions.create({ model: 'gpt-4', prompt: 'x' })).rejects.toMatchObject({ status: 404, code: 'model_not_found' });
    expect((await fetch(`${url}/v1/nothing`)).status).toBe(404);
    expect((await fetch(`${url}/health`)).status).toBe(200);
  });

  test('the alias moves under concurrent load: the new version is swapped in and no request fails', async () => {
    let stop = false;
    const served = new Set<string>();
    const failures: string[] = [];
    let done = 0;
    const clientLoop = async (i: number) => {
      while (!stop) {
        try {
          if (i % 2 === 0) {
            const r = await client.completions.create({ model: 'production', prompt: 'the cell', max_tokens: 6, temperature: 0 });
            served.add(r.model);
          } else {
            const s = await client.chat.completions.create({ model: 'production', messages: [{ role: 'user', content: 'status?' }], max_tokens: 6, temperature: 0, stream: true });
            for await (const chunk of s) served.add(chunk.model);
          }
          done += 1;
        } catch (err) {
          failures.push((err as Error).message);
        }
      }
    };
    const loops = Array.from({ length: 8 }, (_, i) => clientLoop(i));
    await eventually(async () => (done >= 16 ? true : undefined), 'load to run', 60_000, 50);
    expect(dacp('models', 'promote', 'serve-b:v1', '--as', 'ops').code).toBe(0);
    await eventually(async () => (((await (await fetch(`${url}/health`)).json()) as { version: string }).version === 'serve-b:v1' ? true : undefined), 'the swap', 30_000, 50);
    const after = done;
    await eventually(async () => (done >= after + 16 ? true : undefined), 'load on the new version', 60_000, 50);
    stop = true;
    await Promise.all(loops);
    expect(failures).toEqual([]);
    expect([...served].sort()).toEqual(['serve-a:v1', 'serve-b:v1']);
    expect((await client.completions.create({ model: 'production', prompt: 'x', max_tokens: 2 })).model).toBe('serve-b:v1');
    // A rollback moves it back the same way.
    expect(dacp('models', 'rollback', '--as', 'ops').code).toBe(0);
    await eventually(async () => (((await (await fetch(`${url}/health`)).json()) as { version: string }).version === 'serve-a:v1' ? true : undefined), 'the swap back', 30_000, 50);
    // An alias removed (as a rollback with nothing to go back to removes it) is served by nothing: 503, until it returns.
    await db.pool.query(`DELETE FROM model_aliases WHERE alias = 'production'`);
    await eventually(async () => ((await fetch(`${url}/health`)).status === 503 ? true : undefined), 'the server to stop serving', 30_000, 50);
    await expect(client.completions.create({ model: 'production', prompt: 'x', max_tokens: 2 })).rejects.toMatchObject({ status: 503, code: 'model_unavailable' });
    expect(dacp('models', 'promote', 'serve-a:v1', '--as', 'ops').code).toBe(0);
    await eventually(async () => ((await fetch(`${url}/health`)).status === 200 ? true : undefined), 'the server to serve again', 30_000, 50);
    expect((await client.completions.create({ model: 'production', prompt: 'x', max_tokens: 2 })).model).toBe('serve-a:v1');
  }, 180_000);
});

test('with --api-key, /v1 needs the key (the OpenAI client sends it); /health does not', async () => {
  const { url } = await startServe('--api-key', 'sk-test-123');
  const denied = await fetch(`${url}/v1/models`);
  expect(denied.status).toBe(401);
  // The route that matched decides, not how the URL was spelled.
  for (const spelled of ['/%761/models', '/v%31/models', '/v1/%6dodels']) expect([spelled, (await fetch(`${url}${spelled}`)).status]).toEqual([spelled, 401]);
  expect(await denied.json()).toMatchObject({ error: { code: 'invalid_api_key' } });
  await expect(new OpenAI({ baseURL: `${url}/v1`, apiKey: 'wrong', maxRetries: 0 }).models.list()).rejects.toMatchObject({ status: 401 });
  const ok = new OpenAI({ baseURL: `${url}/v1`, apiKey: 'sk-test-123', maxRetries: 0 });
  expect((await ok.completions.create({ model: 'production', prompt: 'the', max_tokens: 3 })).choices).toHaveLength(1);
  expect((await fetch(`${url}/health`)).status).toBe(200);
}, 90_000);

test('with no DATABASE_URL and no Temporal it opens the home\'s embedded registry on its own', () => {
  const fresh = mkdtempSync(path.join(tmpdir(), 'dacp-serve-embedded-'));
  try {
    const alone: NodeJS.ProcessEnv = { ...env, DACP_HOME: fresh };
    delete alone.DATABASE_URL;
    const r = spawnSync(process.execPath, [path.join(root, 'bin', 'dacp.js'), 'serve', '--port', '0'], { env: alone, cwd: fresh, encoding: 'utf8', timeout: 180_000 });
    // It started the embedded PostgreSQL, migrated it and looked for production, which a fresh home lacks.
    expect([r.status, r.stderr.trim()]).toEqual([2, 'dacp: cannot serve production: no model version or alias "production" in the registry; deploy or import one first']);
  } finally {
    rmSync(fresh, { recursive: true, force: true });
  }
}, 200_000);

test('an alias that points nowhere is refused in one line', () => {
  const r = spawnSync(process.execPath, [path.join(root, 'bin', 'dacp.js'), 'serve', '--alias', 'staging', '--port', '0'], { env, cwd: home, encoding: 'utf8', timeout: 60_000 });
  expect(r.status).toBe(2);
  expect(r.stderr.trim()).toBe('dacp: cannot serve staging: no model version or alias "staging" in the registry; deploy or import one first');
});
