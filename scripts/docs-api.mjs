// `npm run docs:api`: the API reference in docs/api/ (HTML, not committed), generated
// by TypeDoc from the TSDoc comments of the five entry points in typedoc.json.
// Arguments are passed to TypeDoc (e.g. `npm run docs:api -- --treatWarningsAsErrors`).
import { spawnSync } from 'node:child_process';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';

const require = createRequire(import.meta.url);
let bin;
try {
  bin = join(dirname(require.resolve('typedoc/package.json')), 'bin', 'typedoc');
} catch {
  console.error('npm run docs:api needs TypeDoc, a development dependency: npm install --save-dev typedoc@^0.28.20');
  process.exit(1);
}
const run = spawnSync(process.execPath, [bin, '--options', 'typedoc.json', ...process.argv.slice(2)], { stdio: 'inherit' });
process.exit(run.status ?? 1);
