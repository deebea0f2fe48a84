/**
 * What a Matrix client sees, and when: a /sync long-poll loop over one room that stamps every
 * timeline event with the time (epoch ms) its /sync response arrived in the bench process.
 */
import type { MatrixEvent, MatrixTestClient } from "../test/harness/matrixClient.ts";

/** A timeline event and when the client first saw it. */
export interface SeenEvent {
  event: MatrixEvent;
  /** Epoch ms (`Date.now()`) when the /sync response carrying it was read. */
  at: number;
}

/** Result of {@link RoomWatcher.waitFor}. */
export interface WaitResult {
  /** The matching events seen (at most `n`), in the order seen. */
  events: SeenEvent[];
  /** Whether `n` matching events were seen before the timeout. */
  complete: boolean;
}

/** Long-poll time of one /sync, ms. */
const LONG_POLL_MS = 5_000;

/**
 * Watches one room through a user's /sync (timeline limit 1000, so a burst is not cut: a
 * `limited` timeline would hide events; such gaps are counted in {@link RoomWatcher.gaps}).
 */
export class RoomWatcher {
  readonly #client: MatrixTestClient;
  readonly #roomIds: string[];
  readonly #seen: SeenEvent[] = [];
  readonly #ids = new Set<string>();
  #since: string;
  #stopped = false;
  #error: unknown = null;
  #gaps = 0;
  #wake: (() => void) | null = null;
  readonly #loop: Promise<void>;

  private constructor(client: MatrixTestClient, roomIds: string[], since: string) {
    this.#client = client;
    this.#roomIds = roomIds;
    this.#since = since;
    this.#loop = this.#run();
  }

  /**
   * Start watching `rooms` (one room ID or several) as `client` (who must be joined): events
   * after this call count, from any of the rooms.
   * @throws MatrixApiError when the first /sync fails
   */
  static async start(client: MatrixTestClient, rooms: string | string[]): Promise<RoomWatcher> {
    const roomIds = typeof rooms === "string" ? [rooms] : rooms;
    const first = await client.sync({ filter: RoomWatcher.#filter(roomIds, 1) });
    return new RoomWatcher(client, roomIds, first.next_batch);
  }

  static #filter(roomIds: string[], limit: number): Record<string, unknown> {
    return {
      presence: { types: [] },
      account_data: { types: [] },
      room: {
        rooms: roomIds,
        timeline: { limit },
        state: { types: [] },
        ephemeral: { types: [] },
        account_data: { types: [] },
      },
    };
  }

  /** Timelines that came back `limited` (events may have been skipped). */
  get gaps(): number {
    return this.#gaps;
  }

  async #run(): Promise<void> {
    const filter = RoomWatcher.#filter(this.#roomIds, 1000);
    while (!this.#stopped) {
      try {
        const res = await this.#client.sync({ since: this.#since, timeoutMs: LONG_POLL_MS, filter });
        const at = Date.now();
        this.#since = res.next_batch;
        for (const roomId of this.#roomIds) {
          const room = res.rooms?.join?.[roomId] as { timeline?: { events?: MatrixEvent[]; limited?: boolean } } | undefined;
          if (room?.timeline?.limited) this.#gaps++;
          for (const event of room?.timeline?.events ?? []) {
            if (this.#ids.has(event.event_id)) continue;
            this.#ids.add(event.event_id);
            this.#seen.push({ event: { ...event, room_id: roomId }, at });
          }
        }
      } catch (err) {
        if (this.#stopped) break;
        this.#error = err;
        await new Promise((r) => setTimeout(r, 200));
      }
      this.#wake?.();
    }
  }

  /**
   * Wait until `n` events matching `predicate` have been seen (counting those seen already).
   * @param predicate which events count
   * @param n how many
   * @param timeoutMs give up after this long and return what was seen (`complete: false`)
   */
  async waitFor(predicate: (e: MatrixEvent) => boolean, n: number, timeoutMs: number): Promise<WaitResult> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const hits = this.#seen.filter((s) => predicate(s.event));
      if (hits.length >= n) return { events: hits.slice(0, n), complete: true };
      const left = deadline - Date.now();
      if (left <= 0) return { events: hits, complete: false };
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, Math.min(left, 1000));
        this.#wake = () => {
          clearTimeout(timer);
          resolve();
        };
      });
    }
  }

  /** The last /sync error, if any (for diagnostics). */
  get lastError(): unknown {
    return this.#error;
  }

  /** Stop the loop; the /sync in flight is left to end by itself (within its long-poll time). */
  stop(): void {
    this.#stopped = true;
    this.#loop.catch(() => undefined);
  }
}
