/**
 * A client process of bench/gateway.ts: opens `count` SSE or WebSocket clients of one
 * topic on raw sockets. The clients share one receive buffer (`onread`: no allocation
 * per read, no HTTP or WebSocket library on the read path) so the client processes,
 * which share the machine with the server, stay cheap:
 *
 * - every client counts the events it receives on the raw bytes (SSE: the one `v` of
 *   `event: notification` in each event frame — the bench payloads are digits, the ids
 *   hex, and the server's keep-alive comments are off; WebSocket: frame headers, payloads skipped);
 * - one in `sampleEvery` also decodes each event's payload (`<publish time ms, float>`)
 *   for the fan-out latency.
 *
 * Controlled over IPC: `{ measure: true }` starts counting, `{ report: true }` sends
 * the counts and samples.
 */
import { connect, type Socket } from 'node:net';

const [url, transport, countText, sampleEveryText] = process.argv.slice(2);
const count = Number(countText);
const sampleEvery = Number(sampleEveryText);
const u = new URL(url);
const now = () => performance.timeOrigin + performance.now();
let measuring = false;
let received = 0;
let closed = 0;
const latencies: number[] = [];
/** One receive buffer for every socket: each read is handled before the next one. */
const shared = Buffer.allocUnsafe(256 * 1024);
const V = 0x76;

const request = transport === 'ws'
  ? `GET /ws?topic=bench HTTP/1.1\r\nHost: ${u.host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n`
  : `GET /channels/bench/events HTTP/1.1\r\nHost: ${u.host}\r\nAccept: text/event-stream\r\n\r\n`;

/** Per-socket reader: fed each read's bytes (a view of the shared buffer, valid only during the call). */
type Reader = (bytes: Buffer) => void;

/** Skips the HTTP response head, then hands the rest of every read to `body`. Resolves `ready` at the first body byte for SSE, at the first frame for WebSocket. */
function open(sampled: boolean): Promise<void> {
  return new Promise((resolve, reject) => {
    let head = '';
    let reader: Reader | undefined;
    const body: Reader = transport === 'ws' ? wsReader(sampled, resolve) : sseReader(sampled, resolve);
    const socket: Socket = connect({
      port: Number(u.port),
      host: u.hostname,
      onread: {
        buffer: shared,
        callback: (n: number, buf: Uint8Array) => {
          const bytes = Buffer.from(buf.buffer, buf.byteOffset, n);
          if (reader) {
            reader(bytes);
            return true;
          }
          head += bytes.toString('latin1');
          const end = head.indexOf('\r\n\r\n');
          if (end < 0) return true;
          const status = head.slice(0, head.indexOf('\r\n'));
          if (!/^HTTP\/1\.1 (200|101)/.test(status)) {
            reject(new Error(`refused: ${status}`));
            return true;
          }
          reader = body;
          const rest = bytes.subarray(bytes.length - (head.length - end - 4));
          head = '';
          if (rest.length > 0) reader(rest);
          return true;
        },
      },
    });
    socket.on('error', reject);
    socket.on('close', () => closed++);
    socket.write(request);
  });
}

function sseReader(sampled: boolean, ready: () => void): Reader {
  let first = true;
  let text = '';
  return (bytes) => {
    if (first) {
      first = false;
      ready(); // `event: ready` (before any event: the publisher has not started)
      return;
    }
    if (!measuring) return;
    if (!sampled) {
      for (let i = 0; i < bytes.length; i++) if (bytes[i] === V) received++;
      return;
    }
    text += bytes.toString('latin1');
    let k: number;
    while ((k = text.indexOf('\n\n')) >= 0) {
      const block = text.slice(0, k);
      text = text.slice(k + 2);
      const d = block.indexOf('\ndata: ');
      if (d < 0 || !block.includes('event: notification')) continue;
      received++;
      latencies.push(now() - Number(block.slice(d + 7)));
    }
  };
}

/** Server frames are unmasked: a 2-byte header (+2 or +8 length bytes), then the payload. */
function wsReader(sampled: boolean, ready: () => void): Reader {
  let frames = 0;
  let skip = 0; // payload bytes of the current frame still to come
  let partHead: Buffer | undefined; // a header split between two reads
  let payload = ''; // a sampled client's current payload
  const done = () => {
    if (frames++ === 0) return ready(); // the first frame is the "subscribed" reply
    if (!measuring) return;
    received++;
    if (sampled) {
      const d = payload.indexOf('"data":"');
      if (d >= 0) latencies.push(now() - Number(payload.slice(d + 8, payload.indexOf('"', d + 8))));
    }
  };
  return (input) => {
    let bytes = input;
    if (partHead) {
      bytes = Buffer.concat([partHead, input]);
      partHead = undefined;
    }
    let at = 0;
    for (;;) {
      if (skip > 0) {
        const n = Math.min(skip, bytes.length - at);
        if (sampled) payload += bytes.toString('latin1', at, at + n);
        skip -= n;
        at += n;
        if (skip > 0) return;
        done();
      }
      if (at >= bytes.length) return;
      if (bytes.length - at < 2) break;
      const len7 = bytes[at + 1] & 0x7f;
      const head = len7 < 126 ? 2 : len7 === 126 ? 4 : 10;
      if (bytes.length - at < head) break;
      skip = len7 < 126 ? len7 : len7 === 126 ? bytes.readUInt16BE(at + 2) : Number(bytes.readBigUInt64BE(at + 2));
      at += head;
      payload = '';
      if (skip === 0) done();
    }
    partHead = Buffer.from(bytes.subarray(at)); // a copy: the shared buffer is reused
  };
}

for (let i = 0; i < count; i += 200) {
  await Promise.all(Array.from({ length: Math.min(200, count - i) }, (_, j) => open((i + j) % sampleEvery === 0)));
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
