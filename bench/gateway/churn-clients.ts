/**
 * A client process of bench/gateway-churn.ts. Opens `stable` clients of topic `bench`
 * at start, then (after `{ churn: true }`) opens `churn` new clients per second, each
 * closing itself `lifetimeMs` after it connected. Transport per client: `sse`, `ws`, or
 * `mixed` (alternating, so half and half).
 *
 * Every client decodes every event (payload `<seq>-<publish time ms>`) and checks that
 * the sequence numbers it receives are consecutive from its first event to its last: a
 * gap means the server lost an event for a connected client. A socket the server
 * closes (not the client) counts as cut.
 *
 * IPC: `{ churn: true }` starts the churn; `{ sample: true }` answers the counters of
 * the last second (`sample`); `{ finish: lastSeq }` stops the churn, waits up to 10 s
 * for every open client to receive event `lastSeq`, closes everything and answers the
 * totals (`final`).
 */
import { connect, type Socket } from 'node:net';

const [url, transport, stableText, churnText, lifetimeText, sampleEveryText] = process.argv.slice(2);
const u = new URL(url);
const STABLE = Number(stableText);
const CHURN = Number(churnText);
const LIFETIME_MS = Number(lifetimeText);
const SAMPLE_EVERY = Number(sampleEveryText);
const now = () => performance.timeOrigin + performance.now();

interface Client {
  socket: Socket;
  first: number;
  last: number;
  events: number;
  closing: boolean;
}

const open = new Set<Client>();
let opened = 0;
let refused = 0;
let closedByUs = 0;
let cut = 0;
let events = 0;
let gaps = 0;
let missedEvents = 0;
let latencies: number[] = [];
let nth = 0;

const request = (t: string) =>
  t === 'ws'
    ? `GET /ws?topic=bench HTTP/1.1\r\nHost: ${u.host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n`
    : `GET /channels/bench/events HTTP/1.1\r\nHost: ${u.host}\r\nAccept: text/event-stream\r\n\r\n`;

function onEvent(c: Client, payload: string, sampled: boolean): void {
  const dash = payload.indexOf('-');
  if (dash < 0) return;
  const seq = Number(payload.slice(0, dash));
  if (c.events > 0 && seq !== c.last + 1) {
    gaps++;
    missedEvents += Math.max(0, seq - c.last - 1);
  }
  if (c.events === 0) c.first = seq;
  c.last = seq;
  c.events++;
  events++;
  if (sampled) latencies.push(now() - Number(payload.slice(dash + 1)));
}

function openClient(t: string, lifetimeMs: number): Promise<void> {
  return new Promise((resolve) => {
    const sampled = nth++ % SAMPLE_EVERY === 0;
    const socket = connect({ port: Number(u.port), host: u.hostname });
    const c: Client = { socket, first: -1, last: -1, events: 0, closing: false };
    let head = true;
    let text = '';
    let bin: Buffer = Buffer.alloc(0);
    let settled = false;
    const settle = () => {
      if (!settled) {
        settled = true;
        resolve();
      }
    };
    socket.on('data', (chunk: Buffer) => {
      if (head) {
        const all = Buffer.concat([bin, chunk]);
        const end = all.indexOf('\r\n\r\n');
        if (end < 0) {
          bin = all;
          return;
        }
        const status = all.toString('latin1', 0, all.indexOf('\r\n'));
        if (!/^HTTP\/1\.1 (200|101)/.test(status)) {
          refused++;
          c.closing = true;
          socket.destroy();
          settle();
          return;
        }
        head = false;
        opened++;
        open.add(c);
        settle();
        if (lifetimeMs > 0) setTimeout(() => close(c), lifetimeMs);
        chunk = all.subarray(end + 4);
        bin = Buffer.alloc(0);
      }
      if (t === 'sse') {
        text += chunk.toString('latin1');
        let k: number;
        while ((k = text.indexOf('\n\n')) >= 0) {
          const block = text.slice(0, k);
          text = text.slice(k + 2);
          if (!block.includes('event: notification')) continue;
          const d = block.indexOf('data: ');
          if (d < 0) continue;
          const nl = block.indexOf('\n', d);
          onEvent(c, block.slice(d + 6, nl < 0 ? undefined : nl), sampled);
        }
        return;
      }
      bin = bin.length ? Buffer.concat([bin, chunk]) : chunk;
      let at = 0;
      for (;;) {
        if (bin.length - at < 2) break;
        const len7 = bin[at + 1] & 0x7f;
        const hl = len7 < 126 ? 2 : len7 === 126 ? 4 : 10;
        if (bin.length - at < hl) break;
        const len = len7 < 126 ? len7 : len7 === 126 ? bin.readUInt16BE(at + 2) : Number(bin.readBigUInt64BE(at + 2));
        if (bin.length - at < hl + len) break;
        const frame = bin.toString('latin1', at + hl, at + hl + len);
        at += hl + len;
        const d = frame.indexOf('"data":"');
        if (d >= 0) onEvent(c, frame.slice(d + 8, frame.indexOf('"', d + 8)), sampled);
      }
      bin = at === bin.length ? Buffer.alloc(0) : Buffer.from(bin.subarray(at));
    });
    socket.on('error', () => {});
    socket.on('close', () => {
      if (!c.closing) {
        cut++;
        open.delete(c);
      }
      settle();
    });
    socket.write(request(t));
  });
}

function close(c: Client): void {
  if (c.closing) return;
  c.closing = true;
  open.delete(c);
  closedByUs++;
  c.socket.destroy();
}

const pick = (i: number) => (transport === 'mixed' ? (i % 2 === 0 ? 'sse' : 'ws') : transport);

for (let i = 0; i < STABLE; i += 100) {
  await Promise.all(Array.from({ length: Math.min(100, STABLE - i) }, (_, j) => openClient(pick(i + j), 0)));
}
process.send!({ ready: true, opened });

let churnTimer: NodeJS.Timeout | undefined;
let churnIndex = 0;
const TICK_MS = 100;
let owed = 0;
process.on('message', async (m: { churn?: boolean; sample?: boolean; finish?: number }) => {
  if (m.churn && CHURN > 0) {
    churnTimer = setInterval(() => {
      owed += (CHURN * TICK_MS) / 1000;
      for (; owed >= 1; owed--) void openClient(pick(churnIndex++), LIFETIME_MS);
    }, TICK_MS);
  }
  if (m.sample) {
    process.send!({ sample: { open: open.size, opened, closedByUs, cut, refused, events, gaps, missedEvents, latencies } });
    latencies = [];
  }
  if (m.finish !== undefined) {
    clearInterval(churnTimer);
    const lastSeq = m.finish;
    const deadline = now() + 10_000;
    // Clients that have had an event wait for the last one (a client that connected
    // after the last publish has none to wait for: counted as `silent`).
    while (now() < deadline && [...open].some((c) => c.events > 0 && c.last < lastSeq)) await new Promise((r) => setTimeout(r, 50));
    let tailMissing = 0;
    let silent = 0;
    for (const c of open) {
      if (c.events === 0) silent++;
      else tailMissing += Math.max(0, lastSeq - c.last);
    }
    const stillOpen = open.size;
    for (const c of [...open]) close(c);
    process.send!({ final: { opened, closedByUs, cut, refused, events, gaps, missedEvents, tailMissing, silent, stillOpen } }, () => process.exit(0));
  }
});
