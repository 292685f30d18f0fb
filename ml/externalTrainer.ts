import { spawn, type ChildProcess } from 'node:child_process';
import { trainerEnvironment } from '../workers/policy';
import { createHash, randomBytes } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { mkdir, open, rename, rm } from 'node:fs/promises';
import path from 'node:path';
import { StringDecoder } from 'node:string_decoder';
import { z } from 'zod';
import type { TrainSettings } from './train';

/**
 * The external-command training engine: runs any program that speaks `dacp-trainer/2`
 * (docs/trainer-protocol.md) and turns its stdout events, exit status and stderr into callbacks,
 * a result or a typed error. It knows nothing of Temporal; the training activity maps its errors
 * to failures.
 */

export const TRAINER_PROTOCOL = 'dacp-trainer/2';

// ---------------------------------------------------------------------------------------------
// job.json

export interface TrainerLmData {
  kind: 'lm';
  /**
   * Little-endian int32 token ids; documents end with the tokenizer's end-of-text id. Absent
   * where `domainParts` is given, so that a trainer that does not know those fails rather than
   * training a different mix.
   */
  domain?: string;
  /** Several weighted domain sources: each domain row draws its part by weight, then a window of it. */
  domainParts?: { name: string; tokens: string; weight: number }[];
  replay: string;
  replayRatio: number;
}

export interface TrainerSftData {
  kind: 'sft';
  /** JSONL, one `{"prompt": [ids], "response": [ids]}` per line. */
  examples: string;
  padId: number;
  eosId: number;
}

/** The protocol's `settings` are exactly the built-in engine's training settings. */
export type TrainerSettings = TrainSettings;

/**
 * The job file handed to the trainer: exactly the `job.json` of docs/trainer-protocol.md (version 2:
 * model folders in and out). Version 1 (dacp's own model file in and out) is retired.
 */
export interface TrainerJob {
  protocol: typeof TRAINER_PROTOCOL;
  /** bootstrap: `initModelDir` holds fresh weights that dacp initialised from `settings.seed`. */
  stage: 'bootstrap' | 'dacp' | 'instruct';
  /** A Hugging Face model folder (config.json, model.safetensors, tokenizer files). */
  initModelDir: string;
  /** Tokens per training row (the model's window, capped as the built-in engine caps it). */
  contextLength: number;
  data: TrainerLmData | TrainerSftData;
  settings: TrainerSettings;
  checkpointEvery: number;
  checkpointDir: string;
  resumeFrom: string | null;
  /** Where the trained model goes, as a plain model folder (LoRA merged in). */
  outputModelDir: string;
  /** The hf engine's own settings (trainers/hf/); absent for other trainers, and read as these defaults. */
  hf?: {
    lora: { r: number; alpha: number; dropout: number; targetModules: string[] } | null;
    gradientCheckpointing: boolean;
    precision: 'auto' | 'fp32' | 'bf16';
    /** With several processes: ddp (whole model each) or fsdp (sharded); absent: ddp. */
    parallel?: 'ddp' | 'fsdp';
  };
}

// ---------------------------------------------------------------------------------------------
// Events

export type TrainerEvent =
  | { event: 'progress'; step: number; loss: number; tokens: number }
  | { event: 'checkpoint'; step: number; path: string; sha256: string }
  | { event: 'done'; step: number; loss: number; model: string; sha256: string }
  | { event: 'log'; level: 'info' | 'warn'; message: string };

export type TrainerProgressEvent = Extract<TrainerEvent, { event: 'progress' }>;
export type TrainerCheckpointEvent = Extract<TrainerEvent, { event: 'checkpoint' }>;
export type TrainerDoneEvent = Extract<TrainerEvent, { event: 'done' }>;
export type TrainerLogEvent = Extract<TrainerEvent, { event: 'log' }>;

/** The trainer broke the protocol: a bad stdout line, or a checkpoint that is not what it claims. */
export class TrainerProtocolError extends Error {
  override readonly name = 'TrainerProtocolError';
}

/** The trainer exited non-zero, was killed by a signal it was not sent by us, or could not start. */
export class TrainerExitError extends Error {
  override readonly name = 'TrainerExitError';
  readonly code: number | null;
  readonly signal: string | null;
  /** The last lines the trainer wrote to stderr (at most ~20), for the failure message. */
  readonly stderrTail: string;

  constructor(message: string, details: { code: number | null; signal: string | null; stderrTail: string }) {
    super(message);
    this.code = details.code;
    this.signal = details.signal;
    this.stderrTail = details.stderrTail;
  }
}

/** The trainer exited 0 after a checkpoint but without `done` (e.g. it got SIGTERM): resume from there. */
export class TrainerStopped extends Error {
  override readonly name = 'TrainerStopped';
  readonly lastCheckpoint: TrainerCheckpointEvent;

  constructor(message: string, lastCheckpoint: TrainerCheckpointEvent) {
    super(message);
    this.lastCheckpoint = lastCheckpoint;
  }
}

const step = z.number().int().nonnegative();
const sha256 = z
  .string()
  .regex(/^[0-9a-fA-F]{64}$/, 'expected 64 hex digits')
  .transform((s) => s.toLowerCase());
const filePath = z.string().min(1);
/**
 * A loss that stopped being a number still has to reach dacp, which fails the run on it: JSON has no
 * NaN, so JavaScript trainers write `null`, and Python's json.dumps writes bare NaN / Infinity
 * (read by parseJsonLine as the strings below).
 */
const NON_FINITE: Record<string, number> = { NaN: Number.NaN, Infinity: Number.POSITIVE_INFINITY, '-Infinity': Number.NEGATIVE_INFINITY };
const loss = z.union([
  z.number(),
  z.null().transform(() => Number.NaN),
  z.enum(['NaN', 'Infinity', '-Infinity']).transform((name) => NON_FINITE[name] as number),
]);

// z.object strips unknown keys, so a trainer may add fields of its own without breaking the protocol.
const eventSchemas = {
  progress: z.object({ event: z.literal('progress'), step, loss, tokens: z.number().int().nonnegative() }),
  checkpoint: z.object({ event: z.literal('checkpoint'), step, path: filePath, sha256 }),
  done: z.object({ event: z.literal('done'), step, loss, model: filePath, sha256 }),
  log: z.object({ event: z.literal('log'), level: z.enum(['info', 'warn']), message: z.string() }),
} satisfies Record<TrainerEvent['event'], z.ZodType<TrainerEvent, z.ZodTypeDef, unknown>>;

const QUOTE_LIMIT = 200;

/** The line in single quotes, cut short, control characters escaped so the message stays one readable line. */
function quote(line: string): string {
  const shown = line.slice(0, QUOTE_LIMIT).replace(/\p{Cc}/gu, (c) => JSON.stringify(c).slice(1, -1));
  return line.length > QUOTE_LIMIT ? `'${shown}…' (${line.length} chars)` : `'${shown}'`;
}

function isEventName(name: unknown): name is TrainerEvent['event'] {
  return typeof name === 'string' && Object.prototype.hasOwnProperty.call(eventSchemas, name);
}

/**
 * JSON.parse, except that bare NaN, Infinity and -Infinity outside strings (Python's json.dumps
 * writes them for non-finite floats) are read as the strings "NaN", "Infinity", "-Infinity".
 */
function parseJsonLine(line: string): unknown {
  try {
    return JSON.parse(line);
  } catch (err) {
    const quoted = quoteNonFinite(line);
    if (quoted === line) throw err;
    return JSON.parse(quoted);
  }
}

function quoteNonFinite(line: string): string {
  let out = '';
  let inString = false;
  for (let i = 0; i < line.length; i++) {
    const c = line[i] as string;
    if (inString) {
      out += c;
      if (c === '\\') out += line[++i] ?? '';
      else if (c === '"') inString = false;
      continue;
    }
    const token = /^(?:-?Infinity|NaN)/.exec(line.slice(i, i + 9))?.[0];
    if (token !== undefined) {
      out += `"${token}"`;
      i += token.length - 1;
      continue;
    }
    if (c === '"') inString = true;
    out += c;
  }
  return out;
}

/** One stdout line → one event, or a TrainerProtocolError that names the problem and quotes the line. */
export function parseTrainerLine(line: string): TrainerEvent {
  let value: unknown;
  try {
    value = parseJsonLine(line);
  } catch (err) {
    throw new TrainerProtocolError(`trainer stdout line is not JSON (${(err as Error).message}): ${quote(line)}`);
  }
  if (typeof value !== 'object' || value === null || Array.isArray(value)) {
    throw new TrainerProtocolError(`trainer stdout line is not a JSON object: ${quote(line)}`);
  }
  const name: unknown = (value as Record<string, unknown>).event;
  if (name === undefined) throw new TrainerProtocolError(`trainer stdout line has no "event" field: ${quote(line)}`);
  if (!isEventName(name)) {
    throw new TrainerProtocolError(
      `trainer stdout line has unknown event ${JSON.stringify(name)} (expected one of ${Object.keys(eventSchemas).join(', ')}): ${quote(line)}`,
    );
  }
  const parsed = eventSchemas[name].safeParse(value);
  if (!parsed.success) {
    const issues = parsed.error.issues.map((issue) => `${issue.path.join('.') || '(root)'}: ${issue.message}`);
    throw new TrainerProtocolError(`trainer "${name}" event is invalid (${issues.join('; ')}): ${quote(line)}`);
  }
  return parsed.data;
}

/**
 * The trainer's own report that training diverged, from the last lines of its stderr: a line
 * saying "training diverged at step N" (as the hf trainer writes before exiting 1). Null
 * when there is none: the exit then counts as an ordinary, retryable failure.
 */
export function reportedDivergence(stderrTail: string): { step: number; line: string } | null {
  for (const line of stderrTail.split('\n').reverse()) {
    const match = /training diverged at step (\d+)/i.exec(line);
    if (match) return { step: Number(match[1]), line: line.trim() };
  }
  return null;
}

// ---------------------------------------------------------------------------------------------
// Files for the trainer

/** Temp file, fsync, rename: a reader never sees a half-written file. */
async function writeFileAtomic(file: string, data: string | Uint8Array): Promise<void> {
  await mkdir(path.dirname(file), { recursive: true });
  const tmp = `${file}.tmp-${process.pid}-${randomBytes(4).toString('hex')}`;
  try {
    const handle = await open(tmp, 'w');
    try {
      await handle.writeFile(data);
      await handle.sync();
    } finally {
      await handle.close();
    }
    await rename(tmp, file);
  } catch (err) {
    await rm(tmp, { force: true });
    throw err;
  }
}

/** A token stream for `data.kind = "lm"`: little-endian int32 ids. */
export async function writeTokenFile(file: string, ids: number[]): Promise<void> {
  const buf = Buffer.alloc(ids.length * 4);
  ids.forEach((id, i) => {
    if (!Number.isInteger(id) || id < -0x80000000 || id > 0x7fffffff) {
      throw new RangeError(`token id at index ${i} is not an int32: ${id}`);
    }
    buf.writeInt32LE(id, i * 4);
  });
  await writeFileAtomic(file, buf);
}

/** Examples for `data.kind = "sft"`: one `{"prompt": [ids], "response": [ids]}` per line. */
export async function writeSftFile(file: string, examples: { prompt: number[]; response: number[] }[]): Promise<void> {
  const text = examples.map((e) => `${JSON.stringify({ prompt: e.prompt, response: e.response })}\n`).join('');
  await writeFileAtomic(file, text);
}

export async function sha256OfFile(file: string): Promise<string> {
  const hash = createHash('sha256');
  for await (const chunk of createReadStream(file)) hash.update(chunk as Buffer);
  return hash.digest('hex');
}

// ---------------------------------------------------------------------------------------------
// Running a trainer

export interface ExternalTrainerOptions {
  /** argv; `--job <workDir>/job.json` is appended. */
  command: string[];
  job: TrainerJob;
  /** Scratch folder for this attempt: job.json goes here; the trainer's working directory. */
  workDir: string;
  /** Added to the worker's environment. */
  env?: Record<string, string>;
  /** All of the trainer's stderr is appended here (parent folders are created). */
  stderrFile: string;
  /** Abort → SIGTERM, then SIGKILL after `killGraceMs`. */
  signal?: AbortSignal;
  killGraceMs?: number;
  onProgress?: (e: TrainerProgressEvent) => void | Promise<void>;
  /**
   * Awaited, one at a time, in order with the other events; the file has been verified against its
   * sha256, and a relative `path` has been resolved against `workDir`.
   */
  onCheckpoint?: (e: TrainerCheckpointEvent) => Promise<void>;
  onLog?: (e: TrainerLogEvent) => void;
}

const DEFAULT_KILL_GRACE_MS = 10_000;
/** A trainer that writes this much without a newline is not speaking the protocol. */
const MAX_LINE_CHARS = 1 << 20;
/** Stop reading stdout while this many events wait for a slow callback; resume below the low mark. */
const QUEUE_HIGH = 1_000;
const QUEUE_LOW = 100;
const STDERR_TAIL_LINES = 20;
const STDERR_TAIL_BYTES = 16 * 1024;
/** After the trainer exits, how long its stdio may stay open (held by a process that escaped the group). */
const STDIO_DRAIN_MS = 5_000;

function describeCommand(command: string[]): string {
  return command.map((arg) => (/^[\w@%+=:,./-]+$/.test(arg) ? arg : JSON.stringify(arg))).join(' ');
}

function abortError(signal: AbortSignal): Error {
  const reason: unknown = signal.reason;
  if (reason instanceof Error) return reason;
  const err = new Error(reason === undefined ? 'trainer run aborted' : `trainer run aborted: ${String(reason)}`);
  err.name = 'AbortError';
  return err;
}

/** Signal the trainer's whole process group (it is spawned detached, as the group leader). */
function killGroup(child: ChildProcess, signal: NodeJS.Signals): void {
  if (child.pid === undefined) return;
  try {
    process.kill(-child.pid, signal);
  } catch {
    // ESRCH: the group is already gone.
  }
}

/** Keeps the last bytes of stderr for the failure message, without holding all of it in memory. */
class StderrTail {
  private chunks: Buffer[] = [];
  private bytes = 0;

  push(chunk: Buffer): void {
    this.chunks.push(chunk);
    this.bytes += chunk.length;
    while (this.chunks.length > 1 && this.bytes - (this.chunks[0]?.length ?? 0) >= STDERR_TAIL_BYTES) {
      this.bytes -= this.chunks.shift()?.length ?? 0;
    }
  }

  text(): string {
    const all = Buffer.concat(this.chunks);
    const lines = all.subarray(Math.max(0, all.length - STDERR_TAIL_BYTES)).toString('utf8').split(/\r?\n/);
    while (lines.length > 0 && lines[lines.length - 1] === '') lines.pop();
    return lines.slice(-STDERR_TAIL_LINES).join('\n');
  }
}

/**
 * Run one training attempt of an external trainer and resolve with its `done` event.
 *
 * Rejects with TrainerProtocolError (bad stdout line, bad checkpoint: the trainer is SIGKILLed),
 * TrainerExitError (non-zero exit, killed, exit 0 with neither `done` nor checkpoint, could not
 * start), TrainerStopped (exit 0 after a checkpoint without `done`), the error a callback threw
 * (the trainer is SIGKILLed), or, on abort, `signal.reason` / an AbortError. It settles only after
 * the trainer's process group is gone and every event read has been handled.
 */
export async function runExternalTrainer(o: ExternalTrainerOptions): Promise<{ done: TrainerDoneEvent }> {
  const [program, ...programArgs] = o.command;
  if (program === undefined || program === '') throw new TypeError('external trainer command is empty: give at least the program to run');
  if (o.signal?.aborted) throw abortError(o.signal);
  const workDir = path.resolve(o.workDir);
  const jobFile = path.join(workDir, 'job.json');
  const shown = describeCommand(o.command);

  await mkdir(workDir, { recursive: true });
  await writeFileAtomic(jobFile, `${JSON.stringify(o.job, null, 2)}\n`);
  await mkdir(path.dirname(o.stderrFile), { recursive: true });
  const stderrHandle = await open(o.stderrFile, 'a');
  const stderrOut = stderrHandle.createWriteStream();
  let stderrWriteError: Error | null = null;
  stderrOut.on('error', (err) => {
    stderrWriteError ??= err;
  });
  const stderrFlushed = new Promise<void>((resolve) => stderrOut.once('close', () => resolve()));

  if (o.signal?.aborted) {
    // Aborted while the files were written: start nothing.
    stderrOut.end();
    await stderrFlushed;
    throw abortError(o.signal);
  }
  let child: ChildProcess;
  try {
    child = spawn(program, [...programArgs, '--job', jobFile], {
      cwd: workDir,
      // The worker's configuration decides what else a trainer sees: never dacp's database or Temporal settings.
      env: trainerEnvironment(o.env ?? {}),
      stdio: ['ignore', 'pipe', 'pipe'],
      // Its own process group, so SIGKILL reaches the helpers it forked (data loaders, launchers).
      detached: true,
    });
  } catch (err) {
    // spawn throws synchronously only for bad arguments (e.g. a NUL byte); missing programs arrive as 'error'.
    stderrOut.end();
    await stderrFlushed;
    throw new TrainerExitError(`could not start trainer command ${shown}: ${(err as Error).message}`, { code: null, signal: null, stderrTail: '' });
  }
  const stdout = child.stdout;
  const stderr = child.stderr;
  if (!stdout || !stderr) {
    killGroup(child, 'SIGKILL');
    throw new Error('trainer spawned without stdout/stderr pipes');
  }

  return new Promise<{ done: TrainerDoneEvent }>((resolve, reject) => {
    const tail = new StderrTail();
    const decoder = new StringDecoder('utf8');
    let partial = '';
    let failure: Error | null = null;
    let spawnError: Error | null = null;
    let aborted = false;
    let exited = false;
    let done: TrainerDoneEvent | null = null;
    let lastCheckpoint: TrainerCheckpointEvent | null = null;
    let queued = 0;
    let chain: Promise<void> = Promise.resolve();
    let killTimer: NodeJS.Timeout | undefined;
    let drainTimer: NodeJS.Timeout | undefined;
    let lastStdoutAt = Date.now();

    let reading = true;
    const killNow = () => {
      killGroup(child, 'SIGKILL');
      // Keep draining the pipe so the process can close; what it still says no longer matters.
      stdout.resume();
    };
    /** A callback or a checkpoint check failed: drop the events still queued. */
    const fail = (err: Error) => {
      failure ??= err;
      reading = false;
      killNow();
    };
    /** stdout broke the protocol: stop the trainer now, but deliver the valid events read before the bad line. */
    const stopReading = (err: Error) => {
      if (!reading) return;
      reading = false;
      killNow();
      chain = chain.then(() => {
        failure ??= err;
      });
    };

    const handle = async (event: TrainerEvent): Promise<void> => {
      switch (event.event) {
        case 'progress':
          await o.onProgress?.(event);
          return;
        case 'log':
          o.onLog?.(event);
          return;
        case 'checkpoint': {
          const checkpoint = { ...event, path: path.resolve(workDir, event.path) };
          let actual: string;
          try {
            actual = await sha256OfFile(checkpoint.path);
          } catch (err) {
            throw new TrainerProtocolError(
              `trainer announced checkpoint at step ${event.step} but ${checkpoint.path} cannot be read: ${(err as Error).message}`,
            );
          }
          if (actual !== checkpoint.sha256) {
            throw new TrainerProtocolError(
              `trainer checkpoint at step ${event.step} (${checkpoint.path}) has sha256 ${actual}, but the event says ${checkpoint.sha256}`,
            );
          }
          lastCheckpoint = checkpoint;
          await o.onCheckpoint?.(checkpoint);
          return;
        }
        case 'done':
          if (done) throw new TrainerProtocolError(`trainer sent a second "done" event (step ${event.step}); done comes exactly once`);
          done = event;
          return;
      }
    };

    const enqueue = (event: TrainerEvent) => {
      queued += 1;
      if (queued > QUEUE_HIGH) stdout.pause();
      chain = chain.then(async () => {
        queued -= 1;
        if (queued < QUEUE_LOW) stdout.resume();
        if (failure) return;
        try {
          await handle(event);
        } catch (err) {
          fail(err instanceof Error ? err : new Error(String(err)));
        }
      });
    };

    const acceptLine = (raw: string) => {
      if (!reading) return;
      const line = raw.endsWith('\r') ? raw.slice(0, -1) : raw;
      // A blank line carries nothing; tolerating it costs nothing (e.g. a trailing print()).
      if (line.trim() === '') return;
      let event: TrainerEvent;
      try {
        event = parseTrainerLine(line);
      } catch (err) {
        stopReading(err as Error);
        return;
      }
      enqueue(event);
    };

    stdout.on('data', (chunk: Buffer) => {
      lastStdoutAt = Date.now();
      if (!reading) return;
      partial += decoder.write(chunk);
      let newline = partial.indexOf('\n');
      while (newline !== -1 && reading) {
        acceptLine(partial.slice(0, newline));
        partial = partial.slice(newline + 1);
        newline = partial.indexOf('\n');
      }
      if (reading && partial.length > MAX_LINE_CHARS) {
        stopReading(new TrainerProtocolError(`trainer wrote more than ${MAX_LINE_CHARS} characters without a newline: ${quote(partial)}`));
      }
    });
    const endOfStdout = () => {
      partial += decoder.end();
      if (partial !== '') acceptLine(partial); // a final line without a newline still counts
      partial = '';
    };
    stdout.on('end', endOfStdout);
    stdout.on('error', (err) => stopReading(new TrainerProtocolError(`reading trainer stdout failed: ${err.message}`)));

    stderr.on('data', (chunk: Buffer) => {
      tail.push(chunk);
      if (!stderrWriteError) stderrOut.write(chunk);
    });
    stderr.on('error', () => {
      // Losing stderr must not fail training; the exit status still decides.
    });

    const onAbort = () => {
      if (exited || aborted || !o.signal) return;
      aborted = true;
      // SIGTERM to the trainer alone: it checkpoints and stops its own helpers; SIGKILL later takes the group.
      try {
        if (child.pid !== undefined) process.kill(child.pid, 'SIGTERM');
      } catch {
        // Already gone.
      }
      killTimer = setTimeout(() => killGroup(child, 'SIGKILL'), o.killGraceMs ?? DEFAULT_KILL_GRACE_MS);
    };
    o.signal?.addEventListener('abort', onAbort, { once: true });

    child.on('error', (err: NodeJS.ErrnoException) => {
      // Also emitted when a kill() fails; only a failed spawn (no pid) matters here.
      if (child.pid === undefined) spawnError ??= err;
    });
    child.on('exit', () => {
      exited = true;
      clearTimeout(killTimer);
      // Nothing of this attempt may outlive it: take down whatever the trainer left in its group.
      killGroup(child, 'SIGKILL');
      // A process that left the group may hold the pipes open for ever; once the trainer is gone and
      // stdout has been quiet (not merely paused for a slow callback) for a while, stop waiting for EOF.
      const armDrainTimer = () => {
        drainTimer = setTimeout(() => {
          if (stdout.isPaused() || Date.now() - lastStdoutAt < STDIO_DRAIN_MS) return armDrainTimer();
          endOfStdout();
          stdout.destroy();
          stderr.destroy();
        }, STDIO_DRAIN_MS);
      };
      armDrainTimer();
    });

    child.on('close', (code: number | null, signal: NodeJS.Signals | null) => {
      exited = true;
      clearTimeout(killTimer);
      clearTimeout(drainTimer);
      o.signal?.removeEventListener('abort', onAbort);
      void chain
        .then(async () => {
          stderrOut.end();
          await stderrFlushed;
        })
        .then(() => {
          const stderrTail = tail.text();
          const tailText = stderrTail ? `; last stderr lines:\n${stderrTail}` : ' (stderr was empty)';
          if (failure) return reject(failure);
          if (spawnError) {
            const err = spawnError as NodeJS.ErrnoException;
            const hint = err.code === 'ENOENT' ? ' (no such program: check engine.command and PATH)' : '';
            return reject(new TrainerExitError(`could not start trainer command ${shown}: ${err.message}${hint}`, { code: null, signal: null, stderrTail }));
          }
          if (aborted && o.signal) return reject(abortError(o.signal));
          if (signal !== null) {
            return reject(new TrainerExitError(`trainer ${shown} was killed by ${signal}${tailText}`, { code, signal, stderrTail }));
          }
          if (code !== 0) {
            return reject(new TrainerExitError(`trainer ${shown} exited with code ${code}${tailText}`, { code, signal, stderrTail }));
          }
          if (done) return resolve({ done });
          if (lastCheckpoint) {
            return reject(new TrainerStopped(
              `trainer ${shown} exited with code 0 after its checkpoint at step ${lastCheckpoint.step} but without a "done" event; the next attempt resumes from that checkpoint`,
              lastCheckpoint,
            ));
          }
          return reject(new TrainerExitError(
            `trainer ${shown} exited with code 0 without a "done" event or any checkpoint${tailText}`,
            { code, signal, stderrTail },
          ));
        })
        .catch((err: unknown) => reject(err instanceof Error ? err : new Error(String(err))));
    });
  });
}
