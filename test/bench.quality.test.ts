import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import path from 'node:path';

const script = path.join(__dirname, '..', 'dist', 'scripts', 'bench-quality.js');

describe('npm run bench:quality', () => {
  it('prints one JSON line with mbPerSec, docsPerSec and corpusBytes for the whole stage, and figures per filter', () => {
    if (!existsSync(script)) throw new Error('run `npm run build` first: the bench runs from dist/');
    // A 2 MB corpus: the figures are not asserted (speed is for the bench to show), only that they are there.
    const run = spawnSync(process.execPath, [script, '--json', '--mb', '2'], { encoding: 'utf8' });
    expect(run.status).toBe(0);
    const lines = run.stdout.trim().split('\n');
    expect(lines).toHaveLength(1);
    const result = JSON.parse(lines[0]) as { mbPerSec: number; docsPerSec: number; corpusBytes: number; docs: number; filters: Record<string, { mbPerSec: number }> };
    expect(result.corpusBytes).toBeGreaterThanOrEqual(2 * 1024 * 1024);
    expect(result.mbPerSec).toBeGreaterThan(0);
    expect(result.docsPerSec).toBeGreaterThan(0);
    // The whole stage as the activity runs it, on threads, and on one thread to compare.
    expect((result as unknown as { threads: number }).threads).toBeGreaterThanOrEqual(1);
    expect((result as unknown as { oneThread: { mbPerSec: number } }).oneThread.mbPerSec).toBeGreaterThan(0);
    expect(Object.keys(result.filters).sort()).toEqual(['exact_duplicate', 'heuristics', 'language', 'length', 'near_duplicate', 'pii', 'repetition', 'symbols']);
  });
});
