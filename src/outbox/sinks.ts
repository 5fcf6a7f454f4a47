/**
 * Sinks: where relays publish events. A sink publishes one event and resolves once the
 * other side acknowledged it; a rejection is a failed attempt (retried with backoff).
 * Every sink receives the same event id again after a relay crash between publishing
 * and marking, so receivers deduplicate on it.
 */
import { createHmac, timingSafeEqual } from 'node:crypto';
import { HeraldError, InvalidOptionError } from '../errors.js';

/** An event as sinks receive it. */
export interface OutboxEvent {
  /** Event id (a UUID): the idempotency key sinks deduplicate on. */
  id: string;
  /** Position in the outbox (commit order per key), as a decimal string. */
  seq: string;
  type: string;
  /** Ordering key, or null for events without order. */
  key: string | null;
  payload: unknown;
  headers: Record<string, string>;
  /** Failed attempts before this one. */
  attempts: number;
  createdAt: Date;
}

/** Something a relay publishes to. */
export interface OutboxSink {
  /** Publishes one event; resolves when the receiver acknowledged it. */
  publish(event: OutboxEvent): Promise<void>;
  /** Releases the sink's connections (called by `relay.stop()` for sinks the relay owns). */
  close?(): Promise<void>;
}

/** The in-process callback sink: a function that publishes one event. */
export function callbackSink(fn: (event: OutboxEvent) => unknown): OutboxSink {
  if (typeof fn !== 'function') throw new InvalidOptionError('sink', fn, 'a function');
  return { publish: async (event) => void (await fn(event)) };
}

/** Options of {@link webhookSink}. */
export interface WebhookSinkOptions {
  /** The URL events are POSTed to. */
  url: string;
  /** Secret of the HMAC-SHA256 signature (`x-herald-signature`). */
  secret: string;
  /** Time for the whole request, after which the attempt fails. @defaultValue 10000 */
  timeoutMs?: number;
  /** Extra request headers. @defaultValue {} */
  headers?: Record<string, string>;
}

/** The JSON body a webhook receives. */
export interface WebhookBody {
  id: string;
  type: string;
  key: string | null;
  payload: unknown;
  headers: Record<string, string>;
  createdAt: string;
}

/** Signature of a webhook body: hex HMAC-SHA256 of `<timestamp>.<body>` under the secret. */
export function webhookSignature(secret: string, timestamp: string, body: string): string {
  return 'v1=' + createHmac('sha256', secret).update(`${timestamp}.${body}`).digest('hex');
}

/**
 * Checks a webhook request on the receiving side: the `x-herald-signature` header
 * against the raw body and `x-herald-timestamp`, which must be within `toleranceS`
 * seconds of now. Returns true when authentic.
 */
export function verifyWebhookSignature(
  secret: string,
  request: { signature: string | undefined; timestamp: string | undefined; body: string },
  toleranceS = 300,
): boolean {
  const { signature, timestamp, body } = request;
  if (!signature || !timestamp || !/^\d+$/.test(timestamp)) return false;
  if (Math.abs(Date.now() / 1000 - Number(timestamp)) > toleranceS) return false;
  const expected = Buffer.from(webhookSignature(secret, timestamp, body));
  const given = Buffer.from(signature);
  return expected.length === given.length && timingSafeEqual(expected, given);
}

/**
 * POSTs each event as JSON ({@link WebhookBody}). Headers: `idempotency-key` and
 * `x-herald-event-id` (the event id), `x-herald-event-type`, `x-herald-timestamp`
 * (unix seconds) and `x-herald-signature` (`v1=` + hex HMAC-SHA256 of
 * `<timestamp>.<body>`). A 2xx answer within `timeoutMs` is an acknowledgement;
 * anything else fails the attempt.
 */
export function webhookSink(options: WebhookSinkOptions): OutboxSink {
  const timeoutMs = options.timeoutMs ?? 10_000;
  let url: URL;
  try {
    url = new URL(options.url);
  } catch {
    throw new InvalidOptionError('url', options.url, 'an http(s) URL');
  }
  if (url.protocol !== 'http:' && url.protocol !== 'https:') throw new InvalidOptionError('url', options.url, 'an http(s) URL');
  if (typeof options.secret !== 'string' || options.secret.length === 0) throw new InvalidOptionError('secret', options.secret, 'a non-empty string');
  if (!(timeoutMs > 0) || !Number.isFinite(timeoutMs)) throw new InvalidOptionError('timeoutMs', timeoutMs, 'a positive number');
  return {
    async publish(event) {
      const body = JSON.stringify({
        id: event.id,
        type: event.type,
        key: event.key,
        payload: event.payload,
        headers: event.headers,
        createdAt: event.createdAt.toISOString(),
      } satisfies WebhookBody);
      const timestamp = String(Math.floor(Date.now() / 1000));
      let res: Response;
      try {
        res = await fetch(url, {
          method: 'POST',
          body,
          signal: AbortSignal.timeout(timeoutMs),
          headers: {
            ...options.headers,
            'content-type': 'application/json',
            'idempotency-key': event.id,
            'x-herald-event-id': event.id,
            'x-herald-event-type': event.type,
            'x-herald-timestamp': timestamp,
            'x-herald-signature': webhookSignature(options.secret, timestamp, body),
          },
        });
      } catch (err) {
        const timedOut = (err as Error)?.name === 'TimeoutError';
        throw new HeraldError(timedOut ? 'TIMEOUT' : 'CONNECTION', timedOut ? `webhook timed out after ${timeoutMs} ms` : `webhook request failed: ${(err as Error)?.message}`, { cause: err });
      }
      await res.arrayBuffer().catch(() => undefined);
      if (res.status < 200 || res.status > 299) throw new HeraldError('CONNECTION', `webhook answered ${res.status}`);
    },
  };
}
