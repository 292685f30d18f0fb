// Lints snippets with ESLint's Node API and the project's own eslint.config.mjs, outside jest: jest's
// module sandbox cannot run the dynamic import() that ESLint loads its config with.
// stdin: {"snippets": [{"code", "filePath"}], "files": ["glob", …]}; stdout: {"snippets": [messages], "files": [{filePath, messages}]}.
import { readFileSync } from 'node:fs';
import { ESLint } from 'eslint';

const request = JSON.parse(readFileSync(0, 'utf8'));
const eslint = new ESLint({ cwd: process.cwd() });
const pick = (m) => ({ ruleId: m.ruleId, message: m.message, line: m.line });
const snippets = [];
for (const { code, filePath } of request.snippets) {
  const [result] = await eslint.lintText(code, { filePath });
  snippets.push(result.messages.map(pick));
}
const files = request.files.length
  ? (await eslint.lintFiles(request.files)).map((r) => ({ filePath: r.filePath, messages: r.messages.map(pick) }))
  : [];
process.stdout.write(JSON.stringify({ snippets, files }));
