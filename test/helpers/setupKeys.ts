import { mkdtempSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';

// Each test file gets its own key folder, inherited by the `dacp` processes it spawns, so no test
// reads or writes the user's own keys.
process.env.DACP_KEYS_DIR = mkdtempSync(path.join(os.tmpdir(), 'dacp-keys-'));
