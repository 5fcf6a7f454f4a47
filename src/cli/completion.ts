import type { Command } from 'commander';
import { CliError, type CliContext } from './context.js';

/** Names and options of `cmd` and of every command below it, keyed by their path ("" for the root). */
function tree(cmd: Command, path: string, out: Map<string, { subs: string[]; options: string[] }>): void {
  const subs = cmd.commands.map((c) => c.name());
  const options = cmd.options.flatMap((o) => [o.long, o.short].filter((f): f is string => Boolean(f)));
  out.set(path, { subs, options: [...options, '--help'] });
  for (const c of cmd.commands) tree(c, path ? `${path} ${c.name()}` : c.name(), out);
}

/** A bash completion script for `program` (commands, subcommands and options; zsh: after `bashcompinit`). */
export function bashCompletion(program: Command): string {
  const nodes = new Map<string, { subs: string[]; options: string[] }>();
  tree(program, '', nodes);
  const global = nodes.get('')!.options;
  const q = (s: string) => `'${s.replace(/'/g, `'\\''`)}'`;
  const lines = [
    '# bash completion for herald: eval "$(herald completion bash)" (zsh: autoload -U bashcompinit && bashcompinit first)',
    '_herald() {',
    '  local cur=${COMP_WORDS[COMP_CWORD]} path="" w i',
    '  declare -A subs opts',
    ...[...nodes].map(([path, n]) => `  subs[${q(path || '.')}]=${q(n.subs.join(' '))}; opts[${q(path || '.')}]=${q([...n.options, ...(path ? global : [])].join(' '))}`),
    '  for ((i = 1; i < COMP_CWORD; i++)); do',
    '    w=${COMP_WORDS[i]}',
    '    if [[ " ${subs[${path:-.}]} " == *" $w "* ]]; then path=${path:+$path }$w; fi',
    '  done',
    '  if [[ $cur == -* ]]; then COMPREPLY=($(compgen -W "${opts[${path:-.}]}" -- "$cur"));',
    '  else COMPREPLY=($(compgen -W "${subs[${path:-.}]}" -- "$cur")); fi',
    '}',
    'complete -o default -F _herald herald',
  ];
  return lines.join('\n') + '\n';
}

/** `herald completion bash`. */
export function registerCompletionCommand(program: Command, ctx: CliContext): void {
  program
    .command('completion')
    .description('print a shell completion script (bash; zsh through bashcompinit)')
    .argument('[shell]', 'bash', 'bash')
    .addHelpText('after', '\nExamples:\n  eval "$(herald completion bash)"\n  herald completion bash > /etc/bash_completion.d/herald')
    .action((shell: string) => {
      if (shell !== 'bash') throw new CliError(`no completion for ${JSON.stringify(shell)}: use bash (zsh: autoload -U bashcompinit && bashcompinit, then the bash script)`, 2);
      ctx.io.stdout.write(bashCompletion(program));
    });
}
