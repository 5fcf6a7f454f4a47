/**
 * The browser client served at `GET /client.js` (an ES module, no build step):
 *
 * ```js
 * import { HeraldClient } from 'http://127.0.0.1:8080/client.js';
 * const client = new HeraldClient({ url: 'http://127.0.0.1:8080', token: () => fetchToken() });
 * const sub = client.subscribe('tenant:42:orders', (e) => console.log(e.id, e.data));
 * client.on('gap', (g) => reloadState(g));
 * await client.publish('tenant:42:orders', 'hello');
 * ```
 *
 * It speaks the `/ws` protocol, reconnects with exponential backoff and full jitter,
 * and on every reconnect resubscribes with each subscription's last event id, so the
 * server replays what it still holds or sends an explicit `gap`.
 */
export const CLIENT_JS = String.raw`// pgherald browser client (served by herald serve at /client.js)
const FATAL = new Set([4400, 4401, 4403]);

export class HeraldClient {
  /**
   * @param {{ url?: string, token?: string | (() => string | Promise<string>), reconnectBaseMs?: number, reconnectMaxMs?: number, WebSocket?: any }} options
   */
  constructor(options = {}) {
    this.url = (options.url || (typeof location !== 'undefined' ? location.origin : '')).replace(/\/$/, '');
    this.token = options.token;
    this.reconnectBaseMs = options.reconnectBaseMs ?? 250;
    this.reconnectMaxMs = options.reconnectMaxMs ?? 10000;
    this.WS = options.WebSocket || globalThis.WebSocket;
    this.subs = new Map();
    this.listeners = new Map();
    this.pending = new Map();
    this.nextRef = 1;
    this.attempts = 0;
    this.closed = false;
    this.ws = null;
    this.state = 'idle';
    this.reconnects = 0;
  }

  /** Listens to client events: open, close {code, reason}, gap, error, state. */
  on(name, fn) {
    if (!this.listeners.has(name)) this.listeners.set(name, new Set());
    this.listeners.get(name).add(fn);
    return () => this.listeners.get(name)?.delete(fn);
  }

  emit(name, value) {
    for (const fn of this.listeners.get(name) || []) {
      try { fn(value); } catch (e) { console.error(e); }
    }
  }

  /**
   * Subscribes to a topic (string) or a durable stream ({ stream: 'kind/name' }); the
   * handler gets { topic|stream, id, event, data }. Options: { lastEventId } to start after an id.
   */
  subscribe(target, handler, options = {}) {
    const key = typeof target === 'string' ? 'topic:' + target : 'stream:' + target.stream;
    const sub = { key, target, handler, lastEventId: options.lastEventId ?? null, active: true };
    this.subs.set(key, sub);
    this.connect();
    if (this.ws && this.ws.readyState === 1) this.sendSubscribe(sub);
    return {
      close: () => {
        sub.active = false;
        this.subs.delete(key);
        if (this.ws && this.ws.readyState === 1) {
          this.ws.send(JSON.stringify({ type: 'unsubscribe', ...(typeof target === 'string' ? { topic: target } : target) }));
        }
      },
      get lastEventId() { return sub.lastEventId; },
    };
  }

  /** Publishes a payload on a topic; resolves when the server has sent it. */
  publish(topic, payload) {
    return this.request({ type: 'publish', topic, payload: String(payload) });
  }

  request(message) {
    this.connect();
    return new Promise((resolve, reject) => {
      const ref = String(this.nextRef++);
      this.pending.set(ref, { resolve, reject });
      const send = () => this.ws.send(JSON.stringify({ ...message, ref }));
      if (this.ws && this.ws.readyState === 1) send();
      else {
        const off = this.on('open', () => { off(); send(); });
      }
    });
  }

  sendSubscribe(sub) {
    const body = typeof sub.target === 'string' ? { topic: sub.target } : { stream: sub.target.stream };
    this.ws.send(JSON.stringify({ type: 'subscribe', ...body, lastEventId: sub.lastEventId || undefined }));
  }

  setState(state) {
    this.state = state;
    this.emit('state', state);
  }

  async connect() {
    if (this.closed || this.ws || this.connecting) return;
    this.connecting = true;
    let token = this.token;
    try {
      if (typeof token === 'function') token = await token();
    } catch (err) {
      this.connecting = false;
      this.emit('error', err);
      return this.retry();
    }
    this.connecting = false;
    if (this.closed) return;
    const wsUrl = this.url.replace(/^http/, 'ws') + '/ws' + (token ? '?access_token=' + encodeURIComponent(token) : '');
    const ws = new this.WS(wsUrl);
    this.ws = ws;
    this.setState('connecting');
    ws.onopen = () => {
      this.attempts = 0;
      this.setState('open');
      for (const sub of this.subs.values()) this.sendSubscribe(sub);
      this.emit('open');
    };
    ws.onmessage = (m) => {
      let msg;
      try { msg = JSON.parse(m.data); } catch { return; }
      if (msg.type === 'event') {
        const sub = this.subs.get(msg.topic !== undefined ? 'topic:' + msg.topic : 'stream:' + msg.stream);
        if (!sub) return;
        sub.lastEventId = msg.id;
        sub.handler(msg);
      } else if (msg.type === 'gap') {
        this.emit('gap', msg);
      } else if (msg.ref && this.pending.has(msg.ref)) {
        const p = this.pending.get(msg.ref);
        this.pending.delete(msg.ref);
        if (msg.type === 'error') p.reject(Object.assign(new Error(msg.message), { code: msg.code, status: msg.status }));
        else p.resolve(msg);
      } else if (msg.type === 'error') {
        this.emit('error', msg);
      } else if (msg.type === 'end') {
        this.subs.delete('stream:' + msg.stream);
        this.emit('end', msg);
      }
    };
    ws.onclose = (e) => {
      this.ws = null;
      for (const p of this.pending.values()) p.reject(Object.assign(new Error('connection closed'), { code: 'CLOSED' }));
      this.pending.clear();
      this.emit('close', { code: e.code, reason: e.reason });
      if (this.closed) return this.setState('closed');
      // Refused for good unless a token function can give a fresh credential.
      if (FATAL.has(e.code) && typeof this.token !== 'function') {
        this.closed = true;
        return this.setState('closed');
      }
      this.retry();
    };
  }

  retry() {
    this.setState('reconnecting');
    const ceiling = Math.min(this.reconnectMaxMs, this.reconnectBaseMs * 2 ** this.attempts++);
    const delay = Math.random() * ceiling;
    this.reconnects++;
    setTimeout(() => this.connect(), delay);
  }

  /** Closes the connection for good. */
  close() {
    this.closed = true;
    if (this.ws) this.ws.close(1000, 'client closed');
    this.setState('closed');
  }
}
`;
