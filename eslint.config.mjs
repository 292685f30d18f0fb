import tseslint from 'typescript-eslint';

const nodeBuiltins = [
  'fs', 'fs/promises', 'path', 'os', 'crypto', 'child_process', 'net', 'http', 'https', 'url',
  'stream', 'zlib', 'worker_threads', 'process', 'timers', 'dns', 'util', 'events',
];

export default tseslint.config(
  { ignores: ['dist/**', 'node_modules/**', '.dacp/**', '.tools/**', 'coverage/**', 'bin/**'] },
  ...tseslint.configs.recommended,
  {
    rules: {
      '@typescript-eslint/no-explicit-any': 'error',
      '@typescript-eslint/no-unused-vars': ['error', { argsIgnorePattern: '^_' }],
    },
  },
  {
    // Workflow code must stay deterministic: no Node built-ins, no I/O libraries, no clocks of our own.
    files: ['workflows/**/*.ts'],
    rules: {
      'no-restricted-imports': ['error', {
        paths: [
          ...nodeBuiltins.flatMap((name) => [name, `node:${name}`]).map((name) => ({
            name, message: 'Workflow code is deterministic: do I/O in activities/.',
          })),
          { name: 'pg', message: 'Workflow code must not touch the database: use an activity.' },
          { name: '@tensorflow/tfjs', message: 'Training runs in activities, not workflows.' },
          { name: '@temporalio/activity', message: 'Import activity types only: `import type`.' },
        ],
        patterns: [
          { group: ['../activities/*', '../db/*', '../ml/*', '../cli/*', '../workers/*'], allowTypeImports: true,
            message: 'Workflows may import only types from activities, db, ml, cli and workers.' },
        ],
      }],
    },
  },
);
