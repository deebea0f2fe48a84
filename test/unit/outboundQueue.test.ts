import { describe, it, before, after, beforeEach } from "node:test";
import assert from "node:assert/strict";
import type { OutboundRow } from "../../src/store/Store.ts";
import { configureLogging } from "../../src/util/logger.ts";
import type { DeliveryResult, RecipientOutcome } from "../../src/mail/outbound/deliver.ts";
import { OutboundQueue, RETRY_BACKOFF_MS, retryDelayMs, type OutboundFinalOutcome, type OutboundQueueStore } from "../../src/mail/outbound/OutboundQueue.ts";

const MIN = 60_000;

/** Log lines (JSON) written during a test. */
const logs: Record<string, unknown>[] = [];
before(() => configureLogging({ format: "json", level: "info", write: (line) => logs.push(JSON.parse(line) as Record<string, unknown>) }));
after(() => configureLogging({ format: "pretty", write: (line) => process.stderr.write(line + "\n") }));
beforeEach(() => {
  logs.length = 0;
});
const HOUR = 60 * MIN;

/** In-memory stand-in for the outbound part of BridgeStore (attempts counted on deferral). */
class FakeOutboundStore implements OutboundQueueStore {
  rows = new Map<number, OutboundRow>();
  calls: string[] = [];
  #nextId = 1;

  add(over: Partial<OutboundRow> & Pick<OutboundRow, "recipients" | "createdAt">): OutboundRow {
    const id = this.#nextId++;
    const row: OutboundRow = {
      id,
      roomId: "!room:hs.example",
      eventId: `$event${id}`,
      messageId: `msg${id}@mail.example`,
      envelopeFrom: "bob@mail.example",
      raw: Buffer.from(`raw ${id}\r\n`),
      state: "queued",
      attempts: 0,
      nextAttemptAt: over.createdAt,
      lastError: null,
      ...over,
    };
    this.rows.set(id, row);
    return row;
  }

  async listDueOutbound(now: number, limit: number): Promise<OutboundRow[]> {
    return [...this.rows.values()]
      .filter((r) => (r.state === "queued" || r.state === "deferred") && r.nextAttemptAt <= now)
      .sort((a, b) => a.createdAt - b.createdAt)
      .slice(0, limit)
      .map((r) => ({ ...r, recipients: [...r.recipients] }));
  }
  async markOutboundSent(id: number): Promise<void> {
    this.calls.push(`sent ${id}`);
    this.#update(id, { state: "sent", recipients: [] });
  }
  async markOutboundDeferred(id: number, recipients: string[], nextAttemptAt: number, error: string): Promise<void> {
    this.calls.push(`deferred ${id}`);
    const row = this.#get(id);
    this.#update(id, { state: "deferred", recipients: [...recipients], nextAttemptAt, lastError: error, attempts: row.attempts + 1 });
  }
  async markOutboundBounced(id: number, error: string): Promise<void> {
    this.calls.push(`bounced ${id}`);
    this.#update(id, { state: "bounced", lastError: error });
  }
  #get(id: number): OutboundRow {
    const row = this.rows.get(id);
    assert.ok(row, `row ${id} exists`);
    return row;
  }
  #update(id: number, patch: Partial<OutboundRow>): void {
    this.rows.set(id, { ...this.#get(id), ...patch });
  }
}

type Script = (to: string[], attempt: number) => RecipientOutcome[];

/** A deliver() fake driven by a script; records the recipient lists it was called with. */
function fakeDeliver(script: Script) {
  const calls: string[][] = [];
  const deliver = async (_raw: Buffer, envelope: { from: string; to: string[] }): Promise<DeliveryResult> => {
    calls.push([...envelope.to]);
    return { recipients: script(envelope.to, calls.length) };
  };
  return { deliver, calls };
}

const sent = (address: string): RecipientOutcome => ({ address, status: "sent", code: 250, message: "250 OK" });
const temp = (address: string): RecipientOutcome => ({ address, status: "temporary", code: 451, message: "451 4.7.1 Greylisted" });
const perm = (address: string): RecipientOutcome => ({ address, status: "permanent", code: 550, message: "550 5.1.1 No such user" });

function setup(script: Script, maxRetryHours = 96) {
  const store = new FakeOutboundStore();
  const { deliver, calls } = fakeDeliver(script);
  let now = 1_700_000_000_000;
  const finals: { row: OutboundRow; outcome: OutboundFinalOutcome }[] = [];
  const queue = new OutboundQueue({
    store,
    deliver,
    maxRetryHours,
    clock: () => now,
    pollMs: 3_600_000,
    onFinal: async (row, outcome) => {
      finals.push({ row, outcome });
    },
  });
  return {
    store,
    queue,
    calls,
    finals,
    now: () => now,
    advance: (ms: number) => {
      now += ms;
    },
  };
}

describe("retryDelayMs", () => {
  it("follows 1m, 5m, 15m, 30m, 1h, then 2h capped", () => {
    assert.deepEqual([1, 2, 3, 4, 5, 6, 7, 50].map(retryDelayMs), [MIN, 5 * MIN, 15 * MIN, 30 * MIN, HOUR, 2 * HOUR, 2 * HOUR, 2 * HOUR]);
    assert.equal(retryDelayMs(0), MIN);
    assert.equal(RETRY_BACKOFF_MS.at(-1), 2 * HOUR);
  });
});

describe("OutboundQueue", () => {
  it("marks a fully delivered row sent and calls onFinal once", async () => {
    const t = setup((to) => to.map(sent));
    const row = t.store.add({ recipients: ["a@x.example", "b@y.example"], createdAt: t.now() });
    await t.queue.kick();
    assert.equal(t.store.rows.get(row.id)?.state, "sent");
    assert.deepEqual(t.finals.map((f) => f.outcome), [{ sent: ["a@x.example", "b@y.example"], failed: [] }]);
    await t.queue.kick();
    assert.equal(t.calls.length, 1, "a sent row is not delivered again");
    assert.equal(t.finals.length, 1);
  });

  it("defers with the documented backoff and retries only when due", async () => {
    const t = setup((to, n) => to.map(n < 4 ? temp : sent));
    const row = t.store.add({ recipients: ["a@x.example"], createdAt: t.now() });
    const expected = [MIN, 5 * MIN, 15 * MIN];
    for (const delay of expected) {
      const before = t.now();
      await t.queue.kick();
      const r = t.store.rows.get(row.id);
      assert.equal(r?.state, "deferred");
      assert.equal(r?.nextAttemptAt, before + delay);
      assert.match(r?.lastError ?? "", /a@x\.example: 451 4\.7\.1 Greylisted/);
      const calls = t.calls.length;
      t.advance(delay - 1);
      await t.queue.kick();
      assert.equal(t.calls.length, calls, "not due yet");
      t.advance(1);
    }
    await t.queue.kick();
    assert.equal(t.store.rows.get(row.id)?.state, "sent");
    assert.equal(t.calls.length, 4);
    assert.equal(t.finals.length, 1);
  });

  it("keeps only the remaining recipients after a partial delivery and reports all at the end", async () => {
    const t = setup((to, n) =>
      to.map((a) => {
        if (a.startsWith("ok")) return sent(a);
        if (a.startsWith("gone")) return perm(a);
        return n === 1 ? temp(a) : sent(a);
      }),
    );
    const row = t.store.add({ recipients: ["ok@x.example", "grey@y.example", "gone@z.example"], createdAt: t.now() });
    await t.queue.kick();
    const deferred = t.store.rows.get(row.id);
    assert.equal(deferred?.state, "deferred");
    assert.deepEqual(deferred?.recipients, ["grey@y.example"]);
    assert.equal(t.finals.length, 0, "no onFinal while recipients remain");

    t.advance(MIN);
    await t.queue.kick();
    assert.deepEqual(t.calls, [["ok@x.example", "grey@y.example", "gone@z.example"], ["grey@y.example"]]);
    assert.equal(t.store.rows.get(row.id)?.state, "bounced", "a recipient failed for good");
    assert.equal(t.finals.length, 1);
    assert.deepEqual(t.finals[0]?.outcome, {
      sent: ["ok@x.example", "grey@y.example"],
      failed: [{ address: "gone@z.example", message: "550 5.1.1 No such user" }],
    });
  });

  it("bounces at once when every recipient fails permanently", async () => {
    const t = setup((to) => to.map(perm));
    const row = t.store.add({ recipients: ["a@x.example", "b@x.example"], createdAt: t.now() });
    await t.queue.kick();
    const r = t.store.rows.get(row.id);
    assert.equal(r?.state, "bounced");
    assert.match(r?.lastError ?? "", /a@x\.example: 550 5\.1\.1 No such user; b@x\.example: 550/);
    assert.deepEqual(t.store.calls, [`bounced ${row.id}`]);
    assert.equal(t.finals.length, 1);
    assert.deepEqual(
      t.finals[0]?.outcome.failed.map((f) => f.address),
      ["a@x.example", "b@x.example"],
    );
    assert.equal(t.finals[0]?.row.id, row.id);
    const failures = logs.filter((l) => l.msg === "outbound recipient failed permanently");
    assert.deepEqual(
      failures.map((l) => [l.level, l.messageId, l.roomId, l.recipient, l.code]),
      [
        ["warn", row.messageId, row.roomId, "a@x.example", 550],
        ["warn", row.messageId, row.roomId, "b@x.example", 550],
      ],
      "each failure logged once, with context",
    );
    assert.ok(!JSON.stringify(logs).includes("raw 1"), "never logs the message");
  });

  it("gives up after maxRetryHours since createdAt (injected clock) and calls onFinal once", async () => {
    const t = setup((to) => to.map(temp), 3);
    const row = t.store.add({ recipients: ["a@x.example"], createdAt: t.now() });
    let passes = 0;
    while (t.store.rows.get(row.id)?.state !== "bounced") {
      await t.queue.kick();
      passes++;
      assert.ok(passes < 50, "terminates");
      const r = t.store.rows.get(row.id);
      if (r?.state === "deferred") t.advance(r.nextAttemptAt - t.now());
    }
    // Attempts at 0, 1, 6, 21, 51, 111 min; the next (111 + 120) is capped to the 180 min deadline, where it gives up.
    assert.equal(passes, 7);
    assert.equal(t.now() - row.createdAt, 3 * HOUR);
    assert.equal(t.finals.length, 1);
    assert.deepEqual(t.finals[0]?.outcome.sent, []);
    assert.match(t.finals[0]?.outcome.failed[0]?.message ?? "", /^gave up after 3 h: 451/);
    t.advance(10 * HOUR);
    await t.queue.kick();
    assert.equal(t.finals.length, 1, "onFinal not called again");
    assert.equal(t.calls.length, 7);
  });

  it("treats a throwing deliver as temporary and a missing outcome as temporary", async () => {
    const t = setup(() => {
      throw new Error("boom");
    });
    const row = t.store.add({ recipients: ["a@x.example"], createdAt: t.now() });
    await t.queue.kick();
    assert.equal(t.store.rows.get(row.id)?.state, "deferred");
    assert.match(t.store.rows.get(row.id)?.lastError ?? "", /boom/);

    const t2 = setup(() => []);
    const row2 = t2.store.add({ recipients: ["a@x.example"], createdAt: t2.now() });
    await t2.queue.kick();
    assert.equal(t2.store.rows.get(row2.id)?.state, "deferred");
  });

  it("logs and survives an onFinal failure", async () => {
    const store = new FakeOutboundStore();
    const { deliver } = fakeDeliver((to) => to.map(sent));
    let called = 0;
    const queue = new OutboundQueue({
      store,
      deliver,
      maxRetryHours: 1,
      clock: () => 0,
      onFinal: async () => {
        called++;
        throw new Error("matrix down");
      },
    });
    store.add({ recipients: ["a@x.example"], createdAt: 0 });
    await queue.kick();
    assert.equal(called, 1);
    assert.equal(store.rows.get(1)?.state, "sent");
  });

  it("never runs two passes at once; kicks during a pass coalesce into one more pass", async () => {
    const store = new FakeOutboundStore();
    let active = 0;
    let maxActive = 0;
    let passes = 0;
    const release: (() => void)[] = [];
    const origList = store.listDueOutbound.bind(store);
    store.listDueOutbound = async (now, limit) => {
      active++;
      passes++;
      maxActive = Math.max(maxActive, active);
      await new Promise<void>((r) => release.push(r));
      active--;
      return origList(now, limit);
    };
    const queue = new OutboundQueue({ store, deliver: async () => ({ recipients: [] }), maxRetryHours: 1, onFinal: async () => {}, clock: () => 0 });
    const first = queue.kick();
    const second = queue.kick();
    const third = queue.kick();
    await new Promise((r) => setImmediate(r));
    assert.equal(release.length, 1);
    release.shift()?.();
    await first;
    await new Promise((r) => setImmediate(r));
    assert.equal(release.length, 1, "one follow-up pass for the two kicks");
    release.shift()?.();
    await Promise.all([second, third]);
    assert.equal(passes, 2);
    assert.equal(maxActive, 1);
  });

  it("start() polls, stop() waits for the pass in flight and stops the loop", async () => {
    const store = new FakeOutboundStore();
    let passes = 0;
    let releaseFirst: (() => void) | null = null;
    const origList = store.listDueOutbound.bind(store);
    store.listDueOutbound = async (now, limit) => {
      passes++;
      if (passes === 1) await new Promise<void>((r) => (releaseFirst = r));
      return origList(now, limit);
    };
    const { deliver } = fakeDeliver((to) => to.map(sent));
    const queue = new OutboundQueue({ store, deliver, maxRetryHours: 1, onFinal: async () => {}, clock: () => 0, pollMs: 5 });
    store.add({ recipients: ["a@x.example"], createdAt: 0 });
    queue.start();
    await new Promise((r) => setImmediate(r));
    let stopped = false;
    const stopping = queue.stop().then(() => {
      stopped = true;
    });
    await new Promise((r) => setTimeout(r, 20));
    assert.equal(stopped, false, "stop waits for the pass in flight");
    (releaseFirst as (() => void) | null)?.();
    await stopping;
    assert.equal(store.rows.get(1)?.state, "sent", "the pass in flight completed");
    const after = passes;
    await new Promise((r) => setTimeout(r, 30));
    assert.equal(passes, after, "no passes after stop");
    await queue.kick();
    assert.equal(passes, after, "kick after stop does nothing");

    // polling: restarted, several passes happen on the timer
    queue.start();
    await new Promise((r) => setTimeout(r, 60));
    await queue.stop();
    assert.ok(passes >= after + 3, `polled (${passes - after} passes)`);
  });

  it("keeps going when the store fails during a pass", async () => {
    const store = new FakeOutboundStore();
    const { deliver } = fakeDeliver((to) => to.map(sent));
    let fail = true;
    const origList = store.listDueOutbound.bind(store);
    store.listDueOutbound = async (now, limit) => {
      if (fail) throw new Error("database locked");
      return origList(now, limit);
    };
    const queue = new OutboundQueue({ store, deliver, maxRetryHours: 1, onFinal: async () => {}, clock: () => 0 });
    store.add({ recipients: ["a@x.example"], createdAt: 0 });
    await queue.kick();
    assert.equal(store.rows.get(1)?.state, "queued");
    fail = false;
    await queue.kick();
    assert.equal(store.rows.get(1)?.state, "sent");
  });
});
