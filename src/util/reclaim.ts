/**
 * Garbage collection paced by the bytes of large-message work ({@link noteLargeWork}).
 *
 * Receiving a large mail (smtp-server's socket reads and its dot-unstuffed copy of each) and
 * reading one back from the store to post it (the stored chunks, mailparser's slices and
 * decoded parts) leaves about two bytes of short-lived Buffers behind for every byte of the
 * message. Their memory is outside V8's heap, and V8 frees it only when it collects, which it
 * schedules by its own external-memory allowance (64 MiB above the last collection); for a
 * 25 MiB attachment that garbage, not the message, made most of the RSS peak, and its timing
 * made the peak vary by tens of MiB between runs (docs/performance.md, "Memory").
 *
 * The launchers start node with `--expose-gc` (docs/operations.md, "Memory"); then every
 * {@link RECLAIM_EVERY_BYTES} of such work asks V8 for a full collection, so the garbage stays
 * below that much. Without the flag (`globalThis.gc` absent) this module does nothing and
 * memory behaves as Node's defaults make it.
 *
 * The cost is CPU on the event loop: a collection of the bridge's heap takes 20–45 ms on the
 * benchmark's machine. It is bounded: a collection is skipped while less than
 * {@link GC_SHARE_INVERSE} times the previous one's duration has passed since it ended, so
 * collections take at most a third of the time even when many large mails arrive at once (the
 * garbage may then grow past the pace). For one mail with a 25 MiB attachment (36 MB on the
 * wire) that is about 12 collections, 0.3 s in all. Mails up to 1 MiB never count.
 */
import { performance } from "node:perf_hooks";

/** Bytes of large-message work between two collections: 8 MiB. */
export const RECLAIM_EVERY_BYTES = 8 * 1024 * 1024;

/** A collection waits at least this many times the previous one's duration after it. */
export const GC_SHARE_INVERSE = 2;

/** V8's collector as `--expose-gc` exposes it (a full, synchronous collection when called without options). */
export type CollectGarbage = () => void;

/** Counts large-message bytes and collects garbage at the pace described in the module docs. */
export class Reclaimer {
  readonly #collect: CollectGarbage | null;
  readonly #everyBytes: number;
  readonly #now: () => number;
  #pending = 0;
  #noted = 0;
  #lastEnd = -Infinity;
  #lastDurationMs = 0;
  #collections = 0;

  /**
   * @param collect the collector, or null to count without collecting
   * @param everyBytes bytes of work between collections (> 0)
   * @param now a monotonic clock in ms (tests pass their own)
   * @throws RangeError when `everyBytes` is not a positive finite number
   */
  constructor(collect: CollectGarbage | null, everyBytes: number = RECLAIM_EVERY_BYTES, now: () => number = () => performance.now()) {
    if (!Number.isFinite(everyBytes) || everyBytes <= 0) throw new RangeError(`reclaim pace must be > 0 bytes, got ${everyBytes}`);
    this.#collect = collect;
    this.#everyBytes = everyBytes;
    this.#now = now;
  }

  /** Bytes noted so far, whether or not there is a collector. */
  get noted(): number {
    return this.#noted;
  }

  /** How many collections this reclaimer has run. */
  get collections(): number {
    return this.#collections;
  }

  /**
   * Records `bytes` of large-message work just done (a chunk received, a stored chunk read);
   * collects when the pace is reached and the CPU bound allows.
   * @param bytes bytes of the message that went through, >= 0
   * @returns whether a collection ran
   */
  note(bytes: number): boolean {
    this.#noted += bytes;
    if (this.#collect === null) return false;
    this.#pending += bytes;
    if (this.#pending < this.#everyBytes) return false;
    const start = this.#now();
    if (start - this.#lastEnd < GC_SHARE_INVERSE * this.#lastDurationMs) return false;
    this.#collect();
    this.#lastEnd = this.#now();
    this.#lastDurationMs = this.#lastEnd - start;
    this.#pending = 0;
    this.#collections++;
    return true;
  }
}

const exposed = (globalThis as { gc?: unknown }).gc;

/** The process's reclaimer: V8's collector when node runs with `--expose-gc`, else one that only counts. */
export const largeWork = new Reclaimer(typeof exposed === "function" ? () => (exposed as CollectGarbage)() : null);

/**
 * Records `bytes` of large-message work on the process's reclaimer ({@link Reclaimer.note}).
 * @param bytes bytes of the message that went through, >= 0
 */
export function noteLargeWork(bytes: number): void {
  largeWork.note(bytes);
}
