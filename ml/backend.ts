import * as path from 'path';
import * as tf from '@tensorflow/tfjs';

/**
 * Picks the fastest TensorFlow.js backend this host offers, once per process.
 *
 * Order: an explicit choice (argument, else DACP_TF_BACKEND), else the native bindings
 * (@tensorflow/tfjs-node-gpu, @tensorflow/tfjs-node), then WebAssembly, then plain JS.
 * The native packages are optional: they ship large platform binaries, so they are loaded
 * with require() at run time and skipped when absent.
 */

export interface BackendChoice {
  /** tfjs backend name: 'tensorflow' | 'wasm' | 'cpu'. */
  name: string;
  /** The package that provides it. */
  source: string;
  /** Auto-detection only: each backend tried before this one, with why it could not be used. */
  skipped?: string[];
}

/** One line for logs: the backend, its package, and why each faster one was passed over. */
export function describeBackend(choice: BackendChoice): string {
  const skipped = choice.skipped?.length ? `; not used: ${choice.skipped.join('; ')}` : '';
  return `TensorFlow.js backend ${choice.name} (${choice.source})${skipped}`;
}

/** Values DACP_TF_BACKEND (or the `preferred` argument) may take. */
export const BACKEND_CHOICES = ['tensorflow', 'node-gpu', 'node', 'wasm', 'cpu'] as const;
export type BackendPreference = (typeof BACKEND_CHOICES)[number];

/**
 * Auto-detection order after the native bindings. On a 2-core x86 host the reference tiny GPT
 * (vocab 258, context 64, d 64, 2 layers, 4 heads, batch 8) trains at ~8 steps/s on wasm and
 * ~0.7 steps/s on cpu, so wasm comes first.
 */
const PORTABLE_ORDER: readonly ('wasm' | 'cpu')[] = ['wasm', 'cpu'];

let current: BackendChoice | undefined;
let pending: Promise<BackendChoice> | undefined;

export async function initBackend(preferred?: string): Promise<BackendChoice> {
  const explicit = preferred ?? nonEmpty(process.env.DACP_TF_BACKEND);
  const wanted = explicit === undefined ? undefined : parsePreference(explicit, preferred === undefined);
  // Idempotent: later calls reuse the first choice unless they name a different backend
  // (tests use that to run the same check on cpu and wasm in one process).
  if (pending !== undefined && (wanted === undefined || (await pending).name === backendNameOf(wanted))) {
    return pending;
  }
  pending = (wanted === undefined ? autoSelect() : selectExplicit(wanted)).then((choice) => {
    current = choice;
    return choice;
  });
  try {
    return await pending;
  } catch (error) {
    pending = undefined;
    throw error;
  }
}

/** The backend chosen by initBackend, if it has run. */
export function currentBackend(): BackendChoice | undefined {
  return current;
}

function nonEmpty(value: string | undefined): string | undefined {
  return value === undefined || value.trim() === '' ? undefined : value.trim();
}

function parsePreference(value: string, fromEnv: boolean): BackendPreference {
  const match = BACKEND_CHOICES.find((choice) => choice === value.toLowerCase());
  if (match === undefined) {
    const where = fromEnv ? 'DACP_TF_BACKEND' : 'initBackend(preferred)';
    throw new Error(`${where}="${value}" is not a TensorFlow.js backend; use one of: ${BACKEND_CHOICES.join(', ')}`);
  }
  return match;
}

function backendNameOf(preference: BackendPreference): string {
  return preference === 'node' || preference === 'node-gpu' ? 'tensorflow' : preference;
}

async function selectExplicit(wanted: BackendPreference): Promise<BackendChoice> {
  const attempt =
    wanted === 'node-gpu' ? tryNative(['@tensorflow/tfjs-node-gpu'])
      : wanted === 'node' ? tryNative(['@tensorflow/tfjs-node'])
        : wanted === 'tensorflow' ? tryNative(['@tensorflow/tfjs-node-gpu', '@tensorflow/tfjs-node'])
          : wanted === 'wasm' ? tryWasm()
            : tryCpu();
  const result = await attempt;
  if (typeof result === 'string') {
    throw new Error(`TensorFlow.js backend "${wanted}" was requested but cannot start: ${result}`);
  }
  return result;
}

async function autoSelect(): Promise<BackendChoice> {
  const reasons: string[] = [];
  for (const attempt of [
    () => tryNative(['@tensorflow/tfjs-node-gpu']),
    () => tryNative(['@tensorflow/tfjs-node']),
    ...PORTABLE_ORDER.map((name) => (name === 'wasm' ? tryWasm : tryCpu)),
  ]) {
    const result = await attempt();
    if (typeof result !== 'string') return reasons.length > 0 ? { ...result, skipped: reasons } : result;
    reasons.push(result);
  }
  throw new Error(`no TensorFlow.js backend could start: ${reasons.join('; ')}`);
}

/** Returns the choice, or a one-line reason it is unavailable. */
type Attempt = Promise<BackendChoice | string>;

async function tryNative(packages: string[]): Attempt {
  const reasons: string[] = [];
  // TensorFlow's C++ start-up chatter (oneDNN, CPU features) is noise in our logs unless asked for.
  process.env.TF_CPP_MIN_LOG_LEVEL ??= '2';
  for (const pkg of packages) {
    try {
      // eslint-disable-next-line @typescript-eslint/no-require-imports
      require(pkg);
    } catch (error) {
      const code = (error as { code?: string }).code;
      // Not installed is the usual case (tfjs-node-gpu on a host without CUDA); anything else is a
      // package that is there but cannot load (a missing libcuda, a build for another Node).
      reasons.push(code === 'MODULE_NOT_FOUND' && firstLine(error).includes(`'${pkg}'`) ? `${pkg} is not installed` : `${pkg} cannot load: ${firstLine(error)}`);
      continue;
    }
    // A native package built against another tfjs-core registers into that copy, not ours.
    if (tf.findBackend('tensorflow') === null) {
      reasons.push(`${pkg} loaded but did not register with this @tensorflow/tfjs (version mismatch?)`);
      continue;
    }
    if (await tf.setBackend('tensorflow')) return { name: 'tensorflow', source: pkg };
    reasons.push(`${pkg} failed to initialise`);
  }
  return reasons.join('; ');
}

let wasmConfigured = false;

async function tryWasm(): Attempt {
  try {
    if (!wasmConfigured) {
      // eslint-disable-next-line @typescript-eslint/no-require-imports
      const wasm = require('@tensorflow/tfjs-backend-wasm') as typeof import('@tensorflow/tfjs-backend-wasm');
      // Load the .wasm binaries straight from node_modules, wherever this code is bundled to.
      const dist = path.dirname(require.resolve('@tensorflow/tfjs-backend-wasm'));
      wasm.setWasmPaths(dist + path.sep);
      // Node has no Blob-URL workers, so the threaded binary cannot start; use SIMD single-thread.
      tf.env().set('WASM_HAS_MULTITHREAD_SUPPORT', false);
      wasmConfigured = true;
    }
    if (await tf.setBackend('wasm')) return { name: 'wasm', source: '@tensorflow/tfjs-backend-wasm' };
    return 'wasm backend failed to initialise';
  } catch (error) {
    return `wasm unavailable (${firstLine(error)})`;
  }
}

async function tryCpu(): Attempt {
  // The cpu backend prints an "install tfjs-node" banner on first use outside prod mode.
  tf.env().set('PROD', true);
  if (await tf.setBackend('cpu')) return { name: 'cpu', source: '@tensorflow/tfjs (cpu)' };
  return 'cpu backend failed to initialise';
}

function firstLine(error: unknown): string {
  const message = error instanceof Error ? error.message : String(error);
  return message.split('\n')[0] ?? message;
}
