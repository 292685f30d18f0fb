import { spawnSync } from 'node:child_process';
import { InputError } from '../schemas/runSpec';

/**
 * Training slots of a gpu worker: one per GPU it finds (one when it finds none), each with the
 * devices its trainer may see (CUDA_VISIBLE_DEVICES). DACP_GPU_SLOTS overrides the count; the GPUs
 * are then shared out evenly, so one slot on an 8-GPU host gets all eight (for `processes: 8`).
 */

export interface Slot {
  index: number;
  /** CUDA device ids this slot's trainer sees; empty on a host without GPUs. */
  devices: string[];
}


/**
 * The GPUs this worker may use: CUDA_VISIBLE_DEVICES when it is set (empty or -1 hides them all, as
 * for CUDA itself), else what `nvidia-smi -L` lists.
 */
export function detectGpus(env: NodeJS.ProcessEnv = process.env): string[] {
  const visible = env.CUDA_VISIBLE_DEVICES;
  if (visible !== undefined) return visible.split(',').map((d) => d.trim()).filter((d) => d !== '' && d !== '-1');
  const listed = spawnSync('nvidia-smi', ['-L'], { encoding: 'utf8', env, timeout: 10_000 });
  if (listed.status !== 0 || typeof listed.stdout !== 'string') return [];
  return listed.stdout.split('\n').filter((line) => /^GPU \d+:/.test(line)).map((line) => (/^GPU (\d+):/.exec(line) as RegExpExecArray)[1] as string);
}

export function planSlots(gpus: string[], override?: string): Slot[] {
  let count = Math.max(1, gpus.length);
  if (override !== undefined && override.trim() !== '') {
    const n = Number(override);
    if (!Number.isInteger(n) || n < 1 || n > 64) throw new InputError(`DACP_GPU_SLOTS must be a whole number from 1 to 64, got "${override}"`);
    count = n;
  }
  if (gpus.length < count) {
    // More slots than GPUs: slots share them round-robin, one device each.
    return Array.from({ length: count }, (_, index) => ({ index, devices: gpus.length > 0 ? [gpus[index % gpus.length] as string] : [] }));
  }
  // Every GPU goes to a slot: the first `extra` slots get one more than the rest.
  const per = Math.floor(gpus.length / count);
  const extra = gpus.length % count;
  const slots: Slot[] = [];
  let next = 0;
  for (let index = 0; index < count; index++) {
    const take = per + (index < extra ? 1 : 0);
    slots.push({ index, devices: gpus.slice(next, next + take) });
    next += take;
  }
  return slots;
}

/** Hands out slots to trainings; a training waits when every slot is busy (Temporal's limit keeps that rare). */
export class SlotPool {
  private readonly free: Slot[];
  private readonly waiting: ((slot: Slot) => void)[] = [];

  constructor(readonly slots: Slot[]) {
    this.free = [...slots];
  }

  async acquire(): Promise<{ slot: Slot; release: () => void }> {
    const slot = this.free.shift() ?? (await new Promise<Slot>((resolve) => this.waiting.push(resolve)));
    let released = false;
    return {
      slot,
      release: () => {
        if (released) return;
        released = true;
        const next = this.waiting.shift();
        if (next) next(slot);
        else this.free.push(slot);
      },
    };
  }
}

/** One line for the worker's start-up output. */
export function describeSlots(slots: Slot[]): string {
  const devices = slots.map((s) => (s.devices.length ? `GPU ${s.devices.join('+')}` : 'no GPU'));
  return `${slots.length} training slot${slots.length === 1 ? '' : 's'} (${devices.join(', ')})`;
}
