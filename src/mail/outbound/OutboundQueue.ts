/**
 * The outbound queue: takes due mails from the store, delivers them concurrently, and records
 * every recipient's outcome in the store as it happens (a 250 is a promise, a 550 is news).
 *
 * - A recipient refused for good (5yz, a domain that cannot receive mail, or retries run out)
 *   is reported at once through `onRecipientsFailed`, while the other recipients of the same
 *   mail may still be retrying. The report is marked in the store; a failure recorded but not
 *   reported yet (crash, Matrix down) is reported by the next process, and a reported one
 *   never again.
 * - A mail still deferred `delayWarningHours` after it was queued is reported once through
 *   `onDelayed` (persisted too).
 * - Retries follow a fixed backoff until `maxRetryHours` (RFC 5321 §4.5.4.1: retry for at
 *   least 4-5 days, at least 30 min apart after the first tries; the shorter early steps
 *   help with greylisting).
 *
 * The worker shape (kick, poll, idle, stop) is util/worker.ts. This module knows nothing of
 * Matrix or of the store's tables: it takes the small {@link OutboundQueueStore} interface,
 * which the bridge's store implements.
 */
import { errorFields, getLogger } from "../../util/logger.ts";
import { QueueWorker, type PassResult } from "../../util/worker.ts";
import type { DeliveryResult, RecipientOutcome } from "./deliver.ts";

const log = getLogger("mail/outbound");

/** A queued mail as the queue sees it (the store's outbound row has these fields and more). */
export interface QueuedMail {
  id: number;
  /** Room the mail came from (the notices go there). */
  roomId: string;
  /** Matrix event the mail came from (the notices reply to it). */
  eventId: string;
  /** Message-ID without brackets (for logs). */
  messageId: string;
  /** MAIL FROM address. */
  envelopeFrom: string;
  /** Recipients still to deliver (pending or deferred). */
  recipients: string[];
  /** The signed message. */
  raw: Buffer;
  /** Delivery attempts of the mail so far. */
  attempts: number;
  /** When it was queued, epoch ms (the retry deadline and the delay warning count from here). */
  createdAt: number;
  /** When the delay notice went out (epoch ms), or null. */
  delayWarnedAt: number | null;
}

/** State of one recipient; `sent` and `failed` are final. */
export type RecipientState = "pending" | "sent" | "deferred" | "failed";

/** A recipient's persisted delivery state, as the store returns it. */
export interface RecipientRecord {
  address: string;
  state: RecipientState;
  /** Attempts made for this recipient. */
  attempts: number;
  /** SMTP reply code of the last attempt, or null when no server answered. */
  lastCode: number | null;
  /** Reply text (or local error) of the last attempt, or null before the first. */
  lastReply: string | null;
  /** For `failed`: whether the failure was reported. */
  reported: boolean;
}

/** The outcome of one recipient in one attempt, as the queue hands it to the store. */
export interface RecipientUpdate {
  address: string;
  state: "sent" | "deferred" | "failed";
  /** SMTP reply code, or null when no server answered. */
  code: number | null;
  /** Reply text or error message. */
  reply: string;
  /** Next try in epoch ms for `deferred`; null otherwise. */
  nextAttemptAt: number | null;
}

/**
 * The store methods the queue uses (implemented by the bridge's store; see store/Store.ts for
 * their full contract).
 */
export interface OutboundQueueStore {
  /** Queued/deferred mails with nextAttemptAt <= `now` (epoch ms), oldest first, at most `limit`. */
  listDueOutbound(now: number, limit: number): Promise<QueuedMail[]>;
  /** One mail by id, or null. */
  getOutboundById(id: number): Promise<QueuedMail | null>;
  /**
   * Record one attempt in one transaction: upsert each recipient's update, then the mail's
   * state (`deferred` while any recipient is pending/deferred, else `bounced` if any failed,
   * else `sent`), remaining recipients and next attempt (epoch ms).
   * @returns the new state and every recipient of the mail after the update.
   * @throws when there is no such mail or the store fails.
   */
  recordOutboundAttempt(
    id: number,
    updates: RecipientUpdate[],
    nextAttemptAt: number,
  ): Promise<{ state: "deferred" | "sent" | "bounced"; recipients: RecipientRecord[] }>;
  /** Failed recipients not reported yet, across all mails (by mail id, then address), at most `limit`. */
  listUnreportedOutboundFailures(limit: number): Promise<(RecipientRecord & { outboundId: number })[]>;
  /** Mark these recipients' failures reported. */
  markOutboundRecipientsReported(id: number, addresses: string[]): Promise<void>;
  /** Remember that the delay notice of mail `id` went out at `at` (epoch ms). */
  markOutboundDelayWarned(id: number, at: number): Promise<void>;
  /** Earliest next attempt (epoch ms) later than `after` of any queued/deferred mail, or null. */
  nextOutboundAttemptAt(after: number): Promise<number | null>;
}

/** A recipient in a failure or delay report. */
export interface RecipientReport {
  address: string;
  /** SMTP reply code of the last attempt, or null when no server answered. */
  code: number | null;
  /** The remote server's reply (or the local error), e.g. `550 5.1.1 No such user`. */
  reply: string;
}

/** Options of {@link OutboundQueue}. */
export interface OutboundQueueOptions {
  store: OutboundQueueStore;
  /** One delivery attempt (deliver.ts `deliverMail` bound to its options). */
  deliver: (raw: Buffer, envelope: { from: string; to: string[] }) => Promise<DeliveryResult>;
  /** Give up on temporary failures after this many hours since the mail was queued (config `outbound.max_retry_hours`). */
  maxRetryHours: number;
  /**
   * Report a mail still deferred this many hours after it was queued, once (config
   * `outbound.delay_warning_hours`); 0 never reports.
   */
  delayWarningHours: number;
  /** Most deliveries in flight at once (config `outbound.concurrency`, default 8); one at a time per room. */
  concurrency?: number;
  /**
   * Recipients of `mail` failed for good (called at once, and again after a restart if it
   * threw or the process died before the report was recorded). Throw to have it retried at
   * the next poll.
   */
  onRecipientsFailed: (mail: QueuedMail, failures: RecipientReport[]) => Promise<void>;
  /**
   * `mail` is still deferred past the warning time (called once per mail; again later if it
   * throws). `giveUpAt` is when the queue stops trying, epoch ms.
   */
  onDelayed: (mail: QueuedMail, recipients: RecipientReport[], giveUpAt: number) => Promise<void>;
  /** Current time in epoch ms (default `Date.now`). */
  clock?: () => number;
  /** Safety-net poll interval in ms (default 10 000); also how often unreported failures are looked for. */
  pollMs?: number;
  /** Due mails fetched per pass (default `max(50, 4 * concurrency)`). */
  batchSize?: number;
  /**
   * A copy of `mail` made for one recipient (e.g. with a List-Unsubscribe link naming them,
   * RFC 8058), or null: that recipient gets `mail.raw` with the others. Recipients with a copy
   * are delivered in SMTP transactions of their own, in the same attempt; their outcomes are
   * recorded with the others', so retries, failure reports and delay notices do not change.
   * Called at each attempt; a throw counts as a temporary failure of every recipient.
   */
  copyFor?: (mail: QueuedMail, address: string) => Promise<Buffer | null>;
  /** Told each recipient's outcome of an attempt once it is recorded (metrics). Must not throw. */
  onRecipientResult?: (outcome: RecipientResult) => void;
}

/** One recipient's outcome of one attempt, for {@link OutboundQueueOptions.onRecipientResult}. */
export interface RecipientResult {
  /** `sent` (the remote server's 250), `deferred` (retried later) or `failed` (for good). */
  result: "sent" | "deferred" | "failed";
  /** Which attempt of the mail this was, 1 for the first. */
  attempt: number;
  /** Time from the mail's `createdAt` (the Matrix event) to the end of the attempt, in ms. */
  ageMs: number;
}

/**
 * Delay before the next attempt after the n-th failed attempt, in ms: 1 min, 5 min, 15 min,
 * 30 min, 1 h, then every 2 h.
 */
export const RETRY_BACKOFF_MS: readonly number[] = [60_000, 5 * 60_000, 15 * 60_000, 30 * 60_000, 60 * 60_000, 2 * 60 * 60_000];

/**
 * The backoff step for a mail.
 * @param failedAttempts failed attempts so far including the current one (>= 1).
 * @returns delay in ms, {@link RETRY_BACKOFF_MS} capped at its last value (2 h).
 */
export function retryDelayMs(failedAttempts: number): number {
  const i = Math.min(Math.max(failedAttempts, 1), RETRY_BACKOFF_MS.length) - 1;
  return RETRY_BACKOFF_MS[i] ?? 2 * 60 * 60_000;
}

const HOUR_MS = 3_600_000;

/** Unreported failures looked at per sweep. */
const SWEEP_LIMIT = 200;

/**
 * The text shown for an outcome: the server's reply as it came (`550 5.1.1 No such user`), or
 * the error message prefixed with its (synthetic) code, e.g. `556 5.1.10 x.example does not accept mail (null MX)`.
 */
function replyText(o: RecipientOutcome): string {
  const m = o.message.trim();
  if (o.code === undefined || m.startsWith(String(o.code))) return m;
  return `${o.code}${o.enhancedStatus ? ` ${o.enhancedStatus}` : ""} ${m}`;
}

function report(r: RecipientRecord): RecipientReport {
  return { address: r.address, code: r.lastCode, reply: r.lastReply ?? "(no reply recorded)" };
}

/**
 * Worker over the outbound mails of the store.
 *
 * A pass (util/worker.ts runs them: at start, on `kick()`, when a delivery finishes, when the
 * next mail falls due, and at least every `pollMs`):
 * 1. at start and then every `pollMs`: report failures that are recorded but not reported
 *    (mails being delivered right now excepted: their delivery reports them);
 * 2. start deliveries of due mails, oldest first, up to `concurrency` in flight, at most one
 *    per room (so a room's mails are first tried in the order they were queued; rooms go in
 *    parallel). A pass does not wait for its deliveries; each one kicks the worker when done.
 *    A pass looks at the first `batchSize` due mails only: a room with more due mails than
 *    that holds back the mails of other rooms queued after them until it has fewer.
 *
 * One delivery: `deliver` to the mail's remaining recipients, then per recipient
 * - accepted → `sent`;
 * - refused permanently (5yz, NXDOMAIN, null MX; see deliver.ts and routes.ts) → `failed`;
 * - temporary with retry time left → `deferred` until
 *   `min(now + retryDelayMs(attempts + 1), createdAt + maxRetryHours, warning time if not warned yet)`
 *   (the last try falls on the deadline; one falls on the warning time so its notice has a
 *   fresh reply);
 * - temporary at or past `createdAt + maxRetryHours` → `failed` ("gave up after N h: ...").
 * All recorded in one store transaction; then new failures go to `onRecipientsFailed` (and are
 * marked reported when it resolves), and a mail still deferred past the warning time goes to
 * `onDelayed` once (marked when it resolves). A `deliver` that throws counts as a temporary
 * failure of every recipient. A store failure is logged; the mail stays due and is tried again.
 */
export class OutboundQueue {
  readonly #opts: OutboundQueueOptions;
  readonly #clock: () => number;
  readonly #pollMs: number;
  readonly #concurrency: number;
  readonly #batchSize: number;
  readonly #worker: QueueWorker;
  /** Deliveries in flight (also reports in flight during a sweep), by mail id. */
  readonly #inflight = new Map<number, Promise<void>>();
  /** Rooms with a delivery in flight. */
  readonly #busyRooms = new Set<string>();
  /** Clock time of the next sweep for unreported failures (0: at the next pass). */
  #sweepDueAt = 0;

  /**
   * @param opts see {@link OutboundQueueOptions}.
   * @throws RangeError for a `concurrency` or `batchSize` that is not a positive integer, or a
   *   negative `maxRetryHours` / `delayWarningHours`.
   */
  constructor(opts: OutboundQueueOptions) {
    this.#opts = opts;
    this.#clock = opts.clock ?? Date.now;
    this.#pollMs = opts.pollMs ?? 10_000;
    this.#concurrency = opts.concurrency ?? 8;
    this.#batchSize = opts.batchSize ?? Math.max(50, 4 * this.#concurrency);
    if (!Number.isInteger(this.#concurrency) || this.#concurrency < 1) throw new RangeError(`outbound concurrency must be an integer >= 1, got ${this.#concurrency}`);
    if (!Number.isInteger(this.#batchSize) || this.#batchSize < 1) throw new RangeError(`outbound batchSize must be an integer >= 1, got ${this.#batchSize}`);
    if (!(opts.maxRetryHours >= 0)) throw new RangeError(`maxRetryHours must be >= 0, got ${opts.maxRetryHours}`);
    if (!(opts.delayWarningHours >= 0)) throw new RangeError(`delayWarningHours must be >= 0, got ${opts.delayWarningHours}`);
    this.#worker = new QueueWorker({ name: "outbound", pass: () => this.#pass(), pollMs: this.#pollMs, clock: this.#clock });
  }

  /** Start: a first pass now (reporting what a previous process left unreported), then as described above. Idempotent. */
  start(): void {
    if (!this.#worker.started) this.#sweepDueAt = 0;
    this.#worker.start();
  }

  /** A mail was committed: run a pass now (or right after the one in flight). Does nothing unless started. */
  kick(): void {
    this.#worker.kick();
  }

  /**
   * Resolves when no pass runs, no kick is pending and no delivery is in flight (tests, shutdown).
   * Never rejects.
   */
  async idle(): Promise<void> {
    for (;;) {
      await this.#worker.idle();
      if (this.#inflight.size === 0) return;
      await Promise.allSettled([...this.#inflight.values()]);
    }
  }

  /** Stop: no new passes or deliveries; resolves once the pass and the deliveries in flight have finished. */
  async stop(): Promise<void> {
    await this.#worker.stop();
    while (this.#inflight.size > 0) await Promise.allSettled([...this.#inflight.values()]);
  }

  async #pass(): Promise<PassResult> {
    const { store } = this.#opts;
    const now = this.#clock();
    if (now >= this.#sweepDueAt) {
      this.#sweepDueAt = now + this.#pollMs;
      await this.#sweep();
    }
    let started = 0;
    const free = this.#concurrency - this.#inflight.size;
    if (free > 0) {
      for (const mail of await store.listDueOutbound(now, this.#batchSize)) {
        if (started >= free) break;
        // One delivery per room at a time keeps a room's mails in order; a mail in flight is
        // still due in the store, and its room is busy, so it is skipped here too.
        if (this.#busyRooms.has(mail.roomId)) continue;
        this.#startDelivery(mail);
        started++;
      }
    }
    const next = await store.nextOutboundAttemptAt(now);
    return { didWork: started > 0, ...(next !== null ? { nextDueAt: next } : {}) };
  }

  #startDelivery(mail: QueuedMail): void {
    this.#busyRooms.add(mail.roomId);
    const task = this.#attempt(mail)
      .catch((err: unknown) => {
        log.error("outbound delivery attempt failed", { outboundId: mail.id, messageId: mail.messageId, roomId: mail.roomId, ...errorFields(err) });
      })
      .finally(() => {
        this.#inflight.delete(mail.id);
        this.#busyRooms.delete(mail.roomId);
        this.#worker.kick();
      });
    this.#inflight.set(mail.id, task);
  }

  /** Report failures left unreported (by a previous process, or a report that threw). */
  async #sweep(): Promise<void> {
    const { store } = this.#opts;
    const byMail = new Map<number, RecipientRecord[]>();
    for (const r of await store.listUnreportedOutboundFailures(SWEEP_LIMIT)) {
      if (this.#inflight.has(r.outboundId)) continue;
      const list = byMail.get(r.outboundId) ?? [];
      list.push(r);
      byMail.set(r.outboundId, list);
    }
    for (const [id, failures] of byMail) {
      const mail = await store.getOutboundById(id);
      if (!mail) {
        log.error("unreported outbound failure without its mail", { outboundId: id, recipients: failures.map((f) => f.address) });
        continue;
      }
      const task = this.#reportFailures(mail, failures);
      this.#inflight.set(id, task);
      try {
        await task;
      } finally {
        this.#inflight.delete(id);
      }
    }
  }

  /** Report `failures` of `mail`; marks them reported when the callback resolves. Never rejects (logs). */
  async #reportFailures(mail: QueuedMail, failures: RecipientRecord[]): Promise<void> {
    const ctx = { outboundId: mail.id, messageId: mail.messageId, roomId: mail.roomId, recipients: failures.map((f) => f.address) };
    try {
      await this.#opts.onRecipientsFailed(mail, failures.map(report));
    } catch (err) {
      log.error("reporting failed outbound recipients failed, will retry", { ...ctx, ...errorFields(err) });
      return;
    }
    try {
      await this.#opts.store.markOutboundRecipientsReported(mail.id, failures.map((f) => f.address));
      log.info("failed outbound recipients reported", ctx);
    } catch (err) {
      log.error("failed outbound recipients reported, but not marked: a restart may report them again", { ...ctx, ...errorFields(err) });
    }
  }

  /**
   * Deliver `mail` to its remaining recipients: those without a copy of their own
   * ({@link OutboundQueueOptions.copyFor}) together, each other one alone with its copy; all
   * at once. A `deliver` run that throws counts as a temporary failure of its own recipients.
   * @returns every recipient's outcome
   * @throws what `copyFor` throws (or `deliver`, when there is no `copyFor`)
   */
  async #deliver(mail: QueuedMail): Promise<DeliveryResult> {
    const { deliver, copyFor } = this.#opts;
    const from = mail.envelopeFrom;
    if (!copyFor) return deliver(mail.raw, { from, to: mail.recipients });
    const copies = await Promise.all(mail.recipients.map(async (address) => ({ address, raw: await copyFor(mail, address) })));
    const shared = copies.filter((c) => c.raw === null).map((c) => c.address);
    const runs: { raw: Buffer; to: string[] }[] = shared.length > 0 ? [{ raw: mail.raw, to: shared }] : [];
    for (const c of copies) if (c.raw !== null) runs.push({ raw: c.raw, to: [c.address] });
    // One run that throws must not turn the others' accepted recipients into retries (sent twice).
    const settled = await Promise.allSettled(runs.map((r) => deliver(r.raw, { from, to: r.to })));
    return {
      recipients: settled.flatMap((s, i) => {
        if (s.status === "fulfilled") return s.value.recipients;
        log.error("outbound deliver threw", { outboundId: mail.id, messageId: mail.messageId, roomId: mail.roomId, ...errorFields(s.reason) });
        const message = s.reason instanceof Error ? s.reason.message : String(s.reason);
        return runs[i]!.to.map((address) => ({ address, status: "temporary" as const, message }));
      }),
    };
  }

  /** One delivery attempt of `mail`, recorded, then reported. */
  async #attempt(mail: QueuedMail): Promise<void> {
    const { store, maxRetryHours, delayWarningHours } = this.#opts;
    const ctx = { outboundId: mail.id, messageId: mail.messageId, roomId: mail.roomId };

    let result: DeliveryResult;
    try {
      result = await this.#deliver(mail);
    } catch (err) {
      // deliver() reports failures as outcomes; a throw is unexpected: treat all as temporary.
      log.error("outbound deliver threw", { ...ctx, ...errorFields(err) });
      const message = err instanceof Error ? err.message : String(err);
      result = { recipients: mail.recipients.map((address) => ({ address, status: "temporary", message })) };
    }
    const byAddress = new Map(result.recipients.map((o) => [o.address, o]));

    const now = this.#clock();
    const deadline = mail.createdAt + maxRetryHours * HOUR_MS;
    const warnAt = delayWarningHours > 0 ? mail.createdAt + delayWarningHours * HOUR_MS : null;
    const warnPending = warnAt !== null && mail.delayWarnedAt === null && warnAt < deadline;
    let next = Math.min(now + retryDelayMs(mail.attempts + 1), deadline);
    if (warnPending && warnAt !== null && warnAt > now) next = Math.min(next, warnAt);

    const updates: RecipientUpdate[] = mail.recipients.map((address) => {
      const o: RecipientOutcome = byAddress.get(address) ?? { address, status: "temporary", message: "no delivery outcome" };
      const reply = replyText(o);
      const code = o.code ?? null;
      const fields = { ...ctx, recipient: address, code, host: o.host, reply };
      if (o.status === "sent") {
        log.info("outbound recipient accepted", fields);
        return { address, state: "sent", code, reply, nextAttemptAt: null };
      }
      if (o.status === "permanent") {
        log.warn("outbound recipient failed permanently", fields);
        return { address, state: "failed", code, reply, nextAttemptAt: null };
      }
      if (now < deadline) {
        log.info("outbound recipient deferred", { ...fields, nextAttemptAt: next });
        return { address, state: "deferred", code, reply, nextAttemptAt: next };
      }
      log.warn("outbound recipient given up", { ...fields, maxRetryHours });
      return { address, state: "failed", code, reply: `gave up after ${maxRetryHours} h: ${reply}`, nextAttemptAt: null };
    });

    const { state, recipients } = await store.recordOutboundAttempt(mail.id, updates, next);
    for (const u of updates) this.#opts.onRecipientResult?.({ result: u.state, attempt: mail.attempts + 1, ageMs: now - mail.createdAt });
    if (state !== "deferred") log.info("outbound mail done", { ...ctx, state, recipients: recipients.length });

    const unreported = recipients.filter((r) => r.state === "failed" && !r.reported);
    if (unreported.length > 0) await this.#reportFailures(mail, unreported);

    if (state === "deferred" && warnPending && warnAt !== null && now >= warnAt) {
      const delayed = recipients.filter((r) => r.state === "deferred" || r.state === "pending").map(report);
      try {
        await this.#opts.onDelayed(mail, delayed, deadline);
      } catch (err) {
        log.error("reporting delayed outbound mail failed, will retry at the next attempt", { ...ctx, ...errorFields(err) });
        return;
      }
      await store.markOutboundDelayWarned(mail.id, now);
      log.info("delayed outbound mail reported", { ...ctx, recipients: delayed.map((d) => d.address) });
    }
  }
}
