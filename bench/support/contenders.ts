/**
 * The four listeners bench/notifier.ts compares, behind one shape: open a listen
 * connection, attach `subscribers` handlers to one channel, resolve once LISTEN is
 * live, and close everything on `close()`.
 */
import pg from 'pg';
import pgListenModule from 'pg-listen';
import postgres from 'postgres';
import { createHerald, type Subscription } from '../../src/index.js';

// pg-listen is CommonJS with `exports.default`.
const createSubscriber = pgListenModule.default;

/** A listener under test, open on one channel. */
export interface OpenListener {
  close(): Promise<void>;
  /** Notifications the library reports dropped (pgherald's bounded buffers), else 0. */
  dropped(): number;
}

/** One library under test. */
export interface Contender {
  name: string;
  open(url: string, channel: string, subscribers: number, onPayload: (payload: string) => void): Promise<OpenListener>;
}

export const pgherald: Contender = {
  name: 'pgherald',
  async open(url, channel, subscribers, onPayload) {
    const herald = createHerald({ connectionString: url, poolSize: 2 });
    const subs: Subscription[] = [];
    for (let i = 0; i < subscribers; i++) subs.push(herald.listen(channel, (n) => void onPayload(n.payload)));
    await Promise.all(subs.map((s) => s.established));
    return {
      dropped: () => subs.reduce((sum, s) => sum + s.dropped, 0),
      close: () => herald.close(),
    };
  },
};

export const rawPg: Contender = {
  name: 'raw pg',
  async open(url, channel, subscribers, onPayload) {
    const client = new pg.Client({ connectionString: url });
    client.on('error', () => {});
    client.setMaxListeners(0);
    for (let i = 0; i < subscribers; i++) {
      client.on('notification', (m) => {
        if (m.channel === channel) onPayload(m.payload ?? '');
      });
    }
    await client.connect();
    await client.query(`LISTEN "${channel}"`);
    return { dropped: () => 0, close: () => client.end() };
  },
};

export const postgresJs: Contender = {
  name: 'postgres.js',
  async open(url, channel, subscribers, onPayload) {
    const sql = postgres(url, { max: 1, onnotice: () => {} });
    // postgres.js issues one LISTEN per channel and fans out to every listener itself.
    for (let i = 0; i < subscribers; i++) await sql.listen(channel, (payload) => onPayload(payload));
    return { dropped: () => 0, close: () => sql.end({ timeout: 1 }) };
  },
};

export const pgListen: Contender = {
  name: 'pg-listen',
  async open(url, channel, subscribers, onPayload) {
    // Payloads are plain text here: pg-listen's default JSON.parse would reject them.
    const subscriber = createSubscriber({ connectionString: url }, { parse: (s: string) => s });
    subscriber.events.on('error', () => {});
    subscriber.notifications.setMaxListeners(0);
    for (let i = 0; i < subscribers; i++) subscriber.notifications.on(channel, (payload: string) => onPayload(payload));
    await subscriber.connect();
    await subscriber.listenTo(channel);
    return { dropped: () => 0, close: () => subscriber.close() };
  },
};

/** Every contender, raw pg (the baseline of the ratios) first. */
export const CONTENDERS: Contender[] = [rawPg, pgherald, postgresJs, pgListen];
