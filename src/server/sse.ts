import type { SseConnection } from './connection.js';

/**
 * The one Server-Sent Events frame writer of the server (gateway topics and streams,
 * part streams, the `ready` and `close` events): `id:` when given, `event:`, then one
 * `data:` line per line of `data` (CR, LF and CRLF all split, so a payload can never
 * end a frame early or forge a field), then the blank line.
 */
export function sseFrame(event: string, data: string, id?: string): string {
  let frame = id === undefined ? '' : `id: ${id}\n`;
  frame += `event: ${event}\n`;
  for (const line of data.split(/\r\n|\r|\n/)) frame += `data: ${line}\n`;
  return frame + '\n';
}

/**
 * A part's own Server-Sent Events stream (`GET /jobs/events`, `GET /topics/<name>/events`,
 * `GET /changes/<table>/events`), from `server.openStream(...)`. It is a gateway SSE
 * connection underneath, admitted like every other stream (`maxClients`, connections
 * per token, its LISTEN channels against `maxChannels`) and bounded the same way (a
 * client that stops reading is cut as a slow consumer). The part writes the events.
 *
 * Nothing is written before {@link ready}: until then a failed setup can still answer
 * with a JSON error ({@link discard}, then throw).
 */
export class PartStream {
  constructor(readonly connection: SseConnection) {}

  /** Resolves with the reason once the stream has ended. */
  get closed(): Promise<string> {
    return this.connection.closed;
  }

  get isClosed(): boolean {
    return this.connection.isClosed;
  }

  /** Sends the headers and a first `event: ready` with `data` (JSON); events sent before it go out right after. */
  ready(data: Record<string, unknown>): void {
    this.connection.open(data);
  }

  /**
   * Sends one event (queued, written at the end of the event-loop turn); multi-line
   * data becomes several `data:` lines. Returns false when the client is gone or was cut
   * (slow consumer): stop producing then.
   */
  send(event: string, data: string, id?: string): boolean {
    return this.connection.enqueue(Buffer.from(sseFrame(event, data, id)));
  }

  /**
   * Ends the stream after what is queued, with a last `event: close` whose data is
   * `{"code":"ENDED","reason":<reason>}`. Idempotent.
   */
  close(reason: string): void {
    // The queued events go first: close writes its goodbye after a last flush.
    this.connection.flush();
    this.connection.close('ended', reason);
  }

  /** Ends the stream before anything was written (setup failed); the caller answers with the error. */
  discard(): void {
    this.connection.discard();
  }
}
