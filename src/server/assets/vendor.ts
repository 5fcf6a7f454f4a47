import { existsSync, readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

/**
 * uPlot (https://github.com/leeoniya/uPlot, MIT), the dashboard's chart library. The
 * package build copies its minified IIFE, its CSS and its license into
 * `dist/server/vendor/uplot/` (scripts/copy-vendor.mjs), so the published package
 * carries it without a runtime dependency; from the sources (tests, `tsx`) it is read
 * from the `uplot` devDependency. Read once, when the server registers its routes.
 */
export interface Uplot {
  /** The minified IIFE (defines the global `uPlot`). */
  js: string;
  css: string;
  license: string;
}

let cached: Uplot | null | undefined;

/** uPlot's files, or null when neither the packaged copy nor the devDependency is there (the page then shows no charts). */
export function loadUplot(): Uplot | null {
  if (cached !== undefined) return cached;
  cached = null;
  const here = dirname(fileURLToPath(import.meta.url));
  const dirs = [join(here, '..', 'vendor', 'uplot')];
  try {
    const pkg = createRequire(import.meta.url).resolve('uplot/package.json');
    dirs.push(dirname(pkg));
  } catch {
    // not installed (a published package without its vendor copy)
  }
  for (const dir of dirs) {
    const js = [join(dir, 'uPlot.iife.min.js'), join(dir, 'dist', 'uPlot.iife.min.js')].find(existsSync);
    const css = [join(dir, 'uPlot.min.css'), join(dir, 'dist', 'uPlot.min.css')].find(existsSync);
    const license = join(dir, 'LICENSE');
    if (js && css && existsSync(license)) {
      cached = { js: readFileSync(js, 'utf8'), css: readFileSync(css, 'utf8'), license: readFileSync(license, 'utf8') };
      break;
    }
  }
  return cached;
}
