/**
 * A mailbox producer process for fault tests. Config as JSON in argv[2]:
 * { url, prefix, count, destinations: string[] }
 * Sends `count` messages (ids `${prefix}-${i}`, destination i % n) in transactions of
 * 1..100 messages, retrying a failed transaction with the same ids until it commits:
 * the ids make a retry after an unknown outcome harmless. Prints {"created", "retries"}.
 */
import { createHerald } from '../../src/client.js';
import { sleep } from '../../src/internal/backoff.js';

const cfg = JSON.parse(process.argv[2]) as { url: string; prefix: string; count: number; destinations: string[] };
const herald = createHerald({ connectionString: cfg.url, poolSize: 2 });
let created = 0;
let retries = 0;
let i = 0;
while (i < cfg.count) {
  const size = Math.min(cfg.count - i, 1 + Math.floor(Math.random() * 100));
  const batch = Array.from({ length: size }, (_, k) => {
    const n = i + k;
    return { id: `${cfg.prefix}-${n}`, to: cfg.destinations[n % cfg.destinations.length], payload: { n, p: cfg.prefix } };
  });
  for (;;) {
    try {
      const results = await herald.transaction((tx) => herald.mailbox.sendMany(batch, { tx }));
      created += results.filter((r) => r.created).length;
      break;
    } catch {
      retries++;
      await sleep(50 + Math.random() * 100);
    }
  }
  i += size;
}
await herald.close();
process.stdout.write(JSON.stringify({ created, retries }) + '\n');
