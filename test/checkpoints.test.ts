import { checkpointsToPrune } from '../activities/checkpoints';

const row = (step: number, loss: number | null) => ({ step, loss, uri: `artifact:checkpoints/${step}.safetensors`, sha256: String(step), bytes: 1 });

describe('checkpoint retention', () => {
  test('keeps the newest keepLast and the lowest-loss checkpoint', () => {
    const rows = [row(10, 3.0), row(20, 1.5), row(30, 2.0), row(40, 2.2), row(50, 2.1)];
    expect(checkpointsToPrune(rows, { keepLast: 2, keepBest: true }).map((r) => r.step)).toEqual([30, 10]);
  });

  test('without keepBest only the newest survive', () => {
    const rows = [row(10, 3.0), row(20, 1.5), row(30, 2.0)];
    expect(checkpointsToPrune(rows, { keepLast: 1, keepBest: false }).map((r) => r.step)).toEqual([20, 10]);
  });

  test('checkpoints without a loss are never "best", and fewer than keepLast prune nothing', () => {
    expect(checkpointsToPrune([row(10, null), row(20, null), row(30, 1)], { keepLast: 1, keepBest: true }).map((r) => r.step)).toEqual([20, 10]);
    expect(checkpointsToPrune([row(10, 1)], { keepLast: 3, keepBest: true })).toEqual([]);
  });
});
