/**
 * The dashboard's cost on the database: one read of the panels per refresh period
 * whatever the number of tabs, and a stuck-jobs query that follows the backlog, not the
 * history of finished jobs.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import type { Herald } from '../client.js';
import { HeraldServer } from './server.js';
import { jobStuckSql } from '../queue/queries.js';
import { useHerald } from '../../test/support/herald.js';
import { scaled } from '../../test/support/scale.js';

let herald: Herald;
useHerald({ poolSize: 4 }, (_db, h) => {
  herald = h;
});

describe('dashboard cost', () => {
  it('ten tabs at once cost one read of each panel; an action forces a fresh read', async () => {
    const server = new HeraldServer(herald, { port: 0, dashboardRefreshMs: 60_000 });
    let loads = 0;
    server.dashboard.addPanel({ id: 'counting', title: 'counts its loads', load: () => ++loads, actions: { poke: { label: 'Poke', scope: 'panel', run: () => 'poked' } } });
    const url = await server.start();
    try {
      const get = async () => (await (await fetch(`${url}/api/dashboard`)).json()) as { panels: { id: string; data: unknown }[]; panelsReadAt: string };
      const docs = await Promise.all(Array.from({ length: 10 }, get));
      assert.equal(loads, 1);
      assert.ok(docs.every((d) => d.panels.find((p) => p.id === 'counting')?.data === 1));
      assert.equal(new Set(docs.map((d) => d.panelsReadAt)).size, 1);
      await get();
      assert.equal(loads, 1, 'within the period the read is reused');
      const ran = await fetch(`${url}/api/dashboard/panels/counting/actions/poke`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: '{"args":{}}' });
      assert.equal(ran.status, 200);
      const after = await get();
      assert.equal(loads, 2);
      assert.equal(after.panels.find((p) => p.id === 'counting')?.data, 2);
    } finally {
      await server.stop();
    }
  });

  it('stuck jobs: scheduled jobs are not stuck, and the query reads the claim and lease indexes, not the finished history', async () => {
    const finished = scaled(200_000, 50_000);
    await herald.driver.executor.query(
      `INSERT INTO herald.jobs (kind, state, finished_at, stage_entered_at)
       SELECT 'done', 'completed', now(), now() - interval '1 day' FROM generate_series(1, $1)`,
      [finished],
    );
    const [due] = await herald.queue.enqueueMany([{ kind: 'late' }]);
    const [future] = await herald.queue.enqueueMany([{ kind: 'later', runAt: new Date(Date.now() + 3_600_000) }]);
    await herald.driver.executor.query(`UPDATE herald.jobs SET stage_entered_at = now() - interval '1 hour', run_at = now() - interval '1 hour' WHERE id = $1`, [due.id]);
    await herald.driver.executor.query(`UPDATE herald.jobs SET stage_entered_at = now() - interval '1 hour' WHERE id = $1`, [future.id]);
    await herald.driver.executor.query('ANALYZE herald.jobs');
    const stuck = await herald.queue.stuck({ thresholdMs: 60_000 });
    assert.deepEqual(stuck.map((j) => j.id), [due.id]);
    assert.ok(stuck[0].stuckMs >= 3_500_000);
    const plan = await herald.driver.executor.query<{ 'QUERY PLAN': unknown }>(
      `EXPLAIN (FORMAT JSON) ${jobStuckSql('herald')}`,
      [60_000, 50],
    );
    const text = JSON.stringify(plan.rows[0]['QUERY PLAN']);
    assert.ok(!/"Seq Scan"[^}]*"Relation Name":"jobs"/.test(text), `no sequential scan of jobs: ${text.slice(0, 400)}`);
  });
});
