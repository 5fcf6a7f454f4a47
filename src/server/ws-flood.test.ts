import assert from 'node:assert/strict';
import type { Socket } from 'node:net';
import { describe, test } from 'node:test';
import { WebSocket } from 'ws';
import { useServer, type ServerFixture } from '../../test/support/server.js';
import { waitFor } from '../../test/support/wait.js';
import { WsClient } from '../../test/support/ws.js';
import type { WsConnection } from './connection.js';
import { HeraldServer } from './server.js';
import { RATE_LIMIT_WINDOW_MS } from './ws.js';

const MAX_BUFFERED = 64 * 1024;

/** The server side of the newest WebSocket client. */
async function serverSide(server: HeraldServer, before: number): Promise<WsConnection> {
  return (await waitFor(() => server.connections().find((c) => c.transport === 'ws' && c.id > before), { what: 'the server-side connection' })) as WsConnection;
}

function newestId(server: HeraldServer): number {
  return Math.max(0, ...server.connections().map((c) => c.id));
}

describe('WebSocket replies are bounded like fan-out', () => {
  let f: ServerFixture;
  useServer({ server: { maxBufferedBytes: MAX_BUFFERED, wsMessagesPerSecond: 1_000_000 } }, (x) => (f = x));

  for (const kind of ['ping', 'subscribe'] as const) {
    test(`a client that floods ${kind}s and never reads is cut with 4509; the server never holds much more than maxBufferedBytes for it`, async () => {
      const before = newestId(f.server);
      const ws = new WebSocket(f.base.replace(/^http/, 'ws') + '/ws');
      let code: number | undefined;
      const closed = new Promise<number>((resolve) => ws.on('close', (c) => resolve((code = c))));
      ws.on('error', () => {});
      await new Promise<void>((resolve, reject) => {
        ws.once('open', () => resolve());
        ws.once('error', reject);
      });
      const socket = (ws as unknown as { _socket: Socket })._socket;
      socket.pause(); // never read: the replies back up in the kernel, then in the server
      try {
        const conn = await serverSide(f.server, before);
        // Measured after every message the server handled (this listener runs after the server's).
        let most = 0;
        let handled = 0;
        conn.ws.on('message', () => {
          handled++;
          most = Math.max(most, conn.bufferedBytes);
        });
        // Each request carries a 4 KB ref that its reply echoes: a reply is 4 KB.
        const ref = 'r'.repeat(4096);
        const message = kind === 'ping' ? JSON.stringify({ type: 'ping', ref }) : JSON.stringify({ type: 'subscribe', topic: 'flood', ref });
        let sent = 0;
        // Send until the server cut us; the budget (far more than any kernel buffers) grows with what was sent.
        while (!conn.isClosed) {
          if (sent > 20_000) assert.fail(`sent ${sent} requests (${handled} handled, most ${most} bytes) without being cut`);
          await new Promise<void>((resolve) => {
            for (let i = 0; i < 99; i++) ws.send(message);
            ws.send(message, () => resolve());
          });
          sent += 100;
          if (sent % 1000 === 0) await new Promise((r) => setImmediate(r));
        }
        assert.equal(conn.closeReason, 'slow_consumer');
        // Queued replies stay under the bound; the socket may hold up to the bound more (checked at each write).
        assert.ok(most <= 2 * MAX_BUFFERED + 8192, `server held ${most} bytes for a client bounded at ${MAX_BUFFERED}`);
        // Reading now, the client gets what was sent to it and then the close code.
        socket.resume();
        assert.equal(await closed, 4509, `close code ${code}`);
      } finally {
        ws.terminate();
      }
      await waitFor(() => !f.server.connections().some((c) => c.id > before), { what: 'the connection is forgotten' });
    });
  }

  test('a client over wsMessagesPerSecond gets at most one RATE_LIMITED error per window, and its messages are dropped', async () => {
    // A second server on the same Herald with a rate of 5/s: 200 pings in a burst are mostly dropped.
    const limited = new HeraldServer(f.herald, { port: 0, wsMessagesPerSecond: 5 });
    const base = await limited.start();
    try {
      const client = await WsClient.connect(`${base}/ws`);
      try {
        const conn = await serverSide(limited, 0);
        const replies: Record<string, unknown>[] = [];
        const reply = conn.reply.bind(conn);
        conn.reply = (m) => {
          replies.push(m);
          return reply(m);
        };
        let handled = 0;
        let first = 0;
        let last = 0;
        conn.ws.on('message', () => {
          handled++;
          last = performance.now();
          if (handled === 1) first = last;
        });
        const n = 200;
        for (let i = 0; i < n; i++) client.send({ type: 'ping', ref: String(i) });
        await waitFor(() => handled === n, { what: `the server handled ${n} messages` });
        const errors = replies.filter((r) => r.type === 'error');
        const pongs = replies.filter((r) => r.type === 'pong');
        assert.ok(errors.length >= 1, 'the client is told it was rate limited');
        assert.ok(errors.every((e) => e.code === 'RATE_LIMITED' && e.status === 429));
        const windows = 1 + Math.floor((last - first) / RATE_LIMIT_WINDOW_MS);
        assert.ok(errors.length <= windows, `${errors.length} RATE_LIMITED errors in ${windows} window(s)`);
        assert.ok(pongs.length < n, 'messages over the rate are dropped');
        // The client receives exactly those replies.
        await client.until(() => client.of('pong').length === pongs.length && client.of('error').length === errors.length);
      } finally {
        client.close();
      }
    } finally {
      await limited.stop();
    }
  });
});
