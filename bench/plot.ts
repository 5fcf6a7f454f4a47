/**
 * Draws the time series of one or more soak runs (`bench/soak.ts`, `bench/soak-messaging.ts`,
 * `bench/gateway-churn.ts` output; a file's own `charts` layout when it has one) as a PNG, so
 * a regression is visible at a glance: throughput (enqueued and started per second),
 * enqueue-to-start latency (p50 and p99 per second), memory (Node RSS, Postgres
 * backends' RSS) and table size. Several files (one per library) share each chart.
 *
 *   node --import tsx bench/plot.ts bench/results/soak-pgherald.json [more.json ...] [--out soak.png]
 *
 * Rendering: uPlot (the dashboard's chart library) in headless Chromium through
 * playwright-core; set CHROMIUM_PATH when Chromium is not at /usr/bin/chromium.
 */
import { existsSync, readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { parseArgs } from 'node:util';
import { chromium } from 'playwright-core';

const { values, positionals } = parseArgs({ allowPositionals: true, options: { out: { type: 'string' } } });
if (positionals.length === 0) throw new Error('usage: bench/plot.ts <soak.json> [more.json ...] [--out file.png]');
const out = values.out ?? positionals[0].replace(/\.json$/, '') + '.png';
type ChartSpec = { title: string; unit: string; series: string[][]; scale?: number };
const runs = positionals.map((f) => JSON.parse(readFileSync(f, 'utf8')) as { lib: string; rate: number; minutes: number; charts?: ChartSpec[]; samples: Record<string, number>[] });

const require = createRequire(import.meta.url);
const uplotDir = require.resolve('uplot/dist/uPlot.iife.min.js').replace(/uPlot\.iife\.min\.js$/, '');
const executablePath = process.env.CHROMIUM_PATH ?? '/usr/bin/chromium';
if (!existsSync(executablePath)) throw new Error(`no Chromium at ${executablePath} (set CHROMIUM_PATH)`);

// A series file may carry its own chart layout (bench/soak-messaging.ts, bench/gateway-churn.ts);
// the job-queue soak's files do not, and get this one.
const charts: ChartSpec[] = runs[0].charts ?? [
  { title: 'jobs per second', unit: 'jobs/s', series: [['enqueued', 'enqueued'], ['started', 'started']] },
  { title: 'enqueue → start latency', unit: 'ms', series: [['p50', 'p50'], ['p99', 'p99']] },
  { title: 'memory', unit: 'MB', series: [['nodeRss', 'Node RSS'], ['pgRss', 'Postgres backends RSS']], scale: 2 ** 20 },
  { title: 'tables (with indexes and TOAST)', unit: 'MB', series: [['tableBytes', 'size']], scale: 2 ** 20 },
];

const browser = await chromium.launch({ executablePath, args: ['--no-sandbox'] });
try {
  const page = await browser.newPage({ viewport: { width: 1200, height: 300 * charts.length + 60 } });
  await page.setContent(`<!doctype html><html><head><style>${readFileSync(uplotDir + 'uPlot.min.css', 'utf8')}
    body { font: 13px system-ui, sans-serif; margin: 10px; background: #fff; } h1 { font-size: 16px; margin: 0 0 6px; }</style></head>
    <body><h1>soak: ${runs.map((r) => `${r.lib} (${r.rate}/s, ${r.minutes} min)`).join(' · ')}</h1><div id="c"></div></body></html>`);
  await page.addScriptTag({ content: readFileSync(uplotDir + 'uPlot.iife.min.js', 'utf8') });
  await page.evaluate(
    ({ runs, charts }) => {
      const colors = ['#2563eb', '#dc2626', '#16a34a', '#9333ea', '#ea580c', '#0891b2'];
      const U = (window as unknown as { uPlot: new (o: unknown, d: unknown, el: HTMLElement) => unknown }).uPlot;
      const longest = runs.reduce((a, r) => (r.samples.length > a.samples.length ? r : a), runs[0]);
      const xs = longest.samples.map((s) => s.t / 60);
      for (const chart of charts) {
        const data: (number | null)[][] = [xs];
        const series: unknown[] = [{ label: 'minute' }];
        let color = 0;
        for (const run of runs) {
          for (const [key, label] of chart.series) {
            data.push(xs.map((_, i) => (run.samples[i] ? run.samples[i][key] / (chart.scale ?? 1) : null)));
            series.push({ label: runs.length > 1 ? `${run.lib} ${label}` : label, stroke: colors[color++ % colors.length], width: 1.5 });
          }
        }
        const el = document.createElement('div');
        document.getElementById('c')!.appendChild(el);
        new U({ title: `${chart.title} (${chart.unit})`, width: 1160, height: 270, series, scales: { x: { time: false } }, axes: [{ label: 'minutes' }, { label: chart.unit }] }, data, el);
      }
    },
    { runs, charts },
  );
  await page.screenshot({ path: out, fullPage: true });
  console.log(`# wrote ${out}`);
} finally {
  await browser.close();
}
