import { Cron } from 'croner';
import { InvalidOptionError } from '../errors.js';

/**
 * A cron expression, parsed and stepped by `croner` (a maintained cron library): 5
 * fields (minute hour day-of-month month day-of-week) or 6 with seconds first; `*`,
 * numbers, ranges `a-b`, steps `*\/n` and `a-b/n`, lists, month and weekday names
 * (`JAN`, `MON`), `L` (last day of month), and nicknames such as `@daily`. Day-of-week 0
 * or 7 is Sunday. When both day fields are restricted, a day matching either runs (as in
 * classic cron). Ticks are wall-clock times in `timezone` (an IANA name, default `UTC`),
 * with daylight-saving changes applied the way `croner` does: a time skipped by a
 * spring-forward change runs at the first valid time after it, and a time repeated by a
 * fall-back change runs once.
 */
export class CronSchedule {
  readonly #cron: Cron;

  constructor(readonly expression: string, readonly timezone = 'UTC') {
    if (typeof expression !== 'string') throw new InvalidOptionError('cron', expression, 'a cron expression');
    const fields = expression.trim().split(/\s+/);
    if (!expression.trim().startsWith('@') && fields.length !== 5 && fields.length !== 6) {
      throw new InvalidOptionError('cron', expression, 'a cron expression of 5 fields (or 6 with seconds first)');
    }
    if (typeof timezone !== 'string' || !validTimeZone(timezone)) throw new InvalidOptionError('tz', timezone, 'an IANA time zone name such as "Europe/Berlin" or "UTC"');
    try {
      this.#cron = new Cron(expression.trim(), { timezone, paused: true, domAndDow: false });
    } catch (err) {
      throw new InvalidOptionError('cron', expression, `a valid cron expression (${(err as Error).message})`);
    }
  }

  /** Whether `date` (to the second) is a tick. */
  matches(date: Date): boolean {
    const t = Math.floor(date.getTime() / 1000) * 1000;
    return this.#cron.nextRun(new Date(t - 1000))?.getTime() === t;
  }

  /** The latest tick at or before `date` and strictly after `after`, or null. */
  latestTick(date: Date, after: Date | null): Date | null {
    const [tick] = this.#cron.previousRuns(1, new Date(Math.floor(date.getTime() / 1000) * 1000 + 999));
    if (!tick || (after && tick.getTime() <= after.getTime())) return null;
    return tick;
  }

  /** The next tick strictly after `date`, or null when there is none. */
  nextTick(date: Date): Date | null {
    return this.#cron.nextRun(date);
  }
}

function validTimeZone(tz: string): boolean {
  try {
    new Intl.DateTimeFormat('en-US', { timeZone: tz });
    return true;
  } catch {
    return false;
  }
}
