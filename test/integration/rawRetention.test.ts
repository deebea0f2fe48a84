/**
 * The retention purge job (src/store/retention.ts) on the real store (SQLite file) with a fake
 * clock: a pass at start, bounded batches until the backlog is gone, a pass every interval,
 * resolved mail only, stop(). The purge statement itself runs on both engines in the store
 * contract (test/integration/storeContract.ts).
 */
import assert from "node:assert/strict";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterEach, beforeEach, describe, it } from "node:test";
import { openSqlite } from "../../src/store/db/sqlite.ts";
import { migrate } from "../../src/store/migrate.ts";
import { SqlStore } from "../../src/store/SqlStore.ts";
import { RawRetention } from "../../src/store/retention.ts";
import type { NewInbound, RawPurgeResult } from "../../src/store/Store.ts";
import { configureLogging } from "../../src/util/logger.ts";

if (!process.env.MEB_LOG_LEVEL) configureLogging({ level: "warn" });

const DAY = 86_400_000;
const T0 = Date.UTC(2030, 0, 1);

function inbound(i: number): NewInbound {
  return {
    roomId: "!room:hs.test",
    dmLocalUserId: null,
    replyToEventId: null,
    messageId: `m${i}@mail.test`,
    sender: "bob@example.org",
    senderVerified: true,
    senderName: null,
    auth: null,
    spam: null,
    participants: [],
    contentHash: `h${i}`,
    envelopeFrom: "bob@example.org",
    raw: Buffer.from(`Received: by mx\r\nSubject: ${i}\r\n\r\nbody ${i}\r\n`),
  };
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

describe("RawRetention (purge job)", () => {
  let dir: string;
  let store: SqlStore;
  let now: number;
  let calls: RawPurgeResult[];
  /** The store, counting purge calls. */
  let counted: Pick<SqlStore, "purgeRawMail">;

  beforeEach(async () => {
    dir = mkdtempSync(join(tmpdir(), "meb-retention-"));
    const db = await openSqlite(join(dir, "bridge.sqlite"));
    await migrate(db);
    now = T0;
    store = new SqlStore(db, { now: () => now });
    calls = [];
    counted = {
      purgeRawMail: async (before, limit) => {
        const r = await store.purgeRawMail(before, limit);
        calls.push(r);
        return r;
      },
    };
  });
  afterEach(async () => {
    await store.close();
    rmSync(dir, { recursive: true, force: true });
  });

  async function postedMail(count: number, from = 0): Promise<number[]> {
    const ids: number[] = [];
    for (let i = from; i < from + count; i++) {
      const { row } = await store.insertInbound(inbound(i));
      await store.markInboundPosted(row.id, `$e${i}`);
      ids.push(row.id);
    }
    return ids;
  }
  const purged = async (ids: number[]) => (await Promise.all(ids.map((id) => store.getInbound(id)))).filter((r) => r!.rawPurgedAt !== null).length;

  it("purges at start, in bounded batches until the backlog is gone, only what is older than the retention", async () => {
    const old = await postedMail(5);
    now = T0 + 10 * DAY;
    const young = await postedMail(2, 100);
    const pending = (await store.insertInbound(inbound(200))).row;
    now = T0 + 31 * DAY;
    const job = new RawRetention({ store: counted, retentionDays: 30, intervalMs: 3_600_000, batchSize: 2, clock: () => now });
    job.start();
    await job.idle();
    await job.stop();
    assert.deepEqual(
      calls.map((c) => c.inbound),
      [2, 2, 1],
      "full batches run back to back; the short one ends the run",
    );
    assert.equal(await purged(old), 5);
    assert.equal(await purged(young), 0, "mail younger than the retention is kept");
    assert.equal((await store.getInbound(pending.id))?.rawPurgedAt, null, "pending mail is kept");
    assert.equal((await store.getInbound(old[0]!))?.raw.length, 0);
    assert.equal((await store.getInbound(old[0]!))?.rawPurgedAt, now);
  });

  it("runs again every interval, as the clock moves past the retention", async () => {
    const ids = await postedMail(3);
    const job = new RawRetention({ store: counted, retentionDays: 1, intervalMs: 30, batchSize: 100, clock: () => now });
    job.start();
    await job.idle();
    assert.equal(await purged(ids), 0, "not a day old yet");
    now = T0 + 2 * DAY;
    const deadline = Date.now() + 5000;
    while ((await purged(ids)) < 3 && Date.now() < deadline) await sleep(10);
    assert.equal(await purged(ids), 3, "a later pass purged them without a kick");
    await job.stop();
    const passes = calls.length;
    assert.ok(passes >= 2);
    await sleep(100);
    assert.equal(calls.length, passes, "no pass after stop()");
  });

  it("a retention of 0 days purges resolved mail at the next pass", async () => {
    const ids = await postedMail(2);
    now = T0 + 1;
    const job = new RawRetention({ store: counted, retentionDays: 0, intervalMs: 3_600_000, batchSize: 10, clock: () => now });
    assert.deepEqual(await job.purgeOnce(), { inbound: 2, outbound: 0 });
    assert.equal(await purged(ids), 2);
  });

  it("a failing pass is retried (the worker logs it and backs off)", async () => {
    const ids = await postedMail(1);
    now = T0 + 2 * DAY;
    let failures = 0;
    const flaky: Pick<SqlStore, "purgeRawMail"> = {
      purgeRawMail: async (before, limit) => {
        if (failures++ === 0) throw new Error("database is locked");
        return store.purgeRawMail(before, limit);
      },
    };
    configureLogging({ level: "error", write: () => undefined });
    try {
      const job = new RawRetention({ store: flaky, retentionDays: 1, intervalMs: 50, batchSize: 10, clock: () => now });
      job.start();
      const deadline = Date.now() + 5000;
      while ((await purged(ids)) < 1 && Date.now() < deadline) await sleep(10);
      await job.stop();
    } finally {
      configureLogging({ level: (process.env.MEB_LOG_LEVEL as "warn" | undefined) ?? "warn", write: (line) => process.stderr.write(line + "\n") });
    }
    assert.ok(failures >= 2);
    assert.equal(await purged(ids), 1);
  });

  it("refuses nonsense settings", () => {
    assert.throws(() => new RawRetention({ store, retentionDays: -1, intervalMs: 1000, batchSize: 1 }), RangeError);
    assert.throws(() => new RawRetention({ store, retentionDays: 1, intervalMs: 1000, batchSize: 0 }), RangeError);
    assert.throws(() => new RawRetention({ store, retentionDays: 1, intervalMs: 0, batchSize: 1 }), RangeError);
  });
});
