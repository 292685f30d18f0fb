import { chmodSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { describeSlots, detectGpus, planSlots, SlotPool } from '../workers/gpuSlots';

describe('gpu worker training slots', () => {
  test('one slot per GPU, one without GPUs; DACP_GPU_SLOTS shares the GPUs out', () => {
    expect(planSlots([])).toEqual([{ index: 0, devices: [] }]);
    expect(planSlots(['0', '1', '2'])).toEqual([{ index: 0, devices: ['0'] }, { index: 1, devices: ['1'] }, { index: 2, devices: ['2'] }]);
    expect(planSlots(['0', '1', '2', '3'], '1')).toEqual([{ index: 0, devices: ['0', '1', '2', '3'] }]);
    expect(planSlots(['0', '1', '2', '3'], '2')).toEqual([{ index: 0, devices: ['0', '1'] }, { index: 1, devices: ['2', '3'] }]);
    expect(planSlots(['0'], '2')).toEqual([{ index: 0, devices: ['0'] }, { index: 1, devices: ['0'] }]);
    expect(planSlots(['0', '1', '2'], '2')).toEqual([{ index: 0, devices: ['0', '1'] }, { index: 1, devices: ['2'] }]); // none left over
    expect(planSlots([], '3').map((s) => s.devices)).toEqual([[], [], []]);
    expect(() => planSlots([], 'two')).toThrow('DACP_GPU_SLOTS must be a whole number from 1 to 64, got "two"');
    expect(describeSlots(planSlots(['4', '5']))).toBe('2 training slots (GPU 4, GPU 5)');
    expect(describeSlots(planSlots([]))).toBe('1 training slot (no GPU)');
  });

  test('the GPUs are CUDA_VISIBLE_DEVICES when set, else what nvidia-smi lists, else none', () => {
    const bin = mkdtempSync(path.join(tmpdir(), 'dacp-nvidia-smi-'));
    try {
      const PATH = `${bin}${path.delimiter}${process.env.PATH}`;
      expect(detectGpus({ PATH: bin })).toEqual([]); // no nvidia-smi at all
      writeFileSync(path.join(bin, 'nvidia-smi'), '#!/bin/sh\necho "GPU 0: NVIDIA H200 (UUID: GPU-a)"\necho "GPU 1: NVIDIA H200 (UUID: GPU-b)"\n');
      chmodSync(path.join(bin, 'nvidia-smi'), 0o755);
      expect(detectGpus({ PATH })).toEqual(['0', '1']);
      expect(detectGpus({ PATH, CUDA_VISIBLE_DEVICES: '3,5' })).toEqual(['3', '5']);
      expect(detectGpus({ PATH, CUDA_VISIBLE_DEVICES: '-1' })).toEqual([]);
      expect(detectGpus({ PATH, CUDA_VISIBLE_DEVICES: '' })).toEqual([]); // empty hides every GPU, as for CUDA
    } finally {
      rmSync(bin, { recursive: true, force: true });
    }
  });

  test('a slot goes to one training at a time; a waiting training gets the next one released', async () => {
    const pool = new SlotPool(planSlots(['0', '1']));
    const a = await pool.acquire();
    const b = await pool.acquire();
    expect([a.slot.devices, b.slot.devices]).toEqual([['0'], ['1']]);
    let third: Awaited<ReturnType<SlotPool['acquire']>> | undefined;
    const waiting = pool.acquire().then((lease) => (third = lease));
    await Promise.resolve();
    expect(third).toBeUndefined();
    b.release();
    b.release(); // twice is once
    await waiting;
    expect(third?.slot.devices).toEqual(['1']);
  });
});
