import { readdirSync, readFileSync } from 'node:fs';

/**
 * CPU seconds (user + system) of Postgres processes, from /proc (Linux; NaN elsewhere):
 * with `root`, the postmaster of that pid and its children (one cluster); without,
 * every process whose command is `postgres`.
 */
export function postgresCpuSeconds(root?: number): number {
  let ticks = 0;
  let dirs: string[];
  try {
    dirs = readdirSync('/proc');
  } catch {
    return NaN;
  }
  for (const pid of dirs) {
    if (!/^\d+$/.test(pid)) continue;
    try {
      const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
      // Fields after the command: state(0) ppid(1) ... utime(11) stime(12).
      const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
      const ours = root === undefined ? stat.includes('(postgres)') : Number(pid) === root || Number(f[1]) === root;
      if (ours) ticks += Number(f[11]) + Number(f[12]);
    } catch {
      // gone meanwhile
    }
  }
  return ticks / 100; // USER_HZ
}
