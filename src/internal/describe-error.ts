/**
 * The most characters of error text pgherald stores (a job's `lastError` and `errors[]`
 * entries, a mailbox message's `last_error`, an outbox event's `last_error`). Longer
 * text is cut and ends with `…`.
 */
export const ERROR_TEXT_MAX_CHARS = 2000;

/**
 * The text stored for a thrown value: an Error's message (prefixed with its name when
 * `withName`, as the queue does: `TypeError: x is undefined`), a string as is, any other
 * value as JSON or `String(value)`; at most {@link ERROR_TEXT_MAX_CHARS} characters.
 */
export function describeError(error: unknown, withName = false): string {
  let text: string;
  try {
    if (error instanceof Error) text = withName ? `${error.name}: ${error.message}` : error.message || error.name;
    else if (typeof error === 'string') text = error;
    else text = (typeof error === 'object' && error !== null ? JSON.stringify(error) : undefined) ?? String(error);
  } catch {
    try {
      text = String(error);
    } catch {
      text = 'unprintable error';
    }
  }
  return capErrorText(text);
}

/**
 * Cuts `text` to {@link ERROR_TEXT_MAX_CHARS} characters, and makes it storable: a NUL
 * character or a lone surrogate (which Postgres text refuses, failing the statement that
 * records the error) becomes U+FFFD.
 */
export function capErrorText(text: string): string {
  const cut = text.length <= ERROR_TEXT_MAX_CHARS ? text : text.slice(0, ERROR_TEXT_MAX_CHARS - 1) + '…';
  return cut.replace(/\0|[\uD800-\uDBFF](?![\uDC00-\uDFFF])|(?<![\uD800-\uDBFF])[\uDC00-\uDFFF]/g, '\uFFFD');
}
