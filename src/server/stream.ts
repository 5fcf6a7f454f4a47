/**
 * The seam between the gateway and a durable stream (a topic's log, a queue's job
 * transitions, ...). A part implements {@link DurableStreamSource} and registers it
 * with `server.gateway.registerStream(kind, source)`; clients then subscribe to
 * `<kind>/<name>` over SSE (`GET /streams/<kind>/<name>/events`, resuming from
 * `Last-Event-ID`) or WebSocket (`{"type":"subscribe","stream":"<kind>/<name>","lastEventId":"..."}`).
 */

/** One event of a durable stream. `id` must grow in the stream's order and be usable as `after` later. */
export interface StreamEvent {
  /** Position of this event; clients send it back as `Last-Event-ID` to resume after it. */
  id: string;
  /** Event name (SSE `event:`); default `message`. */
  event?: string;
  /** Body text. */
  data: string;
}

/** What the gateway hands a source for one client subscription. */
export interface StreamSink {
  /**
   * Delivers one event in order. Returns false when the client is gone or cut off (slow
   * consumer): the source should stop producing for this sink.
   */
  event(e: StreamEvent): boolean;
  /**
   * Tells the client that events between `after` (its last id, or null) and what comes
   * next cannot be replayed (trimmed, expired, unknown id). Call it before the first
   * event that follows the hole.
   */
  gap(info: { after: string | null; reason: string }): void;
  /** Ends the subscription from the source's side (the stream was deleted, the source stopped). */
  end(reason: string): void;
  /** Aborted when the client leaves; sources must stop their work for this sink then. */
  readonly signal: AbortSignal;
}

/** A durable stream a part exposes through the gateway. */
export interface DurableStreamSource {
  /**
   * The authorization resource of stream `name` (checked with action `subscribe`),
   * e.g. `topic/orders`. Throw an `HttpError(404, 'NOT_FOUND', ...)` for an unknown or
   * invalid name.
   */
  resource(name: string): string;
  /**
   * The Postgres channels a subscription to `name` makes the server LISTEN on (e.g.
   * `herald.topics`). Each counts against the server's `maxChannels` while the
   * subscription lasts (a channel already listened on for another client costs nothing
   * more). Omit when the source causes no LISTEN of its own.
   */
  channels?(name: string): string[];
  /**
   * Starts delivering stream `name` to `sink`: first every stored event after `after`
   * (when `after` is null: from now on only), then live events, in order, without
   * duplicates. If events after `after` are gone, call `sink.gap(...)` first. Resolves
   * once the subscription is set up; stops when `sink.signal` aborts.
   */
  open(name: string, after: string | null, sink: StreamSink): Promise<void>;
}
