import type { Herald } from '../client.js';
import { TypedEmitter } from '../internal/events.js';
import { Loop } from '../internal/loop.js';

/**
 * One sample of the dashboard's time series: what the database held at `t` and the work
 * done since the previous sample. Keys of the maps are queue names, mailbox
 * destinations and `<topic>/<group>`.
 */
export interface SeriesSample {
  /** Database time of the read (epoch ms). */
  t: number;
  /** Per queue: completed and dead jobs per second since the previous sample, backlog now, due-to-start latency (ms). */
  queues: Record<string, { completedPerSec: number; failedPerSec: number; depth: number; scheduled: number; running: number; latencyMs: number | null }>;
  /** Per destination: ready (due and delayed) and dead messages. */
  mailbox: Record<string, { ready: number; dead: number }>;
  /** Outbox backlog: pending events (due and retrying) and dead ones. */
  outbox: { pending: number; dead: number } | null;
  /** Per topic group (`<topic>/<group>`): messages not yet committed, over all partitions. */
  groups: Record<string, number>;
}

/** Events of the sampler (`server.series.on(...)`). */
export type SeriesEvents = {
  /** A sample was taken and stored in the ring. */
  'dashboard:sampled': [sample: SeriesSample];
  /** A sample failed (the database is unreachable...); the sampler backs off and goes on. */
  'dashboard:problem': [err: Error];
};

/**
 * The dashboard's sampler: one per server (not per tab), started and stopped with it.
 * Every `intervalMs` it reads the queue's activity (`queue.activity`), the mailbox and
 * outbox backlog (`stats()`) and the lag of every topic group (`topics.stats`), and keeps
 * the last `retentionMs / intervalMs` samples in a ring in memory (lost on restart).
 * `GET /api/dashboard/series` serves the ring as columns for the charts.
 */
export class SeriesSampler extends TypedEmitter<SeriesEvents> {
  readonly capacity: number;
  readonly #ring: SeriesSample[] = [];
  #next = 0;
  #loop: Loop | undefined;
  #since: Date | undefined;

  /**
   * @param herald whose parts are sampled
   * @param intervalMs time between samples (`dashboardSampleIntervalMs`)
   * @param retentionMs how far back the ring goes (`dashboardSampleRetentionMs`)
   * @param lagMs how long before each sample its throughput window ends (`dashboardSampleLagMs`)
   */
  constructor(
    readonly herald: Herald,
    readonly intervalMs: number,
    readonly retentionMs: number,
    readonly lagMs = 0,
  ) {
    super();
    this.capacity = intervalMs > 0 ? Math.max(1, Math.ceil(retentionMs / intervalMs)) : 1;
  }

  /** Starts sampling (the server calls it in `start()`); not when `intervalMs` is 0. Idempotent. */
  start(): void {
    if (this.#loop || this.intervalMs === 0) return;
    const loop = new Loop({
      turn: async () => {
        loop.dirty = false;
        await this.sample();
        loop.succeeded();
        return this.intervalMs;
      },
      pollIntervalMs: this.intervalMs,
      onError: (err) => this.emit('dashboard:problem', err instanceof Error ? err : new Error(String(err))),
      unref: true,
    });
    this.#loop = loop;
    loop.start();
  }

  /** Stops sampling; the ring is kept. Idempotent. */
  async stop(): Promise<void> {
    const loop = this.#loop;
    this.#loop = undefined;
    await loop?.stop();
  }

  /** Samples, oldest first. */
  samples(): SeriesSample[] {
    return this.#ring.length < this.capacity ? [...this.#ring] : [...this.#ring.slice(this.#next), ...this.#ring.slice(0, this.#next)];
  }

  /** Takes one sample now and stores it (the timer calls it; tests may too). */
  async sample(): Promise<SeriesSample> {
    const { queue, mailbox, outbox, topics } = this.herald;
    // The first window is one interval long and ends lagMs before now (the server's
    // clock); each later one starts where the previous one ended (database time). A
    // window ends lagMs before the read: jobs carry their transaction's start time, so a
    // completion still uncommitted at the read is counted by a later window, not lost.
    const since = this.#since ?? new Date(Date.now() - this.lagMs - this.intervalMs);
    const [activity, boxes, ob, groups] = await Promise.all([
      queue.activity(since, { lagMs: this.lagMs }),
      mailbox.stats(),
      outbox.stats().catch(() => null),
      this.#groupLag(),
    ]);
    const seconds = Math.max(0.001, (activity.until.getTime() - since.getTime()) / 1000);
    if (activity.until > since) this.#since = activity.until;
    const sample: SeriesSample = {
      t: activity.at.getTime(),
      queues: Object.fromEntries(
        activity.queues.map((a) => [
          a.queue,
          { completedPerSec: a.completed / seconds, failedPerSec: a.dead / seconds, depth: a.available, scheduled: a.scheduled, running: a.running, latencyMs: a.latencyAvgMs },
        ]),
      ),
      mailbox: Object.fromEntries(boxes.map((b) => [b.to, { ready: b.ready + b.delayed, dead: b.dead }])),
      outbox: ob && { pending: ob.pending, dead: ob.dead },
      groups,
    };
    if (this.#ring.length < this.capacity) this.#ring.push(sample);
    else this.#ring[this.#next] = sample;
    this.#next = (this.#next + 1) % this.capacity;
    this.emit('dashboard:sampled', sample);
    return sample;
  }

  async #groupLag(): Promise<Record<string, number>> {
    const out: Record<string, number> = {};
    const { topics } = this.herald;
    for (const name of await topics.list()) {
      const stats = await topics.stats(name).catch(() => null); // dropped between list and stats
      for (const g of stats?.groups ?? []) out[`${name}/${g.name}`] = g.lag;
    }
    return out;
  }

  /**
   * The ring as columns (what uPlot draws): `t` (epoch seconds) and, per chart, one
   * array per series aligned with `t` (null where a series has no value at that time).
   */
  columns(): SeriesColumns {
    const samples = this.samples();
    const col = <S>(keys: (s: SeriesSample) => string[], value: (s: SeriesSample, k: string) => number | null | undefined) => {
      const names = [...new Set(samples.flatMap(keys))].sort();
      return Object.fromEntries(names.map((k) => [k, samples.map((s) => value(s, k) ?? null)])) as Record<string, (number | null)[]> as S;
    };
    const q = (s: SeriesSample) => Object.keys(s.queues);
    return {
      intervalMs: this.intervalMs,
      retentionMs: this.retentionMs,
      t: samples.map((s) => s.t / 1000),
      completed: col(q, (s, k) => s.queues[k]?.completedPerSec),
      failed: col(q, (s, k) => s.queues[k]?.failedPerSec),
      depth: col(q, (s, k) => s.queues[k]?.depth),
      latency: col(q, (s, k) => s.queues[k]?.latencyMs),
      mailbox: col((s) => Object.keys(s.mailbox), (s, k) => s.mailbox[k]?.ready),
      mailboxDead: col((s) => Object.keys(s.mailbox), (s, k) => s.mailbox[k]?.dead),
      outbox: { pending: samples.map((s) => s.outbox?.pending ?? null), dead: samples.map((s) => s.outbox?.dead ?? null) },
      groups: col((s) => Object.keys(s.groups), (s, k) => s.groups[k]),
    };
  }
}

/** `GET /api/dashboard/series`: the sampler's ring as columns aligned with `t`. */
export interface SeriesColumns {
  intervalMs: number;
  retentionMs: number;
  /** Sample times, epoch seconds (database time). */
  t: number[];
  /** Per queue: completed jobs per second. */
  completed: Record<string, (number | null)[]>;
  /** Per queue: jobs that went dead per second. */
  failed: Record<string, (number | null)[]>;
  /** Per queue: due jobs waiting. */
  depth: Record<string, (number | null)[]>;
  /** Per queue: average due-to-start latency of the attempts started in the interval (ms). */
  latency: Record<string, (number | null)[]>;
  /** Per destination: ready messages (due and delayed). */
  mailbox: Record<string, (number | null)[]>;
  /** Per destination: dead messages. */
  mailboxDead: Record<string, (number | null)[]>;
  /** Outbox: pending and dead events. */
  outbox: { pending: (number | null)[]; dead: (number | null)[] };
  /** Per `<topic>/<group>`: lag in messages. */
  groups: Record<string, (number | null)[]>;
}
