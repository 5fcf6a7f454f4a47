/**
 * A fleet of relay processes (test/support/outbox-relay-child.ts) driven by the test:
 * it records every publish, acks it, or SIGKILLs the relay at the start of a batch.
 */
import { fork, type ChildProcess } from 'node:child_process';
import { mkdirSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { build } from 'esbuild';

const CHILD = fileURLToPath(new URL('./outbox-relay-child.ts', import.meta.url));
const ROOT = fileURLToPath(new URL('../../', import.meta.url));

let bundled: Promise<string> | undefined;
/**
 * The child bundled once into plain JavaScript (esbuild, which tsx brings): a relay
 * process then starts in a fraction of the time `--import tsx` takes, which matters
 * when a test spawns hundreds of them. Packages stay external (resolved from node_modules).
 */
export function relayChildScript(): Promise<string> {
  bundled ??= (async () => {
    const dir = `${ROOT}node_modules/.cache/pgherald-test`;
    mkdirSync(dir, { recursive: true });
    const outfile = `${dir}/outbox-relay-child-${process.pid}.mjs`;
    await build({ entryPoints: [CHILD], bundle: true, platform: 'node', format: 'esm', packages: 'external', outfile, logLevel: 'warning' });
    return outfile;
  })();
  return bundled;
}

export interface Publish {
  id: string;
  key: string | null;
  seq: bigint;
}

interface Member {
  child: ChildProcess;
  inBatch: boolean;
  dead: boolean;
}

/** Runs `size` relay processes; `shouldKill()` decides at each batch start whether to SIGKILL the relay. */
export class RelayFleet {
  readonly publishes: Publish[] = [];
  readonly ids = new Set<string>();
  kills = 0;
  /** Events a relay published and then could not mark (its lease ran out first): each is a duplicate the design allows. */
  fencedPublished = 0;
  spawned = 0;
  readonly problems: string[] = [];
  /** Order violations seen: a publish of a key below a seq already published for it. */
  readonly inversions: string[] = [];
  readonly #lastSeq = new Map<string, Publish>();
  readonly #members = new Set<Member>();
  #stopping = false;

  constructor(
    readonly url: string,
    readonly size: number,
    readonly options: { batchSize: number; leaseMs?: number; shouldKill?: (fleet: RelayFleet) => boolean },
  ) {}

  #script = '';

  async start(): Promise<void> {
    this.#script = await relayChildScript();
    for (let i = 0; i < this.size; i++) this.#spawn();
  }

  #spawn(): void {
    this.spawned++;
    const child = fork(this.#script, [], {
      execArgv: [],
      env: { ...process.env, HERALD_URL: this.url, RELAY_BATCH: String(this.options.batchSize), RELAY_CONCURRENCY: '1', ...(this.options.leaseMs ? { RELAY_LEASE_MS: String(this.options.leaseMs) } : {}) },
      stdio: ['ignore', 'inherit', 'inherit', 'ipc'],
    });
    const m: Member = { child, inBatch: false, dead: false };
    this.#members.add(m);
    child.on('message', (msg: { t: string; id: string; key: string | null; seq: string; message?: string; published?: number }) => {
      if (m.dead) return;
      if (msg.t === 'pub') {
        const p: Publish = { id: msg.id, key: msg.key, seq: BigInt(msg.seq) };
        this.#record(p);
        const batchStart = !m.inBatch;
        m.inBatch = true;
        if (batchStart && !this.#stopping && this.options.shouldKill?.(this)) {
          // Published, not yet marked: the relay dies between the two.
          m.dead = true;
          this.kills++;
          child.kill('SIGKILL');
          return;
        }
        child.send({ t: 'ack', id: msg.id });
      } else if (msg.t === 'marked') {
        m.inBatch = false;
      } else if (msg.t === 'fenced') {
        this.fencedPublished += msg.published ?? 0;
        m.inBatch = false;
      } else if (msg.t === 'problem') {
        this.problems.push(msg.message ?? '');
      }
    });
    child.on('exit', () => {
      m.dead = true;
      this.#members.delete(m);
      if (!this.#stopping) this.#spawn();
    });
  }

  #record(p: Publish): void {
    this.publishes.push(p);
    this.ids.add(p.id);
    if (p.key === null) return;
    const last = this.#lastSeq.get(p.key);
    if (last && (p.seq < last.seq || (p.seq === last.seq && p.id !== last.id))) {
      this.inversions.push(`key ${p.key}: seq ${p.seq} after ${last.seq}`);
    }
    if (!last || p.seq > last.seq) this.#lastSeq.set(p.key, p);
  }

  /** Duplicated publishes (total minus distinct ids). */
  get duplicates(): number {
    return this.publishes.length - this.ids.size;
  }

  /** Asks every relay to stop and waits for the processes to exit. */
  async stop(): Promise<void> {
    this.#stopping = true;
    await Promise.all(
      [...this.#members].map(
        (m) =>
          new Promise<void>((resolve) => {
            if (m.child.exitCode !== null || m.child.signalCode !== null) return resolve();
            m.child.once('exit', () => resolve());
            // Unacked publishes block the relay's stop: ack them, then stop.
            try {
              m.child.send({ t: 'stop' });
            } catch {
              m.child.kill('SIGKILL');
            }
            setTimeout(() => m.child.kill('SIGKILL'), 10_000).unref();
          }),
      ),
    );
  }
}
