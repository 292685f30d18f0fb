/** @type {import('jest').Config} */
module.exports = {
  testEnvironment: 'node',
  roots: ['<rootDir>/test'],
  testMatch: ['**/*.test.ts'],
  // Several hosts, load and large corpora: `npm run test:scale` (CI runs it after `npm test`).
  testPathIgnorePatterns: ['/node_modules/', '<rootDir>/test/scale/'],
  transform: { '^.+\\.ts$': 'ts-jest' },
  testTimeout: 600_000,
  maxWorkers: 1,
  setupFiles: ['<rootDir>/test/helpers/setupKeys.ts'],
};
