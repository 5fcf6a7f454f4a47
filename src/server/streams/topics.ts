import type { Herald } from '../../client.js';
import { HeraldError } from '../../errors.js';
import { TopicRetentionError } from '../../topic/types.js';
import { HttpError, publicError } from '../http.js';
import type { DurableStreamSource } from '../stream.js';

/**
 * The topics part as a gateway durable stream (kind `topic`): clients subscribe to
 * `topic/<name>` over WebSocket or `/events?stream=` and resume after a position.
 * Events are `id: <position>`, `event: message`, data `{"id","key","partition","payload","publishedAt"}`
 * (as `GET /topics/<name>/events`). A position that is no longer retained, or messages
 * dropped by retention while following, become a `gap` and the stream goes on from the
 * oldest retained message.
 */
export function topicStreamSource(herald: Herald): DurableStreamSource {
  const topics = herald.topics;
  return {
    resource: (name) => `topic/${name}`,
    // tail() LISTENs on the topics' one wake-up channel, whatever the topic.
    channels: () => [topics.channel],
    async open(name, after, sink) {
      try {
        await topics.resolveAfter(name, 'latest'); // the topic exists
      } catch (err) {
        if (err instanceof HeraldError && err.code === 'NOT_FOUND') throw new HttpError(404, 'NOT_FOUND', err.message);
        throw err;
      }
      let position: string;
      try {
        position = await topics.resolveAfter(name, after ?? 'latest');
      } catch (err) {
        sink.gap({ after, reason: `position not retained: ${publicError(err).message}` });
        position = await topics.resolveAfter(name, 'earliest');
      }
      void (async () => {
        while (!sink.signal.aborted) {
          try {
            for await (const m of topics.tail(name, { after: position, signal: sink.signal })) {
              const data = JSON.stringify({ id: m.id, key: m.key, partition: m.partition, payload: m.payload, publishedAt: m.publishedAt });
              if (!sink.event({ id: m.position, event: 'message', data })) return;
              position = m.position;
            }
            return;
          } catch (err) {
            if (sink.signal.aborted) return;
            if (err instanceof TopicRetentionError) {
              sink.gap({ after: position, reason: err.message });
              position = await topics.resolveAfter(name, 'earliest').catch(() => position);
              continue;
            }
            sink.end(`error: ${publicError(err).message}`);
            return;
          }
        }
      })();
    },
  };
}
