/**
 * The README and docs/ are the contract (conventions in docs/contributing.md):
 *
 * - every ```ts block of README.md and docs/**\/*.md is run, as written, with `pgherald`
 *   and its subpaths resolved to this checkout's sources, against a fresh database;
 * - TWICE against the same database: examples must be idempotent;
 * - what it prints on stdout must equal the ```text block that follows it (only blank
 *   lines between), both runs; every example has one;
 * - ```typescript blocks are fragments and are not run;
 * - every relative link of README.md and docs/ points at a file that exists, and every
 *   `#anchor` at a heading of that file (GitHub's anchor rules).
 *
 * Examples run a few at a time, each in its own process (`node --import tsx`).
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { dirname, join, relative, resolve } from 'node:path';
import { after, describe, it } from 'node:test';
import { freshDatabase, type TestDatabase } from './support/db.js';

const root = new URL('..', import.meta.url).pathname;

/** README.md and every markdown file under docs/ (except the generated API reference). */
export function documentationPages(base = root): string[] {
  const docs = join(base, 'docs');
  const under = existsSync(docs)
    ? readdirSync(docs, { recursive: true, encoding: 'utf8' })
        .filter((f) => f.endsWith('.md') && !f.startsWith('api/'))
        .sort()
        .map((f) => `docs/${f}`)
    : [];
  return ['README.md', ...under];
}

/** A fenced block: its language, its body, and where it starts (1-based line). */
interface Fence {
  lang: string;
  body: string;
  line: number;
  start: number;
  end: number;
}

function fencesOf(text: string): Fence[] {
  const out: Fence[] = [];
  const fence = /^```([A-Za-z0-9_-]*)[^\n]*\n([\s\S]*?)^```[ \t]*$/gm;
  for (const m of text.matchAll(fence)) {
    out.push({ lang: m[1], body: m[2], line: text.slice(0, m.index).split('\n').length, start: m.index!, end: m.index! + m[0].length });
  }
  return out;
}

/** A runnable example: its code and the output the text shows right after it. */
export interface Example {
  page: string;
  line: number;
  /** The heading the example sits under. */
  section: string;
  code: string;
  expected: string | null;
}

/** The ```ts blocks of a page, each with the ```text block right after it (or null). */
export function examplesOf(page: string, text: string): Example[] {
  const fences = fencesOf(text);
  return fences.flatMap((f, i) => {
    if (f.lang !== 'ts') return [];
    const next = fences[i + 1];
    const adjacent = next !== undefined && next.lang === 'text' && text.slice(f.end, next.start).trim() === '';
    const headings = [...text.slice(0, f.start).replace(/^```[\s\S]*?^```[ \t]*$/gm, '').matchAll(/^#{1,6}[ \t]+(.+?)[ \t#]*$/gm)];
    const section = headings.at(-1)?.[1] ?? page;
    return [{ page, line: f.line, section, code: f.body, expected: adjacent ? next.body : null }];
  });
}

/** GitHub's anchor of a heading: lower case, punctuation dropped, each space a hyphen. */
export function slugOf(heading: string): string {
  const plain = heading
    .replace(/!?\[([^\]]*)\]\([^)]*\)/g, '$1') // [text](url) -> text
    .replace(/<[^>]+>/g, '') // inline html
    .trim()
    .toLowerCase();
  return plain.replace(/[^\p{L}\p{N}\p{M} _-]/gu, '').replace(/ /g, '-');
}

/** The anchors a page offers: its headings' slugs (repeats get -1, -2, ...) and explicit ids. */
export function anchorsOf(text: string): Set<string> {
  const anchors = new Set<string>();
  const seen = new Map<string, number>();
  const withoutFences = text.replace(/^```[\s\S]*?^```[ \t]*$/gm, '');
  for (const m of withoutFences.matchAll(/^#{1,6}[ \t]+(.+?)[ \t#]*$/gm)) {
    const slug = slugOf(m[1]);
    const n = seen.get(slug) ?? 0;
    seen.set(slug, n + 1);
    anchors.add(n === 0 ? slug : `${slug}-${n}`);
  }
  for (const m of withoutFences.matchAll(/<a\s+(?:name|id)="([^"]+)"/g)) anchors.add(m[1]);
  return anchors;
}

/** Every relative link of the pages that does not resolve: `page:line: target (why)`. */
export function brokenLinks(pages: string[], base = root): string[] {
  const broken: string[] = [];
  const anchorCache = new Map<string, Set<string>>();
  const anchors = (file: string) => {
    if (!anchorCache.has(file)) anchorCache.set(file, anchorsOf(readFileSync(file, 'utf8')));
    return anchorCache.get(file)!;
  };
  for (const page of pages) {
    const file = join(base, page);
    const text = readFileSync(file, 'utf8');
    // Links outside fenced blocks and outside inline code.
    const prose = text.replace(/^```[\s\S]*?^```[ \t]*$/gm, (m) => m.replace(/[^\n]/g, ' ')).replace(/`[^`\n]*`/g, (m) => ' '.repeat(m.length));
    const targets = [...prose.matchAll(/\]\(([^)\s]+)(?:\s+"[^"]*")?\)/g), ...prose.matchAll(/^\[[^\]]+\]:\s+(\S+)/gm)];
    for (const m of targets) {
      const target = m[1];
      if (/^[a-z][a-z0-9+.-]*:/i.test(target)) continue; // https:, mailto:, ...
      const line = prose.slice(0, m.index).split('\n').length;
      const [path, anchor] = target.split('#', 2) as [string, string | undefined];
      const dest = path === '' ? file : resolve(dirname(file), decodeURIComponent(path));
      if (!existsSync(dest)) {
        broken.push(`${page}:${line}: ${target} (no file ${relative(base, dest)})`);
        continue;
      }
      if (anchor === undefined || anchor === '') continue;
      if (statSync(dest).isDirectory() || !dest.endsWith('.md')) {
        broken.push(`${page}:${line}: ${target} (an anchor into a file that is not markdown)`);
        continue;
      }
      if (!anchors(dest).has(decodeURIComponent(anchor))) broken.push(`${page}:${line}: ${target} (no heading #${anchor} in ${relative(base, dest)})`);
    }
  }
  return broken;
}

const pages = documentationPages();
const examples = pages.flatMap((page) => examplesOf(page, readFileSync(join(root, page), 'utf8')));

/**
 * A backstop for an example that waits on nothing (say, for a message its first run
 * consumed): it is killed and the test fails with what it printed. Not a timing
 * assertion: an example takes a few seconds on a loaded machine.
 */
const HANG_MS = 300_000;

function run(file: string, env: Record<string, string>): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolveRun) => {
    const child = spawn(process.execPath, ['--import', 'tsx', file], { cwd: root, env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    const backstop = setTimeout(() => {
      stderr += `\n(killed: still running after ${HANG_MS / 1000} s; does it wait for something its first run used up?)`;
      child.kill('SIGKILL');
    }, HANG_MS);
    child.stdout.on('data', (c) => (stdout += c));
    child.stderr.on('data', (c) => (stderr += c));
    child.on('exit', (code) => {
      clearTimeout(backstop);
      resolveRun({ code, stdout, stderr });
    });
  });
}

/** Trailing spaces and leading/trailing blank lines do not count. */
const normalise = (s: string) =>
  s
    .split('\n')
    .map((l) => l.trimEnd())
    .join('\n')
    .trim();

describe('documentation links', () => {
  it('every relative link and anchor of README.md and docs/ resolves', () => {
    assert.deepEqual(brokenLinks(pages), []);
  });

  it('the checker knows GitHub anchors and finds a broken one', () => {
    assert.equal(slugOf('Transactions: `{ tx }`'), 'transactions--tx-');
    assert.equal(slugOf('`createHerald(options)`'), 'createheraldoptions');
    assert.equal(slugOf('Retries, backoff and error text'), 'retries-backoff-and-error-text');
    assert.equal(slugOf('WebSocket protocol (`/ws`)'), 'websocket-protocol-ws');
    assert.deepEqual([...anchorsOf('# A\n## B\n```sh\n# not a heading\n```\n## B\n')], ['a', 'b', 'b-1']);
    const pairs = examplesOf('x.md', '# A\n```ts\nconsole.log(1)\n```\n\n```text\n1\n```\n## B\n```ts\nx\n```\nprose\n```text\ny\n```\n```typescript\nz\n```\n');
    assert.deepEqual(pairs.map((e) => [e.section, e.line, e.expected]), [['A', 2, '1\n'], ['B', 10, null]]);
    const dir = mkdtempSync(join(root, 'test', '.links-'));
    try {
      writeFileSync(join(dir, 'a.md'), '# Top\n\n[ok](b.md#there) [self](#top) [bad](b.md#nowhere) [gone](c.md) [web](https://example.com/x#y) `[code](d.md)`\n');
      writeFileSync(join(dir, 'b.md'), '## There\n');
      const found = brokenLinks(['a.md'], dir);
      assert.equal(found.length, 2, found.join('\n'));
      assert.match(found[0], /b\.md#nowhere/);
      assert.match(found[1], /c\.md/);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe('documentation examples', { concurrency: 3 }, () => {
  const dir = mkdtempSync(join(root, 'test', '.readme-'));
  const dbs: TestDatabase[] = [];
  after(async () => {
    rmSync(dir, { recursive: true, force: true });
    for (const db of dbs) await db.drop();
  });

  it('there are runnable examples, each followed by the output it prints', () => {
    assert.ok(examples.length > 0);
    const without = examples.filter((e) => e.expected === null).map((e) => `${e.page}:${e.line}`);
    assert.deepEqual(without, [], 'every ```ts example is followed by a ```text block of what it prints');
  });

  examples.forEach((ex, i) => {
    it(`${ex.page}:${ex.line} (${ex.section}) prints what the text shows, twice`, async () => {
      const db = await freshDatabase({ migrated: false });
      dbs.push(db);
      const file = join(dir, `example-${i + 1}.ts`);
      writeFileSync(file, ex.code.replace(/from 'pgherald(\/(server|nats|embedded|testing))?'/g, (_m, _sub, name: string | undefined) => `from '${join(root, 'src', name ?? '', 'index.ts')}'`));
      const printed: string[] = [];
      for (const round of ['first', 'second']) {
        const { code, stdout, stderr } = await run(file, { DATABASE_URL: db.url });
        assert.equal(code, 0, `${ex.page}:${ex.line} failed on its ${round} run:\n${stdout}\n${stderr}`);
        printed.push(normalise(stdout));
        if (ex.expected !== null) assert.equal(printed.at(-1), normalise(ex.expected), `${ex.page}:${ex.line}: what the ${round} run printed (stderr: ${stderr})`);
      }
      // No output block yet: say what to add (once it prints only stable values).
      if (ex.expected === null) {
        const same = printed[0] === printed[1] ? 'both runs printed' : `the runs differ; the second printed:\n${printed[1]}\nthe first`;
        assert.fail(`${ex.page}:${ex.line} has no output block after it; ${same}:\n\`\`\`text\n${printed[0]}\n\`\`\``);
      }
    });
  });
});
