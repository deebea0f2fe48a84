/**
 * An in-memory {@link MatrixEventJournal} for tests that need a MatrixGateway without a
 * database. Same rules as the store's (SqlStore, migration 4): a known transaction ID is a
 * no-op, a known event ID is skipped, heads are the oldest pending event of each room.
 * Not durable, obviously: the real journal is tested in test/integration/storeContract.ts.
 */
import type { JournalEventInput, JournaledEvent, MatrixEventJournal } from "../../src/bridge/ports.ts";

/** One journaled event, with its state. */
export interface MemoryJournalEvent extends JournaledEvent {
  seq: number;
  state: "pending" | "done" | "failed";
  lastError: string | null;
  doneAt: number | null;
  receivedAt: number;
}

/** See the module comment. */
export class MemoryJournal implements MatrixEventJournal {
  readonly txns = new Map<string, number>();
  readonly events = new Map<string, MemoryJournalEvent>();
  #seq = 0;
  /** When set, the next commit throws it (and writes nothing). */
  failNextCommit: Error | null = null;

  /** One transaction: a known txn ID is a no-op; known event IDs are skipped. @throws {@link failNextCommit} */
  async recordAppserviceTransaction(txnId: string, events: JournalEventInput[]): Promise<{ duplicate: boolean; recorded: number }> {
    if (this.failNextCommit) {
      const err = this.failNextCommit;
      this.failNextCommit = null;
      throw err;
    }
    if (this.txns.has(txnId)) return { duplicate: true, recorded: 0 };
    const now = Date.now();
    this.txns.set(txnId, now);
    let recorded = 0;
    for (const e of events) {
      if (this.events.has(e.eventId)) continue;
      this.events.set(e.eventId, { ...e, txnId, seq: ++this.#seq, state: "pending", attempts: 0, nextAttemptAt: now, lastError: null, doneAt: null, receivedAt: now });
      recorded++;
    }
    return { duplicate: false, recorded };
  }

  /** The oldest pending event of each room, oldest first. */
  async listMatrixEventHeads(limit: number): Promise<JournaledEvent[]> {
    const heads = new Map<string, MemoryJournalEvent>();
    for (const e of [...this.events.values()].sort((a, b) => a.seq - b.seq)) {
      if (e.state === "pending" && !heads.has(e.roomId)) heads.set(e.roomId, e);
    }
    return [...heads.values()].slice(0, limit).map((e) => ({ ...e }));
  }

  async markMatrixEventDone(eventId: string): Promise<void> {
    const e = this.events.get(eventId);
    if (e?.state === "pending") Object.assign(e, { state: "done", doneAt: Date.now() });
  }

  async markMatrixEventRetry(eventId: string, error: string, nextAttemptAt: number): Promise<void> {
    const e = this.events.get(eventId);
    if (e?.state === "pending") Object.assign(e, { attempts: e.attempts + 1, lastError: error, nextAttemptAt });
  }

  async markMatrixEventFailed(eventId: string, error: string): Promise<void> {
    const e = this.events.get(eventId);
    if (e?.state === "pending") Object.assign(e, { state: "failed", attempts: e.attempts + 1, lastError: error, doneAt: Date.now() });
  }

  async pruneMatrixJournal(before: number): Promise<{ events: number; txns: number }> {
    let events = 0;
    let txns = 0;
    for (const [id, e] of this.events) {
      if (e.state !== "pending" && e.doneAt !== null && e.doneAt < before) {
        this.events.delete(id);
        events++;
      }
    }
    for (const [id, at] of this.txns) {
      if (at < before) {
        this.txns.delete(id);
        txns++;
      }
    }
    return { events, txns };
  }
}
