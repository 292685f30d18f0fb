import { spawnSync } from 'node:child_process';
import { cpSync, existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import * as tf from '@tensorflow/tfjs';
import { DefaultLogger, Runtime } from '@temporalio/worker';
import { ArtifactStore } from '../activities/artifacts';
import { sftExamplesOf, writeDataset } from '../activities/datasets';
import { initBackend } from '../ml/backend';
import { encodeInstructionPrompt, formatInstructionPrompt } from '../ml/mixing';
import { readHfFolder } from '../ml/hfFolder';
import type { ShownModel } from '../cli/models';
import { decide, runStatus, startRun } from '../cli/runs';
import type { PipelineResult, RunStatus } from '../schemas/pipeline';
import { parseRunSpec } from '../schemas/runSpec';
import { verifyStatement } from '../schemas/signing';
import { createTestDatabase } from './helpers/db';
import { tinySpec } from './helpers/fixtures';
import { startHarness, type Harness } from './helpers/harness';
import { MULTILINGUAL } from './helpers/multilingual';
import { eventually, GiveUp } from './helpers/temporal';

Runtime.install({ logger: new DefaultLogger('WARN') });

/**
 * A user's own model through the lifecycle: a GPT-2 folder made by transformers is imported with
 * `dacp models import`, a run adapts it and deploys, `dacp models export` writes the result out,
 * and transformers loads and generates with it. Needs the project's Python with transformers
 * (scripts/setup-python.sh, which `npm test` runs first).
 */

const root = path.resolve(__dirname, '..');
const python = path.join(root, '.tools', 'venv', 'bin', 'python');
const env = { ...process.env, TRANSFORMERS_VERBOSITY: 'error', TOKENIZERS_PARALLELISM: 'false' };
const hasTransformers = existsSync(python) && spawnSync(python, ['-c', 'import transformers'], { env }).status === 0;
if (!hasTransformers) console.warn(`skipping the model import tests: ${python} cannot import transformers (run \`bash scripts/setup-python.sh\`)`);
const withTransformers = hasTransformers ? describe : describe.skip;

withTransformers('dacp models import / export with a model made by transformers', () => {
  let h: Harness;
  let fixtures: string;

  beforeAll(async () => {
    fixtures = mkdtempSync(path.join(tmpdir(), 'dacp-hf-fixtures-'));
    const made = spawnSync(python, [path.join(root, 'scripts', 'make-hf-fixtures.py'), fixtures], { env, encoding: 'utf8' });
    if (made.status !== 0) throw new Error(`make-hf-fixtures.py failed: ${made.stderr}`);
    h = await startHarness({ inProcessGpu: true });
    await initBackend();
  });

  afterAll(async () => {
    await h?.stop();
    if (fixtures) rmSync(fixtures, { recursive: true, force: true });
  });

  function dacp(...args: string[]) {
    const r = spawnSync(process.execPath, [path.join(root, 'bin', 'dacp.js'), ...args], { env: { ...process.env, ...h.env }, cwd: h.home, encoding: 'utf8' });
    return { code: r.status, stdout: r.stdout, stderr: r.stderr.trim() };
  }

  function hfCheck(folder: string, mode: string, input: unknown): Record<string, unknown> {
    const run = spawnSync(python, [path.join(root, 'scripts', 'hf-check.py'), folder, mode], { env, input: JSON.stringify(input), encoding: 'utf8', maxBuffer: 256 * 2 ** 20 });
    if (run.status !== 0) throw new Error(`hf-check.py ${mode}: ${run.stderr}`);
    return JSON.parse(run.stdout) as Record<string, unknown>;
  }

  const FAMILY = ['gpt2', 'llama', 'llama-bf16', 'qwen2', 'smollm', 'mistral'] as const;
  /** Long enough to pass the window of rotary scaling (16) in smollm; within mistral's sliding window (32). */
  const sequenceOf = (tokenizer: { encode(text: string): number[] }) => MULTILINGUAL.flatMap((text) => tokenizer.encode(text)).slice(0, 32);
  let transformersSays: Promise<Record<string, { ids?: number[][]; logits: number[][] }>> | undefined;
  /** What transformers answers for every fixture, asked in one process (importing torch is most of a call). */
  function askTransformers() {
    transformersSays ??= (async () => {
      const calls: { dir: string; mode: string; request: unknown }[] = [];
      for (const name of FAMILY) {
        const dir = path.join(fixtures, name);
        const { tokenizer, model } = await readHfFolder(dir);
        model.dispose();
        // The Llama-family fixtures share one tokenizer: asking transformers once for it is enough.
        if (name === 'gpt2' || name === 'llama') calls.push({ dir, mode: 'tokenize', request: { texts: MULTILINGUAL } });
        calls.push({ dir, mode: 'logits', request: { ids: sequenceOf(tokenizer) } });
      }
      const { answers } = hfCheck('-', 'batch', { calls }) as { answers: Record<string, unknown>[] };
      const out: Record<string, { ids?: number[][]; logits: number[][] }> = {};
      calls.forEach((call, i) => {
        const name = path.basename(call.dir);
        out[name] = { ...out[name], ...(answers[i] as object) } as { ids?: number[][]; logits: number[][] };
      });
      return out;
    })();
    return transformersSays;
  }

  test.each(FAMILY)(
    '%s: read with its own tokenizer.json (ids as transformers\' tokenizer gives) and computing transformers\' logits to 1e-4',
    async (name) => {
      const answers = await askTransformers();
      const loaded = await readHfFolder(path.join(fixtures, name));
      try {
        const ids = answers[name]?.ids ?? answers.llama?.ids;
        expect(MULTILINGUAL.map((text) => loaded.tokenizer.encode(text))).toEqual(ids);
        const sequence = sequenceOf(loaded.tokenizer);
        const logits = answers[name]?.logits as number[][];
        const ours = tf.tidy(() => loaded.model.logits(tf.tensor2d([sequence], undefined, 'int32')).arraySync()[0] as number[][]);
        expect(ours).toHaveLength(32);
        const worst = Math.max(...ours.flatMap((row, t) => row.map((v, j) => Math.abs(v - (logits[t]?.[j] ?? Number.NaN)))));
        expect(worst).toBeLessThan(1e-4);
        expect(loaded.family).toBe(name === 'gpt2' ? 'gpt2' : 'llama');
      } finally {
        loaded.model.dispose();
      }
    },
  );

  test('instruction tuning and evaluation lay prompts out with the model\'s chat template, as transformers\' apply_chat_template does', async () => {
    const prompts = ['What does a gNB do?', '기지국 경보가 울리면 무엇을 먼저 확인합니까?'];
    const store = new ArtifactStore(h.runs.artifactsDir);
    const pairs = await writeDataset(store, 'instruct', 'train', prompts.map((prompt) => ({ prompt, response: 'Check the link.' })));
    for (const name of ['llama', 'gpt2']) {
      const folder = path.join(fixtures, name);
      const loaded = await readHfFolder(folder);
      loaded.model.dispose();
      const chat = (hfCheck(folder, 'chat', { prompts }) as { ids: number[][] | null }).ids;
      // What the instruct stage trains on (the same function lays out the evaluation's prompts).
      const examples = await sftExamplesOf({ pool: h.db.pool, store }, loaded.tokenizer, pairs);
      if (name === 'llama') {
        expect(chat).not.toBeNull();
        expect(examples.map((e) => e.prompt)).toEqual(chat);
      } else {
        // No template: the plain prompt/response layout.
        expect(chat).toBeNull();
        expect(examples.map((e) => e.prompt)).toEqual(prompts.map((p) => loaded.tokenizer.encode(formatInstructionPrompt(p))));
      }
      expect(examples.map((e) => e.prompt)).toEqual(prompts.map((p) => encodeInstructionPrompt(loaded.tokenizer, p)));
    }
  });

  test('a folder of another architecture is refused in one line naming it, and nothing is registered', () => {
    const bert = path.join(fixtures, 'bert');
    cpSync(path.join(fixtures, 'gpt2'), bert, { recursive: true });
    const config = JSON.parse(readFileSync(path.join(bert, 'config.json'), 'utf8')) as Record<string, unknown>;
    writeFileSync(path.join(bert, 'config.json'), JSON.stringify({ ...config, model_type: 'bert', architectures: ['BertForMaskedLM'] }));
    const r = dacp('models', 'import', 'tiny-bert', '--from', bert);
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(/^dacp: cannot import .*bert: BertForMaskedLM \(model_type bert\) is not supported; dacp imports the GPT-2 family \(gpt2\) and the Llama family/);
    expect(r.stderr.split('\n')).toHaveLength(1);
    const missing = dacp('models', 'import', 'x', '--from', path.join(fixtures, 'nowhere'));
    expect(missing).toMatchObject({ code: 2, stderr: expect.stringMatching(/--from .*nowhere: not a folder/) });
    expect(JSON.parse(dacp('models', 'list', '--json').stdout)).toEqual([]);
  });

  test('a tiny Llama runs the whole pipeline, deploys, and its exported folder loads in transformers and generates', async () => {
    const imported = dacp('models', 'import', 'tiny-llama', '--from', path.join(fixtures, 'llama-bf16'), '--json');
    expect(imported.stderr).toBe('');
    expect(JSON.parse(imported.stdout)).toMatchObject({ versionId: 'tiny-llama:v1', family: 'llama', dtype: 'BF16' });
    // Kept in the registry as given: bfloat16 weights, streamed in file by file.
    const bf16 = path.join(h.home, 'exported-llama-bf16');
    expect(dacp('models', 'export', 'tiny-llama:v1', '--out', bf16).code).toBe(0);
    expect(readFileSync(path.join(bf16, 'model.safetensors')).equals(readFileSync(path.join(fixtures, 'llama-bf16', 'model.safetensors')))).toBe(true);
    const spec = parseRunSpec(tinySpec({ name: 'tiny-llama-telecom', baseModel: { ref: 'tiny-llama:v1', bootstrapIfMissing: false }, deploy: { alias: 'llama-prod' } }));
    const runId = await startRun(h.runs, { spec, baseDir: h.home, runId: 'imported-llama', initiator: 'engineer' });
    await eventually<RunStatus>(async () => {
      const s = await runStatus(h.runs, runId);
      if (s.state === 'failed') throw new GiveUp(`run failed: ${String(s.metrics.error)}`);
      return s.state === 'awaiting_approval' ? s : undefined;
    }, 'the run on the imported Llama reaches approval', 600_000, 250);
    await decide(h.runs, { runId, principal: 'approver-1', decision: 'approve' });
    expect(await h.client.workflow.getHandle(runId).result()).toMatchObject({ state: 'completed', versionId: 'tiny-llama-telecom:v1' });
    const listed = JSON.parse(dacp('models', 'list', '--json').stdout) as Record<string, unknown>[];
    expect(listed.find((m) => m.versionId === 'tiny-llama-telecom:v1')).toMatchObject({ family: 'llama', aliases: ['llama-prod'], parameters: 56_992 });
    const out = path.join(h.home, 'exported-llama');
    expect(dacp('models', 'export', 'llama-prod', '--out', out).code).toBe(0);
    // The source config goes back out (architecture, ids, rotary settings), now in float32.
    const config = JSON.parse(readFileSync(path.join(out, 'config.json'), 'utf8')) as Record<string, unknown>;
    expect(config).toMatchObject({ model_type: 'llama', architectures: ['LlamaForCausalLM'], num_key_value_heads: 2, tie_word_embeddings: false, torch_dtype: 'float32' });
    expect(hfCheck(out, 'describe', {})).toMatchObject({ model_type: 'llama', parameters: 56_992 });
    const generated = hfCheck(out, 'generate', { prompt: 'The gNB alarm', maxNewTokens: 8 }) as { ids: number[] };
    expect(generated.ids.length).toBeGreaterThan(0);
    // What dacp trained is what transformers computes.
    const back = await readHfFolder(out);
    try {
      const sequence = [5, 17, 42, 99, 3, 250, 7, 8];
      const { logits } = hfCheck(out, 'logits', { ids: sequence }) as { logits: number[][] };
      const ours = tf.tidy(() => back.model.logits(tf.tensor2d([sequence], undefined, 'int32')).arraySync()[0] as number[][]);
      expect(Math.max(...ours.flatMap((row, t) => row.map((v, j) => Math.abs(v - (logits[t]?.[j] ?? Number.NaN)))))).toBeLessThan(1e-4);
    } finally {
      back.model.dispose();
    }
  });

  test('the command engine trains a Llama base too: its trainer gets a model folder and returns one', async () => {
    const spec = parseRunSpec(tinySpec({
      name: 'tiny-llama-command',
      baseModel: { ref: 'tiny-llama:v1', bootstrapIfMissing: false },
      engine: { kind: 'command', command: [python, path.join(root, 'trainers', 'hf', 'dacp_hf_trainer.py')] },
    }));
    const runId = await startRun(h.runs, { spec, baseDir: h.home, runId: 'imported-llama-command', initiator: 'engineer' });
    const trained = await eventually<RunStatus>(async () => {
      const s = await runStatus(h.runs, runId);
      if (s.state === 'failed') throw new GiveUp(`run failed: ${String(s.metrics.error)}`);
      return s.metrics.dacp ? s : undefined;
    }, 'the dacp stage to finish', 300_000, 250);
    expect(trained.metrics.dacp).toMatchObject({ backend: 'command:python', finalStep: spec.dacp.steps });
    const job = JSON.parse(readFileSync(path.join(h.home, 'logs', runId, 'dacp-0-attempt-1.job.json'), 'utf8')) as Record<string, unknown>;
    expect(job).toMatchObject({ protocol: 'dacp-trainer/2', stage: 'dacp' });
    expect(job.hf).toBeUndefined();
    await h.client.workflow.getHandle(runId).terminate('test over');
  });

  test('imported, adapted by a run, deployed, exported: transformers loads the result and generates', async () => {
    const imported = dacp('models', 'import', 'tiny-gpt2', '--from', path.join(fixtures, 'gpt2'), '--alias', 'production', '--json');
    expect(imported.stderr).toBe('');
    expect(JSON.parse(imported.stdout)).toMatchObject({ versionId: 'tiny-gpt2:v1', existed: false, family: 'gpt2', dtype: 'F32', alias: 'production' });
    // Importing the same folder again registers nothing new.
    expect(JSON.parse(dacp('models', 'import', 'tiny-gpt2', '--from', path.join(fixtures, 'gpt2'), '--json').stdout)).toMatchObject({ versionId: 'tiny-gpt2:v1', existed: true });

    // A run whose base is the imported model continues from it.
    const spec = parseRunSpec(tinySpec({ name: 'tiny-gpt2-telecom', baseModel: { ref: 'production', bootstrapIfMissing: false } }));
    const runId = await startRun(h.runs, { spec, baseDir: h.home, runId: 'imported-gpt2', initiator: 'engineer' });
    const waiting = await eventually<RunStatus>(async () => {
      const s = await runStatus(h.runs, runId);
      if (s.state === 'failed') throw new GiveUp(`run failed: ${String(s.metrics.error)}`);
      return s.state === 'awaiting_approval' ? s : undefined;
    }, 'the run on the imported model reaches approval', 600_000, 250);
    expect(waiting.metrics.baseModel).toBe('tiny-gpt2:v1');
    await decide(h.runs, { runId, principal: 'approver-1', decision: 'approve' });
    const result = (await h.client.workflow.getHandle(runId).result()) as PipelineResult;
    expect(result).toMatchObject({ state: 'completed', versionId: 'tiny-gpt2-telecom:v1' });

    const listed = (JSON.parse(dacp('models', 'list', '--json').stdout) as Record<string, unknown>[]).filter((m) => String(m.name).startsWith('tiny-gpt2'));
    expect(listed.map((m) => m.versionId)).toEqual(['tiny-gpt2-telecom:v1', 'tiny-gpt2-telecom-adapted:v1', 'tiny-gpt2:v1']);
    for (const m of listed) expect(m).toMatchObject({ family: 'gpt2', parameters: expect.any(Number), lineage: expect.any(Object) });
    expect(listed[0]).toMatchObject({ aliases: ['production'], runId, parentVersionId: 'tiny-gpt2-telecom-adapted:v1' });
    expect(listed[2]).toMatchObject({ aliases: [], runId: null, parentVersionId: null, lineage: expect.objectContaining({ kind: 'imported', dtype: 'F32' }) });

    const out = path.join(h.home, 'exported');
    const exported = dacp('models', 'export', 'production', '--out', out, '--json');
    expect(exported.stderr).toBe('');
    expect(Object.keys(JSON.parse(exported.stdout).files).sort()).toEqual(['config.json', 'generation_config.json', 'model.safetensors', 'tokenizer.json', 'tokenizer_config.json']);
    // The user's tokenizer went through unchanged.
    expect(readFileSync(path.join(out, 'tokenizer.json'), 'utf8')).toBe(JSON.stringify(JSON.parse(readFileSync(path.join(fixtures, 'gpt2', 'tokenizer.json'), 'utf8')), null, 2) + '\n');
    expect(hfCheck(out, 'describe', {})).toMatchObject({ model_type: 'gpt2' });
    const generated = hfCheck(out, 'generate', { prompt: 'The gNB alarm', maxNewTokens: 8 }) as { ids: number[]; text: string };
    expect(generated.ids.length).toBeGreaterThan(0);
    expect(typeof generated.text).toBe('string');
    // Exporting over files is refused; nothing there is touched.
    expect(dacp('models', 'export', 'production', '--out', out)).toMatchObject({ code: 2, stderr: expect.stringMatching(/--out .* is not empty/) });
    // An imported version is kept as the folder the user gave, file by file: it exports byte for byte.
    const original = path.join(h.home, 'exported-original');
    const plain = JSON.parse(dacp('models', 'export', 'tiny-gpt2:v1', '--out', original, '--json').stdout) as { files: Record<string, string> };
    for (const name of ['config.json', 'model.safetensors', 'tokenizer.json', 'tokenizer_config.json', 'generation_config.json']) {
      expect(readFileSync(path.join(original, name)).equals(readFileSync(path.join(fixtures, 'gpt2', name)))).toBe(true);
      expect(plain.files[name]).toMatch(/^[0-9a-f]{64}$/);
    }
    // Every version has its folder in the registry: a manifest of per-file sha256.
    const folders = await h.db.pool.query(`SELECT version_id, folder FROM model_versions WHERE name LIKE 'tiny-gpt2%' ORDER BY version_id`);
    for (const row of folders.rows) expect(row.folder).toMatchObject({ uri: expect.stringMatching(/^artifact:model-folders\//), sha256: expect.stringMatching(/^[0-9a-f]{64}$/) });
    // Importing the same folder again with --alias points the alias back at that version.
    const again = dacp('models', 'import', 'tiny-gpt2', '--from', path.join(fixtures, 'gpt2'), '--alias', 'production');
    expect(again.stdout).toMatch(/^already imported as tiny-gpt2:v1 .*; production → tiny-gpt2:v1 \(was tiny-gpt2-telecom:v1\)$/m);
    const after = JSON.parse(dacp('models', 'list', '--json').stdout) as { versionId: string; aliases: string[] }[];
    expect(after.find((m) => m.aliases.includes('production'))?.versionId).toBe('tiny-gpt2:v1');
  });

  test('models show: lineage back to the first base, datasets, gates, approvals and alias history; promote and rollback move the alias, audited', async () => {
    // The state the test above left: tiny-gpt2:v1 imported, adapted and tuned by run imported-gpt2,
    // deployed to production, then production pointed back at tiny-gpt2:v1 by an import.
    const shown = JSON.parse(dacp('models', 'show', 'tiny-gpt2-telecom:v1', '--json').stdout) as ShownModel;
    expect(shown.lineage.map((l) => [l.versionId, l.kind])).toEqual([
      ['tiny-gpt2-telecom:v1', 'tuned'], ['tiny-gpt2-telecom-adapted:v1', 'adapted'], ['tiny-gpt2:v1', 'imported'],
    ]);
    expect(shown.linked.adapted).toBe('tiny-gpt2-telecom-adapted:v1');
    expect(shown.datasets.map((d) => d.role).sort()).toEqual(expect.arrayContaining(['domain', 'instruct', 'replay']));
    for (const d of shown.datasets) expect(d.sha256).toMatch(/^[0-9a-f]{64}$/);
    expect(shown.evaluations.forgetting).toMatchObject({ passed: true });
    expect(shown.evaluations.finalCheck).toMatchObject({ passed: true });
    expect(shown.approvals).toEqual([expect.objectContaining({ principal: 'approver-1', decision: 'approve' })]);
    expect(shown.deployHistory.map((d) => [d.kind, d.previousVersionId, d.versionId])).toEqual([
      ['deploy', 'tiny-gpt2:v1', 'tiny-gpt2-telecom:v1'], ['import', 'tiny-gpt2-telecom:v1', 'tiny-gpt2:v1'],
    ]);
    const text = dacp('models', 'show', 'tiny-gpt2-telecom:v1').stdout;
    expect(text).toContain('lineage: tiny-gpt2-telecom:v1 (tuned) ← tiny-gpt2-telecom-adapted:v1 (adapted) ← tiny-gpt2:v1 (imported)');
    expect(JSON.parse(dacp('models', 'show', 'tiny-gpt2-telecom-adapted:v1', '--json').stdout).linked.tuned).toEqual(['tiny-gpt2-telecom:v1']);
    // An alias reads as its version.
    expect(JSON.parse(dacp('models', 'show', 'production', '--json').stdout).versionId).toBe('tiny-gpt2:v1');

    // Promote by name, with who and why; the alias's history records it.
    const promoted = dacp('models', 'promote', 'tiny-gpt2-telecom:v1', '--as', 'ops-lead', '--note', 'back to the tuned model', '--json');
    expect(promoted.stderr).toBe('');
    expect(JSON.parse(promoted.stdout)).toMatchObject({ moved: true, alias: 'production', versionId: 'tiny-gpt2-telecom:v1', previousVersionId: 'tiny-gpt2:v1' });
    expect(dacp('models', 'promote', 'tiny-gpt2-telecom:v1', '--as', 'ops-lead').stdout).toMatch(/production already points at tiny-gpt2-telecom:v1; nothing moved/);
    // The move carries ops-lead's signature over from, to, why and when.
    const [signedMove] = (await h.db.pool.query(`SELECT signature FROM deployments WHERE kind = 'promote' ORDER BY id DESC LIMIT 1`)).rows;
    expect(signedMove.signature.statement).toMatchObject({ format: 'dacp-alias-move/1', alias: 'production', from: 'tiny-gpt2:v1', to: 'tiny-gpt2-telecom:v1', kind: 'promote', actor: 'ops-lead', note: 'back to the tuned model' });
    const [opsKey] = (await h.db.pool.query(`SELECT public_key FROM principal_keys WHERE principal = 'ops-lead' AND revoked_at IS NULL`)).rows;
    expect(verifyStatement(signedMove.signature.statement, signedMove.signature.signature, opsKey.public_key)).toBe(true);
    expect(dacp('models', 'promote', 'tiny-gpt2:v1', '--as', 'approver-1').stderr).toMatch(/approver-1 holds the role approver, not operator, so cannot move aliases/);
    // Rollback pops the history: the version production served before, then the one before that.
    const back = dacp('models', 'rollback', '--as', 'ops-lead', '--note', 'regression seen by users');
    expect(back.stdout).toMatch(/rollback production: tiny-gpt2-telecom:v1 → tiny-gpt2:v1 by ops-lead — regression seen by users/);
    expect(dacp('models', 'rollback', '--as', 'ops-lead').stdout).toMatch(/rollback production: tiny-gpt2:v1 → tiny-gpt2-telecom:v1 by ops-lead/);
    expect(dacp('models', 'rollback', '--as', 'ops-lead').stdout).toMatch(/rollback production: tiny-gpt2-telecom:v1 → tiny-gpt2:v1 by ops-lead/);
    const exhausted = dacp('models', 'rollback', '--as', 'ops-lead');
    expect(exhausted).toMatchObject({ code: 2, stderr: 'dacp: production (tiny-gpt2:v1) has no earlier version to roll back to; promote one by name with `dacp models promote VERSION --alias production`' });
    // Refused, moving nothing: an unknown version, an alias given as a version, an unknown alias, no principal.
    expect(dacp('models', 'promote', 'tiny-gpt2:v9', '--as', 'ops-lead')).toMatchObject({ code: 2, stderr: 'dacp: no model version "tiny-gpt2:v9"; see `dacp models list`' });
    expect(dacp('models', 'promote', 'production', '--as', 'ops-lead').stderr).toMatch(/"production" is an alias \(of tiny-gpt2:v1\); promote names a version id/);
    expect(dacp('models', 'rollback', '--alias', 'staging', '--as', 'ops-lead')).toMatchObject({ code: 2, stderr: 'dacp: no alias "staging"; nothing to roll back' });
    expect(dacp('models', 'promote', 'tiny-gpt2:v1').stderr).toMatch(/missing --as PRINCIPAL/);
    expect(dacp('models', 'show', 'nothing:v1')).toMatchObject({ code: 2, stderr: 'dacp: no model version or alias "nothing:v1"; see `dacp models list`' });
    const moves = await h.db.pool.query(`SELECT kind, actor, note, version_id FROM deployments WHERE alias = 'production' AND kind IN ('promote', 'rollback') ORDER BY id`);
    expect(moves.rows.map((r) => [r.kind, r.actor, r.version_id])).toEqual([
      ['promote', 'ops-lead', 'tiny-gpt2-telecom:v1'], ['rollback', 'ops-lead', 'tiny-gpt2:v1'], ['rollback', 'ops-lead', 'tiny-gpt2-telecom:v1'], ['rollback', 'ops-lead', 'tiny-gpt2:v1'],
    ]);
    // The history is append-only.
    await expect(h.db.pool.query(`UPDATE deployments SET actor = 'someone-else'`)).rejects.toThrow(/append-only history/);
    await expect(h.db.pool.query(`DELETE FROM deployments`)).rejects.toThrow(/append-only history/);
  });

  test('`dacp demo --base DIR` runs the demo lifecycle on the user\'s folder, from import to deploy', async () => {
    const db = await createTestDatabase();
    try {
      const home = mkdtempSync(path.join(tmpdir(), 'dacp-demo-base-'));
      const run = spawnSync(process.execPath, [path.join(root, 'bin', 'dacp.js'), 'demo', '--base', path.join(fixtures, 'gpt2')], {
        // The demo starts its own dev server; it shares nothing with the harness but Postgres (its own database).
        env: { ...Object.fromEntries(Object.entries(process.env).filter(([k]) => k !== 'TEMPORAL_ADDRESS')), DACP_HOME: home, DATABASE_URL: db.url },
        encoding: 'utf8',
        timeout: 600_000,
      });
      expect([run.status, run.status === 0 ? '' : run.stderr.slice(-2000)]).toEqual([0, '']);
      expect(run.stdout).toMatch(/base model: .*gpt2 imported as telecom-demo-base:v1 \(gpt2, \d+ parameters, stored F32\)/);
      expect(run.stdout).toMatch(/base model +telecom-demo-base:v1/);
      expect(run.stdout).toMatch(/run telecom-demo-\S+: completed/);
      expect(run.stdout).toMatch(/model version +telecom-demo:v1 \(alias production\), tuned from telecom-demo-adapted:v1/);
      // The demo's signed start and vote, and its run report.
      expect(run.stdout).toMatch(/principals: demo-engineer \(operator\) and demo-approver \(approver\), keys in \S+demo-keys/);
      const report = /run report +(\S+\.report\.html)/.exec(run.stdout)?.[1];
      expect(readFileSync(report!, 'utf8')).toMatch(/^<!doctype html>[\s\S]*<svg[\s\S]*demo-approver/);
      const [vote] = (await db.pool.query('SELECT principal, signature IS NOT NULL AS signed FROM approvals')).rows;
      expect(vote).toEqual({ principal: 'demo-approver', signed: true });
      rmSync(home, { recursive: true, force: true });
    } finally {
      await db.drop();
    }
  });
});
