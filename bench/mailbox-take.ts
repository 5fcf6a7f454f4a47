/**
 * How much does counting a mailbox attempt before the handler cost? The prototype of
 * the take row (session 6), kept as its record. Four ways to take 20,000 messages 100
 * at a time, each a fresh destination of one table, 3 rounds, the median per way
 * (messages/s), one process, one Postgres at default durability:
 *  - old: the one-statement take of session 3 (claim and mark consumed in the consume
 *    transaction; a process killed in its handler leaves no trace, so its attempt is
 *    not counted);
 *  - m2: the old take, plus one row per take (its token and ids) inserted and committed
 *    on a second connection before the handlers run, deleted by the consume
 *    transaction: a take killed in its handler leaves that row behind, which is what a
 *    later take counts;
 *  - m2async: the same with the take row committed without waiting for the flush;
 *  - library: the library's own statements for that design (session 7:
 *    src/mailbox/queries.ts mailboxTake, mailboxTakeInsert; a committed take's row is
 *    deleted by the next take statement, not by a statement of its own). The lease measured here in session 6 is gone
 *    from the library (issue 15; see bench/RESULTS.md).
 *
 *   node --import tsx bench/mailbox-take.ts
 */
import pg from 'pg';
import { randomUUID } from 'node:crypto';
import { createHerald } from '../src/index.js';
import { benchPostgres } from './support/postgres.js';
const server = await benchPostgres({ shared_buffers: '256MB' });
const herald = createHerald({ connectionString: server.url });
await herald.migrate();
const a = new pg.Client({ connectionString: server.url }); await a.connect();
const b = new pg.Client({ connectionString: server.url }); await b.connect();
// The prototype's table is the schema's mailbox_takes now (migration 018).
const N = 20000;
async function fill(to: string) {
  for (let c = 0; c < N; c += 5000) await herald.mailbox.sendMany(Array.from({ length: 5000 }, (_, i) => ({ to, payload: { i } })));
}
const CLAIM = (to: string) => `WITH next AS (SELECT ctid FROM herald.mailbox_messages WHERE destination = '${to}' AND state = 'ready' AND visible_at <= now() ORDER BY seq LIMIT 100 FOR UPDATE SKIP LOCKED)
  UPDATE herald.mailbox_messages m SET state = 'consumed', consumed_at = now(), attempts = m.attempts + 1, lease = NULL WHERE m.ctid = ANY(ARRAY(SELECT ctid FROM next)) RETURNING m.id, m.payload`;
const results: Record<string, number[]> = { old: [], m2: [], m2async: [], library: [] };
for (let round = 0; round < 3; round++) {
  for (const mode of ['old', 'm2', 'm2async', 'library'] as const) {
    const to = `${mode}-${round}`;
    await fill(to);
    const t = performance.now();
    let n = 0;
    if (mode === 'library') {
      const { mailboxTake, mailboxTakeInsert } = await import('../src/mailbox/queries.js');
      let prev: string[] = [];
      for (;;) {
        await a.query('BEGIN');
        const rows = await mailboxTake(a as any, 'herald', to, null, 100, null);
        if (rows.length === 0) { await a.query('COMMIT'); break; }
        const tok = randomUUID();
        await mailboxTakeInsert({ query: (t: string, v?: readonly unknown[]) => b.query(t, v as unknown[]) } as any, 'herald', { token: tok, destination: to, ids: rows.map((r) => r.id) }, prev);
        prev = [tok];
        for (const row of rows) JSON.parse(row.payload);
        await a.query('COMMIT');
        n += rows.length;
      }
      results[mode].push(n / ((performance.now() - t) / 1000));
      continue;
    }
    for (;;) {
      await a.query('BEGIN');
      const r = await a.query(CLAIM(to));
      if (r.rows.length === 0) { await a.query('COMMIT'); break; }
      let token: string | undefined;
      if (mode !== 'old') {
        token = randomUUID();
        if (mode === 'm2async') await b.query(`INSERT INTO herald.mailbox_takes (token, destination, ids) SELECT $1, $2, $3 WHERE (SELECT set_config('synchronous_commit','off',true)) IS NOT NULL`, [token, to, r.rows.map((x) => x.id)]);
        else await b.query(`INSERT INTO herald.mailbox_takes (token, destination, ids) VALUES ($1, $2, $3)`, [token, to, r.rows.map((x) => x.id)]);
      }
      for (const row of r.rows) JSON.parse(row.payload);
      if (token) await a.query('DELETE FROM herald.mailbox_takes WHERE token = $1', [token]);
      await a.query('COMMIT');
      n += r.rows.length;
    }
    results[mode].push(n / ((performance.now() - t) / 1000));
  }
}
const med = (x: number[]) => [...x].sort((p, q) => p - q)[1];
console.log(`load average ${(await import('node:os')).loadavg()[0].toFixed(1)}; messages/s, median of 3 rounds:`);
console.log(Object.fromEntries(Object.entries(results).map(([k, v]) => [k, Math.round(med(v))])));
await a.end(); await b.end(); await herald.close(); await server.stop();
