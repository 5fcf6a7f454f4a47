import type { DeadLetterRow, MessageRow } from './queries.js';
import type { TopicDeadLetter, TopicMessage } from './types.js';

/** A row as read (payload as jsonb text) to the message callers get; the same over every driver. */
export function toMessage<T>(topic: string, r: MessageRow): TopicMessage<T> {
  return {
    topic,
    id: r.publish_id ?? r.id,
    position: r.id,
    key: r.key,
    partition: r.kpart,
    payload: JSON.parse(r.payload) as T,
    publishedAt: new Date(Number(r.published_ms)),
  };
}

/** A dead-letter row to what `deadLetters()` returns. */
export function toDeadLetter<T>(topic: string, r: DeadLetterRow): TopicDeadLetter<T> {
  return {
    ...toMessage<T>(topic, r),
    group: r.group_name,
    attempts: r.attempts,
    lastError: r.last_error,
    deadAt: r.dead_at,
    redriving: r.redrive_at !== null,
  };
}
