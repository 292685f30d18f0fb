import { createHash } from 'node:crypto';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import {
  parseTrainerLine,
  runExternalTrainer,
  TrainerExitError,
  TrainerProtocolError,
  TrainerStopped,
  writeSftFile,
  writeTokenFile,
  type ExternalTrainerOptions,
  type TrainerEvent,
  type TrainerJob,
} from '../ml/externalTrainer';

const FAKE_TRAINER = path.join(__dirname, 'fixtures', 'fake-trainer.js');
const SHA_A = 'a'.repeat(64);

let root: string;
/** Every process a fake trainer reported (itself, its helper): none may outlive its test. */
let reportedPids: number[];

beforeEach(() => {
  root = mkdtempSync(path.join(os.tmpdir(), 'dacp-external-trainer-'));
  reportedPids = [];
});

afterEach(async () => {
  try {
    await waitFor(() => reportedPids.every(isGone), 5_000, () => `trainer processes still running: ${reportedPids.filter((p) => !isGone(p)).join(', ')}`);
  } finally {
    rmSync(root, { recursive: true, force: true });
  }
});

/** Gone = kill(pid, 0) fails. A helper orphaned by SIGKILL may linger as a zombie if this container's init does not reap: that is gone too. */
function isGone(pid: number): boolean {
  try {
    process.kill(pid, 0);
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'ESRCH';
  }
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    return stat.slice(stat.lastIndexOf(')') + 2).startsWith('Z');
  } catch {
    return true;
  }
}

async function waitFor(condition: () => boolean, timeoutMs: number, what: () => string): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!condition()) {
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms: ${what()}`);
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
}

function jobIn(dir: string, over: Partial<TrainerJob> = {}): TrainerJob {
  return {
    protocol: 'dacp-trainer/2',
    stage: 'dacp',
    initModelDir: path.join(dir, 'base'),
    contextLength: 64,
    data: { kind: 'lm', domain: path.join(dir, 'domain.i32'), replay: path.join(dir, 'replay.i32'), replayRatio: 0.25 },
    settings: { totalSteps: 6, batchSize: 16, learningRate: 0.001, warmupSteps: 2, minLrRatio: 0.1, weightDecay: 0.01, gradClip: 1, seed: 1234 },
    checkpointEvery: 2,
    checkpointDir: path.join(dir, 'work', 'checkpoints'),
    resumeFrom: null,
    outputModelDir: path.join(dir, 'work', 'model'),
    ...over,
  };
}

/** Options for one run of the fake trainer in `mode`; its `pid`/`helper` log lines are recorded. */
function fakeRun(mode: string, over: Partial<ExternalTrainerOptions> = {}): ExternalTrainerOptions {
  const onLog = over.onLog;
  return {
    command: [process.execPath, FAKE_TRAINER],
    job: jobIn(root),
    workDir: path.join(root, 'work'),
    stderrFile: path.join(root, 'logs', 'run-1', 'dacp-0-attempt-1.stderr.log'),
    ...over,
    env: { FAKE_TRAINER_MODE: mode, ...over.env },
    onLog: (e) => {
      const match = /^(?:pid|helper) (\d+)$/.exec(e.message);
      if (match) reportedPids.push(Number(match[1]));
      onLog?.(e);
    },
  };
}

function sha256(bytes: Buffer): string {
  return createHash('sha256').update(bytes).digest('hex');
}

describe('parseTrainerLine', () => {
  test('parses each event of the protocol', () => {
    expect(parseTrainerLine('{"event":"progress","step":10,"loss":2.31,"tokens":10240}')).toEqual({ event: 'progress', step: 10, loss: 2.31, tokens: 10240 });
    expect(parseTrainerLine(`{"event":"checkpoint","step":25,"path":"/s/step-25.pt","sha256":"${SHA_A}"}`)).toEqual({
      event: 'checkpoint', step: 25, path: '/s/step-25.pt', sha256: SHA_A,
    });
    expect(parseTrainerLine(`{"event":"done","step":200,"loss":1.87,"model":"/s/model.safetensors","sha256":"${SHA_A}"}`)).toEqual({
      event: 'done', step: 200, loss: 1.87, model: '/s/model.safetensors', sha256: SHA_A,
    });
    expect(parseTrainerLine('{"event":"log","level":"warn","message":"low memory"}')).toEqual({ event: 'log', level: 'warn', message: 'low memory' });
  });

  test('ignores fields it does not know and lower-cases the digest', () => {
    const line = JSON.stringify({ event: 'checkpoint', step: 1, path: '/c', sha256: 'A'.repeat(64), lr: 0.1 });
    expect(parseTrainerLine(line)).toEqual({ event: 'checkpoint', step: 1, path: '/c', sha256: SHA_A });
  });

  test('rejects a line that is not JSON, quoting it', () => {
    expect(() => parseTrainerLine('step 10 loss 2.3')).toThrow(TrainerProtocolError);
    expect(() => parseTrainerLine('step 10 loss 2.3')).toThrow(/not JSON.*: 'step 10 loss 2\.3'$/);
  });

  test('rejects JSON that is not an object', () => {
    for (const line of ['[1,2]', '42', 'null', '"progress"']) {
      expect(() => parseTrainerLine(line)).toThrow(/not a JSON object/);
    }
  });

  test('rejects a missing or unknown event, naming it', () => {
    expect(() => parseTrainerLine('{"step":1}')).toThrow(/no "event" field/);
    expect(() => parseTrainerLine('{"event":"epoch","n":1}')).toThrow(/unknown event "epoch".*progress, checkpoint, done, log/);
  });

  test('rejects missing or ill-typed fields, naming the field', () => {
    expect(() => parseTrainerLine('{"event":"progress","step":1,"loss":2}')).toThrow(/"progress" event is invalid \(tokens: Required\)/);
    expect(() => parseTrainerLine('{"event":"progress","step":1.5,"loss":2,"tokens":3}')).toThrow(/step: Expected integer/);
    expect(() => parseTrainerLine('{"event":"checkpoint","step":1,"path":"/c","sha256":"abc"}')).toThrow(/sha256: expected 64 hex digits/);
    expect(() => parseTrainerLine('{"event":"log","level":"debug","message":"x"}')).toThrow(/level:/);
  });

  test('truncates a long line in the message', () => {
    const line = `{"event":"log","level":"info","message":${'1'.repeat(5000)}}`;
    let message = '';
    try {
      parseTrainerLine(line);
    } catch (err) {
      message = (err as Error).message;
    }
    expect(message).toMatch(new RegExp(`: '\\{"event":"log",.*1…' \\(${line.length} chars\\)$`));
    expect(message.length).toBeLessThan(400);
  });
});

describe('trainer input files', () => {
  test('writeTokenFile writes little-endian int32 ids', async () => {
    const file = path.join(root, 'data', 'domain.i32');
    await writeTokenFile(file, [0, 1, 256, 257, -1, 2147483647]);
    const buf = readFileSync(file);
    expect(buf.length).toBe(24);
    expect(Array.from({ length: 6 }, (_, i) => buf.readInt32LE(i * 4))).toEqual([0, 1, 256, 257, -1, 2147483647]);
    expect(buf.subarray(8, 12)).toEqual(Buffer.from([0, 1, 0, 0]));
  });

  test('writeTokenFile writes an empty stream as an empty file', async () => {
    const file = path.join(root, 'replay.i32');
    await writeTokenFile(file, []);
    expect(readFileSync(file).length).toBe(0);
  });

  test('writeTokenFile refuses ids that are not int32, leaving no file', async () => {
    const file = path.join(root, 'bad.i32');
    await expect(writeTokenFile(file, [1, 2.5])).rejects.toThrow(/index 1 is not an int32/);
    await expect(writeTokenFile(file, [2 ** 31])).rejects.toThrow(RangeError);
    expect(existsSync(file)).toBe(false);
  });

  test('writeSftFile writes one prompt/response object per line', async () => {
    const file = path.join(root, 'sft.jsonl');
    await writeSftFile(file, [{ prompt: [1, 2], response: [3] }, { prompt: [], response: [4, 5] }]);
    const lines = readFileSync(file, 'utf8').split('\n');
    expect(lines).toEqual(['{"prompt":[1,2],"response":[3]}', '{"prompt":[],"response":[4,5]}', '']);
  });
});

describe('runExternalTrainer', () => {
  test('a trainer that finishes resolves with its done event, after progress and verified checkpoints', async () => {
    const events: TrainerEvent[] = [];
    const options = fakeRun('normal', {
      env: { FAKE_EXTRA: 'from-spec' },
      onProgress: (e) => { events.push(e); },
      onCheckpoint: async (e) => { events.push(e); },
      onLog: (e) => { events.push(e); },
    });
    const { done } = await runExternalTrainer(options);

    const job = options.job as TrainerJob;
    const model = readFileSync(path.join(job.outputModelDir, 'model.safetensors'));
    expect(done).toEqual({ event: 'done', step: 6, loss: 0.5, model: job.outputModelDir, sha256: sha256(model) });
    expect(events.filter((e) => e.event === 'progress').map((e) => e.step)).toEqual([1, 2, 3, 4, 5, 6]);
    const checkpoints = events.filter((e): e is Extract<TrainerEvent, { event: 'checkpoint' }> => e.event === 'checkpoint');
    expect(checkpoints.map((e) => e.step)).toEqual([2, 4, 6]);
    for (const c of checkpoints) expect(sha256(readFileSync(c.path))).toBe(c.sha256);
    // The job file is where the trainer was told to find it, and the extra env reached it.
    expect(JSON.parse(readFileSync(path.join(root, 'work', 'job.json'), 'utf8'))).toEqual(job);
    expect(events).toContainEqual({ event: 'log', level: 'info', message: 'env FAKE_EXTRA=from-spec' });
  });

  test('stderr is appended to the log file, creating its folder and keeping what was there', async () => {
    const options = fakeRun('normal');
    await runExternalTrainer(options);
    await runExternalTrainer(options);
    const log = readFileSync(options.stderrFile, 'utf8');
    const workDir = path.join(root, 'work');
    expect(log).toBe(`fake trainer starting dacp in ${workDir}\nfake trainer finished\n`.repeat(2));
  });

  test('events are handled one at a time in order, even when onCheckpoint is slow', async () => {
    const seen: string[] = [];
    let inCheckpoint = 0;
    let overlapped = false;
    await runExternalTrainer(fakeRun('normal', {
      job: jobIn(root, { settings: { ...jobIn(root).settings, totalSteps: 8 } }),
      onProgress: async (e) => {
        if (inCheckpoint > 0) overlapped = true;
        seen.push(`progress ${e.step}`);
      },
      onCheckpoint: async (e) => {
        inCheckpoint += 1;
        if (inCheckpoint > 1) overlapped = true;
        seen.push(`checkpoint ${e.step} start`);
        await new Promise((resolve) => setTimeout(resolve, 60)); // a slow store upload, not synchronisation
        seen.push(`checkpoint ${e.step} end`);
        inCheckpoint -= 1;
      },
    }));
    const expected: string[] = [];
    for (let step = 1; step <= 8; step += 1) {
      expected.push(`progress ${step}`);
      if (step % 2 === 0) expected.push(`checkpoint ${step} start`, `checkpoint ${step} end`);
    }
    expect(seen).toEqual(expected);
    expect(overlapped).toBe(false);
  });

  test('a malformed stdout line kills the trainer and fails with TrainerProtocolError quoting it', async () => {
    const progress: number[] = [];
    const run = runExternalTrainer(fakeRun('malformed', { onProgress: (e) => { progress.push(e.step); } }));
    await expect(run).rejects.toThrow(TrainerProtocolError);
    await expect(run).rejects.toThrow(/not JSON.*: 'this is not json'$/);
    expect(progress).toEqual([1]); // the valid line before the bad one was still delivered
    expect(reportedPids).toHaveLength(1);
    expect(isGone(reportedPids[0] ?? 0)).toBe(true);
  });

  test('a checkpoint whose sha256 does not match its file fails with TrainerProtocolError', async () => {
    const onCheckpoint = jest.fn(async () => undefined);
    const run = runExternalTrainer(fakeRun('bad-sha', { onCheckpoint }));
    await expect(run).rejects.toThrow(TrainerProtocolError);
    await expect(run).rejects.toThrow(/step-1\.ckpt\) has sha256 [0-9a-f]{64}, but the event says 0{64}/);
    expect(onCheckpoint).not.toHaveBeenCalled();
    expect(isGone(reportedPids[0] ?? 0)).toBe(true);
  });

  test('exit 0 without done or a checkpoint fails with TrainerExitError', async () => {
    const run = runExternalTrainer(fakeRun('no-done'));
    await expect(run).rejects.toThrow(TrainerExitError);
    await expect(run).rejects.toMatchObject({ code: 0, signal: null, message: expect.stringMatching(/without a "done" event or any checkpoint/) });
  });

  test('exit 0 after a checkpoint without done fails with TrainerStopped, after delivering the checkpoint', async () => {
    const onCheckpoint = jest.fn(async () => undefined);
    const run = runExternalTrainer(fakeRun('stop-after-checkpoint', { onCheckpoint }));
    await expect(run).rejects.toThrow(TrainerStopped);
    await expect(run).rejects.toMatchObject({ lastCheckpoint: { event: 'checkpoint', step: 1 } });
    expect(onCheckpoint).toHaveBeenCalledTimes(1);
  });

  test('a non-zero exit fails with TrainerExitError carrying the last 20 stderr lines; the file has all', async () => {
    const options = fakeRun('fail');
    const err = await runExternalTrainer(options).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(TrainerExitError);
    const exit = err as TrainerExitError;
    expect(exit.code).toBe(3);
    expect(exit.signal).toBeNull();
    const last20 = Array.from({ length: 20 }, (_, i) => `stderr line ${i + 11}`).join('\n');
    expect(exit.stderrTail).toBe(last20);
    expect(exit.message).toMatch(/exited with code 3; last stderr lines:\nstderr line 11\n/);
    expect(readFileSync(options.stderrFile, 'utf8')).toBe(Array.from({ length: 30 }, (_, i) => `stderr line ${i + 1}\n`).join(''));
  });

  test('a trainer killed from outside fails with TrainerExitError naming the signal, and its helpers go too', async () => {
    const run = runExternalTrainer(fakeRun('hang', {
      onLog: (e) => {
        if (e.message.startsWith('helper ') && reportedPids[0] !== undefined) process.kill(reportedPids[0], 'SIGKILL');
      },
    }));
    await expect(run).rejects.toMatchObject({ name: 'TrainerExitError', code: null, signal: 'SIGKILL' });
    expect(reportedPids).toHaveLength(2);
  });

  test('abort sends SIGTERM, then SIGKILL to the trainer and its helpers after the grace period', async () => {
    const controller = new AbortController();
    const options = fakeRun('hang', {
      signal: controller.signal,
      killGraceMs: 400,
      onLog: (e) => {
        if (e.message.startsWith('helper ')) controller.abort();
      },
    });
    const started = Date.now();
    const run = runExternalTrainer(options);
    await expect(run).rejects.toMatchObject({ name: 'AbortError' });
    expect(Date.now() - started).toBeGreaterThanOrEqual(400);
    expect(reportedPids).toHaveLength(2);
    expect(isGone(reportedPids[0] ?? 0)).toBe(true);
    await waitFor(() => existsSync(options.stderrFile) && readFileSync(options.stderrFile, 'utf8').includes('ignoring SIGTERM'), 5_000, () => 'SIGTERM was not sent first');
  });

  test('abort delivers the checkpoint a trainer writes on SIGTERM before rejecting with the abort reason', async () => {
    const controller = new AbortController();
    const reason = new Error('run cancelled by an operator');
    let delivered: number | null = null;
    const run = runExternalTrainer(fakeRun('sigterm-checkpoint', {
      signal: controller.signal,
      onProgress: (e) => {
        if (e.step === 3) controller.abort(reason);
      },
      onCheckpoint: async (e) => {
        await new Promise((resolve) => setTimeout(resolve, 100)); // a slow store upload
        delivered = e.step;
      },
    }));
    const err = await run.catch((e: unknown) => e);
    expect(err).toBe(reason);
    expect(delivered).not.toBeNull();
    expect(delivered).toBeGreaterThanOrEqual(3);
  });

  test('abort without a reason rejects with an AbortError', async () => {
    const controller = new AbortController();
    const run = runExternalTrainer(fakeRun('sigterm-checkpoint', {
      signal: controller.signal,
      onProgress: () => controller.abort(),
    }));
    await expect(run).rejects.toMatchObject({ name: 'AbortError' });
  });

  test('an already aborted signal starts nothing', async () => {
    const controller = new AbortController();
    controller.abort();
    await expect(runExternalTrainer(fakeRun('normal', { signal: controller.signal }))).rejects.toMatchObject({ name: 'AbortError' });
    expect(existsSync(path.join(root, 'work', 'job.json'))).toBe(false);
  });

  test('an error thrown by onCheckpoint kills the trainer and is the rejection', async () => {
    const options = fakeRun('normal', {
      job: jobIn(root, { settings: { ...jobIn(root).settings, totalSteps: 200 } }),
      onCheckpoint: async () => {
        throw new Error('artifact store is full');
      },
    });
    await expect(runExternalTrainer(options)).rejects.toThrow('artifact store is full');
    expect(isGone(reportedPids[0] ?? 0)).toBe(true);
    expect(existsSync((options.job as TrainerJob).outputModelDir)).toBe(false);
  });

  test('a command that cannot be started fails with TrainerExitError naming it', async () => {
    const missing = path.join(root, 'no-such-trainer');
    const run = runExternalTrainer(fakeRun('normal', { command: [missing, '--fast'] }));
    await expect(run).rejects.toThrow(TrainerExitError);
    await expect(run).rejects.toThrow(`could not start trainer command ${missing} --fast`);
    await expect(run).rejects.toThrow(/ENOENT/);
  });
});
