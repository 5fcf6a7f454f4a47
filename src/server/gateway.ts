import { randomBytes } from 'node:crypto';
import type { Herald } from '../client.js';
import type { Subscription } from '../notifier/subscription.js';
import { InvalidOptionError } from '../errors.js';
import { FrameBatch, wsTextFrame, type Connection, type Format } from './connection.js';
import { HttpError } from './http.js';
import type { DurableStreamSource, StreamEvent } from './stream.js';
import { sseFrame } from './sse.js';

/** Options of the fan-out core (the server passes its own). */
export interface GatewayOptions {
  /** Prefix of the Postgres channel behind each client topic: with `gw.`, topic `orders` is channel `gw.orders`. @defaultValue '' */
  channelPrefix: string;
  /**
   * Distinct Postgres channels LISTENed on at once for clients: every gateway topic and
   * every channel a durable stream or a part's stream causes (see {@link Gateway.reserveChannels});
   * the next new one is refused with 503 `TOO_MANY_CHANNELS`. @defaultValue 1000
   */
  maxChannels: number;
  /** Recent notifications kept per topic so a reconnecting client can resume by `Last-Event-ID`. @defaultValue 1000 */
  historySize: number;
  /** Subscriptions one connection may hold. @defaultValue 100 */
  maxSubscriptionsPerConnection: number;
  /**
   * Extra time frames wait to be written together. 0: at the end of the event-loop turn
   * they were queued in. A few ms trade that much latency for fewer writes and client
   * wake-ups with thousands of clients. @defaultValue 0
   */
  flushIntervalMs: number;
}

/** Client topic names: any text without control characters, short enough that prefix + topic fit Postgres' 63-byte names. */
const CONTROL = /[\u0000-\u001f\u007f]/;

interface HistoryEntry {
  seq: number;
  id: string;
  payload: string;
  /** Wire-ready frames (WebSocket frames framed), rendered once per format. */
  frames: Partial<Record<Format, Buffer>>;
}

/** One topic: one notifier subscription, any number of connections, a short history for resume. */
interface Hub {
  topic: string;
  channel: string;
  sub: Subscription;
  conns: Set<Connection>;
  /** Connections per wire format: an event is rendered for the formats in use only. */
  formats: Record<Format, number>;
  /** This round's frames, queued once on every connection of the topic (see FrameBatch). */
  batch: FrameBatch | undefined;
  history: HistoryEntry[];
  /** Events after this sequence number are all in `history` or still to come (no hole). */
  coveredAfter: number;
  established: Promise<void>;
  /** LISTEN went live for this topic (a later lost connection reaches clients as a `gap`). */
  live: boolean;
  /** Gives the hub's channel back to `maxChannels`. */
  release: () => void;
}

/** Counters read by /metrics (plain numbers: incremented per delivery, so kept cheap). */
export interface GatewayCounters {
  deliveries: { sse: number; ws: number };
  notifications: number;
  gaps: number;
  resumes: number;
  /** Flush rounds (one per event-loop turn with frames queued). */
  flushes: number;
  /** Connections written in those rounds (one write each). */
  flushedConnections: number;
}

const FORMATS: readonly Format[] = ['sse', 'sse-json', 'ws'];

/** Longest stretch (ms) a flush round writes before it yields to the event loop. */
const SLICE_MS = 5;

/** Renders a JSON string value once. */
const q = JSON.stringify;


/**
 * The fan-out core: maps client topics to channels the server controls (prefix + cap),
 * holds ONE notifier subscription per topic whatever the number of clients, renders
 * each notification once per wire format, and queues it on every connection of the
 * topic; connections write once per event-loop turn. Durable streams plug in through
 * {@link DurableStreamSource}.
 */
export class Gateway {
  readonly #hubs = new Map<string, Hub>();
  /** Channels LISTENed on for clients, with the number of holders of each. */
  readonly #channels = new Map<string, number>();
  /** pgherald's own channels (`<schema>.*` and each part's): no client topic may map to one. */
  readonly #reservedPrefix: string;
  readonly #reserved: Set<string>;
  readonly #streams = new Map<string, DurableStreamSource>();
  readonly #boot = randomBytes(4).toString('hex');
  #seq = 0;
  /** Connections with frames queued since the current round began (the next round). */
  #dirty: Connection[] = [];
  /** The round being written, and how far. */
  #round: Connection[] = [];
  #at = 0;
  #flushing = false;
  readonly counters: GatewayCounters = { deliveries: { sse: 0, ws: 0 }, notifications: 0, gaps: 0, resumes: 0, flushes: 0, flushedConnections: 0 };

  constructor(readonly herald: Herald, readonly options: GatewayOptions) {
    const room = 63 - Buffer.byteLength(options.channelPrefix);
    if (room < 8) throw new HttpError(500, 'INVALID_OPTION', 'channelPrefix leaves under 8 bytes for topic names');
    this.#reservedPrefix = `${herald.schema}.`;
    this.#reserved = new Set([herald.mailbox.channel, herald.outbox.channel, herald.topics.channel, herald.queue.channelNames.wake, herald.queue.channelNames.events]);
    if (options.channelPrefix.startsWith(this.#reservedPrefix)) {
      throw new InvalidOptionError('channelPrefix', options.channelPrefix, `a prefix outside pgherald's own channels (${this.#reservedPrefix}*)`);
    }
  }

  /** True when `channel` is one of pgherald's own (`<schema>.*`, or a part's channel): client topics never map to one. */
  isReservedChannel(channel: string): boolean {
    return channel.startsWith(this.#reservedPrefix) || this.#reserved.has(channel);
  }

  /**
   * Counts the LISTEN channels a client's subscription causes against `maxChannels`:
   * a channel already held (by any client) costs nothing more; a new one past the cap
   * is refused with 503 `TOO_MANY_CHANNELS` (and nothing is reserved). Returns the
   * release (idempotent). Every stream of every part goes through here: gateway topics,
   * durable streams (their source's `channels(name)`), and parts' own SSE streams.
   */
  reserveChannels(channels: readonly string[]): () => void {
    const fresh = new Set(channels.filter((c) => !this.#channels.has(c)));
    if (fresh.size > 0 && this.#channels.size + fresh.size > this.options.maxChannels) {
      throw new HttpError(503, 'TOO_MANY_CHANNELS', `the server listens on at most ${this.options.maxChannels} channels for clients`);
    }
    const held = [...new Set(channels)];
    for (const c of held) this.#channels.set(c, (this.#channels.get(c) ?? 0) + 1);
    let released = false;
    return () => {
      if (released) return;
      released = true;
      for (const c of held) {
        const left = (this.#channels.get(c) ?? 1) - 1;
        if (left <= 0) this.#channels.delete(c);
        else this.#channels.set(c, left);
      }
    };
  }

  /** Channels LISTENed on for clients now (gateway topics, durable and part streams). */
  channelsInUse(): string[] {
    return [...this.#channels.keys()];
  }

  /** Longest topic name in bytes. */
  get maxTopicBytes(): number {
    return 63 - Buffer.byteLength(this.options.channelPrefix);
  }

  /**
   * The Postgres channel behind a client topic (what back-end code notifies to reach
   * browsers). Throws 400 `INVALID_TOPIC` for a malformed name, and 403 `RESERVED_TOPIC`
   * when the channel would be one of pgherald's own (`<schema>.*`: job transitions,
   * wake-ups, row changes...), so a topic can neither watch nor forge them.
   */
  channelOf(topic: string): string {
    if (typeof topic !== 'string' || topic.length === 0 || CONTROL.test(topic) || Buffer.byteLength(topic) > this.maxTopicBytes) {
      throw new HttpError(400, 'INVALID_TOPIC', `topic must be 1 to ${this.maxTopicBytes} UTF-8 bytes without control characters`);
    }
    const channel = this.options.channelPrefix + topic;
    if (this.isReservedChannel(channel)) {
      throw new HttpError(403, 'RESERVED_TOPIC', `topic ${q(topic)} maps to channel ${q(channel)}, which belongs to pgherald (${this.#reservedPrefix}*); choose another name`);
    }
    return channel;
  }

  /** Registers a durable stream source under `kind` (streams are addressed `<kind>/<name>`). */
  registerStream(kind: string, source: DurableStreamSource): void {
    if (!/^[a-z][a-z0-9_-]*$/.test(kind)) throw new HttpError(500, 'INVALID_OPTION', `stream kind ${q(kind)} must match [a-z][a-z0-9_-]*`);
    if (this.#streams.has(kind)) throw new HttpError(500, 'CONFLICT', `stream kind ${q(kind)} is already registered`);
    this.#streams.set(kind, source);
  }

  /** The source of stream kind `kind`; 404 `NOT_FOUND` when none is registered. */
  source(kind: string): DurableStreamSource {
    const s = this.#streams.get(kind);
    if (!s) throw new HttpError(404, 'NOT_FOUND', `no stream kind ${q(kind)}`);
    return s;
  }

  /** Registered stream kinds. */
  streamKinds(): string[] {
    return [...this.#streams.keys()];
  }

  /** Topics with their connection counts. */
  /** Gateway topics with their channel, client count and whether LISTEN went live. */
  topics(): { topic: string; channel: string; clients: number; live: boolean }[] {
    return [...this.#hubs.values()].map((h) => ({ topic: h.topic, channel: h.channel, clients: h.conns.size, live: h.live }));
  }

  #checkRoom(conn: Connection, key: string): void {
    if (conn.subscriptions.has(key)) throw new HttpError(409, 'ALREADY_SUBSCRIBED', `already subscribed to ${key}`);
    if (conn.subscriptions.size >= this.options.maxSubscriptionsPerConnection) {
      throw new HttpError(429, 'TOO_MANY_SUBSCRIPTIONS', `a connection may hold ${this.options.maxSubscriptionsPerConnection} subscriptions`);
    }
  }

  /**
   * Subscribes `conn` to `topic` (authorization is the caller's). With `lastEventId`,
   * replays what the history still holds after it, or sends a `gap` first when it
   * cannot. Resolves once LISTEN is live.
   */
  async subscribeTopic(conn: Connection, topic: string, lastEventId: string | null): Promise<void> {
    const channel = this.channelOf(topic);
    const key = `channel:${topic}`;
    this.#checkRoom(conn, key);
    let hub = this.#hubs.get(topic);
    if (!hub) hub = this.#openHub(topic, channel);
    const h = hub;
    if (!h.conns.has(conn)) {
      h.conns.add(conn);
      h.formats[conn.format]++;
      // The open batch was queued on the connections before this one: the next event starts a new batch.
      if (h.batch) h.batch.sealed = true;
    }
    conn.subscriptions.set(key, () => this.#leave(h, conn));
    try {
      await h.established;
    } catch (err) {
      conn.subscriptions.get(key)?.();
      conn.subscriptions.delete(key);
      throw new HttpError(503, 'NOT_LISTENING', `cannot listen: ${(err as Error).message}`);
    }
    if (conn.isClosed || !h.conns.has(conn)) return;
    if (lastEventId !== null) this.#resume(h, conn, lastEventId);
  }

  #resume(hub: Hub, conn: Connection, lastEventId: string): void {
    this.counters.resumes++;
    const [boot, seqText] = lastEventId.split('-');
    const seq = Number(seqText);
    if (boot !== this.#boot || !Number.isSafeInteger(seq)) {
      return this.#gap(conn, 'topic', hub.topic, lastEventId, 'unknown event id: another server or a restart');
    }
    if (seq < hub.coveredAfter) {
      return this.#gap(conn, 'topic', hub.topic, lastEventId, 'events after this id are no longer held');
    }
    for (const e of hub.history) if (e.seq > seq) this.#deliver(hub, e, conn);
  }

  #gap(conn: Connection, what: 'topic' | 'stream', name: string, after: string | null, reason: string): void {
    this.counters.gaps++;
    const body = `{"type":"gap","${what}":${q(name)},"after":${q(after)},"reason":${q(reason)}}`;
    conn.enqueue(conn.wire(Buffer.from(conn.format === 'ws' ? body : sseFrame('gap', body))));
  }

  #openHub(topic: string, channel: string): Hub {
    // Counted against maxChannels before anything is listened on (throws TOO_MANY_CHANNELS).
    const release = this.reserveChannels([channel]);
    let first = true;
    const hub: Hub = {
      topic,
      channel,
      conns: new Set(),
      formats: { sse: 0, 'sse-json': 0, ws: 0 },
      batch: undefined,
      history: [],
      coveredAfter: this.#seq,
      established: Promise.resolve(),
      live: false,
      sub: undefined as unknown as Subscription,
      release,
    };
    try {
      hub.sub = this.herald.listen(channel, (n) => this.#onNotification(hub, n.payload), {
        // Large: the handler is synchronous, so this only fills if the event loop stalls.
        bufferSize: 100_000,
        onListen: () => {
          // A fresh sequence number: whatever was sent before LISTEN went live may have been missed.
          hub.coveredAfter = ++this.#seq;
          hub.live = true;
          if (first) {
            first = false;
            return;
          }
          // LISTEN came back (a lost connection) or wake-ups resumed (a full queue): notifications in between may be gone.
          hub.history = [];
          for (const c of hub.conns) this.#gap(c, 'topic', topic, null, 'notifications may be missing: the listen connection was lost, or the notification queue was full');
        },
      });
    } catch (err) {
      release();
      throw new HttpError(503, 'NOT_LISTENING', `cannot listen: ${(err as Error).message}`);
    }
    hub.established = hub.sub.established;
    hub.established.catch(() => {});
    this.#hubs.set(topic, hub);
    return hub;
  }

  #leave(hub: Hub, conn: Connection): void {
    if (hub.conns.delete(conn)) hub.formats[conn.format]--;
    if (hub.conns.size === 0 && this.#hubs.get(hub.topic) === hub) {
      this.#hubs.delete(hub.topic);
      hub.release();
      void hub.sub.close();
    }
  }

  #onNotification(hub: Hub, payload: string): void {
    const seq = ++this.#seq;
    const entry: HistoryEntry = { seq, id: `${this.#boot}-${seq}`, payload, frames: {} };
    this.counters.notifications++;
    if (this.options.historySize > 0) {
      hub.history.push(entry);
      if (hub.history.length > this.options.historySize) hub.coveredAfter = hub.history.shift()!.seq;
    } else {
      hub.coveredAfter = seq;
    }
    if (hub.conns.size === 0) return;
    // One batch per topic per round, queued once on each connection; every event of the
    // round is appended to it (rendered once per format in use), so the per-client cost
    // is one queue entry and one write per round, not one per event.
    let batch = hub.batch;
    if (!batch || batch.sealed) {
      batch = hub.batch = new FrameBatch();
      for (const c of hub.conns) c.enqueueBatch(batch);
    }
    for (const format of FORMATS) if (hub.formats[format] > 0) batch.add(format, this.#frame(hub, entry, format));
    batch.countEvent();
  }

  /** The wire-ready frame of history entry `e` in `format`, rendered once. */
  #frame(hub: Hub, e: HistoryEntry, format: Format): Buffer {
    let frame = e.frames[format];
    if (!frame) {
      if (format === 'ws') frame = wsTextFrame(Buffer.from(`{"type":"event","topic":${q(hub.topic)},"id":"${e.id}","data":${q(e.payload)}}`));
      else if (format === 'sse') frame = Buffer.from(sseFrame('notification', e.payload, e.id));
      else frame = Buffer.from(sseFrame('notification', `{"topic":${q(hub.topic)},"data":${q(e.payload)}}`, e.id));
      e.frames[format] = frame;
    }
    return frame;
  }

  /** Replays one history entry to one connection (resume), in order with what it has queued. */
  #deliver(hub: Hub, e: HistoryEntry, c: Connection): void {
    if (c.enqueue(this.#frame(hub, e, c.format))) this.counters.deliveries[c.transport]++;
  }

  /** Subscribes `conn` to durable stream `<kind>/<name>` from after `after` (null: live only). */
  async subscribeStream(conn: Connection, kind: string, name: string, after: string | null): Promise<void> {
    const source = this.source(kind);
    const label = `${kind}/${name}`;
    const key = `stream:${label}`;
    this.#checkRoom(conn, key);
    // The LISTEN channels the source will cause count against maxChannels (throws first).
    const release = this.reserveChannels(source.channels?.(name) ?? []);
    const ac = new AbortController();
    const cleanup = () => {
      ac.abort();
      release();
    };
    conn.subscriptions.set(key, cleanup);
    if (after !== null) this.counters.resumes++;
    const render = (e: StreamEvent): Buffer => {
      const event = e.event ?? 'message';
      if (conn.format === 'ws') return wsTextFrame(Buffer.from(`{"type":"event","stream":${q(label)},"id":${q(e.id)},"event":${q(event)},"data":${q(e.data)}}`));
      if (conn.format === 'sse') return Buffer.from(sseFrame(event, e.data, e.id));
      return Buffer.from(sseFrame(event, `{"stream":${q(label)},"data":${q(e.data)}}`, e.id));
    };
    // (A source that throws synchronously is handled like one that rejects.)
    const opened = Promise.resolve().then(() => source.open(name, after, {
      signal: ac.signal,
      event: (e) => {
        if (ac.signal.aborted) return false;
        const ok = conn.enqueue(render(e));
        if (ok) this.counters.deliveries[conn.transport]++;
        return ok;
      },
      gap: (info) => {
        if (!ac.signal.aborted) this.#gap(conn, 'stream', label, info.after, info.reason);
      },
      end: (reason) => {
        if (ac.signal.aborted) return;
        cleanup();
        if (conn.subscriptions.get(key) === cleanup) conn.subscriptions.delete(key);
        const body = `{"type":"end","stream":${q(label)},"reason":${q(reason)}}`;
        conn.enqueue(conn.wire(Buffer.from(conn.format === 'ws' ? body : sseFrame('end', body))));
      },
    }));
    try {
      await opened;
    } catch (err) {
      // Nothing to follow: the subscription is not kept (nor its channels).
      if (conn.subscriptions.get(key) === cleanup) conn.subscriptions.delete(key);
      cleanup();
      throw err;
    }
  }

  /** Drops one subscription of `conn` (key `channel:<topic>` or `stream:<kind>/<name>`); false when it had none. */
  unsubscribe(conn: Connection, key: string): boolean {
    const cleanup = conn.subscriptions.get(key);
    if (!cleanup) return false;
    conn.subscriptions.delete(key);
    cleanup();
    return true;
  }

  /** Called by a connection that has frames queued: they are written in the next flush round. */
  readonly scheduleFlush = (c: Connection): void => {
    this.#dirty.push(c);
    if (this.#flushing) return;
    this.#flushing = true;
    if (this.options.flushIntervalMs > 0) setTimeout(this.#flush, this.options.flushIntervalMs);
    else setImmediate(this.#flush);
  };

  /**
   * Writes a flush round: one write per connection with frames queued, each taking
   * everything queued for it so far. A round over thousands of connections is written
   * in slices of about {@link SLICE_MS}, yielding to the event loop in between: the
   * listen connection is read meanwhile, and its events reach the connections not yet
   * written in this same round (a write takes a batch as it is then). So an event
   * waits at most about one round for any client, and a round never blocks the
   * process for longer than a slice.
   */
  readonly #flush = (): void => {
    if (this.#at >= this.#round.length) {
      this.#round = this.#dirty;
      this.#dirty = [];
      this.#at = 0;
      this.counters.flushes++;
      this.counters.flushedConnections += this.#round.length;
    }
    const round = this.#round;
    const deadline = performance.now() + SLICE_MS;
    while (this.#at < round.length) {
      const conn = round[this.#at++];
      const events = conn.flush();
      if (events > 0) this.counters.deliveries[conn.transport] += events;
      if ((this.#at & 63) === 0 && performance.now() > deadline) break;
    }
    if (this.#at < round.length) return void setImmediate(this.#flush);
    this.#round = [];
    this.#at = 0;
    this.#flushing = false;
    if (this.#dirty.length > 0) {
      // Frames queued during the round: the next round starts at once (its wait was the round).
      this.#flushing = true;
      if (this.options.flushIntervalMs > 0) setTimeout(this.#flush, this.options.flushIntervalMs);
      else setImmediate(this.#flush);
    }
  };

  /** Closes every hub's subscription (the connections are closed by the server). */
  async stop(): Promise<void> {
    const subs = [...this.#hubs.values()].map((h) => h.sub);
    for (const h of this.#hubs.values()) h.release();
    this.#hubs.clear();
    await Promise.all(subs.map((s) => s.close()));
  }
}
