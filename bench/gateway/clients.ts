/**
 * A client process of bench/gateway.ts: opens `count` SSE or WebSocket clients of one
 * topic. Every client counts what it receives; one in `sampleEvery` parses each payload
 * (`<publish time ms, float>`) for the fan-out latency. Controlled over IPC:
 * `{ measure: true }` starts counting, `{ report: true }` sends the counts and samples.
 */
import { request } from 'node:http';
import { WebSocket } from 'ws';

const [url, transport, countText, sampleEveryText] = process.argv.slice(2);
const count = Number(countText);
const sampleEvery = Number(sampleEveryText);
const now = () => performance.timeOrigin + performance.now();
let measuring = false;
let received = 0;
let closed = 0;
const latencies: number[] = [];

function onPayload(sampled: boolean, payload: string): void {
  if (!measuring) return;
  received++;
  if (sampled) latencies.push(now() - Number(payload));
}

function sse(i: number): Promise<void> {
  const sampled = i % sampleEvery === 0;
  return new Promise((resolve, reject) => {
    const req = request(`${url}/channels/bench/events`, { agent: false }, (res) => {
      if (res.statusCode !== 200) return reject(new Error(`HTTP ${res.statusCode}`));
      let buf = '';
      let tail = '';
      let ready = false;
      res.setEncoding('latin1');
      res.on('data', (chunk: string) => {
        if (!ready) {
          ready = true;
          resolve();
        }
        if (!sampled) {
          // Count frames without parsing them: one "event: notification" per event. The
          // last 18 characters are kept so a marker split between two chunks counts once.
          const s = tail + chunk;
          let at = 0;
          while ((at = s.indexOf('event: notification', at)) >= 0) {
            if (measuring && at + 19 > tail.length) received++;
            at += 19;
          }
          tail = s.slice(-18);
          return;
        }
        buf += chunk;
        let k: number;
        while ((k = buf.indexOf('\n\n')) >= 0) {
          const block = buf.slice(0, k);
          buf = buf.slice(k + 2);
          if (!block.includes('event: notification')) continue;
          const d = block.indexOf('data: ');
          onPayload(true, block.slice(d + 6));
        }
      });
      res.on('close', () => closed++);
    });
    req.on('error', reject);
    req.end();
  });
}

function ws(i: number): Promise<void> {
  const sampled = i % sampleEvery === 0;
  return new Promise((resolve, reject) => {
    const socket = new WebSocket(`${url.replace('http', 'ws')}/ws?topic=bench`, { perMessageDeflate: false });
    socket.on('error', reject);
    socket.on('close', () => closed++);
    socket.on('message', (data: Buffer) => {
      // '{"type":"event"...': byte 9 is 'e' for events; counted without decoding.
      if (!sampled && data[9] === 0x65) {
        if (measuring) received++;
        return;
      }
      const text = data.toString();
      if (text.startsWith('{"type":"subscribed"')) return resolve();
      if (!text.startsWith('{"type":"event"')) return;
      if (!sampled) {
        if (measuring) received++;
        return;
      }
      onPayload(true, JSON.parse(text).data);
    });
  });
}

const open = transport === 'ws' ? ws : sse;
for (let i = 0; i < count; i += 200) {
  await Promise.all(Array.from({ length: Math.min(200, count - i) }, (_, j) => open(i + j)));
}
process.send!({ ready: true });
process.on('message', (m: { measure?: boolean; report?: boolean }) => {
  if (m.measure) {
    measuring = true;
    received = 0;
    latencies.length = 0;
  }
  if (m.report) {
    measuring = false;
    process.send!({ received, closed, latencies });
    setTimeout(() => process.exit(0), 100);
  }
});
