/**
 * The README and docs/ are the contract: every ```ts block in them is run, as written, against a
 * fresh database (with `pgherald` resolved to this checkout's sources). Blocks fenced
 * as ```typescript are fragments and are not run.
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { freshDatabase, type TestDatabase } from './support/db.js';

const root = new URL('..', import.meta.url).pathname;
const pages = ['README.md', ...readdirSync(join(root, 'docs')).filter((f) => f.endsWith('.md')).sort().map((f) => `docs/${f}`)];
const blocks = pages.flatMap((page) =>
  [...readFileSync(join(root, page), 'utf8').matchAll(/^```ts\n([\s\S]*?)^```$/gm)].map((m) => ({ page, code: m[1] })),
);
const dir = mkdtempSync(join(root, 'test', '.readme-'));
const dbs: TestDatabase[] = [];
after(async () => {
  rmSync(dir, { recursive: true, force: true });
  for (const db of dbs) await db.drop();
});

function run(file: string, env: Record<string, string>): Promise<{ code: number | null; output: string }> {
  return new Promise((resolve) => {
    const child = spawn(process.execPath, ['--import', 'tsx', file], { cwd: root, env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
    let output = '';
    child.stdout.on('data', (c) => (output += c));
    child.stderr.on('data', (c) => (output += c));
    child.on('exit', (code) => resolve({ code, output }));
  });
}

describe('README and docs examples', () => {
  it('has runnable examples', () => assert.ok(blocks.length > 0));
  blocks.forEach(({ page, code }, i) => {
    const title = code.split('\n').find((l) => l.trim() && !l.startsWith('import'))?.trim().slice(0, 50);
    it(`example ${i + 1} (${page}) runs: ${title}`, async () => {
      const db = await freshDatabase({ migrated: false });
      dbs.push(db);
      const file = join(dir, `example-${i + 1}.ts`);
      writeFileSync(file, code.replace(/from 'pgherald(\/(server|nats|embedded|testing))?'/g, (_m, _sub, name: string | undefined) => `from '${join(root, 'src', name ?? '', 'index.ts')}'`));
      const { code: exit, output } = await run(file, { DATABASE_URL: db.url });
      assert.equal(exit, 0, `example ${i + 1} failed:\n${output}`);
    });
  });
});
