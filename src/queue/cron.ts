import { InvalidOptionError } from '../errors.js';

/**
 * A cron expression: 5 fields (minute hour day-of-month month day-of-week) or 6 with
 * seconds first. Each field: `*`, a number, a range `a-b`, a step `*\/n` or `a-b/n`,
 * or a comma list of these. Times are UTC. Day-of-week 0 or 7 is Sunday. When both
 * day fields are restricted, a day matching either runs (as in classic cron).
 */
export class CronSchedule {
  readonly #fields: Set<number>[];
  readonly #domAny: boolean;
  readonly #dowAny: boolean;

  constructor(readonly expression: string) {
    const parts = expression.trim().split(/\s+/);
    if (parts.length !== 5 && parts.length !== 6) {
      throw new InvalidOptionError('cron', expression, 'a cron expression of 5 fields (or 6 with seconds first)');
    }
    const all = parts.length === 5 ? ['0', ...parts] : parts;
    const ranges: [number, number][] = [
      [0, 59],
      [0, 59],
      [0, 23],
      [1, 31],
      [1, 12],
      [0, 7],
    ];
    this.#fields = all.map((f, i) => parseField(f, ranges[i][0], ranges[i][1], expression));
    if (this.#fields[5].has(7)) this.#fields[5].add(0);
    this.#domAny = all[3] === '*';
    this.#dowAny = all[5] === '*';
  }

  /** Whether `date` (to the second, UTC) is a tick. */
  matches(date: Date): boolean {
    const [s, m, h, dom, mon, dow] = this.#fields;
    if (!s.has(date.getUTCSeconds()) || !m.has(date.getUTCMinutes()) || !h.has(date.getUTCHours()) || !mon.has(date.getUTCMonth() + 1)) return false;
    const domOk = dom.has(date.getUTCDate());
    const dowOk = dow.has(date.getUTCDay());
    if (this.#domAny && this.#dowAny) return true;
    if (this.#domAny) return dowOk;
    if (this.#dowAny) return domOk;
    return domOk || dowOk;
  }

  /** The latest tick at or before `date` and after `after` (both exclusive of sub-seconds), or null. Scans at most one day back. */
  latestTick(date: Date, after: Date | null): Date | null {
    let t = Math.floor(date.getTime() / 1000) * 1000;
    const floor = Math.max(after ? after.getTime() : -Infinity, t - 86_400_000);
    for (; t > floor; t -= 1000) {
      if (this.matches(new Date(t))) return new Date(t);
    }
    return null;
  }

  /** The next tick strictly after `date`, scanning at most 366 days ahead. */
  nextTick(date: Date): Date | null {
    let t = Math.floor(date.getTime() / 1000) * 1000 + 1000;
    const limit = t + 366 * 86_400_000;
    while (t < limit) {
      const d = new Date(t);
      // Skip whole minutes/hours that cannot match, so a yearly schedule costs little.
      if (!this.#fields[2].has(d.getUTCHours())) {
        t = (Math.floor(t / 3_600_000) + 1) * 3_600_000;
        continue;
      }
      if (!this.#fields[1].has(d.getUTCMinutes())) {
        t = (Math.floor(t / 60_000) + 1) * 60_000;
        continue;
      }
      if (this.matches(d)) return d;
      t += 1000;
    }
    return null;
  }
}

function parseField(field: string, min: number, max: number, expression: string): Set<number> {
  const out = new Set<number>();
  const bad = () => new InvalidOptionError('cron', expression, `fields within ${min}-${max} (${JSON.stringify(field)} is not)`);
  for (const part of field.split(',')) {
    const m = /^(\*|(\d+)(?:-(\d+))?)(?:\/(\d+))?$/.exec(part);
    if (!m) throw bad();
    let lo = min;
    let hi = max;
    if (m[1] !== '*') {
      lo = Number(m[2]);
      hi = m[3] !== undefined ? Number(m[3]) : m[4] !== undefined ? max : lo;
    }
    const step = m[4] !== undefined ? Number(m[4]) : 1;
    if (lo < min || hi > max || lo > hi || step < 1) throw bad();
    for (let v = lo; v <= hi; v += step) out.add(v);
  }
  return out;
}
