/** Runs the CLI in-process with captured output, or as a child process. */
import { spawn, type ChildProcess } from 'node:child_process';
import { runCli } from '../../src/cli/main.js';

export interface CliRun {
  code: number;
  stdout: string;
  stderr: string;
}

/** Runs `herald <argv>` in this process; `interrupt` resolves the command's interrupt signal. */
export async function cli(argv: string[], env: Record<string, string | undefined> = {}, interrupt: Promise<void> = new Promise(() => {})): Promise<CliRun> {
  let stdout = '';
  let stderr = '';
  const code = await runCli(argv, {
    stdout: { write: (s: string) => ((stdout += s), true) } as never,
    stderr: { write: (s: string) => ((stderr += s), true) } as never,
    env: { ...env },
    interrupted: interrupt,
  });
  return { code, stdout, stderr };
}

/** Spawns `herald <argv>` from the sources as a child process. */
export function cliProcess(argv: string[], env: Record<string, string | undefined> = {}): ChildProcess {
  const root = new URL('../..', import.meta.url).pathname;
  return spawn(process.execPath, ['--import', 'tsx', 'test/support/herald-cli.ts', ...argv], {
    cwd: root,
    env: { ...process.env, ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
}
