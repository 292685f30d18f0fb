/**
 * Bad input, as a specification. At the edge (`dacp run start|status`, `dacp approve|reject`) every
 * case exits 2 with exactly one `dacp: …` line naming the field or file and the fix, and starts
 * nothing. Inside a run, where only the activity can meet the problem, an expected failure fails
 * the run at once (non-retryable, with a type name) and an unexpected one is retried. Throughout,
 * a completed run's rows, the registry and every artifact stay as they were.
 */
import { closeSync, mkdirSync, openSync, ftruncateSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { WorkflowUpdateFailedError } from '@temporalio/client';
import { DefaultLogger, Runtime } from '@temporalio/worker';
import { defaultMaxFileBytes } from '../../activities/sources';
import { freePort } from '../../cli/devServer';
import { cancelRun, decide, preflightSources, runStatus, startRun } from '../../cli/runs';
import type { Decision, PipelineResult, RunStatus } from '../../schemas/pipeline';
import { parseRunSpec, type RunSpecInput } from '../../schemas/runSpec';
import { approvalRequestQuery, approvalWorkflowId } from '../../workflows/messages';
import { testServerUrl } from '../helpers/db';
import { tinySpec } from '../helpers/fixtures';
import { eventually, GiveUp } from '../helpers/temporal';
import {
  activityFailures,
  pendingActivities,
  startBadInputHarness,
  storedState,
  workflowExists,
  type BadInputHarness,
  type StoredState,
} from './helpers/badInputHarness';

Runtime.install({ logger: new DefaultLogger('WARN') });

/** Environment variables naming the source databases (the URLs are secrets and stay out of specs). */
const kbEnv = 'BAD_INPUT_KB_URL';
const deadEnv = 'BAD_INPUT_DEAD_URL';
const ownEnv = 'BAD_INPUT_OWN_URL';
const baselineId = 'baseline-1';

describe('bad input is refused clearly, and nothing stored is lost', () => {
  let h: BadInputHarness;
  let baseline: StoredState;

  beforeAll(async () => {
    h = await startBadInputHarness();
    // A database of its own (the server's `postgres` database): dacp's own is never a source.
    process.env[kbEnv] = testServerUrl;
    process.env[ownEnv] = h.db.url;
    process.env[deadEnv] = `postgres://postgres@127.0.0.1:${await freePort()}/nothing`;
    // The run whose stored state every later case must leave untouched; first it waits at the gate.
    await startRun(h.runs, { spec: parseRunSpec(tinySpec()), baseDir: h.home, runId: baselineId, initiator: 'engineer' });
    await untilState(baselineId, ['awaiting_approval'], 240_000);
  });

  afterAll(async () => {
    delete process.env[kbEnv];
    delete process.env[ownEnv];
    delete process.env[deadEnv];
    await h?.stop();
  });

  const untilState = (runId: string, states: RunStatus['state'][], timeoutMs = 60_000) =>
    eventually<RunStatus>(async () => {
      const s = await runStatus(h.runs, runId);
      if (!states.includes(s.state) && ['failed', 'cancelled', 'completed', 'rejected'].includes(s.state)) {
        throw new GiveUp(`${runId} ended ${s.state}: ${String(s.metrics.error)}`);
      }
      return states.includes(s.state) ? s : undefined;
    }, `${runId} to be ${states.join('/')}`, timeoutMs, 300);

  function write(relative: string, content: string | Buffer): string {
    const file = path.join(h.home, relative);
    mkdirSync(path.dirname(file), { recursive: true });
    writeFileSync(file, content);
    return relative;
  }

  /** A file of `bytes` bytes that takes no disk space (a hole), to exceed size limits cheaply. */
  function sparse(relative: string, bytes: number): string {
    const file = path.join(h.home, relative);
    mkdirSync(path.dirname(file), { recursive: true });
    const fd = openSync(file, 'w');
    ftruncateSync(fd, bytes);
    closeSync(fd);
    return relative;
  }

  const startedRuns = async () => (await h.client.workflow.count()).count;

  /** The command exits 2 with one `dacp:` line matching every pattern, and starts nothing. */
  async function expectRefused(args: string[], problems: RegExp[], runId?: string): Promise<string> {
    const before = await startedRuns();
    const r = await h.dacp(...args);
    expect(r.stderr.split('\n')).toHaveLength(1);
    expect(r.stderr).toMatch(/^dacp: \S/);
    for (const problem of problems) expect(r.stderr).toMatch(problem);
    expect(r.code).toBe(2);
    expect(r.stdout).toBe('');
    expect(await startedRuns()).toBe(before);
    if (runId) expect(await workflowExists(h.client, runId)).toBe(false);
    return r.stderr;
  }

  /** `dacp run start` with this spec (an object, or raw file content) is refused. */
  function refuseSpec(name: string, spec: unknown, ...problems: RegExp[]): Promise<string> {
    const file = write(`spec-${name}`, typeof spec === 'string' || Buffer.isBuffer(spec) ? spec : JSON.stringify(spec));
    const runId = `edge-${name.replace(/[^a-z0-9]/g, '-')}`;
    return expectRefused(['run', 'start', '--spec', file, '--id', runId, '--as', 'engineer'], problems, runId);
  }

  /** The tiny spec with its domain source reading these paths instead. */
  function domainFrom(paths: string[], over: Partial<RunSpecInput> = {}): RunSpecInput {
    const spec = tinySpec(over);
    spec.sources[0] = { kind: 'files', role: 'domain', paths };
    return spec;
  }

  describe('approvals with malformed payloads are refused by the gate, and no decision is recorded', () => {
    const gate = () => h.client.workflow.getHandle(approvalWorkflowId(baselineId));

    async function refusedVote(update: 'approve' | 'reject', payload?: unknown): Promise<string> {
      const voting =
        payload === undefined
          ? gate().executeUpdate<Decision, []>(update)
          : gate().executeUpdate<Decision, [unknown]>(update, { args: [payload] });
      const err = await voting.then(
        () => undefined,
        (e: unknown) => e,
      );
      expect(err).toBeInstanceOf(WorkflowUpdateFailedError);
      const message = ((err as WorkflowUpdateFailedError).cause as Error).message;
      expect(message.split('\n')).toHaveLength(1);
      await expectNoDecision();
      return message;
    }

    async function expectNoDecision(): Promise<void> {
      const view = await gate().query(approvalRequestQuery);
      expect(view).toMatchObject({ open: true, decisions: [] });
      expect((await h.db.pool.query('SELECT count(*)::int AS n FROM approvals WHERE run_id = $1', [baselineId])).rows[0].n).toBe(0);
      // A refused update never reaches history: the validator runs before it is accepted.
      const events = (await gate().fetchHistory()).events ?? [];
      expect(events.filter((e) => e.workflowExecutionUpdateAcceptedEventAttributes)).toHaveLength(0);
    }

    test('a vote without a principal, or without any payload', async () => {
      expect(await refusedVote('approve', { comment: 'looks fine' })).toBe('approval is malformed: principal: Required');
      expect(await refusedVote('approve')).toBe('approval is malformed: body: Required');
    });

    test('a vote whose fields have the wrong types names each field', async () => {
      const message = await refusedVote('approve', { principal: 42, comment: ['fine'] });
      expect(message).toMatch(/^approval is malformed: /);
      expect(message).toMatch(/principal: Expected string, received number/);
      expect(message).toMatch(/comment: Expected string, received array/);
    });

    test('a vote with unknown fields names them', async () => {
      expect(await refusedVote('approve', { principal: 'approver-1', vote: 'yes', weight: 2 })).toMatch(
        /^approval is malformed: body: Unrecognized key\(s\) in object: 'vote', 'weight'$/,
      );
    });

    test('a 10 000-character comment is refused with its limit', async () => {
      expect(await refusedVote('approve', { principal: 'approver-1', comment: 'x'.repeat(10_000) })).toBe(
        'approval is malformed: comment: keep the comment under 2000 characters',
      );
    });

    test('a rejection without a reason', async () => {
      expect(await refusedVote('reject', { principal: 'approver-1' })).toBe('rejection is malformed: reason: Required');
      expect(await refusedVote('reject', { principal: 'approver-1', reason: '' })).toBe('rejection is malformed: reason: give a reason for the rejection');
    });

    test('malformed votes through the dacp command exit 2 with one line', async () => {
      await expectRefused(['approve', baselineId, '--as', 'not a principal!'], [/principal "not a principal!" is invalid: use 1–64 letters/]);
      await expectRefused(['approve', baselineId, '--as', 'approver-1', '--comment', 'y'.repeat(10_000)], [/comment: keep the comment under 2000 characters/]);
      await expectRefused(['reject', baselineId, '--as', 'approver-1'], [/^dacp: missing --reason TEXT; see `dacp --help`$/]);
      await expectRefused(['approve', baselineId], [/^dacp: missing --as PRINCIPAL/]);
      await expectRefused(['approve', baselineId, 'another-run', '--as', 'approver-1'], [/too many arguments for 'approve'\. Expected 1 argument but got 2; see `dacp --help`/]);
      await expectNoDecision();
    });

    test('after all that, a well-formed vote counts and the baseline run completes', async () => {
      await decide(h.runs, { runId: baselineId, principal: 'approver-1', decision: 'approve', comment: 'numbers look right' });
      const result = (await h.client.workflow.getHandle(baselineId).result()) as PipelineResult;
      expect(result).toMatchObject({ state: 'completed', versionId: 'tiny:v1' });
      baseline = await storedState(h, baselineId);
      expect(baseline.rows.runs).toMatchObject([{ state: 'completed', error: null }]);
      expect(baseline.rows.approvals).toMatchObject([{ principal: 'approver-1', decision: 'approve' }]);
      expect(baseline.rows.model_aliases).toMatchObject([{ alias: 'production', version_id: 'tiny:v1' }]);
      expect(Object.keys(baseline.artifacts).length).toBeGreaterThan(10);
    });
  });

  describe('at the edge: `dacp run start` refuses the spec, naming the field and the fix', () => {
    test('a spec that is not JSON', async () => {
      await refuseSpec('truncated.json', '{"name": "x",', /^dacp: spec spec-truncated\.json is not valid JSON: /);
    });

    test('a spec that is binary, not text', async () => {
      await refuseSpec('image.json', Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a, 0x00, 0xff, 0xfe]), /is not UTF-8 text; give a JSON file$/);
      // Valid UTF-8 but full of control characters: still one printable line.
      const stderr = await refuseSpec('control.json', '\u0000\u0001{"name":\n"x"}', /is not valid JSON/);
      expect(stderr).not.toMatch(/[\u0000-\u001f]/);
    });

    test('a spec over 1 MiB is refused before it is parsed', async () => {
      const huge = { ...tinySpec(), name: 'n'.repeat(2 * 1024 * 1024) };
      const stderr = await refuseSpec('huge.json', huge, /^dacp: spec spec-huge\.json is \d+ bytes, over the 1048576-byte \(1 MiB\) limit; a spec lists sources by path/);
      expect(stderr).not.toMatch(/name:/);
    });

    test('a spec of the wrong shape names every wrong field', async () => {
      await refuseSpec('array.json', [tinySpec()], /\(top level\): Expected object, received array/);
      const spec = { ...tinySpec(), sources: {}, dacp: { steps: '10', batchSize: 8, learningRate: 1e-3, checkpointEvery: 5 }, approval: { approvers: 'carol' } };
      await refuseSpec(
        'types.json',
        spec,
        /sources: Expected array, received object/,
        /dacp\.steps: Expected number, received string/,
        /approval\.approvers: Expected array, received string/,
      );
    });

    test('unknown fields, top level and nested, are named with the fix', async () => {
      const { sources } = tinySpec();
      const spec = { ...tinySpec(), colour: 'blue', quality: { minDocs: 5, minChar: 50 }, sources: [{ ...sources[0], glob: '*.txt' }, ...sources.slice(1)] };
      await refuseSpec(
        'unknown.json',
        spec,
        /\(top level\): unknown field\(s\) "colour" — remove them or check the spelling/,
        /quality: unknown field\(s\) "minChar"/,
        /sources\.0: unknown field\(s\) "glob"/,
      );
    });

    test('out-of-range and huge numbers are named with their bounds', async () => {
      const spec = tinySpec({
        replayRatio: 1.5,
        heldoutFraction: -1,
        dacp: { steps: 1e12, batchSize: 8, learningRate: 3e-3, checkpointEvery: 10, seed: 2 ** 40, gradClip: 0 },
        quality: { minDocs: 1e20, maxChars: 1e300 },
        approval: { approvers: ['approver-1'], quorum: 1, timeout: '100000d' },
        heartbeatTimeout: '0s',
      });
      // 1e400 is valid JSON that parses to Infinity; JSON.stringify cannot write it, so splice it in.
      const text = JSON.stringify(spec).replace('"gradClip":0', '"gradClip":1e400');
      await refuseSpec(
        'ranges.json',
        text,
        /replayRatio: keep at least 5 % domain data: replayRatio ≤ 0\.95/,
        /heldoutFraction: Number must be greater than or equal to 0\.01/,
        /dacp\.steps: Number must be less than or equal to 1000000/,
        /dacp\.seed: Number must be less than or equal to 4294967295/,
        /dacp\.gradClip: Number must be less than or equal to 1000/,
        /quality\.minDocs: Number must be less than or equal to 100000000/,
        /quality\.maxChars: Number must be less than or equal to 100000000/,
        /approval\.timeout: a duration must be at most 365d/,
        /heartbeatTimeout: a duration must be at least 1s/,
      );
    });

    test('a domainRatio that does not match the named domain sources, or makes too many candidates', async () => {
      const [domain, replay, instruct] = tinySpec().sources;
      const named = [{ ...domain, name: 'manuals' }, { ...domain, name: 'tickets' }, replay, instruct];
      await refuseSpec('mix-one-source.json', tinySpec({ domainRatio: { manuals: 1 } }), /domainRatio: domainRatio weighs several domain sources; add a second one, or remove domainRatio/);
      await refuseSpec('mix-unnamed.json', tinySpec({ sources: [domain, { ...domain, name: 'tickets' }, replay, instruct], domainRatio: { tickets: 1 } }), /sources\.0\.name: domainRatio weighs domain sources by name; give this one a "name"/);
      await refuseSpec(
        'mix-names.json',
        tinySpec({ sources: named, domainRatio: [{ manuals: 1, tikets: 1 }, { manuals: 0, tickets: 0 }] }),
        /domainRatio\.0: "tikets" names no domain source; the domain sources are "manuals", "tickets"/,
        /domainRatio\.0: give "tickets" a weight too \(0 leaves a source out\)/,
        /domainRatio\.1: give at least one domain source a weight above 0/,
      );
      await refuseSpec('mix-same.json', tinySpec({ sources: named, domainRatio: [{ manuals: 1, tickets: 1 }, { manuals: 2, tickets: 2 }] }), /domainRatio: list each domain mix once/);
      await refuseSpec('mix-dup-name.json', tinySpec({ sources: [{ ...domain, name: 'x' }, { ...replay, name: 'x' }, instruct] }), /sources\.1\.name: "x" also names sources\[0\]; give each source its own name/);
      await refuseSpec(
        'mix-many.json',
        tinySpec({ sources: named, replayRatio: [0, 0.2, 0.4], domainRatio: [{ manuals: 1, tickets: 0 }, { manuals: 1, tickets: 1 }, { manuals: 0, tickets: 1 }] }),
        /domainRatio: 3 replay ratios × 3 domain mixes make 9 candidates; at most 8, as each trains a model/,
      );
    });

    test('quality settings that would remove every document', async () => {
      await refuseSpec('lengths.json', tinySpec({ quality: { minChars: 5_000, maxChars: 1_000 } }), /quality\.minChars: minChars must not exceed maxChars/);
    });

    test('a missing spec file, or a folder given as the spec', async () => {
      await expectRefused(['run', 'start', '--spec', 'spec-nope.json'], [/^dacp: cannot read spec spec-nope\.json \(ENOENT\); check --spec$/]);
      await expectRefused(['run', 'start', '--spec', 'data'], [/^dacp: spec data is not a file; point --spec at a JSON file$/]);
    });
  });

  describe('at the edge: the preflight refuses sources that cannot be read', () => {
    test('a missing source file, or a glob that matches nothing', async () => {
      await refuseSpec('nofile.json', domainFrom(['data/domain/nope.txt']), /^dacp: sources\[0\]: data\/domain\/nope\.txt: no such file .*; check the path/);
      await refuseSpec('noglob.json', domainFrom(['data/missing/*.txt']), /^dacp: sources\[0\]: data\/missing\/\*\.txt: the glob matched no files/);
    });

    test('a source path that is a folder, not a readable file', async () => {
      await refuseSpec('folder.json', domainFrom(['data/domain']), /^dacp: sources\[0\]: data\/domain is not a regular file; .*use a glob such as data\/domain\/\*\*\/\*\.txt/);
    });

    test('a binary source file', async () => {
      write('edge/blob.txt', Buffer.from([0x50, 0x4b, 0x03, 0x04, 0x00, 0x00, 0xff]));
      await refuseSpec('binary.json', domainFrom(['data/domain/*.txt', 'edge/blob.txt']), /^dacp: sources\[0\]: edge\/blob\.txt looks binary \(contains NUL bytes\); give text/);
    });

    test('a source file that is not UTF-8', async () => {
      write('edge/latin1.txt', Buffer.from('Le caf\xe9 du r\xe9seau est ferm\xe9 le dimanche.', 'latin1'));
      await refuseSpec('latin1.json', domainFrom(['edge/latin1.txt']), /^dacp: sources\[0\]: edge\/latin1\.txt is not valid UTF-8; convert it \(e\.g\. iconv -t UTF-8\)/);
    });

    test('a source outside the allowed data roots, by path or through a symlink', async () => {
      write('edge/outside.txt', 'A perfectly good document that lives outside the data roots of this spec.');
      await refuseSpec(
        'outside.json',
        domainFrom(['edge/outside.txt'], { dataRoots: ['data'] }),
        /^dacp: sources\[0\]: edge\/outside\.txt is outside the allowed source roots \(.*\); .*a spec's dataRoots only narrow that\)$/,
      );
      symlinkSync(path.join(h.home, 'edge', 'outside.txt'), path.join(h.home, 'data', 'link-out.txt'));
      await refuseSpec(
        'symlink.json',
        domainFrom(['data/domain/*.txt', 'data/link-out.txt'], { dataRoots: ['data'] }),
        /^dacp: sources\[0\]: data\/link-out\.txt is outside the allowed source roots/,
      );
    });

    test('a source file over the per-file size limit', async () => {
      sparse('edge/huge.txt', defaultMaxFileBytes + 1);
      await refuseSpec(
        'bigfile.json',
        domainFrom(['data/domain/*.txt', 'edge/huge.txt']),
        new RegExp(`^dacp: sources\\[0\\]: edge/huge\\.txt is ${defaultMaxFileBytes + 1} bytes, over the ${defaultMaxFileBytes}-byte limit; split it into smaller files$`),
      );
    });
  });

  describe('at the edge: run ids that name no run, or no valid run', () => {
    test('unknown run ids for status, approve, reject and cancel', async () => {
      await expectRefused(['run', 'status', 'no-such-run'], [/^dacp: no run with id no-such-run; see `dacp run list`$/]);
      await expectRefused(['approve', 'no-such-run', '--as', 'approver-1'], [/^dacp: no run with id no-such-run/]);
      await expectRefused(['reject', 'no-such-run', '--as', 'approver-1', '--reason', 'no'], [/^dacp: no run with id no-such-run/]);
      await expectRefused(['run', 'cancel', 'no-such-run'], [/^dacp: no run with id no-such-run/]);
    });

    test('malformed run ids are refused before Temporal is asked', async () => {
      await expectRefused(['run', 'status', 'bad id!'], [/^dacp: run id "bad id!" is invalid: use 1–100 letters, digits/]);
      await expectRefused(['run', 'status', 'r'.repeat(101)], [/is invalid: use 1–100 letters/]);
      await expectRefused(['run', 'start', '--spec', write('spec-ok.json', JSON.stringify(tinySpec())), '--id', '../escape'], [/^dacp: run id "\.\.\/escape" is invalid/]);
    });

    test('a vote on a run that is no longer awaiting approval changes nothing', async () => {
      await expectRefused(['approve', baselineId, '--as', 'approver-2'], [/^dacp: run baseline-1 is not awaiting approval \(stage deploy, state completed\)$/]);
      await expectRefused(['reject', baselineId, '--as', 'approver-2', '--reason', 'too late'], [/is not awaiting approval/]);
    });
  });

  describe('inside a run: expected failures fail it at once with a named type; unexpected ones retry', () => {
    /** Starts through the client API, which skips the command's preflight, so the activity meets the input. */
    async function runUntilFailed(runId: string, spec: RunSpecInput): Promise<{ status: RunStatus; seconds: number }> {
      const started = Date.now();
      await startRun(h.runs, { spec: parseRunSpec(spec), baseDir: h.home, runId, initiator: 'engineer' });
      await expect(h.client.workflow.getHandle(runId).result()).rejects.toThrow();
      return { status: await runStatus(h.runs, runId), seconds: (Date.now() - started) / 1000 };
    }

    async function expectFailedAtOnce(runId: string, spec: RunSpecInput, expected: { activity: string; type: string; error: RegExp }): Promise<string> {
      const { status, seconds } = await runUntilFailed(runId, spec);
      expect(status.state).toBe('failed');
      const error = String(status.metrics.error);
      expect(error).toMatch(expected.error);
      expect(error.split('\n')).toHaveLength(1);
      // One attempt, failed non-retryably with the named type: no retry schedule was spent on it.
      expect(await activityFailures(h.client, runId)).toEqual([{ activity: expected.activity, attempt: 1, type: expected.type, nonRetryable: true, message: error }]);
      expect(seconds).toBeLessThan(30);
      expect((await h.db.pool.query('SELECT state, error FROM runs WHERE run_id = $1', [runId])).rows).toEqual([{ state: 'failed', error }]);
      return error;
    }

    test('a database source whose query fails: SourceQueryFailed', async () => {
      const spec = tinySpec();
      spec.sources.push({ kind: 'postgres', role: 'domain', query: 'SELECT body AS text FROM kb_articles', connectionEnv: kbEnv });
      const error = await expectFailedAtOnce('inrun-query', spec, {
        activity: 'collectSources',
        type: 'SourceQueryFailed',
        error: /^sources\[3\] \(postgres, role domain\): query failed: relation "kb_articles" does not exist; fix the query/,
      });
      expect(error).not.toContain(testServerUrl);
      const shown = await h.dacp('run', 'status', 'inrun-query');
      expect(shown.code).toBe(0);
      expect(shown.stdout).toMatch(/^ +error +/m);
      expect(shown.stdout).toContain(error);
    });

    test("a database source that points at dacp's own database, under any name: SourceNotAllowed", async () => {
      const spec = tinySpec();
      spec.sources.push({ kind: 'postgres', role: 'domain', query: 'SELECT details::text AS text FROM audit_log', connectionEnv: ownEnv });
      const error = await expectFailedAtOnce('inrun-own-db', spec, {
        activity: 'collectSources',
        type: 'SourceNotAllowed',
        error: /^sources\[3\] \(postgres, role domain\): BAD_INPUT_OWN_URL points at dacp's own database \(it holds dacp_schema_migrations\); a source reads another database$/,
      });
      expect(error).not.toContain(h.db.url);
    });

    test('a source file that turned non-UTF-8 after the preflight: SourceInvalid', async () => {
      const spec = domainFrom(['data/domain/*.txt', write('inrun/notes.txt', 'Field notes on the cell site, written in plain UTF-8 text.')]);
      await preflightSources(parseRunSpec(spec), h.home);
      write('inrun/notes.txt', Buffer.from('Notes r\xe9\xe9crites en Latin-1 apr\xe8s la v\xe9rification.', 'latin1'));
      await expectFailedAtOnce('inrun-latin1', spec, {
        activity: 'collectSources',
        type: 'SourceInvalid',
        error: /^sources\[0\] \(files, role domain\): inrun\/notes\.txt is not valid UTF-8; convert it/,
      });
    });

    test('a source file that vanished after the preflight: the start refuses it by name, before any run exists (the run reads staged copies)', async () => {
      const spec = domainFrom(['data/domain/*.txt', write('inrun/gone.txt', 'A document that will be deleted before the run reads it.')]);
      await preflightSources(parseRunSpec(spec), h.home);
      rmSync(path.join(h.home, 'inrun', 'gone.txt'));
      await expect(startRun(h.runs, { spec: parseRunSpec(spec), baseDir: h.home, runId: 'inrun-gone', initiator: 'engineer' })).rejects.toThrow(
        /^sources: inrun\/gone\.txt: no such file/,
      );
      await expect(h.client.workflow.getHandle('inrun-gone').describe()).rejects.toThrow(/not found/i);
    });

    test('a source file over the per-file size limit: SourceTooLarge', async () => {
      await expectFailedAtOnce('inrun-bigfile', domainFrom(['data/domain/*.txt', sparse('inrun/huge.txt', defaultMaxFileBytes + 1)]), {
        activity: 'collectSources',
        type: 'SourceTooLarge',
        error: new RegExp(`^sources\\[0\\] \\(files, role domain\\): inrun/huge\\.txt is ${defaultMaxFileBytes + 1} bytes, over the ${defaultMaxFileBytes}-byte limit`),
      });
    });

    test('an empty corpus after filtering (every domain document too short): TooFewDocuments', async () => {
      for (let i = 0; i < 8; i++) write(`inrun/short/s${i}.txt`, `short note ${i}`);
      await expectFailedAtOnce('inrun-empty', domainFrom(['inrun/short/*.txt']), {
        activity: 'qualityFilter',
        type: 'TooFewDocuments',
        error: /^too few documents survived quality filtering — domain: 0 of 8 documents survived \(need quality\.minDocs = 5; removed too_short: 8\)\. Add data or relax the quality settings\.$/,
      });
    });

    test('one enormous document is removed as too_long, and the run goes on', async () => {
      const enormous = write('inrun/enormous.txt', Array.from({ length: 6_000 }, (_, i) => `Line ${i} of the never-ending cell site log.`).join('\n'));
      const spec = domainFrom(['data/domain/*.txt', enormous], { baseModel: { ref: 'production' } });
      await startRun(h.runs, { spec: parseRunSpec(spec), baseDir: h.home, runId: 'inrun-enormous', initiator: 'engineer' });
      const training = await eventually(async () => {
        const s = await runStatus(h.runs, 'inrun-enormous');
        if (s.state !== 'running') throw new GiveUp(`inrun-enormous ended ${s.state}: ${String(s.metrics.error)}`);
        return s.metrics.quality ? s : undefined;
      }, 'inrun-enormous to pass quality', 60_000, 300);
      const quality = training.metrics.quality as { perRole: Record<string, { input: number; kept: number; removed: Record<string, number> }> };
      expect(quality.perRole.domain.removed.too_long).toBe(1);
      expect(quality.perRole.domain.kept).toBeGreaterThanOrEqual(5);
      await cancelRun(h.runs, 'inrun-enormous');
      await expect(h.client.workflow.getHandle('inrun-enormous').result()).rejects.toThrow();
      expect((await runStatus(h.runs, 'inrun-enormous')).state).toBe('cancelled');
    });

    test('an unreachable source database is unexpected: SourceConnectFailed is retried until cancelled', async () => {
      const spec = tinySpec();
      spec.sources.push({ kind: 'postgres', role: 'domain', query: 'SELECT body AS text FROM kb_articles', connectionEnv: deadEnv });
      await startRun(h.runs, { spec: parseRunSpec(spec), baseDir: h.home, runId: 'inrun-unreachable', initiator: 'engineer' });
      const retrying = await eventually(async () => {
        const pending = await pendingActivities(h.client, 'inrun-unreachable');
        // attempt 3 pending: attempts 1 and 2 both ran and failed, and the retry schedule goes on.
        return pending.find((p) => p.activity === 'collectSources' && p.attempt >= 3);
      }, 'collectSources to be retried', 30_000, 300);
      expect(retrying).toMatchObject({ lastFailureType: 'SourceConnectFailed', lastFailureNonRetryable: false });
      expect((await runStatus(h.runs, 'inrun-unreachable')).state).toBe('running');

      await cancelRun(h.runs, 'inrun-unreachable');
      await expect(h.client.workflow.getHandle('inrun-unreachable').result()).rejects.toThrow();
      expect((await runStatus(h.runs, 'inrun-unreachable')).state).toBe('cancelled');
      expect((await h.db.pool.query('SELECT state, error FROM runs WHERE run_id = $1', ['inrun-unreachable'])).rows).toEqual([{ state: 'cancelled', error: null }]);
    });
  });

  test('nothing stored about the completed run, the registry or any artifact was lost', async () => {
    const now = await storedState(h, baselineId);
    expect(now.rows).toEqual(baseline.rows);
    for (const [file, sha256] of Object.entries(baseline.artifacts)) expect({ file, sha256: now.artifacts[file] }).toEqual({ file, sha256 });
    expect(await runStatus(h.runs, baselineId)).toMatchObject({ state: 'completed', stage: 'deploy' });
  });
});
