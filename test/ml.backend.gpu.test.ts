import { describeBackend, initBackend } from '../ml/backend';

// A GPU package that is installed but cannot load, as on a host whose CUDA libraries are missing:
// the error is the package's own (simulated here; the selection logic is what is tested).
jest.mock(
  '@tensorflow/tfjs-node-gpu',
  () => {
    throw new Error('libcudart.so.11.0: cannot open shared object file: No such file or directory');
  },
  { virtual: true },
);

test('a native backend that cannot load says why, and the next one is used', async () => {
  delete process.env.DACP_TF_BACKEND;
  const choice = await initBackend();
  expect(choice.name).not.toBe('');
  expect(choice.skipped?.[0]).toBe('@tensorflow/tfjs-node-gpu cannot load: libcudart.so.11.0: cannot open shared object file: No such file or directory');
  expect(describeBackend(choice)).toContain('not used: @tensorflow/tfjs-node-gpu cannot load: libcudart.so.11.0');
});
