import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { InvalidChannelError, PayloadTooLargeError } from '../errors.js';
import { assertChannel, assertPayload } from './validate.js';

describe('channel and payload validation (no database)', () => {
  it('accepts names up to 63 UTF-8 bytes, exactly as given', () => {
    for (const name of ['OrderCreated', 'a.b c', 'x"; DROP TABLE y; --', 'ü'.repeat(31), 'a'.repeat(63)]) assertChannel(name);
  });
  it('rejects empty, NUL, over 63 bytes (counted in UTF-8) and non-strings', () => {
    for (const bad of ['', 'a\0b', 'a'.repeat(64), 'ü'.repeat(32), 42 as unknown as string]) {
      assert.throws(() => assertChannel(bad), (e: unknown) => e instanceof InvalidChannelError && e.code === 'INVALID_CHANNEL');
    }
  });
  it('rejects payloads of 8000 UTF-8 bytes or more', () => {
    assertPayload('a'.repeat(7999));
    assert.throws(() => assertPayload('a'.repeat(8000)), PayloadTooLargeError);
    assert.throws(() => assertPayload('€'.repeat(2667)), (e: unknown) => e instanceof PayloadTooLargeError && e.bytes === 8001);
    assertPayload('€'.repeat(2666));
  });
});
