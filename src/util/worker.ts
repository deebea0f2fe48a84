/**
 * One shape for the bridge's queue workers (outbound delivery, inbound posting, ...).
 *
 * A worker runs a *pass* function over and over, never two at once:
 * - `kick()` (after a commit) runs a pass at once; a kick during a pass runs another pass
 *   right after it, however many kicks came in;
 * - a pass that did work runs again at once (there may be more);
 * - an idle worker sleeps until the earliest due time the pass reported, but never longer
 *   than the safety-net poll interval (work committed by another process, a lost kick);
 * - a pass that throws is logged and retried after an exponential backoff with jitter
 *   ({@link backoffMs}), again bounded by the poll interval; a kick still wakes it at once.
 */
import { errorFields, getLogger } from "./logger.ts";

const log = getLogger("util/worker");

/** Parameters of {@link backoffMs}. */
export interface BackoffOptions {
  /** Delay of the first attempt before jitter, in ms (>= 0). */
  baseMs: number;
  /** Upper bound of the delay before jitter, in ms (>= baseMs). */
  maxMs: number;
  /**
   * Fraction of the delay that is random, 0..1: the result lies in
   * `[delay * (1 - jitter), delay]`. 0 is deterministic; 1 is "full jitter".
   */
  jitter: number;
  /** Random source in [0, 1) (default `Math.random`; tests pass a constant). */
  random?: () => number;
}

/**
 * Exponential backoff with jitter: `min(maxMs, baseMs * 2^(attempt - 1))`, then reduced by a
 * random share of at most `jitter` of itself, so that many clients failing together do not
 * retry together.
 *
 * Pure apart from `random`. Examples with baseMs 1000, maxMs 60 000, jitter 0:
 * attempt 1 → 1000, 2 → 2000, 3 → 4000, ..., 7 → 60 000 (capped), 100 → 60 000.
 *
 * @param attempt the failed attempt being followed up, 1 for the first failure (integer >= 1).
 * @param opts base and maximum delay (ms) and jitter fraction; see {@link BackoffOptions}.
 * @returns the delay in whole ms, between `round(d * (1 - jitter))` and `d`, where d is the capped delay.
 * @throws RangeError when `attempt` is not an integer >= 1, `baseMs` < 0, `maxMs` < `baseMs`,
 *   or `jitter` is outside 0..1.
 */
export function backoffMs(attempt: number, opts: BackoffOptions): number {
  const { baseMs, maxMs, jitter } = opts;
  if (!Number.isInteger(attempt) || attempt < 1) throw new RangeError(`backoff attempt must be an integer >= 1, got ${attempt}`);
  if (!Number.isFinite(baseMs) || baseMs < 0) throw new RangeError(`backoff baseMs must be >= 0, got ${baseMs}`);
  if (!Number.isFinite(maxMs) || maxMs < baseMs) throw new RangeError(`backoff maxMs must be >= baseMs, got ${maxMs}`);
  if (!Number.isFinite(jitter) || jitter < 0 || jitter > 1) throw new RangeError(`backoff jitter must be within 0..1, got ${jitter}`);
  // 2^(attempt-1) overflows to Infinity for large attempts; the cap handles it.
  const delay = Math.min(maxMs, baseMs * 2 ** (attempt - 1));
  const r = Math.min(Math.max((opts.random ?? Math.random)(), 0), 1);
  return Math.round(delay * (1 - jitter * r));
}

/** What one pass reports to its {@link QueueWorker}. */
export interface PassResult {
  /** The pass handled something: the worker runs the next pass at once (there may be more). */
  didWork: boolean;
  /**
   * Epoch ms (worker clock) when the earliest known item falls due. An idle worker wakes then,
   * or after the poll interval if that comes first. Omitted: sleep for the poll interval.
   */
  nextDueAt?: number;
}

/** Options of {@link QueueWorker}. */
export interface QueueWorkerOptions {
  /** Name in log lines, e.g. `outbound`. */
  name: string;
  /** One pass over the queue. Throwing counts as a failed pass (logged, retried with backoff). */
  pass: () => Promise<PassResult>;
  /** Safety-net interval in ms: an idle worker runs a pass at least this often (default 10 000). */
  pollMs?: number;
  /** Backoff after failed passes (default: base 1000 ms, max `pollMs`, jitter 0.2). */
  errorBackoff?: BackoffOptions;
  /** Clock in epoch ms, the one `nextDueAt` is measured with (default `Date.now`). */
  clock?: () => number;
}

/**
 * Shortest sleep in ms: a pass that reports a due time already past without doing work would
 * otherwise spin.
 */
const MIN_SLEEP_MS = 10;

/**
 * A generic queue worker; see the module comment for the scheduling rules.
 *
 * Lifecycle: `start()` runs a first pass and keeps the worker going; `kick()` before
 * `start()` or after `stop()` does nothing; `stop()` waits for the pass in flight;
 * `start()` again resumes.
 */
export class QueueWorker {
  readonly #opts: QueueWorkerOptions;
  readonly #pollMs: number;
  readonly #clock: () => number;
  readonly #backoff: BackoffOptions;
  #started = false;
  /** A kick that no pass has covered yet. */
  #pending = false;
  #running: Promise<void> | null = null;
  #timer: NodeJS.Timeout | null = null;
  #failures = 0;
  #idleWaiters: (() => void)[] = [];

  /**
   * @param opts see {@link QueueWorkerOptions}.
   * @throws RangeError when `pollMs` is not a positive number.
   */
  constructor(opts: QueueWorkerOptions) {
    this.#opts = opts;
    this.#pollMs = opts.pollMs ?? 10_000;
    if (!(this.#pollMs > 0)) throw new RangeError(`worker pollMs must be > 0, got ${this.#pollMs}`);
    this.#clock = opts.clock ?? Date.now;
    this.#backoff = opts.errorBackoff ?? { baseMs: Math.min(1000, this.#pollMs), maxMs: this.#pollMs, jitter: 0.2 };
  }

  /** Whether the worker is started (and not stopped). */
  get started(): boolean {
    return this.#started;
  }

  /** Start working: a pass runs now, then as the rules say. Idempotent. */
  start(): void {
    if (this.#started) return;
    this.#started = true;
    this.kick();
  }

  /**
   * Ask for a pass now (e.g. right after a commit). During a pass, one more pass follows it.
   * Does nothing unless started.
   */
  kick(): void {
    if (!this.#started) return;
    this.#pending = true;
    if (this.#running) return;
    this.#clearTimer();
    this.#running = this.#loop().finally(() => {
      this.#running = null;
      // A kick that came in after the loop's last check but before this point.
      if (this.#started && this.#pending) this.kick();
      else this.#resolveIdle();
    });
  }

  /**
   * Resolves when no pass runs and no kick is pending (sleeping counts as idle). For tests and
   * shutdown; never rejects.
   */
  idle(): Promise<void> {
    if (!this.#running && !this.#pending) return Promise.resolve();
    return new Promise((resolve) => this.#idleWaiters.push(resolve));
  }

  /** Stop: no more passes, the timer is cleared; resolves once the pass in flight (if any) has finished. */
  async stop(): Promise<void> {
    this.#started = false;
    this.#pending = false;
    this.#clearTimer();
    while (this.#running) await this.#running;
    this.#resolveIdle();
  }

  async #loop(): Promise<void> {
    let sleepMs = this.#pollMs;
    while (this.#started && this.#pending) {
      this.#pending = false;
      let result: PassResult;
      try {
        result = await this.#opts.pass();
        this.#failures = 0;
      } catch (err) {
        this.#failures++;
        sleepMs = backoffMs(this.#failures, this.#backoff);
        log.error("worker pass failed", { worker: this.#opts.name, failures: this.#failures, retryInMs: sleepMs, ...errorFields(err) });
        // Kicks that came in during the failed pass wait for the backoff; new kicks wake it at once.
        this.#pending = false;
        break;
      }
      if (result.didWork) {
        this.#pending = true;
        continue;
      }
      sleepMs = result.nextDueAt === undefined ? this.#pollMs : Math.min(this.#pollMs, Math.max(MIN_SLEEP_MS, result.nextDueAt - this.#clock()));
    }
    if (this.#started) this.#schedule(sleepMs);
  }

  #schedule(ms: number): void {
    this.#clearTimer();
    this.#timer = setTimeout(() => {
      this.#timer = null;
      this.kick();
    }, Math.min(ms, this.#pollMs));
    this.#timer.unref();
  }

  #clearTimer(): void {
    if (this.#timer) clearTimeout(this.#timer);
    this.#timer = null;
  }

  #resolveIdle(): void {
    if (this.#running || this.#pending) return;
    for (const resolve of this.#idleWaiters.splice(0)) resolve();
  }
}
