import * as tf from '@tensorflow/tfjs';
import { describeBackend, initBackend } from '../ml/backend';

describe('initBackend', () => {
  const saved = process.env.DACP_TF_BACKEND;
  afterEach(() => {
    if (saved === undefined) delete process.env.DACP_TF_BACKEND;
    else process.env.DACP_TF_BACKEND = saved;
  });

  test('an unknown DACP_TF_BACKEND names the variable and the valid values', async () => {
    process.env.DACP_TF_BACKEND = 'tpu';
    await expect(initBackend()).rejects.toThrow(/DACP_TF_BACKEND="tpu".*tensorflow, node-gpu, node, wasm, cpu/);
  });

  test('without native bindings it picks wasm, and a second call returns the same choice', async () => {
    delete process.env.DACP_TF_BACKEND;
    const first = await initBackend();
    expect(['tensorflow', 'wasm']).toContain(first.name);
    expect(tf.getBackend()).toBe(first.name);
    expect(await initBackend()).toBe(first);
    // Each faster backend passed over is named with its reason.
    const line = describeBackend(first);
    expect(line).toMatch(new RegExp(`^TensorFlow\\.js backend ${first.name} \\(@tensorflow/`));
    expect(first.skipped?.[0]).toMatch(/^@tensorflow\/tfjs-node-gpu (is not installed|cannot load: .+)$/);
    expect(line).toContain(`not used: ${first.skipped?.[0]}`);
  });

  test('DACP_TF_BACKEND=cpu selects the plain JavaScript backend', async () => {
    process.env.DACP_TF_BACKEND = 'cpu';
    expect(await initBackend()).toEqual({ name: 'cpu', source: '@tensorflow/tfjs (cpu)' });
    expect(tf.getBackend()).toBe('cpu');
  });
});
