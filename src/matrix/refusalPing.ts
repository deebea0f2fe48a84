/**
 * Ending the homeserver's backoff after the bridge refused appservice transactions.
 *
 * A transaction the bridge cannot journal (its store is away, or the crypto device is not open
 * yet) is answered 500 (./appserviceHttp.ts): the homeserver keeps it and marks the appservice
 * down. Synapse then retries on its own schedule, 2 s after the refusal and doubling up to
 * 512 s (synapse/appservice/scheduler.py, `_Recoverer`), and sends nothing newer meanwhile:
 * after a store outage of a minute, Matrix messages waited another minute before they were
 * mailed; after ten minutes, up to 8.5 more.
 *
 * {@link RefusalPing} asks the homeserver for an appservice ping (./appservicePing.ts) on the
 * bridge's own, shorter schedule while transactions are being refused: first
 * {@link RefusalPingOptions.firstDelayMs} after a refusal, then doubling up to
 * {@link RefusalPingOptions.maxDelayMs}. After a ping that reached the bridge Synapse retries at
 * once (`force_retry`); a retry refused again schedules the next ping. Once a transaction is
 * journaled, the schedule starts again from its first delay. A homeserver without the ping
 * (older than spec v1.7) is not asked again.
 */
import { errorFields, getLogger } from "../util/logger.ts";

const log = getLogger("matrix/refusal-ping");

/** How a ping went, as far as the schedule cares. */
export type RefusalPingOutcome =
  /** The homeserver reached the bridge (it now retries what it holds), or could not: ask again if refused again. */
  | "asked"
  /** The homeserver has no appservice ping: asking again is pointless. */
  | "unsupported"
  /** Nothing was asked: the bridge has not started yet (its start-up ping follows) or is stopping. */
  | "not asked";

/** Options of {@link RefusalPing}. */
export interface RefusalPingOptions {
  /** Ask the homeserver for a ping and log how it went; never throws. */
  ping: () => Promise<RefusalPingOutcome>;
  /** Wait after the first refusal (and after a journaled transaction), ms; default {@link DEFAULT_FIRST_DELAY_MS}. */
  firstDelayMs?: number;
  /** Longest wait between two pings while refusals go on, ms; default {@link DEFAULT_MAX_DELAY_MS}. */
  maxDelayMs?: number;
}

/** Default first wait, ms: long enough for a store blip to pass, far shorter than Synapse's 2 s. */
export const DEFAULT_FIRST_DELAY_MS = 1000;

/**
 * Default longest wait between pings, ms: once the store is back, held Matrix messages go out
 * within about this long. Each ping during an outage costs one refused retry (a logged error).
 */
export const DEFAULT_MAX_DELAY_MS = 10_000;

/** The schedule; see the module comment. One per appservice listener. */
export class RefusalPing {
  readonly #ping: () => Promise<RefusalPingOutcome>;
  readonly #firstDelayMs: number;
  readonly #maxDelayMs: number;
  #delayMs: number;
  /** A refusal not yet answered by a ping. */
  #pending = false;
  #timer: NodeJS.Timeout | null = null;
  #inFlight: Promise<void> | null = null;
  #unsupported = false;
  #stopped = false;
  /** Refusals since the last journaled transaction, the first one's time (epoch ms), and pings asked for since. */
  #refusals = 0;
  #firstRefusalAt = 0;
  #pings = 0;

  /** @throws RangeError when a delay is not a positive number, or `maxDelayMs` < `firstDelayMs` */
  constructor(opts: RefusalPingOptions) {
    this.#ping = opts.ping;
    this.#firstDelayMs = opts.firstDelayMs ?? DEFAULT_FIRST_DELAY_MS;
    this.#maxDelayMs = opts.maxDelayMs ?? DEFAULT_MAX_DELAY_MS;
    if (!(this.#firstDelayMs > 0)) throw new RangeError(`RefusalPing: firstDelayMs must be > 0, got ${this.#firstDelayMs}`);
    if (!(this.#maxDelayMs >= this.#firstDelayMs)) throw new RangeError(`RefusalPing: maxDelayMs must be >= firstDelayMs, got ${this.#maxDelayMs}`);
    this.#delayMs = this.#firstDelayMs;
  }

  /** A transaction was refused (not journaled): a ping follows after the current delay. */
  refused(): void {
    if (this.#refusals++ === 0) this.#firstRefusalAt = Date.now();
    if (this.#stopped || this.#unsupported) return;
    this.#pending = true;
    this.#arm();
  }

  /**
   * A transaction was journaled: the next refusal is answered after the first delay again. The
   * first one after refusals is logged (info), with how many were refused, over how long, and
   * the pings asked for meanwhile.
   */
  recorded(): void {
    this.#delayMs = this.#firstDelayMs;
    if (this.#refusals === 0) return;
    log.info("appservice transactions are journaled again", { refused: this.#refusals, refusedForMs: Date.now() - this.#firstRefusalAt, pings: this.#pings });
    this.#refusals = 0;
    this.#pings = 0;
  }

  /** Stop: no further ping; waits for one in flight (abort it through the `ping` function's own signal). */
  async stop(): Promise<void> {
    this.#stopped = true;
    if (this.#timer) clearTimeout(this.#timer);
    this.#timer = null;
    await this.#inFlight;
  }

  #arm(): void {
    if (this.#stopped || this.#unsupported || !this.#pending || this.#timer || this.#inFlight) return;
    const delay = this.#delayMs;
    this.#delayMs = Math.min(delay * 2, this.#maxDelayMs);
    this.#timer = setTimeout(() => {
      this.#timer = null;
      this.#pending = false;
      this.#inFlight = this.#ping().then(
        (outcome) => {
          if (outcome === "asked") this.#pings++;
          if (outcome === "unsupported") this.#unsupported = true;
        },
        // `ping` never throws by contract; should it, the schedule goes on.
        (err: unknown) => log.error("appservice ping after a refused transaction failed", errorFields(err)),
      ).finally(() => {
        this.#inFlight = null;
        // A refusal that came while the ping ran (the homeserver's retry) waits for the next one.
        this.#arm();
      });
    }, delay);
    this.#timer.unref();
  }
}
