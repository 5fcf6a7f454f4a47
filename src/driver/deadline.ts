import { HeraldError } from '../errors.js';

/**
 * Waits for `promise` at most `ms` (Infinity: no limit) and no longer than `signal`
 * stays unaborted. On the timeout it rejects with `onTimeout()`, on abort with a
 * `STOPPED` error. It leaves nothing behind either way: the timer is cleared and the
 * abort listener removed as soon as one of the three settles, so a long-lived signal
 * never collects listeners (one per reconnect was a leak: MaxListenersExceededWarning).
 *
 * It does not stop the work behind `promise`: the caller discards what it waited on
 * (destroys the socket, releases the connection as broken).
 */
export function deadline<T>(promise: PromiseLike<T>, ms: number, onTimeout: () => Error, signal?: AbortSignal): Promise<T> {
  return new Promise<T>((resolve, reject) => {
    if (signal?.aborted) {
      Promise.resolve(promise).catch(() => {});
      reject(new HeraldError('STOPPED', 'stopped'));
      return;
    }
    let timer: NodeJS.Timeout | undefined;
    const finish = () => {
      if (timer) clearTimeout(timer);
      signal?.removeEventListener('abort', onAbort);
    };
    const onAbort = () => {
      finish();
      reject(new HeraldError('STOPPED', 'stopped'));
    };
    if (Number.isFinite(ms)) {
      timer = setTimeout(() => {
        finish();
        reject(onTimeout());
      }, Math.max(0, ms));
    }
    signal?.addEventListener('abort', onAbort, { once: true });
    promise.then(
      (v) => {
        finish();
        resolve(v);
      },
      (e) => {
        finish();
        reject(e);
      },
    );
  });
}

/** The `TIMEOUT` error of a statement that outlived its deadline. */
export function statementTimeout(what: string, ms: number): HeraldError {
  return new HeraldError('TIMEOUT', `${what} took over ${ms} ms; its connection was discarded`);
}
