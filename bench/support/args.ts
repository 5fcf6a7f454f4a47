/** Command-line options of a bench: `--name value` and bare `--flag`s. */
const args = process.argv.slice(2);

/** The value after `--name`, or `def` when the option is absent. */
export function option(name: string): string | undefined;
export function option(name: string, def: string): string;
export function option(name: string, def?: string): string | undefined {
  const i = args.indexOf(`--${name}`);
  return i >= 0 ? args[i + 1] : def;
}

/** Whether `--name` was given. */
export function flag(name: string): boolean {
  return args.includes(`--${name}`);
}
