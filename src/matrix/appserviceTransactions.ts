/**
 * Appservice transactions, durably: journal first, answer 200, then handle.
 *
 * The homeserver pushes room events in transactions, `PUT /_matrix/app/v1/transactions/{txnId}`,
 * and retries a transaction until it is answered 200; the same transaction ID must be
 * idempotent (Application Service API › Pushing events). matrix-appservice answers 200 as soon
 * as it has emitted the events, without waiting for any handler (app-service.js `onTransaction`),
 * so a crash after the 200 lost the events. Here:
 *
 * 1. {@link AppserviceTransactions.record} (called by the front handler, ./appserviceHttp.ts,
 *    which reads the body itself; the library never sees a transaction) validates the body and
 *    commits the transaction ID and its room events to the journal ({@link MatrixEventJournal},
 *    the bridge's store, migration 4) in one transaction. Only then does the front handler
 *    answer 200. A transaction ID already journaled is a no-op (200 again); an event ID already
 *    journaled is not recorded again; both hold across restarts.
 * 2. Once the response is finished, the dispatcher (a util/worker.ts QueueWorker) hands each
 *    pending event to the handler (the bridge's `MatrixEventSink.onMatrixEvent`): one room's
 *    events one at a time in arrival order, different rooms concurrently (up to `concurrency`).
 *    Resolved → `done`. Thrown → retried with exponential backoff, at most `maxAttempts` runs in
 *    all, then `failed` (logged once, at error level). The journal, not memory, is the queue: on
 *    start, events left pending by a crash are handled again. Handlers must therefore be
 *    idempotent on the event ID (the outbound queue is keyed by it).
 *
 * What is not recorded, deliberately:
 * - events sent by the bridge's own users (the bot, users in an exclusive namespace of the
 *   registration): the "echo" that matrix-appservice-bridge's `suppressEcho` dropped before, by
 *   the same rule;
 * - malformed entries of `events` (not a room event with string `event_id`, `room_id`, `type`,
 *   `sender` and an object `content`): they cannot be keyed or handled; logged (warn) with the
 *   transaction ID, and skipped rather than refusing the transaction, which the homeserver
 *   would retry forever, holding back every later event;
 * - everything in the body besides `events`: ephemeral events (`ephemeral`,
 *   `de.sorunome.msc2409.ephemeral`: typing, receipts, presence), to-device messages
 *   (`to_device`, `de.sorunome.msc2409.to_device`) and device list / one-time-key counts
 *   (`device_lists`, `device_one_time_keys_count`, `device_unused_fallback_key_types`, and
 *   their `org.matrix.msc3202.` forms). They are counted in the transaction's debug log line,
 *   by key. With end-to-end encryption on, the crypto data among them goes to the `crypto`
 *   option (./e2ee/E2ee.ts) before the journal commit: machines fed, requests sent, state
 *   saved; only then the commit and the 200.
 */
import type { WeakEvent } from "matrix-appservice-bridge";
import type { JournalEventInput, JournaledEvent, MatrixEventJournal } from "../bridge/ports.ts";
import { errorFields, getLogger } from "../util/logger.ts";
import { backoffMs, QueueWorker, type BackoffOptions } from "../util/worker.ts";
import { TransactionBodyError, type RecordedTransaction, type TransactionReceiver } from "./appserviceHttp.ts";
import { failpoint } from "./failpoint.ts";

const log = getLogger("matrix/transactions");

/** Handler runs of one event, in all, before it is marked `failed`. */
export const DEFAULT_MAX_ATTEMPTS = 8;
/** Default window for retrying temporary failures: 48 h, like the inbound queue (a homeserver outage of a day loses nothing). */
export const DEFAULT_RETRY_WINDOW_MS = 48 * 3_600_000;
/** Backoff between runs of a failing event: 1 s, 2 s, 4 s … capped at 60 s (about 2 min in all). */
export const DEFAULT_RETRY_BACKOFF: BackoffOptions = { baseMs: 1000, maxMs: 60_000, jitter: 0.2 };
/** Rooms whose events are handled at once. */
export const DEFAULT_CONCURRENCY = 4;
/** How long finished events and transaction IDs are kept, in ms (7 days). */
export const DEFAULT_RETENTION_MS = 7 * 24 * 3600 * 1000;
/** How often old journal rows are pruned, in ms. */
const PRUNE_INTERVAL_MS = 3600 * 1000;
/** Room heads read per dispatcher pass. */
const HEADS_PER_PASS = 1000;
/**
 * How long a room waits when the outcome of its event could not be written (journal down), in
 * ms: the event is still pending, and handling it again at once would spin.
 */
const UNRECORDED_OUTCOME_PAUSE_MS = 5000;

/** Options of {@link AppserviceTransactions}. */
export interface AppserviceTransactionsOptions {
  /** Where transactions and events are journaled (the bridge's store). */
  journal: MatrixEventJournal;
  /** Handles one room event; resolves once the bridge is done with it, throws to get a retry. */
  handle: (event: WeakEvent) => Promise<void>;
  /** Whether a sender is one of the bridge's own users (bot, exclusive namespace): its events are not journaled. */
  isOwnUser: (userId: string) => boolean;
  /** Handler runs per event before `failed` (>= 1); default {@link DEFAULT_MAX_ATTEMPTS}. Temporary failures do not count while within `retryWindowMs`. */
  maxAttempts?: number;
  /**
   * Whether a handler's error may go away by itself (homeserver down, 5xx, 429, network, store
   * down): such an event is retried with backoff for `retryWindowMs` after it was journaled,
   * however many runs that takes. Default: nothing is temporary.
   */
  isTemporary?: (err: unknown) => boolean;
  /** How long temporary failures are retried, in ms from journaling; default {@link DEFAULT_RETRY_WINDOW_MS}. */
  retryWindowMs?: number;
  /** Backoff between runs; default {@link DEFAULT_RETRY_BACKOFF}. */
  retryBackoff?: BackoffOptions;
  /** Rooms handled at once (>= 1); default {@link DEFAULT_CONCURRENCY}. */
  concurrency?: number;
  /** Safety-net poll interval of the dispatcher, in ms (default 10 000). */
  pollMs?: number;
  /** Retention of finished events and transaction IDs, in ms; default {@link DEFAULT_RETENTION_MS}. */
  retentionMs?: number;
  /** Clock in epoch ms (default `Date.now`). */
  clock?: () => number;
  /**
   * End-to-end encryption (./e2ee/E2ee.ts): takes each transaction's to-device events, device
   * lists and key counts, sends the crypto machines' requests and saves their state, before
   * the journal commit and the 200; a throw refuses the transaction (500, retried).
   */
  crypto?: { ingest(txnId: string, body: Record<string, unknown>): Promise<void> };
  /**
   * Called when {@link AppserviceTransactions.record} refuses a well-formed transaction (the
   * crypto step or the journal commit failed; the homeserver holds it and retries), with the error.
   */
  onRefused?: (err: unknown) => void;
  /** Called when {@link AppserviceTransactions.record} has journaled a transaction (or found it journaled before). */
  onRecorded?: () => void;
}

/** A transaction body, validated: the room events to journal and what was left out. */
export interface ParsedTransaction {
  /** Room events to journal, in body order. */
  events: JournalEventInput[];
  /** Events of the bridge's own users, not journaled. */
  echoes: number;
  /** Malformed entries of `events`, skipped (their indexes in `events`). */
  malformed: number[];
  /** Other top-level fields (ephemeral, to-device, device lists …), ignored: key → entry count. */
  ignored: Record<string, number>;
}

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === "object" && v !== null && !Array.isArray(v);
}

/** Whether `e` has what the bridge needs of a room event (Client-Server API › ClientEvent). */
function isRoomEvent(e: unknown): e is WeakEvent {
  if (!isObject(e)) return false;
  const nonEmpty = (v: unknown) => typeof v === "string" && v.length > 0;
  return nonEmpty(e.event_id) && nonEmpty(e.room_id) && nonEmpty(e.type) && typeof e.sender === "string" && isObject(e.content);
}

/**
 * Validate an appservice transaction body (Application Service API › Pushing events) and pick
 * out the room events to journal. Pure.
 * @param body the parsed JSON body
 * @param isOwnUser see {@link AppserviceTransactionsOptions.isOwnUser}
 * @returns the events to journal and counts of what was left out (see the module comment)
 * @throws TransactionBodyError when the body is not a JSON object or `events` is present but not
 *   an array (the front handler answers 400 M_BAD_JSON). A missing `events` counts as empty.
 */
export function parseTransaction(body: unknown, isOwnUser: (userId: string) => boolean): ParsedTransaction {
  if (!isObject(body)) throw new TransactionBodyError("transaction body is not a JSON object");
  const raw = body.events ?? [];
  if (!Array.isArray(raw)) throw new TransactionBodyError("transaction `events` is not an array");
  const out: ParsedTransaction = { events: [], echoes: 0, malformed: [], ignored: {} };
  raw.forEach((e: unknown, i) => {
    if (!isRoomEvent(e)) {
      out.malformed.push(i);
    } else if (isOwnUser(e.sender)) {
      out.echoes++;
    } else {
      out.events.push({ eventId: e.event_id, roomId: e.room_id, json: JSON.stringify(e) });
    }
  });
  // Ephemeral events, to-device messages, device lists, key counts: not used by the bridge yet.
  for (const [key, value] of Object.entries(body)) {
    if (key === "events") continue;
    out.ignored[key] = Array.isArray(value) ? value.length : isObject(value) ? Object.keys(value).length : 1;
  }
  return out;
}

/**
 * Journals appservice transactions before their 200 and dispatches their events to the
 * bridge afterwards; see the module comment. Plug into the front handler as its
 * {@link TransactionReceiver}; {@link start} the dispatcher once the handler may run.
 */
export class AppserviceTransactions implements TransactionReceiver {
  readonly #opts: AppserviceTransactionsOptions;
  readonly #maxAttempts: number;
  readonly #backoff: BackoffOptions;
  readonly #concurrency: number;
  readonly #retentionMs: number;
  readonly #clock: () => number;
  readonly #worker: QueueWorker;
  /** The event being handled, per room. */
  readonly #inFlight = new Map<string, Promise<void>>();
  /** Rooms paused after an outcome could not be recorded: room → epoch ms when they may go on. */
  readonly #paused = new Map<string, number>();
  #lastPrune = Number.NEGATIVE_INFINITY;

  /**
   * @param opts see {@link AppserviceTransactionsOptions}
   * @throws RangeError when `maxAttempts` or `concurrency` is not an integer >= 1
   */
  constructor(opts: AppserviceTransactionsOptions) {
    this.#opts = opts;
    this.#maxAttempts = opts.maxAttempts ?? DEFAULT_MAX_ATTEMPTS;
    this.#concurrency = opts.concurrency ?? DEFAULT_CONCURRENCY;
    if (!Number.isInteger(this.#maxAttempts) || this.#maxAttempts < 1) throw new RangeError(`maxAttempts must be an integer >= 1, got ${this.#maxAttempts}`);
    if (!Number.isInteger(this.#concurrency) || this.#concurrency < 1) throw new RangeError(`concurrency must be an integer >= 1, got ${this.#concurrency}`);
    this.#backoff = opts.retryBackoff ?? DEFAULT_RETRY_BACKOFF;
    this.#retentionMs = opts.retentionMs ?? DEFAULT_RETENTION_MS;
    this.#clock = opts.clock ?? Date.now;
    this.#worker = new QueueWorker({ name: "matrix-events", pass: () => this.#pass(), pollMs: opts.pollMs, clock: this.#clock });
  }

  /**
   * Validate transaction `txnId` and commit it with its room events to the journal. Resolves
   * after the commit: the caller may answer 200 then, and must call the returned
   * `afterResponse` once the response is finished (or the connection is gone), which starts
   * handling. A transaction ID journaled before commits nothing and resolves the same way.
   *
   * Failpoint `after-journal-commit` (./failpoint.ts) fires here, after a commit that recorded
   * new events.
   * @param txnId the homeserver's transaction ID (path parameter, decoded)
   * @param body the parsed JSON body
   * @throws TransactionBodyError for a malformed body (nothing is written)
   * @throws the crypto step's or the journal's error when either fails (nothing is recorded; the
   *   homeserver retries; `onRefused` has been called)
   */
  async record(txnId: string, body: unknown): Promise<RecordedTransaction> {
    const parsed = parseTransaction(body, this.#opts.isOwnUser);
    let result: { duplicate: boolean; recorded: number };
    try {
      // Crypto first: room keys must be saved before the events they decrypt are journaled.
      if (this.#opts.crypto) await this.#opts.crypto.ingest(txnId, body as Record<string, unknown>);
      if (parsed.malformed.length > 0) {
        log.warn("appservice transaction has malformed events: skipped", { txnId, indexes: parsed.malformed.slice(0, 20), count: parsed.malformed.length });
      }
      result = await this.#opts.journal.recordAppserviceTransaction(txnId, parsed.events);
    } catch (err) {
      this.#opts.onRefused?.(err);
      throw err;
    }
    this.#opts.onRecorded?.();
    const { duplicate, recorded } = result;
    log.debug(duplicate ? "appservice transaction replayed: already recorded" : "appservice transaction recorded", {
      txnId,
      events: parsed.events.length,
      recorded,
      echoes: parsed.echoes,
      ignored: parsed.ignored,
    });
    if (recorded > 0) failpoint("after-journal-commit", { txnId, recorded });
    return {
      duplicate,
      afterResponse: () => {
        if (recorded > 0) failpoint("after-txn-ack", { txnId, recorded });
        this.#worker.kick();
      },
    };
  }

  /** Start handling journaled events (those left pending by a previous run first). Idempotent. */
  start(): void {
    this.#worker.start();
  }

  /** Ask for a dispatcher pass now (e.g. after a commit made elsewhere). Does nothing unless started. */
  kick(): void {
    this.#worker.kick();
  }

  /**
   * Stop dispatching and wait for the events being handled. Events journaled meanwhile stay
   * pending until the next {@link start}.
   */
  async stop(): Promise<void> {
    await this.#worker.stop();
    while (this.#inFlight.size > 0) await Promise.all([...this.#inFlight.values()]);
  }

  /** Number of rooms with an event being handled now (for tests). */
  get busyRooms(): number {
    return this.#inFlight.size;
  }

  /**
   * One dispatcher pass: prune if due, then start the head of every idle room that is due,
   * up to the concurrency. Finished events kick the next pass.
   */
  async #pass(): Promise<{ didWork: boolean; nextDueAt?: number }> {
    const now = this.#clock();
    if (now - this.#lastPrune >= PRUNE_INTERVAL_MS) {
      this.#lastPrune = now;
      await this.#prune(now);
    }
    if (this.#inFlight.size >= this.#concurrency) return { didWork: false };
    const heads = await this.#opts.journal.listMatrixEventHeads(HEADS_PER_PASS);
    let nextDueAt: number | undefined;
    for (const head of heads) {
      if (this.#inFlight.has(head.roomId)) continue;
      const pausedUntil = this.#paused.get(head.roomId) ?? 0;
      if (pausedUntil <= now) this.#paused.delete(head.roomId);
      const dueAt = Math.max(head.nextAttemptAt, pausedUntil);
      if (dueAt > now) {
        nextDueAt = nextDueAt === undefined ? dueAt : Math.min(nextDueAt, dueAt);
        continue;
      }
      if (this.#inFlight.size >= this.#concurrency) break;
      const run = this.#run(head).finally(() => {
        this.#inFlight.delete(head.roomId);
        this.#worker.kick();
      });
      this.#inFlight.set(head.roomId, run);
    }
    return nextDueAt === undefined ? { didWork: false } : { didWork: false, nextDueAt };
  }

  /** Delete journal rows past the retention; a failure is logged and retried at the next interval. */
  async #prune(now: number): Promise<void> {
    try {
      const { events, txns } = await this.#opts.journal.pruneMatrixJournal(now - this.#retentionMs);
      if (events > 0 || txns > 0) log.info("appservice journal pruned", { events, txns, retentionMs: this.#retentionMs });
    } catch (err) {
      log.error("appservice journal could not be pruned", errorFields(err));
    }
  }

  /** Handle one journaled event and record the outcome. Never rejects: failures are logged here. */
  async #run(head: JournaledEvent): Promise<void> {
    const ctx = { txnId: head.txnId, eventId: head.eventId, roomId: head.roomId };
    let type: unknown;
    try {
      const event = JSON.parse(head.json) as WeakEvent;
      type = event.type;
      await this.#opts.handle(event);
    } catch (err) {
      await this.#failed(head, ctx, type, err);
      return;
    }
    try {
      await this.#opts.journal.markMatrixEventDone(head.eventId);
    } catch (err) {
      // Still pending: handled again after a pause (handlers are idempotent on the event ID).
      this.#paused.set(head.roomId, this.#clock() + UNRECORDED_OUTCOME_PAUSE_MS);
      log.error("Matrix event handled but not marked done", { ...ctx, retryInMs: UNRECORDED_OUTCOME_PAUSE_MS, ...errorFields(err) });
    }
  }

  /** A handler run threw: schedule a retry, or give up after the last attempt. */
  async #failed(head: JournaledEvent, ctx: Record<string, string>, type: unknown, err: unknown): Promise<void> {
    const attempts = head.attempts + 1;
    const message = errorFields(err).error as string;
    const keepTrying = (this.#opts.isTemporary?.(err) ?? false) && this.#clock() - head.receivedAt < (this.#opts.retryWindowMs ?? DEFAULT_RETRY_WINDOW_MS);
    try {
      if (attempts >= this.#maxAttempts && !keepTrying) {
        await this.#opts.journal.markMatrixEventFailed(head.eventId, message);
        log.error("Matrix event failed: giving up", { ...ctx, type, attempts, ...errorFields(err) });
      } else {
        const delay = backoffMs(attempts, this.#backoff);
        await this.#opts.journal.markMatrixEventRetry(head.eventId, message, this.#clock() + delay);
        log.warn("Matrix event failed: will retry", { ...ctx, type, attempts, retryInMs: delay, ...errorFields(err) });
      }
    } catch (markErr) {
      this.#paused.set(head.roomId, this.#clock() + UNRECORDED_OUTCOME_PAUSE_MS);
      log.error("Matrix event failed and its failure could not be recorded", { ...ctx, type, attempts, retryInMs: UNRECORDED_OUTCOME_PAUSE_MS, ...errorFields(err), markError: errorFields(markErr).error });
    }
  }
}
