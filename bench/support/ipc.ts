/** What the benchmarks that drive child processes over IPC share. */
import type { ChildProcess } from 'node:child_process';

/** The child's first message that `pick` accepts; rejects if the child exits first. */
export function once<T>(child: ChildProcess, pick: (m: any) => boolean, what: string): Promise<T> {
  return new Promise((resolve, reject) => {
    const onExit = (code: number | null) => reject(new Error(`child exited with ${code} while waiting for ${what}`));
    const on = (m: any) => {
      if (pick(m)) {
        child.off('message', on);
        child.off('exit', onExit);
        resolve(m);
      }
    };
    child.on('message', on);
    child.once('exit', onExit);
  });
}
