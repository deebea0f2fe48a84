/**
 * The retention purge of stored mail: the raw bytes of resolved mail (inbound posted; outbound
 * sent, or bounced with every failure reported) are emptied once they are older than
 * `storage.raw_retention_days`, counted from arrival (inbound `receivedAt`, outbound
 * `createdAt`). The rows stay (dedupe of replays, the queue's history); mail not resolved yet
 * is kept however old it is. See {@link BridgeStore.purgeRawMail} and docs/security.md.
 *
 * The job runs on the one worker shape (`util/worker.ts`): a pass at start, then one every
 * `intervalMs`; each pass empties at most `batchSize` rows per table, and a full batch makes
 * the next pass run at once, so a backlog drains in bounded steps. A failing pass is logged by
 * the worker and retried with backoff.
 */
import type { BridgeStore, RawPurgeResult } from "./Store.ts";
import { QueueWorker } from "../util/worker.ts";
import { getLogger } from "../util/logger.ts";

const log = getLogger("store/retention");

/** One day in ms. */
const DAY_MS = 86_400_000;

/** Options of {@link RawRetention}. */
export interface RawRetentionOptions {
  /** The store to purge. */
  store: Pick<BridgeStore, "purgeRawMail">;
  /** Keep raw bytes this many days after arrival (>= 0; fractions allowed). */
  retentionDays: number;
  /** A pass runs this often, in ms (> 0), after the one at start. */
  intervalMs: number;
  /** Most rows emptied per table per pass (integer >= 1). */
  batchSize: number;
  /** Clock in epoch ms (default `Date.now`; tests pass a fake one). */
  clock?: () => number;
}

/** The purge job: {@link start} at bridge start, {@link stop} before the store closes. */
export class RawRetention {
  readonly #store: Pick<BridgeStore, "purgeRawMail">;
  readonly #retentionMs: number;
  readonly #batchSize: number;
  readonly #clock: () => number;
  readonly #worker: QueueWorker;

  /**
   * @param opts see {@link RawRetentionOptions}
   * @throws RangeError when `retentionDays` is negative or not finite, `batchSize` is not an
   *   integer >= 1, or `intervalMs` is not > 0
   */
  constructor(opts: RawRetentionOptions) {
    if (!Number.isFinite(opts.retentionDays) || opts.retentionDays < 0) throw new RangeError(`retentionDays must be a finite number >= 0, got ${opts.retentionDays}`);
    if (!Number.isInteger(opts.batchSize) || opts.batchSize < 1) throw new RangeError(`batchSize must be an integer >= 1, got ${opts.batchSize}`);
    this.#store = opts.store;
    this.#retentionMs = Math.round(opts.retentionDays * DAY_MS);
    this.#batchSize = opts.batchSize;
    this.#clock = opts.clock ?? Date.now;
    this.#worker = new QueueWorker({
      name: "raw-retention",
      pollMs: opts.intervalMs,
      clock: this.#clock,
      pass: async () => {
        const purged = await this.purgeOnce();
        return { didWork: purged.inbound >= this.#batchSize || purged.outbound >= this.#batchSize };
      },
    });
  }

  /** Run a pass now and then every `intervalMs`. Idempotent. */
  start(): void {
    this.#worker.start();
  }

  /** Stop; resolves once the pass in flight (if any) has finished. */
  stop(): Promise<void> {
    return this.#worker.stop();
  }

  /** Resolves when no pass runs and none is due at once (tests). Never rejects. */
  idle(): Promise<void> {
    return this.#worker.idle();
  }

  /**
   * One batch: empty the raw bytes of resolved mail older than the retention, at most
   * `batchSize` rows per table. Logs what it emptied (when anything).
   * @returns how many rows of each table were emptied
   * @throws the store's error
   */
  async purgeOnce(): Promise<RawPurgeResult> {
    const before = this.#clock() - this.#retentionMs;
    const purged = await this.#store.purgeRawMail(before, this.#batchSize);
    if (purged.inbound > 0 || purged.outbound > 0) {
      log.info("stored mail purged", { inbound: purged.inbound, outbound: purged.outbound, arrivedBefore: new Date(before).toISOString() });
    }
    return purged;
  }
}
