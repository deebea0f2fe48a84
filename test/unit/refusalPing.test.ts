import { afterEach, beforeEach, describe, it, mock } from "node:test";
import assert from "node:assert/strict";
import { RefusalPing, type RefusalPingOutcome } from "../../src/matrix/refusalPing.ts";

/** Let promise callbacks run (the ping's `then`/`finally`). */
async function settle(): Promise<void> {
  for (let i = 0; i < 5; i++) await Promise.resolve();
}

describe("RefusalPing: pings after refused appservice transactions", () => {
  beforeEach(() => mock.timers.enable({ apis: ["setTimeout", "Date"] }));
  afterEach(() => mock.timers.reset());

  /** A schedule whose pings are recorded (times in mocked ms) and answer `outcome`. */
  function schedule(outcome: RefusalPingOutcome = "asked", onPing?: () => void) {
    const pings: number[] = [];
    const ping = new RefusalPing({
      firstDelayMs: 100,
      maxDelayMs: 500,
      ping: () => {
        pings.push(Date.now());
        onPing?.();
        return Promise.resolve(outcome);
      },
    });
    return { ping, pings };
  }

  it("nothing is asked without a refusal", async () => {
    const { ping, pings } = schedule();
    ping.recorded();
    mock.timers.tick(10_000);
    await settle();
    assert.deepEqual(pings, []);
  });

  it("refusals that go on: pings after 100, then 200, 400, and at most 500 ms apart; one ping per wait however many refusals came", async () => {
    let ref: RefusalPing | null = null;
    // Each ping makes the homeserver retry, and the store is still away: refused again.
    const { ping, pings } = schedule("asked", () => ref!.refused());
    ref = ping;
    ping.refused();
    ping.refused();
    for (let i = 0; i < 40; i++) {
      mock.timers.tick(50);
      await settle();
    }
    assert.deepEqual(pings, [100, 300, 700, 1200, 1700]);
  });

  it("a journaled transaction ends the series: no further ping, and the next refusal waits the first delay again", async () => {
    const { ping, pings } = schedule();
    ping.refused();
    mock.timers.tick(100);
    await settle();
    ping.refused(); // the homeserver's retry, still refused
    mock.timers.tick(200);
    await settle();
    assert.deepEqual(pings, [100, 300]);
    ping.recorded(); // the retry after the second ping was journaled
    mock.timers.tick(5000);
    await settle();
    assert.deepEqual(pings, [100, 300], "nothing pending: no ping");
    ping.refused();
    mock.timers.tick(100);
    await settle();
    assert.deepEqual(pings, [100, 300, 5400]);
  });

  it("a homeserver without the ping is not asked again", async () => {
    const { ping, pings } = schedule("unsupported");
    ping.refused();
    mock.timers.tick(100);
    await settle();
    ping.refused();
    mock.timers.tick(10_000);
    await settle();
    assert.deepEqual(pings, [100]);
  });

  it("stop: a waiting ping is not made", async () => {
    const { ping, pings } = schedule();
    ping.refused();
    await ping.stop();
    mock.timers.tick(10_000);
    await settle();
    ping.refused();
    mock.timers.tick(10_000);
    await settle();
    assert.deepEqual(pings, []);
  });

  it("rejects delays that make no schedule", () => {
    const ping = () => Promise.resolve("asked" as const);
    assert.throws(() => new RefusalPing({ ping, firstDelayMs: 0 }), RangeError);
    assert.throws(() => new RefusalPing({ ping, firstDelayMs: 1000, maxDelayMs: 10 }), RangeError);
  });
});
