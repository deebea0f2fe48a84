import { describe, it, before, after } from "node:test";
import assert from "node:assert/strict";
import { backoffMs, QueueWorker, type PassResult } from "../../src/util/worker.ts";
import { configureLogging } from "../../src/util/logger.ts";

const logs: Record<string, unknown>[] = [];
before(() => configureLogging({ format: "json", level: "info", write: (line) => logs.push(JSON.parse(line) as Record<string, unknown>) }));
after(() => configureLogging({ format: "pretty", write: (line) => process.stderr.write(line + "\n") }));

const tick = () => new Promise<void>((r) => setImmediate(r));
const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

/** Wait until `cond()` holds (checked every 5 ms); fails after `timeoutMs`. */
async function waitFor(cond: () => boolean, what: string, timeoutMs = 5000): Promise<void> {
  const end = Date.now() + timeoutMs;
  while (!cond()) {
    if (Date.now() > end) assert.fail(`timed out waiting for ${what}`);
    await sleep(5);
  }
}

/** A deferred promise: a pass that blocks until released. */
function gate(): { promise: Promise<void>; release: () => void } {
  let release!: () => void;
  const promise = new Promise<void>((r) => (release = r));
  return { promise, release };
}

describe("backoffMs", () => {
  const opts = { baseMs: 1000, maxMs: 60_000, jitter: 0 };

  it("doubles from baseMs and caps at maxMs", () => {
    assert.deepEqual([1, 2, 3, 4, 5, 6, 7, 8, 100, 5000].map((a) => backoffMs(a, opts)), [1000, 2000, 4000, 8000, 16_000, 32_000, 60_000, 60_000, 60_000, 60_000]);
  });

  it("jitter takes off at most its share, never adds", () => {
    assert.equal(backoffMs(3, { ...opts, jitter: 0.5, random: () => 0 }), 4000);
    assert.equal(backoffMs(3, { ...opts, jitter: 0.5, random: () => 0.999999 }), 2000);
    assert.equal(backoffMs(3, { ...opts, jitter: 1, random: () => 0.5 }), 2000);
    for (let i = 0; i < 200; i++) {
      const v = backoffMs(10, { ...opts, jitter: 0.2 });
      assert.ok(v >= 48_000 && v <= 60_000, `${v} within [48000, 60000]`);
    }
  });

  it("refuses nonsense", () => {
    assert.throws(() => backoffMs(0, opts), RangeError);
    assert.throws(() => backoffMs(1.5, opts), RangeError);
    assert.throws(() => backoffMs(1, { ...opts, baseMs: -1 }), RangeError);
    assert.throws(() => backoffMs(1, { ...opts, maxMs: 10 }), RangeError);
    assert.throws(() => backoffMs(1, { ...opts, jitter: 1.5 }), RangeError);
    assert.throws(() => backoffMs(1, { ...opts, jitter: Number.NaN }), RangeError);
  });
});

describe("QueueWorker", () => {
  it("start runs a pass; kick before start and after stop does nothing", async () => {
    let passes = 0;
    const w = new QueueWorker({ name: "t", pollMs: 60_000, pass: async () => (passes++, { didWork: false }) });
    w.kick();
    await w.idle();
    assert.equal(passes, 0, "not started");
    w.start();
    await w.idle();
    assert.equal(passes, 1);
    w.start(); // idempotent
    await w.idle();
    assert.equal(passes, 1);
    await w.stop();
    w.kick();
    await w.idle();
    assert.equal(passes, 1, "stopped");
    w.start();
    await w.idle();
    assert.equal(passes, 2, "start again resumes");
    await w.stop();
  });

  it("never runs two passes at once; kicks during a pass coalesce into one more pass", async () => {
    let active = 0;
    let maxActive = 0;
    let passes = 0;
    const gates: ReturnType<typeof gate>[] = [];
    const w = new QueueWorker({
      name: "t",
      pollMs: 60_000,
      pass: async () => {
        passes++;
        active++;
        maxActive = Math.max(maxActive, active);
        const g = gate();
        gates.push(g);
        await g.promise;
        active--;
        return { didWork: false };
      },
    });
    w.start();
    await tick();
    w.kick();
    w.kick();
    w.kick();
    assert.equal(gates.length, 1);
    gates[0]!.release();
    await tick();
    await tick();
    assert.equal(gates.length, 2, "one follow-up pass for the three kicks");
    gates[1]!.release();
    await w.idle();
    assert.equal(passes, 2);
    assert.equal(maxActive, 1);
    await w.stop();
  });

  it("runs again at once while a pass did work", async () => {
    let left = 5;
    let passes = 0;
    const w = new QueueWorker({
      name: "t",
      pollMs: 60_000,
      pass: async () => {
        passes++;
        if (left === 0) return { didWork: false };
        left--;
        return { didWork: true };
      },
    });
    w.start();
    await w.idle();
    assert.equal(passes, 6, "five passes with work, one that found none");
    await w.stop();
  });

  it("an idle worker wakes at the earliest due time, bounded by the poll interval", async () => {
    const runs: number[] = [];
    const start = Date.now();
    const w = new QueueWorker({
      name: "t",
      pollMs: 60_000,
      pass: async (): Promise<PassResult> => {
        runs.push(Date.now() - start);
        return runs.length === 1 ? { didWork: false, nextDueAt: Date.now() + 40 } : { didWork: false, nextDueAt: Date.now() + 10 * 60_000 };
      },
    });
    w.start();
    await waitFor(() => runs.length === 2, "the pass at the due time");
    assert.ok(runs[1]! >= 35, `not before the due time (runs at ${runs.join(", ")} ms)`);
    await sleep(50);
    assert.equal(runs.length, 2, "then sleeps until the next due time");
    await w.stop();

    // The poll interval bounds a far due time, and applies without one.
    let polls = 0;
    const p = new QueueWorker({ name: "t", pollMs: 20, pass: async () => (polls++, { didWork: false, nextDueAt: Date.now() + 3_600_000 }) });
    p.start();
    await waitFor(() => polls >= 3, "three polls");
    await p.stop();
  });

  it("stop waits for the pass in flight, then no more passes", async () => {
    const g = gate();
    let passes = 0;
    let finished = false;
    const w = new QueueWorker({
      name: "t",
      pollMs: 5,
      pass: async () => {
        passes++;
        if (passes === 1) await g.promise;
        finished = passes === 1 ? true : finished;
        return { didWork: false };
      },
    });
    w.start();
    await tick();
    let stopped = false;
    const stopping = w.stop().then(() => (stopped = true));
    await sleep(20);
    assert.equal(stopped, false, "stop waits for the pass in flight");
    g.release();
    await stopping;
    assert.equal(finished, true);
    const after = passes;
    await sleep(30);
    assert.equal(passes, after, "no passes after stop");
  });

  it("idle() waits for a pending kick and the pass it causes", async () => {
    const gates: ReturnType<typeof gate>[] = [];
    const w = new QueueWorker({
      name: "t",
      pollMs: 60_000,
      pass: async () => {
        const g = gate();
        gates.push(g);
        await g.promise;
        return { didWork: false };
      },
    });
    w.start();
    await tick();
    w.kick();
    let idle = false;
    const waiting = w.idle().then(() => (idle = true));
    gates[0]!.release();
    await tick();
    await tick();
    assert.equal(idle, false, "the kicked pass still runs");
    gates[1]!.release();
    await waiting;
    await w.stop();
  });

  it("logs a failed pass and retries it with backoff; a kick still wakes it at once", async () => {
    logs.length = 0;
    let passes = 0;
    const w = new QueueWorker({
      name: "flaky",
      pollMs: 60_000,
      errorBackoff: { baseMs: 50, maxMs: 60_000, jitter: 0 },
      pass: async () => {
        passes++;
        if (passes <= 2) throw Object.assign(new Error("database locked"), { code: "SQLITE_BUSY" });
        return { didWork: false };
      },
    });
    const t0 = Date.now();
    w.start();
    await w.idle();
    assert.equal(passes, 1);
    await waitFor(() => passes === 2, "the first retry");
    const t1 = Date.now();
    assert.ok(t1 - t0 >= 45, "retried after the 50 ms backoff");
    await sleep(30);
    assert.equal(passes, 2, "the second retry waits 100 ms");
    w.kick();
    await w.idle();
    assert.equal(passes, 3, "a kick wakes it at once");
    const failures = logs.filter((l) => l.msg === "worker pass failed");
    assert.deepEqual(
      failures.map((l) => [l.level, l.worker, l.failures, l.retryInMs, l.error, l.code]),
      [
        ["error", "flaky", 1, 50, "database locked", "SQLITE_BUSY"],
        ["error", "flaky", 2, 100, "database locked", "SQLITE_BUSY"],
      ],
    );
    await w.stop();
  });

  it("refuses a non-positive poll interval", () => {
    assert.throws(() => new QueueWorker({ name: "t", pollMs: 0, pass: async () => ({ didWork: false }) }), RangeError);
  });
});
