const esmPackages = ['franc-min', 'trigram-utils', 'n-gram', 'collapse-white-space'];

/** @type {import('jest').Config} */
module.exports = {
  testEnvironment: 'node',
  roots: ['<rootDir>/test'],
  testMatch: ['**/*.test.ts'],
  // Several hosts, load and large corpora: `npm run test:scale` (CI runs it after `npm test`).
  testPathIgnorePatterns: ['/node_modules/', '<rootDir>/test/scale/'],
  transform: {
    '^.+\\.ts$': 'ts-jest',
    // franc-min (language identification) and its dependencies are ES modules, which Node's require
    // loads but jest's does not: compiled to CommonJS for the tests only.
    [`/node_modules/(${esmPackages.join('|')})/.+\\.js$`]: ['ts-jest', { tsconfig: { allowJs: true, module: 'commonjs', target: 'ES2022', esModuleInterop: true } }],
  },
  transformIgnorePatterns: [`/node_modules/(?!(${esmPackages.join('|')})/)`],
  testTimeout: 600_000,
  maxWorkers: 1,
  setupFiles: ['<rootDir>/test/helpers/setupKeys.ts'],
};
