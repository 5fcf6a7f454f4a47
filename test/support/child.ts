/**
 * A fixture process (test/fixtures/*.ts, run with `node --import tsx`) whose stdout
 * lines the test reads. The test SIGKILLs what is left in its `finally`.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';

export interface Fixture {
  child: ChildProcess;
  /** Every stdout line so far. */
  lines: string[];
  /** Resolves with the exit code, or the signal name. */
  exited: Promise<number | string | null>;
  /** True while the process runs. */
  readonly alive: boolean;
  kill(): Promise<void>;
}

export function spawnFixture(name: string, args: string[]): Fixture {
  const path = fileURLToPath(new URL(`../fixtures/${name}`, import.meta.url));
  const child = spawn(process.execPath, ['--import', 'tsx', path, ...args], { stdio: ['ignore', 'pipe', 'inherit'] });
  const lines: string[] = [];
  createInterface({ input: child.stdout! }).on('line', (l) => lines.push(l));
  const exited = new Promise<number | string | null>((resolve) => child.on('exit', (code, signal) => resolve(signal ?? code)));
  return {
    child,
    lines,
    exited,
    get alive() {
      return child.exitCode === null && child.signalCode === null;
    },
    async kill() {
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
      await exited;
    },
  };
}
