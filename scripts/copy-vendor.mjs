// Copies uPlot (MIT; the dashboard's charts) into dist/server/vendor/uplot/ with its
// license, so the published package serves it without a runtime dependency.
import { copyFileSync, mkdirSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';

const root = new URL('..', import.meta.url).pathname;
const from = dirname(createRequire(import.meta.url).resolve('uplot/package.json'));
const to = join(root, 'dist', 'server', 'vendor', 'uplot');
mkdirSync(to, { recursive: true });
for (const [src, dst] of [['dist/uPlot.iife.min.js', 'uPlot.iife.min.js'], ['dist/uPlot.min.css', 'uPlot.min.css'], ['LICENSE', 'LICENSE']]) {
  copyFileSync(join(from, src), join(to, dst));
}
