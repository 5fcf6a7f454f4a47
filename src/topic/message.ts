import type { MessageRow } from './queries.js';
import { formatPosition, type TopicMessage } from './types.js';

/** A row as read (payload as jsonb text) to the message callers get; the same over every driver. */
export function toMessage<T>(topic: string, r: MessageRow): TopicMessage<T> {
  return {
    topic,
    id: r.id,
    position: formatPosition(r.xid, r.id),
    key: r.key,
    partition: r.kpart,
    payload: JSON.parse(r.payload) as T,
    publishedAt: new Date(Number(r.published_ms)),
  };
}
