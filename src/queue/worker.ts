import type { Executor } from '../driver/types.js';
import { HeraldError } from '../errors.js';
import { DB_ERROR_BACKOFF, retryDelay } from '../internal/backoff.js';
import { capErrorText, describeError } from '../internal/describe-error.js';
import { Loop, type ReconnectSource, type Turn } from '../internal/loop.js';
import { withSpan } from '../internal/tracing.js';
import { jsonHasLoneSurrogate, jsonHasNul } from '../internal/validate.js';
import {
  compareIds,
  jobClaimLimited,
  jobClaimRoom,
  jobClaimBatch,
  jobFirstDue,
  jobCompleteMany,
  jobFailMany,
  jobFinishAndClaim,
  jobFinishMany,
  jobHeartbeatMany,
  type AdmitMode,
  type ClaimKey,
  type ClaimRow,
  type FinishBatch,
  type QueueChannels,
} from './queries.js';
import { outcomeKind, outcomeOf, type Job, type JobHandler, type ResolvedQueueOptions, type QueueEvents } from './types.js';

/** What a worker needs from its queue. */
export interface WorkerHost {
  readonly executor: Executor;
  readonly schemaSql: string;
  readonly channels: QueueChannels;
  readonly options: ResolvedQueueOptions;
  /** The notifier: its `notifier:reconnected` event cuts a worker's error backoff short. */
  readonly notifier: ReconnectSource;
  emitEvent<K extends keyof QueueEvents & string>(event: K, ...args: QueueEvents[K]): void;
  /** Whether anyone listens to `event` (so a hot path can skip building its payload). */
  hasListeners(event: keyof QueueEvents & string): boolean;
}

interface Held {
  row: ClaimRow;
  /** Made when the handler first reads `job.signal` or when the job must be aborted. */
  controller: AbortController | null;
  lost: boolean;
}

function abortHeld(h: Held, reason: unknown): void {
  (h.controller ??= new AbortController()).abort(reason);
}

interface Finished {
  id: string;
  kind: string;
  stage: string | null;
  fence: number;
  ok: boolean;
  /** The job's last stage (or a plain job): completing it ends the job. */
  final: boolean;
  result: string | null;
  error: string | null;
  errorValue?: unknown;
  discard: boolean;
  snoozeMs: number | null;
  /** Its statement committed (a flush that fails half-way retries only the rest). */
  recorded?: boolean;
}

/**
 * How many due jobs (in claim order) a claim under a limit looks through for ones it may
 * start after its last claim came back short: ten times what it wants, at least 100, at
 * most 1000 (while claims come back full, the limit has room: it looks at `want` only).
 * Jobs of saturated keys beyond that window wait (head-of-line) until the ones before them start.
 */
export function limitedClaimScan(want: number): number {
  return Math.min(1000, Math.max(100, want * 10));
}

/**
 * When every key with due jobs was being admitted by another claimer, the next claim comes
 * after a random 5 to 25 ms (the other claim's transaction is short), or the poll interval
 * if shorter. Random, so that the claimers that met do not meet again.
 */
export function busyRetryMs(pollIntervalMs: number): number {
  return Math.min(pollIntervalMs, 5 + Math.random() * 20);
}

/** Auto prefetch measures this worker's completion rate over windows this long (ms). */
export const AUTO_WINDOW_MS = 100;

/**
 * Auto prefetch claims ahead only for short jobs: when each slot finished at least this
 * many jobs in the last window (jobs of about 25 ms or less).
 */
export const AUTO_MIN_RUNS_PER_SLOT = 4;

/**
 * Under a limit, auto prefetch holds ahead what this worker finished in this many windows,
 * not one, and up to this many times {@link autoAheadMax}: a limited claim pays a fixed
 * price the ordinary one does not (a stripe's lock and count; under `partitionBy`, one of
 * each for every key it touches), so larger claims cost less per job (measured:
 * bench/RESULTS.md, session 21). Held jobs count against the limit while they wait, as
 * they do at one window; a claim that comes back short (the limit binds) still drops the
 * hold to none.
 */
export const LIMITED_AHEAD_WINDOWS = 3;

/**
 * After a claim by room that its one stripe cut short (the limit may bind), the worker
 * claims through `job_admit` for this long before it claims by room again, so that under
 * a binding limit it does not alternate between the two, one statement in two wasted.
 */
export const ROOM_REST_MS = 1000;

/**
 * The most jobs auto prefetch holds ahead for a worker of `concurrency`: 100 per slot,
 * at most 1000.
 */
export function autoAheadMax(concurrency: number): number {
  return Math.min(1000, concurrency * 100);
}

/** The jobs of `batch` whose completion matched no row (null: all matched). */
function missedOf(batch: Finished[], matched: string[]): Set<string> | null {
  if (matched.length === batch.length) return null;
  const ok = new Set(matched);
  return new Set(batch.filter((f) => !ok.has(f.id)).map((f) => f.id));
}

function finishBatch(fs: Finished[]): FinishBatch {
  return { ids: fs.map((f) => f.id), attempts: fs.map((f) => f.fence), results: fs.map((f) => f.result) };
}

/** Claim order: (priority, run_at, id). Epoch microseconds fit a double exactly until 2255. */
function claimCompare(ap: number, ar: string, ai: string, bp: number, br: string, bi: string): number {
  return ap - bp || Number(ar) - Number(br) || compareIds(ai, bi);
}

/** Claim order of two keys. */
function compareKeys(a: ClaimKey, b: ClaimKey): number {
  return claimCompare(a.priority, a.runUs, a.id, b.priority, b.runUs, b.id);
}

/** The later of a claim cursor and a claimed row's key, in claim order (priority, run_at, id). */
function laterKey(k: ClaimKey | null, r: ClaimRow): ClaimKey {
  const key = { priority: r.priority, runUs: r.run_us, id: r.id };
  if (k === null) return key;
  return compareKeys(k, key) >= 0 ? k : key;
}

/** The earlier of two cursors (null: before every job). */
function earlierKey(a: ClaimKey | null, b: ClaimKey | null): ClaimKey | null {
  if (a === null || b === null) return null;
  return compareKeys(a, b) <= 0 ? a : b;
}

/** A cursor just before `key`, so that a claim after it includes the job at `key`. */
function justBefore(key: ClaimKey): ClaimKey {
  return { priority: key.priority, runUs: key.runUs, id: (BigInt(key.id) - 1n).toString() };
}

/**
 * How often a worker with a claim cursor looks for due jobs before it (see {@link Worker}
 * `#after`): at least every poll interval, and no more often than every this many times
 * its last look took (a look from the start costs in proportion to the index entries of
 * claimed jobs that no vacuum has removed yet), so the looks use at most about 5% of one
 * connection's time.
 */
export const CURSOR_LOOK_FACTOR = 20;

/** Claim order of two claimed rows. */
function claimOrder(x: ClaimRow, y: ClaimRow): number {
  return claimCompare(x.priority, x.run_us, x.id, y.priority, y.run_us, y.id);
}

/** Sorts rows in claim order in place, unless they already are (RETURNING gives no order). */
function inClaimOrder(rows: ClaimRow[]): void {
  for (let i = 1; i < rows.length; i++) {
    if (claimOrder(rows[i - 1], rows[i]) > 0) {
      rows.sort(claimOrder);
      return;
    }
  }
}

/**
 * One `work(kind, handler)` registration: a loop that claims batches of due jobs
 * (up to free slots + prefetch), runs them, and records outcomes in batches.
 *
 * Wake-ups: the queue's one subscription calls {@link wake}; with nothing to claim,
 * the loop waits for a wake-up, a freed slot, or the safety poll.
 */
export class Worker {
  readonly #held = new Map<string, Held>();
  readonly #pending: ClaimRow[] = [];
  #running = 0;
  /** Outcomes recorded by the flush path (failures, pipeline stages, anything during stop). */
  #finished: Finished[] = [];
  /** Final completions, recorded by the claim loop together with its next claim. */
  #finals: Finished[] = [];
  /** Statements of the claim loop in flight, and the jobs they may still bring. */
  readonly #cycles = new Set<Promise<void>>();
  #claiming = 0;
  /**
   * Where the next claim starts in claim order: after the last job this worker claimed,
   * so it does not walk the index entries of the jobs before it again. Those entries stay
   * until vacuum removes them, and while any transaction in the cluster stays open they
   * cannot even be marked dead: without the cursor every claim would read all of them.
   * - A keyed wake-up (the first new job's key in its queue, see `wakePayload`) lowers it
   *   to just before that job; an unkeyed one, the safety poll, a reconnect and an error
   *   drop it (null: the next claim looks from the start).
   * - A claim raises it to its last job, also when it came back short (nothing due
   *   after it then). Under a limit, only after a claim that refused nothing before
   *   its last job.
   * - What no wake-up announces is found by a look from the start (`jobFirstDue`, a read
   *   beside the claims, so none waits for it) at least every poll interval and at
   *   every safety poll (see {@link CURSOR_LOOK_FACTOR}); what it finds lowers the
   *   cursor as a keyed wake-up does: a job skipped while another claimer held it and
   *   then handed back by a rollback, a job of a more urgent priority that became due
   *   later (one of the cursor's own priority that becomes due sorts after it), a job
   *   whose wake-up was lost.
   */
  #after: ClaimKey | null = null;
  /** Wake-ups so far (each numbered), and the start number of each claim in flight. */
  #wakes = 0;
  readonly #inFlight: number[] = [];
  /**
   * Wake-ups that came while a claim was in flight, with the cursor each asked for (null:
   * from the start): a claim that was in flight during one sets the cursor no later.
   * Kept until no claim that began before them is in flight.
   */
  #wakeLog: { n: number; before: ClaimKey | null }[] = [];
  /** The look for due jobs before the cursor under way, when the last one began (performance.now()), and how long it took (ms). */
  #looking: Promise<void> | null = null;
  #lookAt = performance.now();
  #lookMs = 0;
  #flushing: Promise<void> | null = null;
  /** The claim loop; its `dirty` means "something may be due: claim when capacity frees". */
  readonly #loop: Loop;
  #started = false;
  #heartbeat: NodeJS.Timeout | null = null;
  #idle: (() => void)[] = [];
  /**
   * A pause or a limit applies to this worker's (queue, kind): claims go through
   * `job_admit` in a transaction ({@link #claimControlled}). Set when the ordinary claim
   * answers `controlled`, cleared when admission answers `free`.
   */
  #controlled = false;
  /**
   * The last claim under a limit got fewer jobs than it wanted (the limit bound, or the
   * queue ran short): the next one looks through a wider window of due jobs
   * ({@link limitedClaimScan}) for ones of keys with room.
   */
  #limitedShort = true;
  /**
   * The limit that applies has a partition key: claims go through `job_admit`, never by
   * room (`jobClaimRoom` answered `keyed`). Cleared when controlled mode starts or ends.
   */
  #keyed = false;
  /**
   * No claim by room before this time (performance.now()): the last one was cut short by
   * its stripe, so the limit may bind; job_admit, which looks at every stripe, claims
   * meanwhile ({@link ROOM_REST_MS}).
   */
  #roomAfter = 0;
  /** A wake-up planned for when a rate limit's next token is due. */
  #tokenTimer: NodeJS.Timeout | null = null;
  /**
   * Auto prefetch: the last claim came back full (more due jobs than it asked for), so a
   * backlog is likely. Cleared by the next claim that comes back short.
   */
  #backlog = false;
  /** Jobs finished in the current and the previous window of {@link AUTO_WINDOW_MS}. */
  #windowStart = 0;
  #windowDone = 0;
  #lastWindowDone = 0;

  constructor(
    readonly host: WorkerHost,
    readonly queue: string,
    readonly kind: string,
    readonly stage: string | null,
    readonly handler: JobHandler<any>,
    readonly concurrency: number,
    /** Jobs claimed ahead: a fixed number, or `'auto'` ({@link autoAhead}). */
    readonly prefetch: number | 'auto',
    readonly timeoutMs: number | null = null,
  ) {
    this.#loop = new Loop({
      turn: () => this.#turn(),
      pollIntervalMs: host.options.pollIntervalMs,
      onError: (err) => this.#problem(err),
      reconnects: host.notifier,
      // An unkeyed wake-up or the safety poll: jobs may sort before the claim cursor
      // anywhere; drop it (keyed wake-ups go through wake(key) instead).
      // The safety poll (unkeyed wake-ups drop the cursor in wake()): a wake-up may have
      // been lost; look before the cursor.
      onWake: () => this.#look(),
      unref: true,
    });
  }

  /** Jobs running or held (claimed ahead) now. */
  get held(): number {
    return this.#held.size;
  }

  /** Starts the claim loop and the heartbeat. */
  start(): void {
    if (this.#started) return;
    this.#started = true;
    this.#loop.start();
    this.#heartbeat = setInterval(() => void this.#beat(), this.host.options.heartbeatIntervalMs);
    this.#heartbeat.unref();
  }

  /** The next claim looks from the start; claims in flight do not set the cursor again. */
  #dropCursor(): void {
    this.#after = null;
    this.#noteWake(null);
  }

  #noteWake(before: ClaimKey | null): void {
    this.#wakes++;
    if (this.#inFlight.length > 0) this.#wakeLog.push({ n: this.#wakes, before });
  }

  /**
   * A claim that began at wake-up number `began` ended: the cursor it may set, no later
   * than `next` nor than what wake-ups since `began` asked for.
   */
  #claimEnded(began: number, next: ClaimKey | null): ClaimKey | null {
    this.#inFlight.splice(this.#inFlight.indexOf(began), 1);
    for (const w of this.#wakeLog) if (w.n > began) next = earlierKey(next, w.before);
    const oldest = this.#inFlight.length === 0 ? Infinity : Math.min(...this.#inFlight);
    if (this.#wakeLog.length > 0) this.#wakeLog = this.#inFlight.length === 0 ? [] : this.#wakeLog.filter((w) => w.n > oldest);
    return next;
  }

  /**
   * Something may be due: claim now. `key`: the first job the wake-up made available
   * in this queue (in claim order): the cursor goes back to just before it instead of
   * being dropped.
   */
  wake(key: ClaimKey | null = null): void {
    if (key === null) this.#dropCursor();
    else {
      const before = justBefore(key);
      this.#after = earlierKey(this.#after, before);
      this.#noteWake(before);
    }
    this.#loop.nudge();
  }

  /**
   * Looks for the first due job before the claim cursor, unless a look is under way or
   * the last one was too recent (see {@link CURSOR_LOOK_FACTOR}); one found lowers the
   * cursor as a keyed wake-up does.
   */
  #look(): void {
    const before = this.#after;
    const now = performance.now();
    if (before === null || this.#looking !== null || this.#loop.stopping) return;
    if (now - this.#lookAt < Math.max(this.host.options.pollIntervalMs, CURSOR_LOOK_FACTOR * this.#lookMs)) return;
    this.#lookAt = now;
    this.#looking = jobFirstDue(this.host.executor, this.host.schemaSql, { queue: this.queue, kind: this.kind, stage: this.stage, before })
      .then(
        (key) => {
          this.#lookMs = performance.now() - now;
          if (key !== null) this.wake(key);
        },
        (err) => {
          // Unknown: claim from the start instead.
          if (this.#loop.stopping) return;
          this.#problem(err);
          this.wake();
        },
      )
      .finally(() => {
        this.#looking = null;
      });
  }

  /**
   * A limit slot was freed somewhere: claim now, but keep the claim cursor (unlike
   * {@link wake}): no job came that may sort before it, and under a limit with room every
   * job before it was admitted (see `prefix` of `jobClaimLimited`). Only a worker whose
   * last limited claim came back short may be waiting for a slot; one whose claim got all
   * it wanted claims again as its own jobs finish (a limit with room: completions
   * everywhere send these, and each would otherwise start a claim of a few jobs).
   */
  slotFreed(): void {
    if (!this.#limitedShort) return;
    this.#loop.dirty = true;
    this.#loop.interrupt();
  }

  /**
   * A turn of the claim loop. Each turn starts one statement that records the final
   * completions gathered since the last turn and claims up to the free capacity (when
   * something may be due): a busy worker pays one round trip and one commit per batch,
   * not two. Up to two statements are in flight, so one commit's WAL flush overlaps the
   * next batch; the second starts only with a worthwhile batch (a quarter of the
   * capacity). With nothing to start, the loop waits for a wake-up, a finished job, a
   * statement's answer, or the poll.
   */
  async #turn(): Promise<Turn> {
    const want = this.#want();
    if (want < 0) return 'wait';
    if (want > 0) this.#loop.dirty = false;
    const cycle = this.#cycle(this.#finals.splice(0, this.host.options.completionBatchSize), want);
    this.#cycles.add(cycle);
    void cycle.finally(() => {
      this.#cycles.delete(cycle);
      this.#loop.interrupt();
    });
    return 'again';
  }

  /**
   * Whether the loop should start a statement now, and how many jobs it should claim:
   * -1 for no. With none in flight, any completion or free capacity is worth one; with
   * one in flight, a second starts only for a quarter of the capacity or more.
   */
  #want(): number {
    const capacity = this.concurrency + this.#ahead();
    const backlog = this.#finished.length < this.host.options.completionBatchSize;
    const free = capacity - this.#running - this.#pending.length - this.#claiming;
    const want = this.#loop.dirty && backlog && free > 0 ? free : 0;
    if (this.#cycles.size === 0) return want > 0 || this.#finals.length > 0 ? want : -1;
    const worthwhile = Math.max(1, Math.floor(capacity / 4));
    return this.#cycles.size < 2 && Math.max(want, this.#finals.length) >= worthwhile ? want : -1;
  }

  /**
   * Jobs to hold ahead now. A fixed `prefetch` as given; `'auto'`: none unless the last
   * claim came back full (a backlog) and the jobs are short (each slot finished at least
   * {@link AUTO_MIN_RUNS_PER_SLOT} in the last window), then as many as this worker
   * finished in the last {@link AUTO_WINDOW_MS}, at most {@link autoAheadMax} (both
   * {@link LIMITED_AHEAD_WINDOWS} times as many under a limit). Long jobs
   * are never claimed ahead, so they spread over every idle worker of the fleet.
   */
  #ahead(): number {
    if (this.prefetch !== 'auto') return this.prefetch;
    if (!this.#backlog) return 0;
    this.#tick(0);
    const recent = Math.max(this.#windowDone, this.#lastWindowDone);
    // Short jobs only: each slot finished AUTO_MIN_RUNS_PER_SLOT jobs or more in a window.
    if (recent < this.concurrency * AUTO_MIN_RUNS_PER_SLOT) return 0;
    // Under a limit: LIMITED_AHEAD_WINDOWS windows' worth, and that many times the most.
    const k = this.#controlled ? LIMITED_AHEAD_WINDOWS : 1;
    return Math.min(autoAheadMax(this.concurrency) * k, recent * k);
  }

  /** Counts `n` finished jobs into the completion-rate window of auto prefetch. */
  #tick(n: number): void {
    const now = performance.now();
    if (now - this.#windowStart >= AUTO_WINDOW_MS) {
      this.#lastWindowDone = now - this.#windowStart < 2 * AUTO_WINDOW_MS ? this.#windowDone : 0;
      this.#windowDone = 0;
      this.#windowStart = now;
    }
    this.#windowDone += n;
  }

  /** One statement of the loop: record `finals`, claim up to `want`. Never throws. */
  async #cycle(finals: Finished[], want: number): Promise<void> {
    const { options } = this.host;
    this.#claiming += want;
    const wakes = this.#wakes;
    const controlled = this.#controlled;
    let rows: ClaimRow[];
    // Under a limit: whether the claimed jobs were the first due ones (none refused before them).
    let prefix = true;
    if (want > 0) this.#look();
    this.#inFlight.push(wakes);
    try {
      const claim = { queue: this.queue, kind: this.kind, stage: this.stage, limit: want, leaseMs: options.leaseMs, after: want > 0 ? this.#after : null };
      const attrs = { 'herald.queue': this.queue, 'herald.kind': this.kind, 'herald.completed': finals.length };
      if (this.#controlled) {
        const r = await withSpan('herald.queue.claim', attrs, () => this.#claimControlled(finals, want, claim.after));
        rows = r.rows;
        prefix = r.prefix;
      } else if (finals.length === 0) {
        const r = await withSpan('herald.queue.claim', attrs, () => jobClaimBatch(this.host.executor, this.host.schemaSql, this.host.channels, claim));
        rows = r.claimed;
        if (r.controlled) this.#control(true);
      } else {
        const r = await withSpan('herald.queue.claim', attrs, () =>
          jobFinishAndClaim(this.host.executor, this.host.schemaSql, this.host.channels, options.keepCompleted, finishBatch(finals), claim),
        );
        this.#completed(finals, r.missed.length === 0 ? null : new Set(r.missed));
        rows = r.claimed;
        if (r.controlled) this.#control(true);
      }
      this.#loop.succeeded();
    } catch (err) {
      // The statement may or may not have committed: retry the completions (a retry of
      // ones that did commit matches no row and is reported as lease lost).
      this.#finals.unshift(...finals.filter((f) => !f.recorded));
      // Its rows, if it locked any, are free again: claims in flight that skipped them
      // must not move the cursor past them.
      this.#claimEnded(wakes, null);
      this.#dropCursor();
      this.#loop.dirty = true;
      await this.#loop.backoff(err);
      return;
    } finally {
      this.#claiming -= want;
    }
    if (finals.length > 0) this.#checkIdle();
    inClaimOrder(rows);
    // The next claim starts after this one's last job (see #after): nothing before it
    // was due and free. Wake-ups while this claim was in flight may have announced jobs
    // before it: the cursor goes no later than they asked. Under a limit, only after a
    // claim that refused nothing before its last job (a job refused for want of a slot
    // must be looked at again); the claim that enters or leaves controlled mode drops it.
    const next = this.#claimEnded(wakes, rows.length > 0 ? laterKey(this.#after, rows[rows.length - 1]) : this.#after);
    if (want > 0) this.#after = prefix && controlled === this.#controlled ? next : null;
    for (const row of rows) {
      // Claimed as stop began: held and pending, so stop() hands them straight back.
      this.#hold(row);
      this.#pending.push(row);
    }
    // Two claims in flight may answer out of order: jobs held ahead start in claim order.
    if (rows.length > 0 && this.#pending.length > rows.length) inClaimOrder(this.#pending);
    this.#startRunnable();
    // A full batch means there may be more: claim again as soon as a slot frees.
    if (want > 0 && rows.length === want) this.#loop.dirty = true;
    if (want > 0) this.#backlog = rows.length === want;
  }

  /** Enters or leaves controlled mode; either way, claim again at once the other way. */
  #control(on: boolean): void {
    this.#controlled = on;
    this.#keyed = false;
    this.#after = null;
    this.#loop.dirty = true;
    if (on && this.prefetch === 'auto' && this.#pending.length > 0) {
      // Jobs auto prefetch claimed ahead would start outside the pause or limit that
      // now applies: hand them back at once (the attempt not counted).
      for (const row of this.#pending.splice(0)) this.#finished.push(this.#handBack(row));
      this.#flush();
    }
  }

  /**
   * A claim while a pause or limit applies: one statement records `finals`, asks the
   * database which jobs may start (taking the limit's locks, held until the statement
   * commits) and claims those. While the last limited claim got all it wanted, by room
   * (`jobClaimRoom`: one stripe of a limit without a partition key; how many, not which);
   * otherwise, or under a limit with a partition key, through `job_admit`
   * (`jobClaimLimited`: candidates, several stripes, keys).
   */
  async #claimControlled(finals: Finished[], want: number, after: ClaimKey | null): Promise<{ rows: ClaimRow[]; prefix: boolean }> {
    const { schemaSql: s, channels: ch, options } = this.host;
    const batch = finals.length > 0 ? finishBatch(finals) : null;
    let r: { missed: string[]; claimed: ClaimRow[]; mode: AdmitMode | 'keyed'; waitMs: number | null; prefix: boolean };
    // By room: how many the limit admitted (null: through job_admit).
    let room: number | null = null;
    if (!this.#limitedShort && !this.#keyed && want > 0 && performance.now() >= this.#roomAfter) {
      const a = { queue: this.queue, kind: this.kind, stage: this.stage, limit: want, leaseMs: options.leaseMs, after };
      const rr = await jobClaimRoom(this.host.executor, s, ch, options.keepCompleted, batch, a);
      r = { ...rr, prefix: true };
      room = rr.room;
    } else {
      r = await jobClaimLimited(this.host.executor, s, ch, options.keepCompleted, batch, {
        queue: this.queue,
        kind: this.kind,
        stage: this.stage,
        want,
        // While the limit has room (the last claim got all it wanted), look at no more due
        // jobs than wanted, as the ordinary claim does; a wider window only once it binds.
        scan: this.#limitedShort ? limitedClaimScan(want) : want,
        leaseMs: options.leaseMs,
        after,
      });
    }
    if (finals.length > 0) this.#completed(finals, r.missed.length === 0 ? null : new Set(r.missed));
    if (r.mode === 'keyed') {
      // The limit has a partition key: ask job_admit, at once.
      this.#keyed = true;
      this.#loop.dirty = true;
      return { rows: [], prefix: true };
    }
    if (want > 0) {
      // By room, short only when the limit bound (its one stripe had less room than
      // wanted): then job_admit (every stripe, a wider window) looks again at once. Fewer
      // due jobs than the room is the ordinary end of a backlog, not the limit.
      const short = room === null ? r.claimed.length < want : room < want && r.claimed.length < want;
      if (short && room !== null && r.mode === 'limited') {
        this.#loop.dirty = true;
        this.#roomAfter = performance.now() + ROOM_REST_MS;
      }
      this.#limitedShort = short;
    }
    if (r.mode === 'free') this.#control(false);
    // Busy: another claimer held every key with due jobs; it commits soon, then look again.
    const waitMs = r.mode === 'busy' ? busyRetryMs(options.pollIntervalMs) : r.waitMs;
    if (waitMs !== null && this.#tokenTimer === null && !this.#loop.stopping) {
      // A rate limit held back due jobs (or the keys were busy): claim again then.
      this.#tokenTimer = setTimeout(() => {
        this.#tokenTimer = null;
        this.wake();
      }, Math.max(1, Math.ceil(waitMs)));
      this.#tokenTimer.unref();
    }
    return { rows: r.claimed, prefix: r.prefix };
  }

  #hold(row: ClaimRow): void {
    this.#held.set(row.id, { row, controller: null, lost: false });
  }

  #startRunnable(): void {
    while (this.#running < this.concurrency && this.#pending.length > 0 && !this.#loop.stopping) {
      const row = this.#pending.shift()!;
      const held = this.#held.get(row.id);
      if (!held || held.lost) continue;
      this.#running++;
      void this.#execute(held);
    }
  }

  async #execute(held: Held): Promise<void> {
    const row = held.row;
    const job: Job = {
      id: row.id,
      queue: this.queue,
      kind: this.kind,
      payload: row.payload,
      attempt: row.attempt - row.attempt_base,
      maxAttempts: row.max_attempts,
      stage: this.stage,
      stages: row.stages,
      priority: row.priority,
      createdAt: new Date(row.created_ms),
      get signal() {
        return (held.controller ??= new AbortController()).signal;
      },
      fence: row.attempt,
    };
    const final = row.stages === null || row.stages[row.stages.length - 1] === this.stage;
    const f: Finished = { id: row.id, kind: this.kind, stage: this.stage, fence: row.attempt, ok: true, final, result: null, error: null, discard: false, snoozeMs: null };
    const timeoutMs = row.timeout_ms ?? this.timeoutMs;
    let settled: Promise<unknown> | null = null;
    let timedOut = false;
    try {
      let value: unknown;
      if (timeoutMs === null) value = await this.handler(job);
      else {
        // The attempt fails at the timeout whether or not the handler heeds its signal;
        // the slot is released only when the handler returns (below).
        const run = Promise.resolve().then(() => this.handler(job));
        settled = run.then(() => {}, () => {});
        let timer: NodeJS.Timeout | undefined;
        const timeout = new Promise<never>((_, reject) => {
          timer = setTimeout(() => {
            timedOut = true;
            const err = new HeraldError('TIMEOUT', `job ${row.id} timed out after ${timeoutMs} ms`);
            abortHeld(held, err);
            reject(err);
          }, timeoutMs);
        });
        try {
          value = await Promise.race([run, timeout]);
        } finally {
          clearTimeout(timer);
        }
      }
      const outcome = outcomeOf(value);
      if (outcome) {
        f.ok = false;
        if (outcomeKind(outcome) === 'snooze') f.snoozeMs = outcome.delayMs ?? 0;
        else {
          f.discard = true;
          f.error = capErrorText(outcome.reason ?? 'discarded');
        }
      } else if (value !== undefined) {
        try {
          f.result = JSON.stringify(value) ?? null;
        } catch {
          f.result = null;
        }
        if (f.result !== null && (jsonHasNul(f.result) || jsonHasLoneSurrogate(f.result))) {
          // Postgres jsonb refuses it: recorded as is, it would fail every completion of the
          // batch it is in, again and again. The attempt fails instead, saying why.
          const err = new HeraldError('INVALID_PAYLOAD', 'the handler returned a result Postgres cannot store (a NUL character or a lone surrogate in a string): the attempt fails');
          f.ok = false;
          f.result = null;
          f.errorValue = err;
          f.error = describeError(err, true);
        }
      }
    } catch (err) {
      f.ok = false;
      f.errorValue = err;
      f.error = describeError(err, true);
    }
    const loop = this.#loop;
    if (this.prefetch === 'auto') this.#tick(1);
    if (timedOut) {
      // Record the failure now; keep the slot until the handler gives up.
      this.#finished.push(f);
      this.#flush();
      await settled;
      this.#running--;
      this.#checkIdle();
    } else {
      this.#running--;
      if (f.ok && f.final && !loop.stopping) this.#finals.push(f);
      else {
        this.#finished.push(f);
        this.#flush();
      }
    }
    loop.dirty = true;
    this.#startRunnable();
    // Wake the loop only when it has something to start (a waiting loop costs a timer).
    if (loop.waiting && (loop.stopping || this.#want() >= 0)) loop.interrupt();
  }

  /** Records buffered outcomes in batches; one flush at a time, the next takes what piled up meanwhile. */
  #flush(): void {
    if (this.#flushing || this.#finished.length === 0) return;
    this.#flushing = (async () => {
      let failures = 0;
      while (this.#finished.length > 0) {
        const batch = this.#finished.splice(0, this.host.options.completionBatchSize);
        try {
          await this.#record(batch);
          failures = 0;
        } catch (err) {
          // The connection may have died mid-statement: try again. A retry of a batch
          // that did commit matches no row (fenced) and is reported as lease lost.
          this.#finished.unshift(...batch.filter((f) => !f.recorded));
          this.#problem(err);
          if (this.#finished.length > 0 && failures > 50 && this.#loop.stopping) break;
          // Not cut short by stop(): outcomes must be recorded while stopping too.
          await this.#loop.pause(retryDelay(DB_ERROR_BACKOFF, ++failures), false);
        }
      }
    })().finally(() => {
      this.#flushing = null;
      if (this.#finished.length > 0 && !(this.#loop.stopping && this.#held.size === 0)) this.#flush();
      this.#checkIdle();
      this.#loop.interrupt();
    });
  }

  async #record(batch: Finished[]): Promise<void> {
    const { executor, schemaSql, channels, options } = this.host;
    const final: Finished[] = [];
    const advance: Finished[] = [];
    const failed: Finished[] = [];
    for (const f of batch) (!f.ok ? failed : f.final ? final : advance).push(f);
    if (final.length > 0) {
      const done = await jobFinishMany(executor, schemaSql, channels, options.keepCompleted, finishBatch(final));
      this.#completed(final, missedOf(final, done));
    }
    if (advance.length > 0) {
      const done = await jobCompleteMany(executor, schemaSql, channels, finishBatch(advance));
      this.#completed(advance, missedOf(advance, done));
    }
    if (failed.length > 0) {
      const rows = await jobFailMany(
        executor,
        schemaSql,
        channels,
        {
          ids: failed.map((f) => f.id),
          attempts: failed.map((f) => f.fence),
          errors: failed.map((f) => f.error),
          discard: failed.map((f) => f.discard),
          snoozeMs: failed.map((f) => f.snoozeMs),
        },
        { baseMs: options.retryBaseDelayMs, maxMs: options.retryMaxDelayMs, jitter: options.retryJitter },
      );
      const states = new Map(rows.map((r) => [r.id, r.state]));
      for (const f of failed) {
        f.recorded = true;
        this.#held.delete(f.id);
        const state = states.get(f.id);
        if (!state) this.host.emitEvent('job:leaseLost', { id: f.id, kind: f.kind, fence: f.fence, during: 'fail' });
        else if (f.snoozeMs === null) this.host.emitEvent('job:failed', { id: f.id, kind: f.kind, error: f.errorValue ?? f.error, state });
      }
    }
  }

  /** Releases completed jobs and reports them (events are built only when someone listens). */
  #completed(batch: Finished[], missed: Set<string> | null): void {
    const events = this.host.hasListeners('job:completed');
    for (const f of batch) {
      f.recorded = true;
      this.#held.delete(f.id);
      if (missed?.has(f.id)) this.host.emitEvent('job:leaseLost', { id: f.id, kind: f.kind, fence: f.fence, during: 'complete' });
      else if (events) this.host.emitEvent('job:completed', { id: f.id, kind: f.kind, stage: f.stage });
    }
  }

  /** Renews the leases of the jobs held and not yet finished; a job missing from the answer was lost. */
  async #beat(): Promise<void> {
    const finishing = new Set([...this.#finished, ...this.#finals].map((f) => f.id));
    const held = [...this.#held.values()].filter((h) => !h.lost && !finishing.has(h.row.id));
    if (held.length === 0) return;
    let kept: Set<string>;
    try {
      kept = new Set(
        await jobHeartbeatMany(
          this.host.executor,
          this.host.schemaSql,
          held.map((h) => h.row.id),
          held.map((h) => h.row.attempt),
          this.host.options.leaseMs,
        ),
      );
    } catch (err) {
      this.#problem(err);
      return;
    }
    const finishingNow = new Set([...this.#finished, ...this.#finals].map((f) => f.id));
    for (const h of held) {
      if (kept.has(h.row.id) || finishingNow.has(h.row.id) || this.#held.get(h.row.id) !== h) continue;
      // Lost: rescued after a lease expiry, cancelled, or claimed by another worker.
      h.lost = true;
      abortHeld(h, new HeraldError('LEASE_LOST', `job ${h.row.id} attempt ${h.row.attempt}: lease lost`));
      this.host.emitEvent('job:leaseLost', { id: h.row.id, kind: this.kind, fence: h.row.attempt, during: 'heartbeat' });
      const i = this.#pending.indexOf(h.row);
      if (i >= 0) {
        this.#pending.splice(i, 1);
        this.#held.delete(h.row.id);
      }
    }
  }

  #checkIdle(): void {
    if (this.#running === 0 && this.#finished.length === 0 && this.#finals.length === 0 && !this.#flushing && this.#cycles.size === 0) {
      for (const fn of this.#idle.splice(0)) fn();
    }
  }

  #problem(err: unknown): void {
    this.host.emitEvent('job:problem', err instanceof Error ? err : new Error(String(err)));
  }

  /**
   * Stops claiming, hands prefetched jobs back, waits for running handlers (up to
   * `timeoutMs`, then aborts their signals and hands them back too), records every
   * outcome, and clears the heartbeat. Idempotent.
   */
  async stop(timeoutMs = 30_000): Promise<void> {
    if (!this.#started) return;
    await this.#loop.stop({
      timeoutMs,
      drain: async () => {
        await Promise.all(this.#cycles);
        await this.#looking;
        // The loop has ended: completions it did not record go through the flush path.
        this.#finished.push(...this.#finals.splice(0));
        // Prefetched, never started: back to available without counting the attempt.
        for (const row of this.#pending.splice(0)) this.#finished.push(this.#handBack(row));
        this.#flush();
        await new Promise<void>((resolve) => {
          this.#idle.push(resolve);
          this.#checkIdle();
        });
      },
      onTimeout: async () => {
        this.#pending.length = 0; // held too: handed back below
        for (const h of this.#held.values()) {
          if (h.lost) continue;
          abortHeld(h, new HeraldError('STOPPED', 'worker stopped before the job finished'));
          this.#finished.push(this.#handBack(h.row));
        }
        this.#flush();
        await this.#flushing;
      },
    });
    if (this.#heartbeat) clearInterval(this.#heartbeat);
    this.#heartbeat = null;
    if (this.#tokenTimer) clearTimeout(this.#tokenTimer);
    this.#tokenTimer = null;
  }

  /** The outcome that hands a claimed job back to available without counting the attempt. */
  #handBack(row: ClaimRow): Finished {
    return { id: row.id, kind: this.kind, stage: this.stage, fence: row.attempt, ok: false, final: false, result: null, error: null, discard: false, snoozeMs: 0 };
  }
}
