/**
 * A mailbox consumer process for fault tests. Config as JSON in argv[2]:
 * { url, listenUrl?, destinations: string[], batchSize?, concurrency?, name, mode: 'ledger' | 'hang' }
 * - ledger: each message writes a ledger row (unique on message id) in the consuming transaction.
 * - hang: writes the ledger row, prints {"inHandler": id} and never returns (the test SIGKILLs us).
 * - poison: like ledger, but a message whose payload is "poison" SIGKILLs this process in its handler.
 * Optional: maxAttempts (default 1000), pollIntervalMs (default 5000).
 * Prints {"ready": true} once every consumer LISTENs; on SIGTERM stops and prints its counts.
 */
import { createHerald } from '../../src/client.js';

const cfg = JSON.parse(process.argv[2]) as {
  url: string;
  listenUrl?: string;
  destinations: string[];
  batchSize?: number;
  concurrency?: number;
  name: string;
  mode: 'ledger' | 'hang' | 'poison';
  pollIntervalMs?: number;
  maxAttempts?: number;
};
const print = (o: unknown) => process.stdout.write(JSON.stringify(o) + '\n');

const herald = createHerald({
  connectionString: cfg.url,
  listenConnectionString: cfg.listenUrl,
  poolSize: cfg.destinations.length * (cfg.concurrency ?? 1) + 2,
  notifier: { healthCheckIntervalMs: 1000, healthCheckTimeoutMs: 1000 },
  mailbox: { pollIntervalMs: cfg.pollIntervalMs ?? 5000, retryDelayMs: 20, maxRetryDelayMs: 200, maxAttempts: cfg.maxAttempts ?? 1000 },
});
let dupErrors = 0;
let otherErrors = 0;
let problems = 0;
herald.mailbox.on('message:handlerError', ({ error }) => {
  if ((error as { code?: string })?.code === '23505') dupErrors++;
  else otherErrors++;
});
herald.mailbox.on('message:problem', () => problems++);

const consumers = cfg.destinations.map((to) =>
  herald.mailbox.consume(
    to,
    async (m, tx) => {
      if (cfg.mode === 'poison' && m.payload === 'poison') {
        print({ dying: m.id, attempts: m.attempts });
        process.kill(process.pid, 'SIGKILL');
        await new Promise(() => {});
      }
      await tx.query('INSERT INTO ledger (message_id, consumer) VALUES ($1, $2)', [m.id, cfg.name]);
      if (cfg.mode === 'hang') {
        print({ inHandler: m.id });
        await new Promise(() => {});
      }
    },
    { batchSize: cfg.batchSize ?? 1, concurrency: cfg.concurrency ?? 1 },
  ),
);
await herald.mailbox.start();
print({ ready: true });

process.once('SIGTERM', async () => {
  await herald.close();
  const consumed = consumers.reduce((s, c) => s + c.consumed, 0);
  print({ consumed, dupErrors, otherErrors, problems, reconnects: herald.notifier.stats().reconnects });
  process.exit(0);
});
