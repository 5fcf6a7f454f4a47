import { HeraldError } from '../errors.js';
import type { Executor, QueryOptions } from '../driver/types.js';
import { assertChannel, assertPayload } from './validate.js';

/** One notification to send. */
export interface OutgoingNotification {
  channel: string;
  /** Text under 8000 UTF-8 bytes. @defaultValue '' */
  payload?: string;
}

/**
 * Sends one notification through `executor`. When `executor` is the caller's
 * transaction, it is delivered only if that transaction commits.
 */
export async function notifyOn(executor: Executor, channel: string, payload = '', options?: QueryOptions): Promise<void> {
  assertChannel(channel);
  assertPayload(payload);
  await executor.query('SELECT pg_notify($1, $2)', [channel, payload], options);
}

/**
 * Sends a batch of notifications in one round trip. Postgres merges identical
 * (channel, payload) pairs within one transaction.
 */
export async function notifyManyOn(executor: Executor, items: readonly OutgoingNotification[]): Promise<void> {
  if (!Array.isArray(items)) throw new HeraldError('INVALID_ARGUMENT', 'notifyMany expects an array');
  if (items.length === 0) return;
  const channels: string[] = [];
  const payloads: string[] = [];
  for (const item of items) {
    const payload = item.payload ?? '';
    assertChannel(item.channel);
    assertPayload(payload);
    channels.push(item.channel);
    payloads.push(payload);
  }
  // unnest yields the arrays in order, so pg_notify runs in the caller's order.
  await executor.query(
    `SELECT pg_notify(c, p) FROM unnest($1::text[], $2::text[]) AS t(c, p)`,
    [channels, payloads],
  );
}
