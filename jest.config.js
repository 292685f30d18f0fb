/** @type {import('jest').Config} */
module.exports = {
  testEnvironment: 'node',
  roots: ['<rootDir>/test'],
  testMatch: ['**/*.test.ts'],
  transform: { '^.+\\.ts$': 'ts-jest' },
  testTimeout: 600_000,
  maxWorkers: 1,
  setupFiles: ['<rootDir>/test/helpers/setupKeys.ts'],
};
