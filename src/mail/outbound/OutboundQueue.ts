/**
 * The outbound queue worker: takes due rows from the store, delivers them, and records
 * sent / deferred / bounced. Retries follow a fixed backoff until `maxRetryHours`
 * (RFC 5321 §4.5.4.1: retry for at least 4-5 days, at least 30 min apart after the first
 * tries; the shorter early steps help with greylisting).
 */
import type { BridgeStore, OutboundRow } from "../../store/Store.ts";
import { errorFields, getLogger } from "../../util/logger.ts";
import type { DeliveryResult } from "./deliver.ts";

const log = getLogger("mail/outbound");

/** The store methods the queue uses. */
export type OutboundQueueStore = Pick<BridgeStore, "listDueOutbound" | "markOutboundSent" | "markOutboundDeferred" | "markOutboundBounced">;

/** Final result of a row, handed to {@link OutboundQueueOptions.onFinal}. */
export interface OutboundFinalOutcome {
  /** Recipients that a server accepted (across the attempts this process saw). */
  sent: string[];
  /** Recipients that failed for good (5yz, or still temporary when retries ran out), with the reason. */
  failed: { address: string; message: string }[];
}

/** Options of {@link OutboundQueue}. */
export interface OutboundQueueOptions {
  store: OutboundQueueStore;
  /** One delivery attempt (deliver.ts `deliverMail` bound to its options). */
  deliver: (raw: Buffer, envelope: { from: string; to: string[] }) => Promise<DeliveryResult>;
  /** Give up after this many hours since the row's createdAt (config `outbound.max_retry_hours`). */
  maxRetryHours: number;
  /** Called once when a row becomes `sent` or `bounced` (the bridge posts a notice for failures). Errors are logged, not retried. */
  onFinal: (row: OutboundRow, outcome: OutboundFinalOutcome) => Promise<void>;
  /** Current time in epoch ms (default `Date.now`). */
  clock?: () => number;
  /** Interval between passes in ms (default 10 000). */
  pollMs?: number;
  /** Rows taken per pass (default 20). */
  batchSize?: number;
}

/**
 * Delay before the next attempt after the n-th failed attempt, in ms: 1 min, 5 min, 15 min,
 * 30 min, 1 h, then every 2 h.
 */
export const RETRY_BACKOFF_MS: readonly number[] = [60_000, 5 * 60_000, 15 * 60_000, 30 * 60_000, 60 * 60_000, 2 * 60 * 60_000];

/**
 * The backoff step for a row.
 * @param failedAttempts failed attempts so far including the current one (>= 1).
 * @returns delay in ms, {@link RETRY_BACKOFF_MS} capped at its last value (2 h).
 */
export function retryDelayMs(failedAttempts: number): number {
  const i = Math.min(Math.max(failedAttempts, 1), RETRY_BACKOFF_MS.length) - 1;
  return RETRY_BACKOFF_MS[i] ?? 2 * 60 * 60_000;
}

/**
 * Worker over the outbound rows of the store.
 *
 * One pass: `listDueOutbound(now, batchSize)`, then for each row one `deliver` of its
 * remaining recipients, then
 * - all accepted → `markOutboundSent`;
 * - some still temporary and retry time left → `markOutboundDeferred(temporary recipients,
 *   min(now + retryDelayMs(row.attempts + 1), createdAt + maxRetryHours))`, so partial
 *   deliveries shrink the recipient list and the last try falls on the deadline;
 * - otherwise (nothing temporary left, or `maxRetryHours` since createdAt reached) →
 *   `markOutboundBounced` if any recipient failed, else `markOutboundSent`.
 * `onFinal` runs once per row, on the sent/bounced transition.
 *
 * The backoff counts `row.attempts` as the failed attempts before this one, so the store
 * must increment `attempts` in `markOutboundDeferred`. Recipients that were accepted or
 * permanently refused in earlier passes are remembered in memory only: after a restart,
 * `onFinal` reports only what the current process saw.
 *
 * Passes never overlap: `kick()` during a pass schedules one more pass right after it.
 * A pass that throws (e.g. the store is down) is logged and retried at the next poll.
 */
export class OutboundQueue {
  readonly #opts: OutboundQueueOptions;
  readonly #clock: () => number;
  readonly #pollMs: number;
  readonly #batchSize: number;
  #timer: NodeJS.Timeout | null = null;
  #running: Promise<void> | null = null;
  #started = false;
  #stopped = false;
  /** Kicks requested so far, and the highest request number a finished pass has covered. */
  #requested = 0;
  #completed = 0;
  #waiters: { upTo: number; resolve: () => void }[] = [];
  /** Per row id: outcomes of earlier passes that are final (sent / permanent). */
  readonly #history = new Map<number, OutboundFinalOutcome>();

  /** @param opts see {@link OutboundQueueOptions}. */
  constructor(opts: OutboundQueueOptions) {
    this.#opts = opts;
    this.#clock = opts.clock ?? Date.now;
    this.#pollMs = opts.pollMs ?? 10_000;
    this.#batchSize = opts.batchSize ?? 20;
  }

  /** Start polling every `pollMs` ms, beginning with a pass now. Idempotent. */
  start(): void {
    if (this.#started) return;
    this.#started = true;
    this.#stopped = false;
    void this.kick();
  }

  /** Stop polling and wait for the pass in flight, if any, to finish. Later kicks do nothing until start(). */
  async stop(): Promise<void> {
    this.#started = false;
    this.#stopped = true;
    if (this.#timer) clearTimeout(this.#timer);
    this.#timer = null;
    while (this.#running) await this.#running;
    for (const w of this.#waiters.splice(0)) w.resolve();
  }

  /**
   * Run a pass now (e.g. right after enqueueing), or right after the pass in flight.
   * @returns resolves once a pass that started after this call has finished (never rejects;
   *   resolves at once after stop()).
   */
  kick(): Promise<void> {
    if (this.#stopped) return Promise.resolve();
    const ticket = ++this.#requested;
    const done = new Promise<void>((resolve) => this.#waiters.push({ upTo: ticket, resolve }));
    if (!this.#running) {
      if (this.#timer) clearTimeout(this.#timer);
      this.#timer = null;
      this.#running = this.#loop().finally(() => {
        this.#running = null;
        if (!this.#stopped && this.#completed < this.#requested) void this.kick();
        else this.#schedule();
      });
    }
    return done;
  }

  async #loop(): Promise<void> {
    while (!this.#stopped && this.#completed < this.#requested) {
      const target = this.#requested;
      try {
        await this.#pass();
      } catch (err) {
        log.error("outbound queue pass failed", errorFields(err));
      }
      this.#completed = target;
      this.#waiters = this.#waiters.filter((w) => {
        if (w.upTo > target) return true;
        w.resolve();
        return false;
      });
    }
  }

  #schedule(): void {
    if (!this.#started || this.#timer) return;
    this.#timer = setTimeout(() => {
      this.#timer = null;
      void this.kick();
    }, this.#pollMs);
    this.#timer.unref();
  }

  async #pass(): Promise<number> {
    const rows = await this.#opts.store.listDueOutbound(this.#clock(), this.#batchSize);
    for (const row of rows) {
      try {
        await this.#handle(row);
      } catch (err) {
        log.error("outbound row failed", { id: row.id, messageId: row.messageId, roomId: row.roomId, ...errorFields(err) });
      }
    }
    return rows.length;
  }

  async #handle(row: OutboundRow): Promise<void> {
    const { store, deliver, maxRetryHours } = this.#opts;
    const history = this.#history.get(row.id) ?? { sent: [], failed: [] };
    const ctx = { id: row.id, messageId: row.messageId, roomId: row.roomId };

    let result: DeliveryResult;
    try {
      result = await deliver(row.raw, { from: row.envelopeFrom, to: row.recipients });
    } catch (err) {
      // deliver() reports failures as outcomes; a throw is unexpected: treat all as temporary.
      const message = err instanceof Error ? err.message : String(err);
      result = { recipients: row.recipients.map((address) => ({ address, status: "temporary", message })) };
    }
    const byAddress = new Map(result.recipients.map((o) => [o.address, o]));

    const temporary: { address: string; message: string }[] = [];
    for (const address of row.recipients) {
      const o = byAddress.get(address) ?? { address, status: "temporary" as const, message: "no delivery outcome" };
      if (o.status === "sent") {
        history.sent.push(address);
      } else if (o.status === "permanent") {
        history.failed.push({ address, message: o.message });
        log.warn("outbound recipient failed permanently", { ...ctx, recipient: address, code: o.code, reason: o.message });
      } else {
        temporary.push({ address, message: o.message });
      }
    }

    const now = this.#clock();
    const deadline = row.createdAt + maxRetryHours * 3_600_000;
    if (temporary.length > 0 && now < deadline) {
      // The last retry happens at the deadline rather than up to one backoff step after it.
      const next = Math.min(now + retryDelayMs(row.attempts + 1), deadline);
      const error = temporary.map((t) => `${t.address}: ${t.message}`).join("; ");
      this.#history.set(row.id, history);
      await store.markOutboundDeferred(row.id, temporary.map((t) => t.address), next, error);
      for (const t of temporary) log.info("outbound recipient deferred", { ...ctx, recipient: t.address, reason: t.message, nextAttemptAt: next });
      return;
    }

    for (const t of temporary) {
      history.failed.push({ address: t.address, message: `gave up after ${maxRetryHours} h: ${t.message}` });
      log.warn("outbound recipient given up", { ...ctx, recipient: t.address, reason: t.message });
    }
    this.#history.delete(row.id);
    if (history.failed.length > 0) {
      await store.markOutboundBounced(row.id, history.failed.map((f) => `${f.address}: ${f.message}`).join("; "));
    } else {
      await store.markOutboundSent(row.id);
      log.info("outbound mail sent", { ...ctx, recipients: history.sent.length });
    }
    try {
      await this.#opts.onFinal(row, history);
    } catch (err) {
      log.error("outbound onFinal failed", { ...ctx, ...errorFields(err) });
    }
  }
}
