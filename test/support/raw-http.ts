/** HTTP requests and WebSocket upgrades with every header under the test's control (Host, Origin, Sec-Fetch-*). */
import { request } from 'node:http';
import { randomBytes } from 'node:crypto';
import type { Herald } from '../../src/client.js';
import { waitFor } from './wait.js';

export interface RawResponse {
  status: number;
  headers: Record<string, string | string[] | undefined>;
  text: string;
  /** The parsed body when it is JSON. */
  json: any;
}

/** Sends one request to `base` + `path` with exactly these headers (a `host` header replaces the default). */
export function rawRequest(base: string, path: string, options: { method?: string; headers?: Record<string, string>; body?: string } = {}): Promise<RawResponse> {
  return new Promise((resolve, reject) => {
    const req = request(base + path, { method: options.method ?? 'GET', headers: options.headers, agent: false }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => {
        const text = Buffer.concat(chunks).toString('utf8');
        let json: unknown;
        try {
          json = JSON.parse(text);
        } catch {
          json = undefined;
        }
        resolve({ status: res.statusCode ?? 0, headers: res.headers, text, json });
      });
      res.on('error', reject);
    });
    req.on('error', reject);
    req.end(options.body);
  });
}

/** Asks for a WebSocket upgrade; resolves with 101 (the socket is then closed) or the refusal's status and JSON body. */
export function rawUpgrade(base: string, path: string, headers: Record<string, string> = {}): Promise<{ status: number; json: any }> {
  return new Promise((resolve, reject) => {
    const req = request(base + path, {
      agent: false,
      headers: { connection: 'Upgrade', upgrade: 'websocket', 'sec-websocket-version': '13', 'sec-websocket-key': randomBytes(16).toString('base64'), ...headers },
    });
    req.on('upgrade', (res, socket) => {
      socket.destroy();
      resolve({ status: res.statusCode ?? 0, json: undefined });
    });
    req.on('response', (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => {
        let json: unknown;
        try {
          json = JSON.parse(Buffer.concat(chunks).toString('utf8'));
        } catch {
          json = undefined;
        }
        resolve({ status: res.statusCode ?? 0, json });
      });
    });
    req.on('error', reject);
    req.end();
  });
}

/**
 * A real listener on `channel` that records every payload. `settle()` sends a marker
 * notification after everything the test did and waits for it: whatever arrived before
 * the marker was delivered, so `payloads()` is then the complete list.
 */
export async function witness(herald: Herald, channel: string): Promise<{ payloads(): string[]; settle(): Promise<string[]>; close(): Promise<void> }> {
  const got: string[] = [];
  const sub = herald.listen(channel, (n) => {
    got.push(n.payload);
  });
  await sub.established;
  let markers = 0;
  return {
    payloads: () => got.filter((p) => !p.startsWith('witness-marker-')),
    async settle() {
      const marker = `witness-marker-${markers++}`;
      await herald.notify(channel, marker);
      await waitFor(() => got.includes(marker), { what: `marker on ${channel}` });
      return got.filter((p) => !p.startsWith('witness-marker-'));
    },
    close: () => sub.close(),
  };
}
