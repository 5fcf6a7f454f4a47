/**
 * A client process of bench/gateway.ts: opens `count` SSE or WebSocket clients of one
 * topic. Every client counts what it receives; one in `sampleEvery` parses each payload
 * (`<publish time ms, float>`) for the fan-out latency. Controlled over IPC:
 * `{ measure: true }` starts counting, `{ report: true }` sends the counts and samples.
 */
import { request } from 'node:http';
import { connect } from 'node:net';
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

const MARK = Buffer.from('event: notification');

function sse(i: number): Promise<void> {
  const sampled = i % sampleEvery === 0;
  return new Promise((resolve, reject) => {
    const req = request(`${url}/channels/bench/events`, { agent: false }, (res) => {
      if (res.statusCode !== 200) return reject(new Error(`HTTP ${res.statusCode}`));
      let buf = '';
      let tail: Buffer = Buffer.alloc(0);
      let ready = false;
      if (sampled) res.setEncoding('latin1');
      res.on('data', (chunk: Buffer | string) => {
        if (!ready) {
          ready = true;
          resolve();
        }
        if (!sampled) {
          // Count frames on the raw bytes without decoding them: one "event: notification"
          // per event. The last 18 bytes are kept so a marker split between two chunks counts once.
          const b = tail.length ? Buffer.concat([tail, chunk as Buffer]) : (chunk as Buffer);
          let at = 0;
          while ((at = b.indexOf(MARK, at)) >= 0) {
            if (measuring && at + MARK.length > tail.length) received++;
            at += MARK.length;
          }
          tail = Buffer.from(b.subarray(Math.max(0, b.length - (MARK.length - 1))));
          return;
        }
        buf += chunk as string;
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

/**
 * A WebSocket client that only counts: a raw socket, the upgrade by hand, then frame
 * headers parsed to skip payloads (server frames are unmasked). Used for the clients
 * that are not sampled, so the client processes spend their CPU on reading, not on
 * decoding messages, and the measure is about the server.
 */
function rawWs(): Promise<void> {
  const u = new URL(url);
  return new Promise((resolve, reject) => {
    const socket = connect(Number(u.port), u.hostname);
    socket.on('error', reject);
    socket.on('close', () => closed++);
    socket.write(`GET /ws?topic=bench HTTP/1.1\r\nHost: ${u.host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n`);
    let upgraded = false;
    let pending: Buffer = Buffer.alloc(0); // an incomplete header, or the handshake
    let skip = 0; // payload bytes still to skip
    let frames = 0;
    socket.on('data', (chunk: Buffer) => {
      const buf: Buffer = pending.length ? Buffer.concat([pending, chunk]) : chunk;
      pending = Buffer.alloc(0);
      let at = 0;
      if (!upgraded) {
        const end = buf.indexOf('\r\n\r\n');
        if (end < 0) {
          pending = buf;
          return;
        }
        upgraded = true;
        at = end + 4;
      }
      for (;;) {
        if (skip > 0) {
          const n = Math.min(skip, buf.length - at);
          skip -= n;
          at += n;
          if (skip > 0) return;
        }
        if (buf.length - at < 2) break;
        const len7 = buf[at + 1] & 0x7f;
        const head = len7 < 126 ? 2 : len7 === 126 ? 4 : 10;
        if (buf.length - at < head) break;
        const len = len7 < 126 ? len7 : len7 === 126 ? buf.readUInt16BE(at + 2) : Number(buf.readBigUInt64BE(at + 2));
        at += head;
        skip = len;
        if (frames++ === 0) resolve(); // the first frame is the "subscribed" reply
        else if (measuring) received++;
      }
      if (at < buf.length) pending = Buffer.from(buf.subarray(at));
    });
  });
}

function ws(i: number): Promise<void> {
  const sampled = i % sampleEvery === 0;
  if (!sampled) return rawWs();
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
    // exit only once the (possibly large) report has been handed over
    process.send!({ received, closed, latencies }, () => process.exit(0));
  }
});
