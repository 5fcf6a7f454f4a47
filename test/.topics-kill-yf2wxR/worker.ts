import { createHerald } from "/work/wt/topics/src/index.ts";
const herald = createHerald({ connectionString: process.env.DATABASE_URL });
const c = herald.topics.consumer('kill', 'g', async ({ messages, tx }) => {
  for (const m of messages) await tx.query('INSERT INTO done (v, by) VALUES ($1, $2)', [m.payload, 'worker']);
  console.log('in-batch');
  await new Promise(() => {});
}, { batchSize: 50 });
await c.start();
