/**
 * A run's inputs, staged: `dacp run start` copies every local file the run reads (file sources,
 * multiple-choice sets, a trainer script in the spec's folder) into the artifact store, streamed
 * and content-addressed, and lists them in a manifest. The run then carries the manifest's
 * artifact URI where it carried the spec's folder, so whichever host runs an activity reads the
 * same bytes, and no machine's absolute path lands in workflow history. A worker materialises the
 * manifest into its own `<DACP_HOME>/inputs/<sha256>` folder (each file checked against its hash)
 * and reads from there as it would from the spec's folder.
 */
import { existsSync, promises as fs, realpathSync, statSync } from 'node:fs';
import path from 'node:path';
import { ApplicationFailure } from '@temporalio/common';
import type { ArtifactRef } from '../schemas/pipeline';
import type { RunSpec } from '../schemas/runSpec';
import { ARTIFACT_URI, hashFile, type ArtifactStore } from './artifacts';
import { DATA_ROOT_NAME, namedRootFolder, type WorkerPolicy } from '../workers/policy';
import { displayPath, sourceFiles } from './sources';

export const INPUTS_FORMAT = 'dacp-inputs/1';
/** A schedule's manifest, with a live folder: workers from before it refuse it rather than misread it. */
export const LIVE_INPUTS_FORMAT = 'dacp-inputs/2';

export interface InputsManifest {
  format: typeof INPUTS_FORMAT | typeof LIVE_INPUTS_FORMAT;
  /** By path relative to the staged folder: the file's artifact, and whether it is executable. */
  files: Record<string, ArtifactRef & { executable?: boolean }>;
  /**
   * A schedule's file sources are read anew at each firing, so they are not staged: their paths
   * are relative to this folder, named by a data root every control host maps (DACP_DATA_ROOTS
   * `NAME=/folder`) or, where the schedule's spec lies in no named root, by the folder itself
   * (then every control host must see the data at that path). Absent for `dacp run start`.
   */
  live?: { root: string } | { folder: string };
}

/** Where a schedule's file sources are read from: a named data root, or a folder. */
export type LiveFolder = { root: string; folder: string } | { folder: string };

/** True when `baseDir` is a staged manifest's artifact URI rather than a folder. */
export function isStaged(baseDir: string): boolean {
  return ARTIFACT_URI.test(baseDir);
}

function realOrResolved(p: string): string {
  try {
    return realpathSync(p);
  } catch {
    return path.resolve(p);
  }
}

function extensionOf(file: string): string {
  const ext = path.extname(file).slice(1).toLowerCase();
  return /^[a-z0-9]{1,12}$/.test(ext) ? ext : 'bin';
}

/**
 * Stage the files `spec` reads from `baseDir` (already checked by preflight to exist and lie in
 * the allowed roots). Returns the spec with each files source's paths replaced by the concrete
 * files staged (a glob is expanded once, here), and the manifest's URI for the run's baseDir.
 */
export async function stageInputs(
  store: ArtifactStore,
  spec: RunSpec,
  baseDir: string,
  allowedRoots: string[],
  o: { live?: LiveFolder } = {},
): Promise<{ spec: RunSpec; baseDir: string; files: number; bytes: number }> {
  const files: InputsManifest['files'] = {};
  let bytes = 0;
  const stage = async (absolute: string): Promise<string> => {
    let name = displayPath(absolute, baseDir);
    if (path.isAbsolute(name)) name = `external/${name.replace(/^[/\\]+/, '').split(path.sep).join('/')}`;
    if (!files[name]) {
      const ref = await store.putFile('inputs', absolute, extensionOf(absolute));
      const executable = (statSync(absolute).mode & 0o111) !== 0;
      files[name] = { ...ref, ...(executable ? { executable } : {}) };
      bytes += ref.bytes;
    }
    return name;
  };

  // A schedule's paths, relative to the folder its file sources are read from at each firing.
  const live = o.live;
  // Through links on both sides, as the root was found (namedRootOf).
  const realBase = live ? realOrResolved(baseDir) : baseDir;
  const liveRelative = (entry: string, field: string): string => {
    const relative = path.relative(realOrResolved((live as LiveFolder).folder), path.resolve(realBase, entry)).split(path.sep).join('/');
    if (live && 'root' in live && (relative === '..' || relative.startsWith('../') || path.isAbsolute(relative))) {
      throw ApplicationFailure.nonRetryable(
        `${field} "${entry}" lies outside data root "${live.root}" (${live.folder}), which holds the spec; move the data inside it, or name its folder in DACP_DATA_ROOTS as a root of its own and keep the spec there`,
        'SourceOutsideRoots',
      );
    }
    return relative === '' ? '.' : relative;
  };

  const sources = [];
  for (const [index, source] of spec.sources.entries()) {
    if (source.kind !== 'files') {
      sources.push(source);
      continue;
    }
    if (live) {
      sources.push({ ...source, paths: source.paths.map((entry) => liveRelative(entry, `sources[${index}].paths`)) });
      continue;
    }
    const staged: string[] = [];
    for (const file of await sourceFiles(source, { baseDir, allowedRoots })) staged.push(await stage(file));
    sources.push({ ...source, paths: staged });
  }
  const choices = { ...spec.evaluation.choices };
  for (const name of ['domain', 'general'] as const) {
    const file = choices[name];
    // The same rules as a file source: it must exist and lie inside the allowed roots.
    if (file !== undefined) choices[name] = await stage((await sourceFiles({ kind: 'files', role: 'domain', paths: [file] }, { baseDir, allowedRoots }))[0]);
  }
  let engine = spec.engine;
  if (engine.kind === 'command') {
    // A program or script in the spec's folder travels with the run; other paths are the worker's own.
    const command = [];
    for (const arg of engine.command) {
      const absolute = path.resolve(baseDir, arg);
      const inFolder = !displayPath(absolute, baseDir).startsWith('/') && absolute !== path.resolve(baseDir);
      command.push(inFolder && existsSync(absolute) && statSync(absolute).isFile() ? await stage(absolute) : arg);
    }
    engine = { ...engine, command };
  }
  const manifest: InputsManifest = {
    format: live ? LIVE_INPUTS_FORMAT : INPUTS_FORMAT,
    files: Object.fromEntries(Object.entries(files).sort(([a], [b]) => a.localeCompare(b))),
    ...(live ? { live: 'root' in live ? { root: live.root } : { folder: path.resolve(live.folder) } } : {}),
  };
  const ref = await store.putJson('inputs', manifest);
  const dataRoots = live && spec.dataRoots ? { dataRoots: spec.dataRoots.map((r) => liveRelative(r, 'dataRoots')) } : {};
  return {
    spec: { ...spec, sources, evaluation: { ...spec.evaluation, choices }, engine, ...dataRoots } as RunSpec,
    baseDir: ref.uri,
    files: Object.keys(files).length,
    bytes,
  };
}

/**
 * The folder an activity reads a run's inputs from: `baseDir` itself for a run from before
 * staging (or one a schedule starts), else the staged manifest materialised next to this host's
 * artifacts (`<DACP_HOME>/inputs/<sha256>`). The folder is built aside and renamed into place
 * whole, so a worker killed half-way leaves nothing under its name; and every file is checked
 * against its sha256 on each use (a trainer runs as the worker's user and could have changed one),
 * the folder being built again when one is not what the manifest names.
 */
export async function inputsFolder(store: ArtifactStore, baseDir: string): Promise<string> {
  const match = ARTIFACT_URI.exec(baseDir);
  if (!match) return baseDir;
  return materialise(store, match[2] as string, await readManifest(store, baseDir, match[2] as string));
}

async function readManifest(store: ArtifactStore, uri: string, sha256: string): Promise<InputsManifest> {
  const manifest = await store.getJson<InputsManifest>({ uri, sha256 });
  if (manifest.format !== INPUTS_FORMAT && manifest.format !== LIVE_INPUTS_FORMAT) {
    throw ApplicationFailure.nonRetryable(`artifact ${uri} is not a run's staged inputs (format ${String(manifest.format)})`, 'ArtifactInvalid');
  }
  return manifest;
}

/**
 * `staged`: as `inputsFolder`. `live`: for a schedule's run, the folder on this host its file
 * sources are read from at this firing (a named data root mapped by this worker's
 * DACP_DATA_ROOTS, or the folder the manifest names); null for a run whose sources were staged.
 */
export async function inputsFolders(store: ArtifactStore, baseDir: string, o: { scheduled: boolean; policy?: WorkerPolicy }): Promise<{ staged: string; live: string | null }> {
  const match = ARTIFACT_URI.exec(baseDir);
  if (!match) return { staged: baseDir, live: null };
  const sha256 = match[2] as string;
  const manifest = await readManifest(store, baseDir, sha256);
  // Only a schedule's runs read a live folder; in any other run's manifest it is refused.
  let live: string | null = null;
  if (manifest.live !== undefined) {
    const invalid = (why: string) => ApplicationFailure.nonRetryable(`artifact ${baseDir}: ${why}`, 'ArtifactInvalid');
    if (!o.scheduled) throw invalid('only a schedule\'s runs read their files from a live folder, and this run has no schedule');
    if ('root' in manifest.live) {
      if (typeof manifest.live.root !== 'string' || !DATA_ROOT_NAME.test(manifest.live.root)) throw invalid(`live.root ${JSON.stringify(manifest.live.root)} is not a data root name`);
      live = namedRootFolder(manifest.live.root, o.policy);
    } else {
      const folder = (manifest.live as { folder?: unknown }).folder;
      if (typeof folder !== 'string' || !path.isAbsolute(folder) || path.resolve(folder) === path.parse(folder).root) throw invalid(`live.folder ${JSON.stringify(folder)} is not an absolute folder below the file system's root`);
      live = folder;
    }
  }
  return { staged: await materialise(store, sha256, manifest), live };
}

async function materialise(store: ArtifactStore, sha256: string, manifest: InputsManifest): Promise<string> {
  const parent = path.join(path.dirname(store.root), 'inputs');
  const dir = path.join(parent, sha256);
  if (existsSync(dir)) {
    if (await intact(dir, manifest)) return dir;
    await fs.rm(dir, { recursive: true, force: true });
  }
  await fs.mkdir(parent, { recursive: true });
  const temp = await fs.mkdtemp(path.join(parent, `.tmp-${sha256.slice(0, 12)}-`));
  try {
    for (const [name, ref] of Object.entries(manifest.files)) {
      const target = path.resolve(temp, name);
      if (!target.startsWith(temp + path.sep)) throw ApplicationFailure.nonRetryable(`staged input ${name} would land outside ${dir}`, 'ArtifactInvalid');
      await fs.mkdir(path.dirname(target), { recursive: true });
      await store.copyOut(ref, target);
      await fs.chmod(target, ref.executable ? 0o555 : 0o444);
    }
    await fs.rename(temp, dir);
  } catch (err) {
    await fs.rm(temp, { recursive: true, force: true });
    // Another activity on this host built the same folder first: use theirs.
    const code = (err as NodeJS.ErrnoException).code;
    if ((code === 'ENOTEMPTY' || code === 'EEXIST') && (await intact(dir, manifest))) return dir;
    throw err;
  }
  return dir;
}

/** True when every file of the manifest is in `dir` with its sha256. */
async function intact(dir: string, manifest: InputsManifest): Promise<boolean> {
  for (const [name, ref] of Object.entries(manifest.files)) {
    try {
      if ((await hashFile(path.join(dir, name))) !== ref.sha256) return false;
    } catch {
      return false;
    }
  }
  return true;
}
