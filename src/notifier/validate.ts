import { HeraldError, InvalidChannelError, PayloadTooLargeError } from '../errors.js';

/** Longest channel name Postgres keeps whole (NAMEDATALEN - 1), in UTF-8 bytes. */
export const MAX_CHANNEL_BYTES = 63;
/** NOTIFY payloads must be shorter than this many bytes (UTF-8). */
export const PAYLOAD_LIMIT_BYTES = 8000;

/**
 * Checks a channel name before any SQL runs. Names are used exactly as given
 * (`OrderCreated` and `ordercreated` differ) because pgherald always quotes them; a
 * name Postgres would truncate or reject gets an {@link InvalidChannelError}.
 */
export function assertChannel(channel: unknown): asserts channel is string {
  if (typeof channel !== 'string') throw new InvalidChannelError(`channel must be a string, got ${typeof channel}`);
  if (channel.length === 0) throw new InvalidChannelError('channel must not be empty');
  if (channel.includes('\0')) throw new InvalidChannelError('channel must not contain a NUL character');
  const bytes = Buffer.byteLength(channel, 'utf8');
  if (bytes > MAX_CHANNEL_BYTES) {
    throw new InvalidChannelError(
      `channel is ${bytes} bytes; Postgres truncates names over ${MAX_CHANNEL_BYTES} bytes (UTF-8)`,
    );
  }
}

/** Checks a NOTIFY payload: text, no NUL, fewer than 8000 UTF-8 bytes. */
export function assertPayload(payload: unknown): asserts payload is string {
  if (typeof payload !== 'string') {
    throw new HeraldError('INVALID_PAYLOAD', `payload must be a string, got ${typeof payload}`);
  }
  if (payload.includes('\0')) throw new HeraldError('INVALID_PAYLOAD', 'payload must not contain a NUL character');
  // Cheap bound first: a UTF-8 encoding never takes more than 3 bytes per UTF-16 unit.
  if (payload.length * 3 < PAYLOAD_LIMIT_BYTES) return;
  const bytes = Buffer.byteLength(payload, 'utf8');
  if (bytes >= PAYLOAD_LIMIT_BYTES) throw new PayloadTooLargeError(bytes, PAYLOAD_LIMIT_BYTES);
}
