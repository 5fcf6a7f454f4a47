/** Every command's --help shows examples (docs/cli.md: `herald <command> --help` the options and examples). */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import type { Command } from 'commander';
import { cli } from '../../test/support/cli.js';
import { CliContext } from './context.js';
import { createProgram } from './main.js';

/** The path of every command (groups and leaves), e.g. ['jobs', 'list']. */
function commandPaths(cmd: Command, prefix: string[] = []): string[][] {
  return cmd.commands.flatMap((c) => [[...prefix, c.name()], ...commandPaths(c, [...prefix, c.name()])]);
}

describe('herald <command> --help', () => {
  it('shows at least one example of every command, each a herald command line', async () => {
    const program = createProgram(new CliContext({ stdout: { write: () => true }, stderr: { write: () => true }, env: {}, interrupted: new Promise(() => {}) }));
    const paths = commandPaths(program);
    assert.ok(paths.length > 40, `found ${paths.length} commands`);
    const missing: string[] = [];
    for (const path of paths) {
      const res = await cli([...path, '--help']);
      assert.equal(res.code, 0, `${path.join(' ')} --help: ${res.stderr}`);
      const examples = /\nExamples:\n((?: {2}.+\n?)+)/.exec(res.stdout);
      if (!examples) {
        missing.push(path.join(' '));
        continue;
      }
      // Each example runs herald, and a leaf command's examples run that very command.
      for (const line of examples[1].trimEnd().split('\n')) {
        assert.match(line, /^ {2}(\S+=\S+ |cat \S+ \| |eval "\$\()?herald /, `${path.join(' ')}: ${line}`);
      }
      const leaf = program.commands.find((c) => c.name() === path[0])!;
      const isGroup = (path.length === 1 ? leaf : leaf.commands.find((c) => c.name() === path[1])!).commands.length > 0;
      if (!isGroup) assert.ok(examples[1].includes(`herald ${path.join(' ')}`), `${path.join(' ')}: its examples run it:\n${examples[1]}`);
    }
    assert.deepEqual(missing, [], 'commands without examples');
  });
});
