/**
 * The message every topics benchmark publishes (`bench/topics.ts`, `bench/topics-profile.ts`):
 * one shape, so that their figures describe the same work.
 */
export const topicPayload = (i: number) => ({ orderId: i, customer: `c-${i % 100}`, amount: (i * 7) % 1000, note: 'x'.repeat(40) });
