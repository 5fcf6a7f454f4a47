import type { HeraldServer } from './server.js';
import { HttpError } from './http.js';

/** An action a panel offers to admin tokens (retry a job, cancel it, redrive dead letters...). */
export interface DashboardAction {
  /** Button label. */
  label: string;
  /** `row`: one button per row (the row is passed as `args`); `panel`: one button for the panel. @defaultValue 'row' */
  scope?: 'row' | 'panel';
  /**
   * For row actions: whether a row offers the action (a dead job offers Retry, a waiting
   * one Cancel). The page shows the button only on those rows; `run` must still check,
   * since the row may have changed since it was shown. @defaultValue every row
   */
  appliesTo?(row: Record<string, unknown>): boolean;
  /** Runs the action; the result is shown to the operator. Throw an HttpError for a refusal. */
  run(args: Record<string, unknown>): Promise<unknown> | unknown;
}

/**
 * A dashboard panel. A part (queue, mailbox, outbox, topics) registers one in its
 * `register<Part>Routes(server)` with `server.dashboard.addPanel(...)`; the dashboard
 * polls every panel each second and renders what `load()` returns: an array of flat
 * objects as a table, an object as key/value pairs.
 */
export interface DashboardPanel {
  /** Stable id (`[a-z][a-z0-9_-]*`); `queues`, `mailboxes` and `outbox` replace their "not installed" placeholders. */
  id: string;
  title: string;
  load(): Promise<unknown> | unknown;
  actions?: Record<string, DashboardAction>;
}

/** Panels shown as "not installed" until registered (`registerDashboardPanels` registers them in every server). */
export const KNOWN_PANELS = [
  { id: 'queues', title: 'Queues and jobs by state' },
  { id: 'mailboxes', title: 'Mailboxes' },
  { id: 'outbox', title: 'Outbox backlog and dead letters' },
] as const;

/** The dashboard's data: built-in gateway/notifier figures plus the panels parts add. */
export class Dashboard {
  readonly #panels = new Map<string, DashboardPanel>();
  readonly #startedAt = Date.now();
  // What the database gave for the panels, shared by every open tab and refreshed at
  // most every `refreshMs`: ten tabs cost the database what one does.
  #cache: { at: number; data: Promise<PanelReads> } | undefined;

  /** @param refreshMs the longest the panels' database reads are reused (`dashboardRefreshMs`) */
  constructor(readonly server: HeraldServer, readonly refreshMs = 2000) {}

  /** Adds (or replaces) a panel. */
  addPanel(panel: DashboardPanel): void {
    if (!/^[a-z][a-z0-9_-]*$/.test(panel.id)) throw new HttpError(500, 'INVALID_OPTION', `panel id ${JSON.stringify(panel.id)} must match [a-z][a-z0-9_-]*`);
    this.#panels.set(panel.id, panel);
    this.#cache = undefined;
  }

  /** Drops the shared read: the next snapshot reads the database again (after an action). */
  invalidate(): void {
    this.#cache = undefined;
  }

  /** Panel ids registered so far. */
  panels(): string[] {
    return [...this.#panels.keys()];
  }

  /**
   * Everything the page shows, in one JSON document (`GET /api/dashboard`). The panels'
   * database reads are made at most once every `refreshMs` whatever the number of
   * callers (concurrent callers share one read); the server's own figures are fresh.
   */
  async snapshot(): Promise<Record<string, unknown>> {
    const { gateway } = this.server;
    const stats = this.server.herald.notifier.stats();
    const { queueUsage, holders, panels: read, readAt } = await this.#reads();
    const panels = [...read];
    for (const k of KNOWN_PANELS) if (!this.#panels.has(k.id)) panels.push({ id: k.id, title: k.title, data: null, actions: [], missing: true } as never);
    return {
      server: {
        uptimeMs: Date.now() - this.#startedAt,
        clients: { sse: this.server.clientCount('sse'), ws: this.server.clientCount('ws') },
        counters: gateway.counters,
        streamKinds: gateway.streamKinds(),
      },
      notifier: {
        status: stats.status,
        reconnects: stats.reconnects,
        queueUsage: queueUsage ?? stats.queueUsage,
        wakeups: stats.wakeups,
        wakeupsPausedSince: stats.wakeupsPausedSince,
        queueTailHolders: holders,
        lastError: stats.lastError?.message ?? null,
      },
      panelsReadAt: new Date(readAt).toISOString(),
      channels: Object.entries(stats.channels).map(([channel, c]) => ({ channel, ...c })),
      topics: gateway.topics(),
      panels,
    };
  }

  /** Runs an action of a panel (admin only; the route checks); the next snapshot reads the database again. */
  async run(panelId: string, action: string, args: Record<string, unknown>): Promise<unknown> {
    const panel = this.#panels.get(panelId);
    const a = panel?.actions?.[action];
    if (!a) throw new HttpError(404, 'NOT_FOUND', `no action ${action} on panel ${panelId}`);
    try {
      return await a.run(args);
    } finally {
      this.#cache = undefined;
    }
  }

  #reads(): Promise<PanelReads> {
    const now = Date.now();
    if (this.#cache && now - this.#cache.at < this.refreshMs) return this.#cache.data;
    const data = this.#read(now);
    const entry = { at: now, data };
    this.#cache = entry;
    data.catch(() => {
      if (this.#cache === entry) this.#cache = undefined;
    });
    return data;
  }

  async #read(readAt: number): Promise<PanelReads> {
    let queueUsage: number | null = null;
    try {
      queueUsage = await this.server.herald.notifier.sampleQueueUsage();
    } catch {
      /* keep the last sample */
    }
    // Wake-ups paused or something unread: name who holds the notification queue's tail.
    const notifier = this.server.herald.notifier;
    const holders = !notifier.stats().wakeups || (queueUsage ?? 0) > 0 ? await notifier.queueTailHolders().catch(() => []) : [];
    const panels = await Promise.all(
      [...this.#panels.values()].map(async (p) => {
        try {
          const data = await p.load();
          return { id: p.id, title: p.title, data, actions: actionsOf(p), ...rowActionsOf(p, data) };
        } catch (err) {
          return { id: p.id, title: p.title, error: (err as Error).message, actions: [] };
        }
      }),
    );
    return { queueUsage, holders, panels, readAt };
  }
}

interface PanelReads {
  queueUsage: number | null;
  holders: unknown[];
  panels: Record<string, unknown>[];
  readAt: number;
}

/**
 * `rowActions[i]`: the names of the row actions row `i` offers, sent only when some row
 * action has `appliesTo` (otherwise every row offers every row action).
 */
function rowActionsOf(p: DashboardPanel, data: unknown): { rowActions?: string[][] } {
  const row = Object.entries(p.actions ?? {}).filter(([, a]) => (a.scope ?? 'row') === 'row');
  if (!Array.isArray(data) || !row.some(([, a]) => a.appliesTo)) return {};
  return { rowActions: data.map((r: Record<string, unknown>) => row.filter(([, a]) => !a.appliesTo || a.appliesTo(r)).map(([name]) => name)) };
}

function actionsOf(p: DashboardPanel): { name: string; label: string; scope: 'row' | 'panel' }[] {
  return Object.entries(p.actions ?? {}).map(([name, a]) => ({ name, label: a.label, scope: a.scope ?? 'row' }));
}
