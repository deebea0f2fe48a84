/**
 * Runs the BridgeStore contract on SQLite (temp file) and PostgreSQL (throwaway cluster or
 * MEB_TEST_PG_URL), plus SQLite-specific checks (pragmas, crash durability).
 */
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, describe, it } from "node:test";
import { pathToFileURL } from "node:url";
import { openStore } from "../../src/store/open.ts";
import { configureLogging } from "../../src/util/logger.ts";
import { SqlStore } from "../../src/store/SqlStore.ts";
import { SqliteDatabase } from "../../src/store/db/sqlite.ts";
import { openPostgres } from "../../src/store/db/postgres.ts";
import { isUniqueViolation } from "../../src/store/db/dialect.ts";
import { newInbound } from "../harness/rows.ts";
import { startPostgres, stopPostgresCluster } from "../harness/postgres.ts";
import { runStoreContract } from "./storeContract.ts";
import type { StoreFixture } from "./storeContract.ts";

// Keep test output readable; warnings and errors still show.
if (!process.env.MEB_LOG_LEVEL) configureLogging({ level: "warn" });

function tempDir(): string {
  return mkdtempSync(join(tmpdir(), "meb-store-"));
}

async function sqliteFixture(): Promise<StoreFixture> {
  const dir = tempDir();
  const sqliteFile = join(dir, "nested", "dir", "bridge.sqlite");
  const store = await openStore({ url: null, sqliteFile });
  return {
    store,
    reopen: () => openStore({ url: null, sqliteFile }),
    async cleanup() {
      await store.close().catch(() => undefined);
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

async function postgresFixture(): Promise<StoreFixture> {
  const pg = await startPostgres();
  try {
    const store = await openStore({ url: pg.url, sqliteFile: "/nonexistent/unused.sqlite" });
    return {
      store,
      reopen: () => openStore({ url: pg.url, sqliteFile: "/nonexistent/unused.sqlite" }),
      async cleanup() {
        await store.close().catch(() => undefined);
        await pg.stop();
      },
    };
  } catch (err) {
    await pg.stop();
    throw err;
  }
}

runStoreContract("sqlite", sqliteFixture);
runStoreContract("postgres", postgresFixture);

after(async () => {
  await stopPostgresCluster();
});

/**
 * Run `child` (an ES module's source) in a new node process with `MEB_CRASH_FILE=sqliteFile`, and
 * wait for it to end; it must end by SIGKILL (it kills itself at the moment under test).
 */
async function runUntilKilled(child: string, sqliteFile: string): Promise<void> {
  const result = await new Promise<{ signal: NodeJS.Signals | null; stderr: string }>((resolve, reject) => {
    const p = spawn(process.execPath, ["--input-type=module", "-e", child], {
      env: { ...process.env, MEB_CRASH_FILE: sqliteFile, MEB_LOG_LEVEL: "warn" },
      stdio: ["ignore", "ignore", "pipe"],
    });
    let stderr = "";
    p.stderr.on("data", (d: Buffer) => (stderr += d.toString()));
    p.on("error", reject);
    p.on("close", (_code, signal) => resolve({ signal, stderr }));
  });
  assert.equal(result.signal, "SIGKILL", `child did not die by SIGKILL: ${result.stderr}`);
}

/**
 * Run `fn` on a fresh SQLite store's database, then remove the store.
 * @throws what `fn` throws
 */
async function withSqliteDb(fn: (db: SqliteDatabase, store: SqlStore) => Promise<void>): Promise<void> {
  const fx = await sqliteFixture();
  try {
    assert.ok(fx.store instanceof SqlStore);
    const db = fx.store.db;
    assert.ok(db instanceof SqliteDatabase);
    await fn(db, fx.store);
  } finally {
    await fx.cleanup();
  }
}

/** The addresses in the ghosts table, in insertion order. */
async function ghostAddresses(db: SqliteDatabase): Promise<string[]> {
  return (await db.query<{ address: string }>("SELECT address FROM ghosts ORDER BY rowid")).map((r) => r.address);
}

/**
 * A transaction on `db` that inserts the ghost `address`, then fails when `fail` is set.
 * @returns the address, once committed
 */
function ghostInsert(db: SqliteDatabase): (address: string, fail: boolean) => Promise<string> {
  return (address, fail) =>
    db.transaction(async (tx) => {
      await tx.execute("INSERT INTO ghosts (address, user_id, display_name, updated_at) VALUES ($1, $2, NULL, 0)", [address, `@${address}`]);
      if (fail) throw new Error(`refused ${address}`);
      return address;
    });
}

describe("sqlite engine", () => {
  it("opens with WAL, synchronous=FULL and foreign keys on", async () => {
    const fx = await sqliteFixture();
    try {
      assert.ok(fx.store instanceof SqlStore);
      const db = fx.store.db;
      assert.deepEqual(await db.query("PRAGMA journal_mode"), [{ journal_mode: "wal" }]);
      assert.deepEqual(await db.query("PRAGMA synchronous"), [{ synchronous: 2 }]);
      assert.deepEqual(await db.query("PRAGMA foreign_keys"), [{ foreign_keys: 1 }]);
      const [timeout] = await db.query<{ timeout: number }>("PRAGMA busy_timeout");
      assert.ok(timeout!.timeout > 0);
    } finally {
      await fx.cleanup();
    }
  });

  it("commits concurrent transactions together (group commit), in call order, each failure rolled back alone", () =>
    withSqliteDb(async (db, store) => {
    const before = { ...db.stats };
    const insert = ghostInsert(db);
    const results = await Promise.allSettled(Array.from({ length: 40 }, (_, i) => insert(`g${i}@x`, i % 10 === 3)));
    results.forEach((r, i) => {
      if (i % 10 === 3) assert.equal(r.status === "rejected" && (r.reason as Error).message, `refused g${i}@x`);
      else assert.deepEqual(r, { status: "fulfilled", value: `g${i}@x` });
    });
    assert.deepEqual(
      await ghostAddresses(db),
      Array.from({ length: 40 }, (_, i) => `g${i}@x`).filter((_, i) => i % 10 !== 3),
    );
    const groups = db.stats.groups - before.groups;
    assert.equal(db.stats.transactions - before.transactions, 36);
    assert.ok(groups >= 1 && groups <= 4, `40 concurrent transactions took ${groups} commits`);

    // Inbound mail the same way: ids follow the order the commits were asked for.
    const ids = await Promise.all(Array.from({ length: 20 }, (_, i) => store.insertInbound(newInbound({ messageId: `gc${i}@x`, contentHash: `gc${i}` }))));
    const sorted = [...ids.map((r) => r.row.id)].sort((a, b) => a - b);
    assert.deepEqual(ids.map((r) => r.row.id), sorted);
    }));

  it("group commit: a group whose first and last members fail, and one where all fail, commit exactly the others", () =>
    withSqliteDb(async (db, store) => {
    const insert = ghostInsert(db);
    // The group's own statements ride with the members' (sqlite.ts): a failed first member's
    // rollback goes with the next member's first statement, a failed last one's with `COMMIT`.
    const mixed = await Promise.allSettled(["f0@x", "f1@x", "f2@x", "f3@x"].map((a, i) => insert(a, i === 0 || i === 3)));
    assert.deepEqual(mixed.map((r) => r.status), ["rejected", "fulfilled", "fulfilled", "rejected"]);
    const all = await Promise.allSettled(["h0@x", "h1@x", "h2@x"].map((a) => insert(a, true)));
    assert.deepEqual(all.map((r) => r.status), ["rejected", "rejected", "rejected"]);
    assert.equal(await insert("after@x", false), "after@x", "the connection keeps serving");
    assert.deepEqual(await ghostAddresses(db), ["f1@x", "f2@x", "after@x"]);
    }));

  it("group commit: members that send no statement, or several at once, and a group script that fails", () =>
    withSqliteDb(async (db, store) => {
    const insert = ghostInsert(db);
    const sql = "INSERT INTO ghosts (address, user_id, display_name, updated_at) VALUES ($1, $2, NULL, 0)";
    // One group: a member with no statement (its value still waits for the COMMIT), one that
    // fails before any statement, two statements sent at once as a member's first, and a
    // failed member between committed ones.
    const results = await Promise.allSettled([
      db.transaction(async () => "nothing"),
      insert("n1@x", false),
      db.transaction(async () => {
        throw new Error("refused before any statement");
      }),
      db.transaction(async (tx) => {
        await Promise.all([tx.execute(sql, ["p1@x", "@p1"]), tx.execute(sql, ["p2@x", "@p2"])]);
        return "pair";
      }),
      insert("n2@x", true),
      db.transaction(async () => "nothing again"),
      insert("n3@x", false),
    ]);
    assert.deepEqual(
      results.map((r) => (r.status === "fulfilled" ? r.value : (r.reason as Error).message)),
      ["nothing", "n1@x", "refused before any statement", "pair", "refused n2@x", "nothing again", "n3@x"],
    );
    assert.deepEqual(await ghostAddresses(db), ["n1@x", "p1@x", "p2@x", "n3@x"]);

    // A member that releases its own savepoint breaks the script sent with the next member's
    // first statement: that statement does not run, a later one of the same member is refused
    // too, and the group fails as a whole (nothing of it on disk); the member after it, taken by
    // the next group, commits.
    const broken = await Promise.allSettled([
      db.transaction(async (tx) => {
        await tx.execute(sql, ["b1@x", "@b1"]);
        await tx.exec("RELEASE meb_member_1");
        return "b1";
      }),
      db.transaction(async (tx) => {
        const first = await tx.execute(sql, ["b2@x", "@b2"]).then(
          () => "ran",
          (err: unknown) => (err as Error).message,
        );
        await tx.execute(sql, ["b3@x", "@b3"]);
        return first;
      }),
      insert("b4@x", false),
    ]);
    assert.equal(broken[0]!.status, "rejected");
    assert.equal(broken[1]!.status, "rejected");
    assert.match((broken[1] as PromiseRejectedResult).reason.message, /no such savepoint/);
    assert.deepEqual(broken[2], { status: "fulfilled", value: "b4@x" });
    assert.deepEqual(await ghostAddresses(db), ["n1@x", "p1@x", "p2@x", "n3@x", "b4@x"]);
    assert.equal(await insert("after@x", false), "after@x", "the connection keeps serving");
    }));

  it("group commit: single statements side by side share one batch; a failed one is backed out alone; a failed COMMIT or a rollback by SQLite fails the batch", () =>
    withSqliteDb(async (db) => {
    const sql = "INSERT INTO ghosts (address, user_id, display_name, updated_at) VALUES ($1, $2, NULL, 0)";
    const insert = ghostInsert(db);
    const before = { ...db.stats };
    // One group: two statements (one batch, after BEGIN), a duplicate that fails alone, a
    // transaction of its own (a savepoint), and a statement whose batch carries the COMMIT.
    const results = await Promise.allSettled([
      db.execute(sql, ["s1@x", "@s1"]),
      db.write<{ address: string }>(`${sql} RETURNING address`, ["s2@x", "@s2"]),
      db.execute(sql, ["s1@x", "@s1-again"]),
      insert("t1@x", false),
      db.execute(sql, ["s3@x", "@s3"]),
    ]);
    assert.deepEqual(results[0], { status: "fulfilled", value: { changes: 1 } });
    assert.deepEqual(results[1], { status: "fulfilled", value: [{ address: "s2@x" }] });
    assert.equal(results[2]!.status, "rejected");
    assert.ok(isUniqueViolation((results[2] as PromiseRejectedResult).reason), "the duplicate's own error");
    assert.deepEqual(results[3], { status: "fulfilled", value: "t1@x" });
    assert.deepEqual(results[4], { status: "fulfilled", value: { changes: 1 } });
    assert.deepEqual(await ghostAddresses(db), ["s1@x", "s2@x", "t1@x", "s3@x"]);
    assert.deepEqual({ groups: db.stats.groups - before.groups, transactions: db.stats.transactions - before.transactions }, { groups: 1, transactions: 4 });

    // A COMMIT that fails (a deferred foreign key left dangling): nothing of the batch is on
    // disk, every member rejects, and the connection keeps serving.
    await db.exec("CREATE TABLE t_parent (id INTEGER PRIMARY KEY); CREATE TABLE t_child (p INTEGER REFERENCES t_parent (id) DEFERRABLE INITIALLY DEFERRED)");
    const dangling = await Promise.allSettled([db.execute(sql, ["c1@x", "@c1"]), db.execute("INSERT INTO t_child (p) VALUES (42)"), db.execute(sql, ["c2@x", "@c2"])]);
    assert.deepEqual(dangling.map((r) => r.status), ["rejected", "rejected", "rejected"]);
    assert.match((dangling[0] as PromiseRejectedResult).reason.message, /FOREIGN KEY/);
    assert.deepEqual(await db.query("SELECT p FROM t_child"), []);

    // A statement after which SQLite rolled back the whole transaction (OR ROLLBACK) fails the
    // batch: the statements before it in the group are not on disk either.
    const rolledBack = await Promise.allSettled([db.execute(sql, ["r1@x", "@r1"]), db.execute(`INSERT OR ROLLBACK ${sql.slice("INSERT ".length)}`, ["s1@x", "@s1-again"])]);
    assert.deepEqual(rolledBack.map((r) => r.status), ["rejected", "rejected"]);
    assert.ok(isUniqueViolation((rolledBack[0] as PromiseRejectedResult).reason), "the batch fails with the error that ended the transaction");
    assert.deepEqual(await ghostAddresses(db), ["s1@x", "s2@x", "t1@x", "s3@x"]);
    assert.deepEqual(await db.write<{ address: string }>(`${sql} RETURNING address`, ["after@x", "@after"]), [{ address: "after@x" }], "the connection keeps serving");
    }));

  it("rolls back a failed transaction and keeps serving", async () => {
    const fx = await sqliteFixture();
    try {
      assert.ok(fx.store instanceof SqlStore);
      const db = fx.store.db;
      await assert.rejects(
        db.transaction(async (tx) => {
          await tx.execute("INSERT INTO ghosts (address, user_id, display_name, updated_at) VALUES ($1, $2, NULL, 0)", ["a@x", "@a:x"]);
          await new Promise((r) => setTimeout(r, 10));
          throw new Error("abort");
        }),
        /abort/,
      );
      // A statement issued while the transaction was open must not have joined it.
      const during = db.transaction(async (tx) => {
        await new Promise((r) => setTimeout(r, 20));
        await tx.execute("INSERT INTO ghosts (address, user_id, display_name, updated_at) VALUES ($1, $2, NULL, 0)", ["b@x", "@b:x"]);
        throw new Error("abort again");
      });
      const outside = fx.store.upsertGhost({ address: "c@x", userId: "@c:x", displayName: null });
      await assert.rejects(during, /abort again/);
      await outside;
      assert.equal(await fx.store.getGhostByAddress("a@x"), null);
      assert.equal(await fx.store.getGhostByAddress("b@x"), null);
      assert.equal((await fx.store.getGhostByAddress("c@x"))?.userId, "@c:x");
    } finally {
      await fx.cleanup();
    }
  });

  it("a SIGKILL while a large mail is written in chunks leaves it whole or absent, never partial; the MTA's retry then stores it once", async () => {
    const dir = tempDir();
    const sqliteFile = join(dir, "crash-chunks.sqlite");
    const openUrl = pathToFileURL(join(import.meta.dirname, "../../src/store/open.ts")).href;
    // 16 MiB: 16 chunks, each its own statement in the SQLite worker; the kill lands among them.
    const mail = (n: number) => `Buffer.concat([Buffer.from("From: bob@example.org\\r\\n\\r\\n"), Buffer.alloc(${n}, 0x61 + ${n} % 20)])`;
    const row = (id: string, raw: string) =>
      `{ roomId: "!r:hs.test", dmLocalUserId: null, replyToEventId: null, messageId: "${id}@x", sender: "bob@example.org", senderVerified: true, senderName: null, auth: null, spam: null, participants: [], contentHash: "${id}", envelopeFrom: "bob@example.org", kind: "mail", raw: ${raw} }`;
    const big = 16 * 1024 * 1024;
    const child = `
      import { openStore } from ${JSON.stringify(openUrl)};
      const store = await openStore({ url: null, sqliteFile: process.env.MEB_CRASH_FILE });
      await store.insertInbound(${row("whole", mail(3 * 1024 * 1024))});
      setTimeout(() => process.kill(process.pid, "SIGKILL"), 15);
      await store.insertInbound(${row("cut", mail(big))});
      process.kill(process.pid, "SIGKILL");
    `;
    try {
      await runUntilKilled(child, sqliteFile);
      const store = await openStore({ url: null, sqliteFile });
      try {
        const expect = (n: number) => Buffer.concat([Buffer.from("From: bob@example.org\r\n\r\n"), Buffer.alloc(n, 0x61 + (n % 20))]);
        const pending = await store.listPendingInbound(10);
        const whole = pending.find((r) => r.messageId === "whole@x");
        assert.ok(whole?.raw.equals(expect(3 * 1024 * 1024)), "the mail committed before the kill is whole");
        const cut = pending.find((r) => r.messageId === "cut@x");
        if (cut) assert.ok(cut.raw.equals(expect(big)), "a mail that made it is whole");
        const db = (store as SqlStore).db;
        const orphans = await db.query<{ n: unknown }>("SELECT COUNT(*) AS n FROM inbound_raw_chunk WHERE inbound_id NOT IN (SELECT id FROM inbound_mail)");
        assert.equal(Number(orphans[0]!.n), 0, "no chunk without its mail");
        // The sending MTA got no 250 for the cut mail and sends it again: it is stored exactly once.
        const again = await store.insertInbound({ roomId: "!r:hs.test", dmLocalUserId: null, replyToEventId: null, messageId: "cut@x", sender: "bob@example.org", senderVerified: true, senderName: null, auth: null, spam: null, participants: [], contentHash: "cut", envelopeFrom: "bob@example.org", kind: "mail", raw: expect(big) });
        assert.equal(again.duplicate, cut !== undefined);
        const after = (await store.listPendingInbound(10)).filter((r) => r.messageId === "cut@x");
        assert.equal(after.length, 1);
        assert.ok(after[0]!.raw.equals(expect(big)));
      } finally {
        await store.close();
      }
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it("keeps committed inbound rows when the process is SIGKILLed right after the commit", async () => {
    const dir = tempDir();
    const sqliteFile = join(dir, "crash.sqlite");
    const openUrl = pathToFileURL(join(import.meta.dirname, "../../src/store/open.ts")).href;
    const rows = 25;
    const child = `
      import { openStore } from ${JSON.stringify(openUrl)};
      const store = await openStore({ url: null, sqliteFile: process.env.MEB_CRASH_FILE });
      for (let i = 0; i < ${rows}; i++) {
        await store.insertInbound({ roomId: "!r:hs.test", dmLocalUserId: null, replyToEventId: null,
          messageId: "crash" + i + "@x", sender: "bob@example.org", senderVerified: true, senderName: null,
          auth: null, spam: null, participants: [], contentHash: "h" + i, envelopeFrom: null, kind: "mail", raw: Buffer.from([i, 0xff, 0x00, 0xfe]) });
      }
      process.kill(process.pid, "SIGKILL");
    `;
    try {
      await runUntilKilled(child, sqliteFile);
      const store = await openStore({ url: null, sqliteFile });
      try {
        const pending = await store.listPendingInbound(100);
        assert.equal(pending.length, rows);
        pending.forEach((r, i) => {
          assert.equal(r.messageId, `crash${i}@x`);
          assert.ok(r.raw.equals(Buffer.from([i, 0xff, 0x00, 0xfe])));
        });
      } finally {
        await store.close();
      }
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe("postgres engine", () => {
  it("a connection ended by the server in the middle of a transaction fails that transaction only: the process goes on, the next one works", async () => {
    const pg = await startPostgres();
    const db = await openPostgres(pg.url, { max: 2 });
    try {
      await db.exec("CREATE TABLE t (v INTEGER)");
      let release!: () => void;
      const between = new Promise<void>((r) => (release = r));
      let started!: () => void;
      const inside = new Promise<void>((r) => (started = r));
      const tx = db.transaction(async (q) => {
        await q.execute("INSERT INTO t (v) VALUES (1)");
        started();
        await between; // no statement running: the client has no query to fail, only its `error` event
        await q.execute("INSERT INTO t (v) VALUES (2)");
      });
      await inside;
      const killer = await openPostgres(pg.url, { max: 1 });
      try {
        // The transaction's backend: the one that is idle in a transaction.
        const ended = await killer.query<{ n: number }>(
          "SELECT count(pg_terminate_backend(pid))::int AS n FROM pg_stat_activity WHERE datname = current_database() AND state = 'idle in transaction'",
        );
        assert.deepEqual(ended, [{ n: 1 }]);
        // Give the `error` event time to arrive while nothing runs on that client.
        await new Promise((r) => setTimeout(r, 300));
      } finally {
        await killer.close();
      }
      release();
      await assert.rejects(tx);
      assert.deepEqual(await db.query("SELECT v FROM t"), [], "nothing of the failed transaction is kept");
      await db.transaction((q) => q.execute("INSERT INTO t (v) VALUES (3)"));
      assert.deepEqual(await db.query("SELECT v FROM t"), [{ v: 3 }]);
    } finally {
      await db.close();
      await pg.stop();
    }
  });
});
