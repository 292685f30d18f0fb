#!/usr/bin/env node
// The `dacp` command runs the compiled CLI; `npm ci` (prepare) and `npm run build` produce it.
const path = require('node:path');
const fs = require('node:fs');
const entry = path.join(__dirname, '..', 'dist', 'cli', 'main.js');
if (!fs.existsSync(entry)) {
  console.error('dacp: not built yet; run `npm run build` in ' + path.join(__dirname, '..'));
  process.exit(1);
}
require(entry);
