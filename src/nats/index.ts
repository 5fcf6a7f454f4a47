/**
 * `pgherald/nats`: the outbox sink that publishes to NATS JetStream. Needs the packages
 * `@nats-io/transport-node` and `@nats-io/jetstream` (loaded on first publish).
 * @packageDocumentation
 */
export { jetstreamSink, type JetStreamSinkOptions } from '../outbox/jetstream.js';
