import { readFileSync, realpathSync, statSync } from 'node:fs';
import path from 'node:path';
import { ApplicationFailure } from '@temporalio/common';
import { RESERVED_ENV } from '../schemas/runSpec';

/**
 * What a worker lets a run spec do on its host, from the worker's own configuration (environment
 * variables of the worker process), never from the spec. docs/security.md explains each rule and
 * how to lock it down.
 *
 * - `DACP_TRAINER_COMMANDS`: the trainer commands a `command` engine may run, as a JSON list of
 *   argv prefixes (or the path of a file holding it), e.g. `[["/usr/bin/python3", "/opt/t/train.py"]]`.
 *   Unset: a program, or an interpreter's script, inside the spec's folder or dacp's `trainers/`.
 * - `DACP_DATA_ROOTS`: the folders file sources must stay inside (path-list). Unset: the spec's
 *   folder (and, narrower, the spec's own `dataRoots`). An entry may carry a name, `NAME=/folder`:
 *   a schedule whose spec lies in a named root refers to its files by that name, and each control
 *   host maps the name to its own folder (the same data, mounted wherever that host mounts it).
 * - `DACP_SOURCE_ENVS`: the environment variables a Postgres source may name as `connectionEnv`
 *   (comma-separated). Unset: any that is not one of dacp's own. Never dacp's own database.
 * - `DACP_S3_SOURCES`: the `s3://bucket[/prefix]` locations s3 sources may read (comma-separated).
 *   Unset: any the worker's credentials reach. Never dacp's own artifacts (DACP_ARTIFACTS).
 * - `DACP_TRAINER_ENV_PASS`: more variables of the worker's environment that trainers get
 *   (comma-separated), besides the basic ones below and those the spec names.
 */

export { RESERVED_ENV };

/** What every trainer process gets from the worker's environment: enough to run, nothing secret. */
const BASE_TRAINER_ENV = [
  'PATH', 'HOME', 'USER', 'LOGNAME', 'LANG', 'LANGUAGE', 'TZ', 'TMPDIR', 'TERM',
  'CUDA_VISIBLE_DEVICES', 'CUDA_HOME', 'CUDA_PATH', 'LD_LIBRARY_PATH', 'NVIDIA_VISIBLE_DEVICES',
  'OMP_NUM_THREADS', 'MKL_NUM_THREADS', 'VIRTUAL_ENV', 'PYTHONPATH', 'PYTHONHOME',
  'HF_HOME', 'HF_HUB_OFFLINE', 'TRANSFORMERS_OFFLINE', 'TORCH_HOME', 'XDG_CACHE_HOME',
  'DACP_TORCH_THREADS', 'DACP_DETERMINISTIC',
  'NCCL_DEBUG', 'NCCL_SOCKET_IFNAME', 'GLOO_SOCKET_IFNAME', 'MASTER_ADDR', 'MASTER_PORT',
];
const BASE_PREFIXES = ['LC_'];

const INTERPRETERS = /^(python[0-9.]*|node|bash|sh|Rscript|julia|ruby|perl)$/;

export interface WorkerPolicy {
  /** Allowed argv prefixes; null: the default rule (spec folder or dacp's trainers/). */
  trainerCommands: string[][] | null;
  dataRoots: string[] | null;
  /** The named entries of DACP_DATA_ROOTS: name → folder (also in dataRoots). */
  namedRoots: Record<string, string>;
  sourceEnvs: string[] | null;
  /** `bucket/prefix` locations s3 sources may read; null: any but dacp's own artifacts. */
  s3Sources: string[] | null;
  trainerEnvPass: string[];
}

/** `NAME=/folder` in DACP_DATA_ROOTS (a plain folder starts with `/`, so it never matches). */
export const DATA_ROOT_NAME = /^[A-Za-z][A-Za-z0-9_-]{0,63}$/;
const DATA_ROOT_ENTRY = /^([A-Za-z][A-Za-z0-9_-]{0,63})=(.+)$/;

function list(value: string | undefined, separator: string | RegExp): string[] | null {
  if (value === undefined || value.trim() === '') return null;
  return value.split(separator).map((v) => v.trim()).filter(Boolean);
}

export function workerPolicy(env: NodeJS.ProcessEnv = process.env): WorkerPolicy {
  let trainerCommands: string[][] | null = null;
  const raw = env.DACP_TRAINER_COMMANDS?.trim();
  if (raw) {
    const text = raw.startsWith('[') ? raw : readFileSync(raw, 'utf8');
    let parsed: unknown;
    try {
      parsed = JSON.parse(text);
    } catch {
      throw new Error(`DACP_TRAINER_COMMANDS is not JSON: give a list of argv prefixes, e.g. [["/usr/bin/python3", "/opt/trainers/train.py"]], or the path of a file holding one`);
    }
    if (!Array.isArray(parsed) || !parsed.every((p) => Array.isArray(p) && p.length > 0 && p.every((a) => typeof a === 'string'))) {
      throw new Error('DACP_TRAINER_COMMANDS must be a JSON list of non-empty lists of strings (argv prefixes)');
    }
    trainerCommands = parsed as string[][];
  }
  const namedRoots: Record<string, string> = Object.create(null) as Record<string, string>;
  const dataRoots =
    list(env.DACP_DATA_ROOTS, path.delimiter)?.map((entry) => {
      const named = DATA_ROOT_ENTRY.exec(entry);
      if (!named) return path.resolve(entry);
      const [, name, folder] = named as unknown as [string, string, string];
      if (Object.hasOwn(namedRoots, name)) throw new Error(`DACP_DATA_ROOTS names "${name}" twice; give each named root once (NAME=/folder)`);
      namedRoots[name] = path.resolve(folder);
      return namedRoots[name];
    }) ?? null;
  return {
    trainerCommands,
    dataRoots,
    namedRoots,
    sourceEnvs: list(env.DACP_SOURCE_ENVS, ','),
    s3Sources: list(env.DACP_S3_SOURCES, ',')?.map((l) => l.replace(/^s3:\/\//, '').replace(/\/+$/, '')) ?? null,
    trainerEnvPass: list(env.DACP_TRAINER_ENV_PASS, ',') ?? [],
  };
}

const refuse = (type: string, message: string): never => {
  throw ApplicationFailure.nonRetryable(message, type);
};

function inside(file: string, root: string): boolean {
  const relative = path.relative(root, file);
  return relative === '' || (!relative.startsWith('..') && !path.isAbsolute(relative));
}

function isFile(p: string): boolean {
  try {
    return statSync(p).isFile();
  } catch {
    return false;
  }
}

/**
 * Refuse a trainer command the worker does not allow. `argv` is the spec's command after relative
 * paths were resolved against the spec's folder; `trainersDir` is dacp's own trainers folder.
 */
export function checkTrainerCommand(argv: string[], o: { baseDir: string; trainersDir: string; policy?: WorkerPolicy }): void {
  const policy = o.policy ?? workerPolicy();
  if (policy.trainerCommands) {
    if (policy.trainerCommands.some((prefix) => prefix.length <= argv.length && prefix.every((a, i) => argv[i] === a))) return;
    refuse(
      'TrainerNotAllowed',
      `trainer command ${JSON.stringify(argv.slice(0, 3))}${argv.length > 3 ? '…' : ''} is not in this gpu worker's DACP_TRAINER_COMMANDS; ` +
        `the worker's administrator adds its argv prefix there (a spec cannot)`,
    );
  }
  const roots = [o.baseDir, o.trainersDir].map((r) => path.resolve(r));
  const allowed = (p: string | undefined) => p !== undefined && path.isAbsolute(p) && isFile(p) && roots.some((root) => inside(p, root));
  const [program, script] = argv;
  if (allowed(program)) return;
  if (program && INTERPRETERS.test(path.basename(program)) && allowed(script)) return;
  refuse(
    'TrainerNotAllowed',
    `trainer command ${JSON.stringify(argv.slice(0, 3))}${argv.length > 3 ? '…' : ''} runs nothing inside the spec's folder (${o.baseDir}) or dacp's trainers (${o.trainersDir}): ` +
      'without DACP_TRAINER_COMMANDS a gpu worker runs only a program there, or an interpreter with a script there as its first argument; ' +
      'see docs/security.md to allow other commands',
  );
}

/** Refuse spec-named variables that are dacp's own (its database, Temporal, its settings). */
export function reservedNames(names: string[]): string[] {
  return names.filter((n) => RESERVED_ENV.test(n));
}

/**
 * The trainer's environment: the basic variables, those the worker configuration passes, and the
 * ones the spec names (already checked not to be dacp's own). Nothing else of the worker's.
 */
export function trainerEnvironment(named: Record<string, string>, o: { policy?: WorkerPolicy; env?: NodeJS.ProcessEnv } = {}): Record<string, string> {
  const env = o.env ?? process.env;
  const policy = o.policy ?? workerPolicy(env);
  const out: Record<string, string> = {};
  for (const [name, value] of Object.entries(env)) {
    if (value === undefined || RESERVED_ENV.test(name)) continue;
    if (BASE_TRAINER_ENV.includes(name) || BASE_PREFIXES.some((p) => name.startsWith(p)) || policy.trainerEnvPass.includes(name)) out[name] = value;
  }
  return { ...out, ...named };
}

/** The roots file sources must stay inside: the worker's, narrowed by the spec's own dataRoots. */
export function sourceRoots(o: { baseDir: string; specRoots?: string[]; policy?: WorkerPolicy }): string[] {
  const policy = o.policy ?? workerPolicy();
  const specRoots = o.specRoots?.map((r) => path.resolve(o.baseDir, r));
  const workerRoots = policy.dataRoots ?? [path.resolve(o.baseDir)];
  if (!specRoots) return workerRoots;
  const outside = specRoots.filter((r) => !workerRoots.some((w) => inside(r, w)));
  if (outside.length) {
    refuse(
      'SourceOutsideRoots',
      `dataRoots ${outside.join(', ')} lie outside the folders this worker reads (${workerRoots.join(', ')}${policy.dataRoots ? ', DACP_DATA_ROOTS' : ": the spec's folder"}); move the data or have the administrator extend DACP_DATA_ROOTS`,
    );
  }
  return specRoots;
}

/**
 * Refuse an s3 source that reads dacp's own artifacts (other runs' data and models, however the
 * bucket is spelled) or, where DACP_S3_SOURCES is set, lies outside the locations it lists.
 */
export function checkS3Source(bucket: string, prefix: string, policy: WorkerPolicy = workerPolicy(), env: NodeJS.ProcessEnv = process.env): void {
  const where = `${bucket}/${prefix.replace(/^\/+/, '')}`;
  // One location holds the other, segment by segment (either way round).
  const covers = (a: string, b: string) => a === b || a.startsWith(`${b}/`) || b.startsWith(`${a}/`);
  const artifacts = env.DACP_ARTIFACTS?.trim();
  if (artifacts?.startsWith('s3://')) {
    const own = artifacts.slice('s3://'.length).replace(/\/+$/, '');
    if (covers(own, where.replace(/\/+$/, ''))) {
      refuse('SourceNotAllowed', `s3://${where} overlaps dacp's own artifacts (DACP_ARTIFACTS=${artifacts}); a source reads your data, never dacp's store`);
    }
  }
  if (policy.s3Sources && !policy.s3Sources.some((root) => where === root || where.startsWith(root.endsWith('/') ? root : `${root}/`))) {
    refuse('SourceNotAllowed', `s3://${where} is not below any location in this worker's DACP_S3_SOURCES (${policy.s3Sources.map((r) => `s3://${r}`).join(', ')}); the administrator adds it there`);
  }
}

/** Refuse a `connectionEnv` that is dacp's own or that the worker does not allow. */
export function checkConnectionEnv(name: string, policy: WorkerPolicy = workerPolicy()): void {
  if (RESERVED_ENV.test(name)) {
    refuse('SourceNotAllowed', `connectionEnv ${name} is one of dacp's own variables; a source reads another database, named by a variable of its own (e.g. SOURCE_DATABASE_URL)`);
  }
  if (policy.sourceEnvs && !policy.sourceEnvs.includes(name)) {
    refuse('SourceNotAllowed', `connectionEnv ${name} is not in this worker's DACP_SOURCE_ENVS (${policy.sourceEnvs.join(', ')}); the administrator adds it there`);
  }
}


/**
 * The named data root (DACP_DATA_ROOTS `NAME=/folder`) that holds `folder`, the innermost where
 * several do; undefined when none does. Links are followed on both sides.
 */
export function namedRootOf(folder: string, policy: WorkerPolicy = workerPolicy()): { name: string; folder: string } | undefined {
  const real = (p: string) => {
    try {
      return realpathSync(p);
    } catch {
      return path.resolve(p);
    }
  };
  const target = real(folder);
  let best: { name: string; folder: string } | undefined;
  for (const [name, root] of Object.entries(policy.namedRoots)) {
    const resolved = real(root);
    if (inside(target, resolved) && (!best || resolved.length > best.folder.length)) best = { name, folder: resolved };
  }
  return best;
}

/** The folder this host maps a named data root to; refused, naming the fix, where it maps none. */
export function namedRootFolder(name: string, policy: WorkerPolicy = workerPolicy()): string {
  const folder = Object.hasOwn(policy.namedRoots, name) ? policy.namedRoots[name] : undefined;
  if (folder === undefined) {
    refuse(
      'DataRootUnknown',
      `this worker's DACP_DATA_ROOTS names no data root "${name}"${Object.keys(policy.namedRoots).length ? ` (it names ${Object.keys(policy.namedRoots).join(', ')})` : ''}; ` +
        `the schedule reads its files from there, so the administrator adds ${name}=/folder/where/this/host/mounts/it to DACP_DATA_ROOTS and restarts the worker`,
    );
  }
  return folder as string;
}
