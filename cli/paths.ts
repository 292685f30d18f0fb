import { existsSync, readFileSync } from 'node:fs';
import path from 'node:path';

/** The repository (package) root, found from this file whether it runs from source or from dist/. */
export function projectRoot(): string {
  let dir = __dirname;
  for (;;) {
    const manifest = path.join(dir, 'package.json');
    if (existsSync(manifest) && (JSON.parse(readFileSync(manifest, 'utf8')) as { name?: string }).name === 'dacp') return dir;
    const parent = path.dirname(dir);
    if (parent === dir) throw new Error(`cannot find the dacp package root above ${__dirname}`);
    dir = parent;
  }
}

/** The state directory: `DACP_HOME`, else `./.dacp`. */
export function dacpHome(): string {
  return path.resolve(process.env.DACP_HOME ?? '.dacp');
}
