/**
 * The BridgeStore contract: the same behaviour tests for every engine.
 * Used by store.test.ts (SQLite and PostgreSQL).
 */
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { afterEach, beforeEach, describe, it } from "node:test";
import { migrate } from "../../src/store/migrate.ts";
import { MIGRATIONS } from "../../src/store/migrations/index.ts";
import { SqlStore } from "../../src/store/SqlStore.ts";
import { MailboxTakenError, RAW_CHUNK_BYTES } from "../../src/store/Store.ts";
import type { BridgeStore, NewInbound, NewOutbound } from "../../src/store/Store.ts";
import type { Database } from "../../src/store/db/Database.ts";
import { dbBuffer } from "../../src/store/db/dialect.ts";
import { RawCipher, RawDecryptError, isRawEnvelope, rawEnvelopeKeyId } from "../../src/store/rawCipher.ts";
import type { RawKey } from "../../src/store/rawCipher.ts";
import { reencryptRawMail } from "../../src/store/reencrypt.ts";
import { newInbound } from "../harness/rows.ts";

/** A store under test on a fresh, empty (migrated) database. */
export interface StoreFixture {
  store: BridgeStore;
  /** Close what is still open and delete the database. */
  cleanup(): Promise<void>;
  /**
   * Optional: open the same database again through `openStore` (runs migrations).
   * When given, the contract also checks that `openStore` refuses a newer schema.
   */
  reopen?(): Promise<BridgeStore>;
}

/** Every byte value, plus sequences that are not valid UTF-8. */
const NASTY_BYTES = Buffer.concat([
  Buffer.from(Array.from({ length: 256 }, (_, i) => i)),
  Buffer.from([0xc3, 0x28, 0xa0, 0xa1, 0xe2, 0x28, 0xa1, 0xf0, 0x28, 0x8c, 0xbc, 0xff, 0xfe, 0x00, 0x00]),
  Buffer.from("Subject: =?utf-8?q?caf=C3=A9?=\r\n\r\nBody ünïcödé 🎉\r\n", "utf8"),
]);

function inbound(over: Partial<NewInbound> = {}): NewInbound {
  return newInbound(over);
}

function outbound(over: Partial<NewOutbound> = {}): NewOutbound {
  return {
    roomId: "!room:hs.test",
    eventId: "$ev1",
    messageId: "out1@bridge.test",
    envelopeFrom: "alice@bridge.test",
    recipients: ["bob@example.org", "carol@example.net"],
    raw: Buffer.from("From: alice@bridge.test\r\n\r\nhello\r\n"),
    ...over,
  };
}

function dbOf(store: BridgeStore): Database {
  assert.ok(store instanceof SqlStore, "store is a SqlStore");
  return store.db;
}

/**
 * Define the contract tests (node:test `describe`/`it`) for one engine.
 * @param name suite name, e.g. `sqlite`; must equal `store.engine`
 * @param makeStore creates a fresh, migrated store for each test; its cleanup runs after the test
 */
export function runStoreContract(name: string, makeStore: () => Promise<StoreFixture>): void {
  describe(`BridgeStore contract: ${name}`, () => {
    let fx: StoreFixture;
    let store: BridgeStore;

    beforeEach(async () => {
      fx = await makeStore();
      store = fx.store;
    });
    afterEach(async () => {
      await fx.cleanup();
    });

    it("reports its engine", () => {
      assert.equal(store.engine, name);
    });

    describe("ghosts", () => {
      it("inserts and finds a ghost by address and by user ID", async () => {
        const before = Date.now();
        await store.upsertGhost({ address: "bob@example.org", userId: "@email_bob=40example.org:hs.test", displayName: null });
        const g = await store.getGhostByAddress("bob@example.org");
        assert.deepEqual(
          { ...g, updatedAt: 0 },
          { address: "bob@example.org", userId: "@email_bob=40example.org:hs.test", displayName: null, updatedAt: 0 },
        );
        assert.ok(g!.updatedAt >= before && g!.updatedAt <= Date.now(), "updatedAt is epoch ms now");
        assert.deepEqual(await store.getGhostByUserId("@email_bob=40example.org:hs.test"), g);
        assert.equal(await store.getGhostByAddress("nobody@example.org"), null);
        assert.equal(await store.getGhostByUserId("@nobody:hs.test"), null);
      });

      it("updates the display name on a second upsert", async () => {
        await store.upsertGhost({ address: "bob@example.org", userId: "@b:hs.test", displayName: "Bob" });
        const first = await store.getGhostByAddress("bob@example.org");
        await new Promise((r) => setTimeout(r, 5));
        await store.upsertGhost({ address: "bob@example.org", userId: "@b:hs.test", displayName: "Bob Ünicode 🎉" });
        const g = await store.getGhostByUserId("@b:hs.test");
        assert.equal(g?.displayName, "Bob Ünicode 🎉");
        assert.ok(g!.updatedAt > first!.updatedAt, "updatedAt moves");
        await store.upsertGhost({ address: "bob@example.org", userId: "@b:hs.test", displayName: null });
        assert.equal((await store.getGhostByAddress("bob@example.org"))?.displayName, null);
      });
    });

    describe("room mailboxes", () => {
      it("sets a mailbox and finds it both ways", async () => {
        const row = await store.setRoomMailbox("team", "!a:hs.test", "@alice:hs.test");
        assert.equal(row.localpart, "team");
        assert.equal(row.roomId, "!a:hs.test");
        assert.equal(row.createdBy, "@alice:hs.test");
        assert.equal(typeof row.createdAt, "number");
        assert.deepEqual(await store.getRoomMailboxByLocalpart("team"), row);
        assert.deepEqual(await store.getRoomMailboxByRoom("!a:hs.test"), row);
        assert.equal(await store.getRoomMailboxByLocalpart("other"), null);
        assert.equal(await store.getRoomMailboxByRoom("!b:hs.test"), null);
      });

      it("setting the same mailbox again is a no-op", async () => {
        const row = await store.setRoomMailbox("team", "!a:hs.test", "@alice:hs.test");
        const again = await store.setRoomMailbox("team", "!a:hs.test", "@bob:hs.test");
        assert.deepEqual(again, row);
      });

      it("replaces the room's previous mailbox", async () => {
        await store.setRoomMailbox("old", "!a:hs.test", "@alice:hs.test");
        const row = await store.setRoomMailbox("new", "!a:hs.test", "@bob:hs.test");
        assert.equal(row.localpart, "new");
        assert.equal(await store.getRoomMailboxByLocalpart("old"), null);
        assert.deepEqual(await store.getRoomMailboxByRoom("!a:hs.test"), row);
        // The old localpart is free for another room now.
        await store.setRoomMailbox("old", "!b:hs.test", "@carol:hs.test");
      });

      it("refuses a localpart held by another room with MailboxTakenError", async () => {
        const held = await store.setRoomMailbox("team", "!a:hs.test", "@alice:hs.test");
        await store.setRoomMailbox("mine", "!b:hs.test", "@bob:hs.test");
        await assert.rejects(store.setRoomMailbox("team", "!b:hs.test", "@bob:hs.test"), (err: unknown) => {
          assert.ok(err instanceof MailboxTakenError);
          assert.equal(err.localpart, "team");
          assert.equal(err.roomId, "!a:hs.test");
          return true;
        });
        assert.deepEqual(await store.getRoomMailboxByLocalpart("team"), held);
        assert.equal((await store.getRoomMailboxByRoom("!b:hs.test"))?.localpart, "mine", "loser keeps its mailbox");
      });

      it("lets exactly one of several concurrent claims win", async () => {
        const rooms = ["!r1:hs.test", "!r2:hs.test", "!r3:hs.test", "!r4:hs.test"];
        const results = await Promise.allSettled(rooms.map((r) => store.setRoomMailbox("hot", r, "@x:hs.test")));
        const won = results.filter((r) => r.status === "fulfilled");
        const lost = results.filter((r) => r.status === "rejected");
        assert.equal(won.length, 1);
        for (const l of lost) assert.ok((l as PromiseRejectedResult).reason instanceof MailboxTakenError);
        const holder = await store.getRoomMailboxByLocalpart("hot");
        assert.equal(holder?.roomId, (won[0] as PromiseFulfilledResult<{ roomId: string }>).value.roomId);
      });

      it("removes a room's mailbox", async () => {
        await store.setRoomMailbox("team", "!a:hs.test", "@alice:hs.test");
        assert.equal(await store.removeRoomMailbox("!a:hs.test"), true);
        assert.equal(await store.removeRoomMailbox("!a:hs.test"), false);
        assert.equal(await store.getRoomMailboxByLocalpart("team"), null);
        assert.equal(await store.getRoomMailboxByRoom("!a:hs.test"), null);
      });

      it("lists every room mailbox by localpart", async () => {
        await store.setRoomMailbox("zeta", "!z:hs.test", "@alice:hs.test");
        await store.setRoomMailbox("alpha", "!a:hs.test", "@alice:hs.test");
        assert.deepEqual((await store.listRoomMailboxes()).map((m) => [m.localpart, m.roomId]), [["alpha", "!a:hs.test"], ["zeta", "!z:hs.test"]]);
      });
    });

    describe("mail domains and aliases", () => {
      it("adds a domain once, lists by name, removes it with its aliases only", async () => {
        assert.equal(await store.addMailDomain("two.test", "@alice:hs.test"), true);
        assert.equal(await store.addMailDomain("two.test", "@bob:hs.test"), false, "a second add changes nothing");
        assert.equal(await store.addMailDomain("one.test", "admin-api"), true);
        const domains = await store.listMailDomains();
        assert.deepEqual(domains.map((d) => [d.domain, d.createdBy]), [["one.test", "admin-api"], ["two.test", "@alice:hs.test"]]);
        assert.equal(typeof domains[0]!.createdAt, "number");
        await store.addMailAlias("sales@two.test", "!a:hs.test", "@alice:hs.test");
        await store.addMailAlias("*@two.test", "@bob:hs.test", "@alice:hs.test");
        await store.addMailAlias("sales@one.test", "!a:hs.test", "@alice:hs.test");
        assert.equal(await store.removeMailDomain("two.test"), true);
        assert.equal(await store.removeMailDomain("two.test"), false);
        assert.deepEqual((await store.listMailDomains()).map((d) => d.domain), ["one.test"]);
        assert.deepEqual((await store.listMailAliases()).map((a) => a.address), ["sales@one.test"], "the other domain's alias stays");
      });

      it("an alias has one row per target (1:N); adding one again returns the existing row; filters combine", async () => {
        const first = await store.addMailAlias("team@two.test", "!a:hs.test", "@alice:hs.test");
        assert.deepEqual({ ...first, createdAt: 0 }, { address: "team@two.test", target: "!a:hs.test", createdBy: "@alice:hs.test", createdAt: 0 });
        await store.addMailAlias("team@two.test", "!b:hs.test", "@alice:hs.test");
        await store.addMailAlias("info@one.test", "!a:hs.test", "@carol:hs.test");
        const again = await store.addMailAlias("team@two.test", "!a:hs.test", "@bob:hs.test");
        assert.deepEqual(again, first, "the first row is kept");
        assert.deepEqual((await store.listMailAliases({ address: "team@two.test" })).map((a) => a.target), ["!a:hs.test", "!b:hs.test"]);
        assert.deepEqual((await store.listMailAliases({ target: "!a:hs.test" })).map((a) => a.address), ["info@one.test", "team@two.test"]);
        assert.deepEqual((await store.listMailAliases({ domain: "one.test" })).map((a) => a.address), ["info@one.test"]);
        assert.deepEqual(await store.listMailAliases({ domain: "one.test", target: "!b:hs.test" }), []);
        assert.equal((await store.listMailAliases()).length, 3);
      });

      it("removes by address, by address and target, by target; refuses an empty filter", async () => {
        await store.addMailAlias("team@two.test", "!a:hs.test", "@alice:hs.test");
        await store.addMailAlias("team@two.test", "!b:hs.test", "@alice:hs.test");
        await store.addMailAlias("info@two.test", "!a:hs.test", "@alice:hs.test");
        await store.addMailAlias("desk@two.test", "!b:hs.test", "@alice:hs.test");
        assert.equal(await store.removeMailAliases({ address: "team@two.test", target: "!b:hs.test" }), 1);
        assert.equal(await store.removeMailAliases({ address: "team@two.test", target: "!b:hs.test" }), 0);
        assert.equal(await store.removeMailAliases({ target: "!a:hs.test" }), 2);
        assert.equal(await store.removeMailAliases({ address: "desk@two.test" }), 1);
        assert.deepEqual(await store.listMailAliases(), []);
        await assert.rejects(store.removeMailAliases({}), /needs an address, domain or target/);
      });
    });

    describe("portals", () => {
      it("inserts, updates and deletes a portal", async () => {
        const p = await store.upsertPortal({
          roomId: "!g:hs.test",
          kind: "group",
          localUserId: null,
          remoteAddress: null,
          subject: "Plans",
          encrypted: false,
          remoteVerified: true,
        });
        assert.deepEqual({ ...p, createdAt: 0 }, {
          roomId: "!g:hs.test",
          kind: "group",
          localUserId: null,
          remoteAddress: null,
          subject: "Plans",
          encrypted: false,
          remoteVerified: true,
          createdAt: 0,
        });
        assert.deepEqual(await store.getPortalByRoom("!g:hs.test"), p);

        const q = await store.upsertPortal({ ...p, kind: "mailbox", subject: null, encrypted: true });
        assert.equal(q.kind, "mailbox");
        assert.equal(q.subject, null);
        assert.equal(q.encrypted, true);
        assert.equal(q.createdAt, p.createdAt, "createdAt is kept");
        assert.deepEqual(await store.getPortalByRoom("!g:hs.test"), q);

        await store.deletePortal("!g:hs.test");
        assert.equal(await store.getPortalByRoom("!g:hs.test"), null);
        await store.deletePortal("!g:hs.test"); // no-op
      });

      it("finds DM portals by (local user, remote address)", async () => {
        const dm = await store.upsertPortal({
          roomId: "!dm:hs.test",
          kind: "dm",
          localUserId: "@alice:hs.test",
          remoteAddress: "bob@example.org",
          subject: null,
          encrypted: false,
          remoteVerified: true,
        });
        await store.upsertPortal({
          roomId: "!grp:hs.test",
          kind: "group",
          localUserId: "@alice:hs.test",
          remoteAddress: "carol@example.org",
          subject: null,
          encrypted: false,
          remoteVerified: true,
        });
        assert.deepEqual(await store.getDmPortal("@alice:hs.test", "bob@example.org", true), dm);
        assert.equal(await store.getDmPortal("@alice:hs.test", "bob@example.org", false), null, "the unverified ghost's DM is another portal");
        assert.equal(await store.getDmPortal("@alice:hs.test", "carol@example.org", true), null, "only kind dm");
        assert.equal(await store.getDmPortal("@bob:hs.test", "bob@example.org", true), null);
        assert.equal(await store.getDmPortal("@alice:hs.test", "dave@example.org", true), null);
      });

      it("keeps a DM with the unverified ghost of an address apart from the verified one", async () => {
        const base = { kind: "dm" as const, localUserId: "@alice:hs.test", remoteAddress: "bob@example.org", subject: null, encrypted: false };
        const verified = await store.upsertPortal({ ...base, roomId: "!v:hs.test", remoteVerified: true });
        const unverified = await store.upsertPortal({ ...base, roomId: "!u:hs.test", remoteVerified: false });
        assert.equal(unverified.remoteVerified, false);
        assert.deepEqual(await store.getDmPortal("@alice:hs.test", "bob@example.org", true), verified);
        assert.deepEqual(await store.getDmPortal("@alice:hs.test", "bob@example.org", false), unverified);
      });

      it("refuses a second DM portal for the same pair", async () => {
        const base = { kind: "dm" as const, localUserId: "@alice:hs.test", remoteAddress: "bob@example.org", subject: null, encrypted: false, remoteVerified: true };
        await store.upsertPortal({ ...base, roomId: "!dm1:hs.test" });
        await assert.rejects(store.upsertPortal({ ...base, roomId: "!dm2:hs.test" }));
        assert.equal((await store.getDmPortal("@alice:hs.test", "bob@example.org", true))?.roomId, "!dm1:hs.test");
        assert.equal(await store.getPortalByRoom("!dm2:hs.test"), null);
      });
    });

    describe("message mappings", () => {
      it("maps both directions and round-trips references", async () => {
        await store.insertMessage({
          roomId: "!a:hs.test",
          eventId: "$in",
          messageId: "m1@mail.test",
          references: ["r0@x.test", "r1@y.test", "weird\"'\\ü@z.test"],
          direction: "inbound",
          sender: "bob@example.org",
          subject: "Hello ✉",
          participants: ["alice@bridge.test", "carol@example.net"],
          viaList: false,
        });
        await store.insertMessage({
          roomId: "!b:hs.test",
          eventId: "$out",
          messageId: "m1@mail.test",
          references: [],
          direction: "outbound",
          sender: "alice@bridge.test",
          subject: null,
          participants: [],
          viaList: true,
        });
        const a = await store.getMessageByEvent("!a:hs.test", "$in");
        assert.deepEqual({ ...a, createdAt: 0 }, {
          roomId: "!a:hs.test",
          eventId: "$in",
          messageId: "m1@mail.test",
          references: ["r0@x.test", "r1@y.test", "weird\"'\\ü@z.test"],
          direction: "inbound",
          sender: "bob@example.org",
          subject: "Hello ✉",
          participants: ["alice@bridge.test", "carol@example.net"],
          viaList: false,
          createdAt: 0,
        });
        const b = await store.getMessageByEvent("!b:hs.test", "$out");
        assert.equal(b?.direction, "outbound");
        assert.deepEqual(b?.references, []);
        assert.equal(b?.subject, null);
        assert.equal(b?.viaList, true);

        const all = await store.getMessagesByMessageId("m1@mail.test");
        assert.deepEqual(all.map((m) => m.roomId).sort(), ["!a:hs.test", "!b:hs.test"]);
        assert.deepEqual(await store.getMessagesByMessageId("unknown@x.test"), []);
        assert.equal(await store.getMessageByEvent("!a:hs.test", "$out"), null, "keyed by (room, event)");
      });

      it("ignores a second insert of the same (room, event)", async () => {
        const msg = {
          roomId: "!a:hs.test",
          eventId: "$e",
          messageId: "first@mail.test",
          references: ["x@y"],
          direction: "inbound" as const,
          sender: "bob@example.org",
          subject: "one",
          participants: [],
          viaList: false,
        };
        await store.insertMessage(msg);
        await store.insertMessage({ ...msg, messageId: "second@mail.test", subject: "two" });
        const m = await store.getMessageByEvent("!a:hs.test", "$e");
        assert.equal(m?.messageId, "first@mail.test");
        assert.equal(m?.subject, "one");
        assert.deepEqual(await store.getMessagesByMessageId("second@mail.test"), []);
      });

      it("finds a thread's latest message: the root itself or the newest that references it, in that room only, matched exactly", async () => {
        const root = 'root"\\%_@mail.test';
        const msg = (roomId: string, eventId: string, messageId: string, references: string[]) =>
          store.insertMessage({ roomId, eventId, messageId, references, direction: "inbound", sender: "bob@example.org", subject: null, participants: [], viaList: false });
        const tick = () => new Promise((resolve) => setTimeout(resolve, 5)); // distinct createdAt
        assert.equal(await store.latestMessageInThread("!t:hs.test", root), null);
        await msg("!t:hs.test", "$root", root, []);
        assert.equal((await store.latestMessageInThread("!t:hs.test", root))?.eventId, "$root", "a root without replies is its own latest");
        await tick();
        await msg("!t:hs.test", "$r1", "r1@mail.test", [root]);
        await tick();
        await msg("!t:hs.test", "$r2", "r2@mail.test", [root, "r1@mail.test"]);
        await tick();
        // Not in the thread: another room, a Message-ID differing only in case or by a LIKE wildcard, a near miss.
        await msg("!other:hs.test", "$elsewhere", "e@mail.test", [root]);
        await msg("!t:hs.test", "$case", "c@mail.test", [root.toUpperCase()]);
        await msg("!t:hs.test", "$wild", "w@mail.test", ['rootX\\%_@mail.test', 'root"\\ab@mail.test']);
        await msg("!t:hs.test", "$prefix", "p@mail.test", [`x${root}`]);
        const latest = await store.latestMessageInThread("!t:hs.test", root);
        assert.equal(latest?.eventId, "$r2");
        assert.deepEqual(latest?.references, [root, "r1@mail.test"]);
        assert.equal((await store.latestMessageInThread("!other:hs.test", root))?.eventId, "$elsewhere");
        assert.equal(await store.latestMessageInThread("!t:hs.test", "r2@mail.test").then((m) => m?.eventId), "$r2");
      });
    });

    describe("inbound queue", () => {
      it("commits a pending row with the exact raw bytes", async () => {
        const before = Date.now();
        const { row, duplicate } = await store.insertInbound(inbound({ raw: NASTY_BYTES, replyToEventId: "$parent" }));
        assert.equal(duplicate, false);
        assert.equal(typeof row.id, "number");
        assert.equal(row.state, "pending");
        assert.equal(row.attempts, 0);
        assert.equal(row.eventId, null);
        assert.equal(row.lastError, null);
        assert.equal(row.replyToEventId, "$parent");
        assert.equal(row.roomId, "!room:hs.test");
        assert.equal(row.dmLocalUserId, null);
        assert.ok(row.receivedAt >= before && row.receivedAt <= Date.now());
        assert.ok(Buffer.isBuffer(row.raw));
        assert.ok(row.raw.equals(NASTY_BYTES), "raw bytes round-trip on insert");
        const [pending] = await store.listPendingInbound(10);
        assert.ok(Buffer.isBuffer(pending!.raw));
        assert.ok(pending!.raw.equals(NASTY_BYTES), "raw bytes round-trip on read");
        assert.deepEqual(pending, row);
      });

      it("round-trips a large random message", async () => {
        const raw = randomBytes(2 * 1024 * 1024);
        await store.insertInbound(inbound({ raw }));
        const [row] = await store.listPendingInbound(1);
        assert.ok(row!.raw.equals(raw));
      });

      it("dedupes a replay to the same room, not to another room", async () => {
        const first = await store.insertInbound(inbound());
        const replay = await store.insertInbound(inbound({ raw: Buffer.from("different bytes") }));
        assert.equal(replay.duplicate, true);
        assert.deepEqual(replay.row, first.row);
        const other = await store.insertInbound(inbound({ roomId: "!other:hs.test" }));
        assert.equal(other.duplicate, false);
        assert.notEqual(other.row.id, first.row.id);
        const otherMsg = await store.insertInbound(inbound({ messageId: "m2@mail.test" }));
        assert.equal(otherMsg.duplicate, false);
        assert.equal((await store.listPendingInbound(10)).length, 3);
      });

      it("keeps a different mail that reuses a Message-ID (another content hash)", async () => {
        const first = await store.insertInbound(inbound());
        const reuse = await store.insertInbound(inbound({ contentHash: "h2", raw: Buffer.from("another mail") }));
        assert.equal(reuse.duplicate, false);
        assert.notEqual(reuse.row.id, first.row.id);
        assert.equal((await store.listPendingInbound(10)).length, 2);
      });

      it("round-trips the verdict columns", async () => {
        const { row } = await store.insertInbound(
          inbound({
            senderVerified: false,
            senderName: null,
            auth: { spf: "none", dkim: "fail", dmarc: "none", arc: "none", verified: false },
            spam: { action: "add header", score: 7.5, requiredScore: 15 },
            participants: [],
          }),
        );
        const [read] = await store.listPendingInbound(1);
        assert.deepEqual(read, row);
        assert.equal(read!.senderVerified, false);
        assert.equal(read!.senderName, null);
        assert.deepEqual(read!.auth, { spf: "none", dkim: "fail", dmarc: "none", arc: "none", verified: false });
        assert.deepEqual(read!.spam, { action: "add header", score: 7.5, requiredScore: 15 });
        assert.deepEqual(read!.participants, []);
        assert.equal(read!.contentHash, "h1");
      });

      it("round-trips the recipient address and tag (null when not given)", async () => {
        const { row } = await store.insertInbound(inbound({ deliveredTo: "bob+shop@two.test", recipientTag: "shop" }));
        assert.equal(row.deliveredTo, "bob+shop@two.test");
        assert.equal(row.recipientTag, "shop");
        assert.deepEqual(await store.getInbound(row.id), row);
        const { row: plain } = await store.insertInbound(inbound({ messageId: "plain@x", contentHash: "h2" }));
        assert.equal(plain.deliveredTo, null);
        assert.equal(plain.recipientTag, null);
      });

      it("dedupes mail for a new DM portal by local user", async () => {
        const dm = inbound({ roomId: null, dmLocalUserId: "@alice:hs.test" });
        const first = await store.insertInbound(dm);
        assert.equal(first.row.roomId, null);
        assert.equal(first.row.dmLocalUserId, "@alice:hs.test");
        const replay = await store.insertInbound(dm);
        assert.equal(replay.duplicate, true);
        assert.equal(replay.row.id, first.row.id);
        const otherUser = await store.insertInbound({ ...dm, dmLocalUserId: "@bob:hs.test" });
        assert.equal(otherUser.duplicate, false);
        // A room ID that happens to be spelled like the DM key does not collide.
        const room = await store.insertInbound(inbound({ roomId: "@alice:hs.test" }));
        assert.equal(room.duplicate, false);
      });

      it("still dedupes a DM replay that arrives after the DM portal was created", async () => {
        const first = await store.insertInbound(inbound({ roomId: null, dmLocalUserId: "@alice:hs.test" }));
        await store.upsertPortal({
          roomId: "!dm:hs.test",
          kind: "dm",
          localUserId: "@alice:hs.test",
          remoteAddress: "bob@example.org",
          subject: null,
          encrypted: false,
          remoteVerified: true,
        });
        await store.setInboundRoom(first.row.id, "!dm:hs.test");
        const replay = await store.insertInbound(inbound({ roomId: "!dm:hs.test" }));
        assert.equal(replay.duplicate, true);
        assert.equal(replay.row.id, first.row.id);
        assert.equal(replay.row.roomId, "!dm:hs.test");
      });

      it("dedupes a replay into the DM portal of an unverified sender against the mail that waited for it, not against the verified DM", async () => {
        const unverified = await store.insertInbound(inbound({ roomId: null, dmLocalUserId: "@alice:hs.test", senderVerified: false }));
        const verified = await store.insertInbound(inbound({ roomId: null, dmLocalUserId: "@alice:hs.test", senderVerified: true }));
        assert.notEqual(unverified.row.id, verified.row.id);
        await store.upsertPortal({
          roomId: "!dm-u:hs.test",
          kind: "dm",
          localUserId: "@alice:hs.test",
          remoteAddress: "bob@example.org",
          subject: null,
          encrypted: false,
          remoteVerified: false,
        });
        const replay = await store.insertInbound(inbound({ roomId: "!dm-u:hs.test", senderVerified: false }));
        assert.equal(replay.duplicate, true);
        assert.equal(replay.row.id, unverified.row.id);
        // A new mail into that room queues behind the waiting one (same target), not as a room of its own.
        const next = await store.insertInbound(inbound({ roomId: "!dm-u:hs.test", messageId: "next@example.org", senderVerified: false }));
        assert.equal(next.duplicate, false);
        const due = await store.listDueInbound(Date.now() + 1000, 10);
        assert.deepEqual(due.map((r) => r.id).sort((a, b) => a - b), [unverified.row.id, verified.row.id]);
      });

      it("refuses a mail with neither room nor DM user", async () => {
        await assert.rejects(store.insertInbound(inbound({ roomId: null, dmLocalUserId: null })));
      });

      it("lists pending rows oldest first, with a limit", async () => {
        const ids: number[] = [];
        for (let i = 0; i < 5; i++) ids.push((await store.insertInbound(inbound({ messageId: `m${i}@x` }))).row.id);
        assert.deepEqual((await store.listPendingInbound(10)).map((r) => r.id), ids);
        assert.deepEqual((await store.listPendingInbound(2)).map((r) => r.id), ids.slice(0, 2));
        assert.deepEqual(await store.listPendingInbound(0), []);
        await store.markInboundPosted(ids[0]!, "$posted");
        await store.markInboundFailed(ids[1]!, "boom");
        await store.markInboundRetry(ids[2]!, "transient", Date.now() + 60_000);
        assert.deepEqual((await store.listPendingInbound(10)).map((r) => r.id), ids.slice(2));
      });

      it("sets the room of a row once its DM portal exists", async () => {
        const { row } = await store.insertInbound(inbound({ roomId: null, dmLocalUserId: "@alice:hs.test" }));
        await store.setInboundRoom(row.id, "!dm:hs.test");
        const [p] = await store.listPendingInbound(1);
        assert.equal(p?.roomId, "!dm:hs.test");
        assert.equal(p?.dmLocalUserId, "@alice:hs.test");
      });

      it("marks a row posted", async () => {
        const { row } = await store.insertInbound(inbound());
        await store.markInboundPosted(row.id, "$event");
        assert.deepEqual(await store.listPendingInbound(10), []);
        const again = await store.insertInbound(inbound());
        assert.equal(again.duplicate, true);
        assert.equal(again.row.state, "posted");
        assert.equal(again.row.eventId, "$event");
        assert.equal((await store.getInboundByEvent(row.roomId!, "$event"))?.id, row.id, "found by its posted event");
        assert.equal(await store.getInboundByEvent("!elsewhere:hs.test", "$event"), null);
        assert.equal(await store.getInboundByEvent(row.roomId!, "$other"), null);
      });

      it("counts attempts, waits for the retry time, and fails a row", async () => {
        const { row } = await store.insertInbound(inbound());
        const later = Date.now() + 60_000;
        await store.markInboundRetry(row.id, "first error", later);
        let [p] = await store.listPendingInbound(1);
        assert.equal(p?.attempts, 1);
        assert.equal(p?.lastError, "first error");
        assert.equal(p?.state, "pending");
        assert.equal(p?.nextAttemptAt, later);
        assert.equal(await store.nextInboundAttemptAt(), later);
        assert.deepEqual(await store.listDueInbound(Date.now(), 10), [], "not due before its retry time");
        assert.deepEqual((await store.listDueInbound(later, 10)).map((r) => r.id), [row.id]);
        await store.markInboundRetry(row.id, "second error", later);
        [p] = await store.listPendingInbound(1);
        assert.equal(p?.attempts, 2);
        await store.markInboundFailed(row.id, "given up");
        assert.deepEqual(await store.listPendingInbound(10), []);
        assert.equal(await store.nextInboundAttemptAt(), null);
        const { row: failed } = await store.insertInbound(inbound());
        assert.equal(failed.state, "failed");
        assert.equal(failed.attempts, 3);
        assert.equal(failed.lastError, "given up");
        assert.deepEqual((await store.listInbound("failed", 10)).map((r) => r.id), [row.id]);
        assert.equal((await store.getInbound(row.id))?.state, "failed");
        assert.equal(await store.requeueInbound(row.id), true);
        assert.equal((await store.getInbound(row.id))?.state, "pending");
        assert.equal(await store.dropInbound(row.id), true);
        assert.equal(await store.getInbound(row.id), null);
        assert.equal(await store.requeueInbound(row.id), false);
      });

      it("due rows: only the oldest pending row of each target, so a waiting row holds back only its own room", async () => {
        const a1 = (await store.insertInbound(inbound({ messageId: "a1@x", roomId: "!a:hs.test" }))).row;
        const a2 = (await store.insertInbound(inbound({ messageId: "a2@x", roomId: "!a:hs.test" }))).row;
        const b1 = (await store.insertInbound(inbound({ messageId: "b1@x", roomId: "!b:hs.test" }))).row;
        const d1 = (await store.insertInbound(inbound({ messageId: "d1@x", roomId: null, dmLocalUserId: "@alice:hs.test", sender: "bob@example.org" }))).row;
        const d2 = (await store.insertInbound(inbound({ messageId: "d2@x", roomId: null, dmLocalUserId: "@alice:hs.test", sender: "carol@example.org" }))).row;
        const now = Date.now();
        assert.deepEqual((await store.listDueInbound(now, 10)).map((r) => r.id), [a1.id, b1.id, d1.id, d2.id]);
        await store.markInboundRetry(a1.id, "homeserver down", now + 60_000);
        await store.markInboundRetry(d1.id, "homeserver down", now + 60_000);
        // a2 waits behind a1 (same room, order kept); b1 and carol's DM are not held back.
        assert.deepEqual((await store.listDueInbound(now, 10)).map((r) => r.id), [b1.id, d2.id]);
        await store.markInboundPosted(a1.id, "$a1");
        assert.deepEqual((await store.listDueInbound(now, 10)).map((r) => r.id), [a2.id, b1.id, d2.id]);
        await store.markInboundFailed(d1.id, "unpostable");
        assert.deepEqual((await store.listDueInbound(now, 2)).map((r) => r.id), [a2.id, b1.id]);
      });

      it("commits many concurrent inserts", async () => {
        const results = await Promise.all(
          Array.from({ length: 40 }, (_, i) => store.insertInbound(inbound({ messageId: `c${i % 20}@x` }))),
        );
        assert.equal(results.filter((r) => !r.duplicate).length, 20);
        assert.equal((await store.listPendingInbound(100)).length, 20);
      });
    });

    describe("message log by address and by room", () => {
      it("finds an address as sender or exact participant, and a room's mappings, newest first, with a limit", async () => {
        const base = { references: [], subject: "s", viaList: false, direction: "inbound" as const };
        await store.insertMessage({ ...base, roomId: "!r1", eventId: "$1", messageId: "one@x", sender: "bob@example.org", participants: ["alice@bridge.test"] });
        await new Promise((r) => setTimeout(r, 5));
        await store.insertMessage({ ...base, roomId: "!r2", eventId: "$2", messageId: "two@x", sender: "carol@example.net", participants: ["bob@example.org", "x@y.test"] });
        await new Promise((r) => setTimeout(r, 5));
        await store.insertMessage({ ...base, roomId: "!r1", eventId: "$3", messageId: "three@x", sender: "dave@example.com", participants: ["xbob@example.org", "bob@example.org.evil"] });
        assert.deepEqual((await store.listMessagesByAddress("bob@example.org", 10)).map((m) => m.messageId), ["two@x", "one@x"]);
        assert.deepEqual((await store.listMessagesByAddress("bob@example.org", 1)).map((m) => m.messageId), ["two@x"]);
        assert.deepEqual((await store.listMessagesByAddress("alice@bridge.test", 10)).map((m) => m.messageId), ["one@x"]);
        assert.deepEqual(await store.listMessagesByAddress("nobody@example.org", 10), []);
        assert.deepEqual((await store.listMessagesInRoom("!r1", 10)).map((m) => m.eventId), ["$3", "$1"]);
        assert.deepEqual((await store.listMessagesInRoom("!r1", 1)).map((m) => m.eventId), ["$3"]);
        assert.deepEqual(await store.listMessagesInRoom("!none", 10), []);
      });
    });

    describe("latest received mail of a room", () => {
      it("is the newest inbound mapping of that room; outbound ones and other rooms do not count", async () => {
        const base = { references: [], sender: "bob@example.org", subject: "s", participants: [], viaList: false };
        assert.equal(await store.latestInboundMessage("!l"), null);
        await store.insertMessage({ ...base, roomId: "!l", eventId: "$1", messageId: "one@x", direction: "inbound" });
        await new Promise((r) => setTimeout(r, 5));
        await store.insertMessage({ ...base, roomId: "!l", eventId: "$2", messageId: "two@x", direction: "inbound" });
        await new Promise((r) => setTimeout(r, 5));
        await store.insertMessage({ ...base, roomId: "!l", eventId: "$3", messageId: "three@x", direction: "outbound" });
        await store.insertMessage({ ...base, roomId: "!other", eventId: "$4", messageId: "four@x", direction: "inbound" });
        assert.equal((await store.latestInboundMessage("!l"))?.messageId, "two@x");
      });
    });

    describe("contact rules", () => {
      it("an address rule wins over its domain's; a rule replaces the earlier one for its pattern; rules are per user", async () => {
        const rule = async (u: string, a: string) => (await store.contactRuleFor(u, a))?.rule ?? null;
        assert.equal(await store.contactRuleFor("@u:hs", "bob@example.org"), null);
        await store.setContactRule("@u:hs", "example.org", "block");
        assert.equal(await rule("@u:hs", "bob@example.org"), "block");
        await store.setContactRule("@u:hs", "bob@example.org", "allow");
        assert.equal(await rule("@u:hs", "bob@example.org"), "allow");
        assert.equal(await rule("@u:hs", "carol@example.org"), "block");
        await store.setContactRule("@u:hs", "example.org", "allow");
        assert.equal(await rule("@u:hs", "carol@example.org"), "allow");
        assert.equal(await store.contactRuleFor("@other:hs", "carol@example.org"), null);
        assert.deepEqual((await store.listContactRules("@u:hs")).map((r) => [r.pattern, r.rule]), [
          ["bob@example.org", "allow"],
          ["example.org", "allow"],
        ]);
      });

      it("a block keeps its reason or quietness; an allow has neither", async () => {
        await store.setContactRule("@u:hs", "spam@example.org", "block", { reason: "no sales mail", quiet: false });
        await store.setContactRule("@u:hs", "junk.example", "block", { reason: null, quiet: true });
        const loud = await store.contactRuleFor("@u:hs", "spam@example.org");
        assert.deepEqual({ ...loud, createdAt: 0 }, { pattern: "spam@example.org", rule: "block", reason: "no sales mail", quiet: false, createdAt: 0 });
        assert.equal(typeof loud?.createdAt, "number");
        assert.equal((await store.contactRuleFor("@u:hs", "x@junk.example"))?.quiet, true);
        await store.setContactRule("@u:hs", "spam@example.org", "allow", { reason: "ignored", quiet: true });
        const allowed = await store.contactRuleFor("@u:hs", "spam@example.org");
        assert.equal(allowed?.reason, null);
        assert.equal(allowed?.quiet, false);
      });
    });

    describe("personal settings and contact requests", () => {
      it("settings default to invite mode, mailbox on, no name; a patch changes only what it names", async () => {
        assert.deepEqual(await store.getUserSettings("@u:hs"), { userId: "@u:hs", contactMode: "invite", personalMailbox: true, displayName: null });
        assert.deepEqual(await store.updateUserSettings("@u:hs", { contactMode: "hold" }), { userId: "@u:hs", contactMode: "hold", personalMailbox: true, displayName: null });
        await store.updateUserSettings("@u:hs", { personalMailbox: false, displayName: "Ursula" });
        assert.deepEqual(await store.getUserSettings("@u:hs"), { userId: "@u:hs", contactMode: "hold", personalMailbox: false, displayName: "Ursula" });
        assert.equal((await store.getUserSettings("@other:hs")).contactMode, "invite");
      });

      it("a request is created pending once; later attempts count, keep the first preview and the decision", async () => {
        const first = await store.noteContactRequest({ userId: "@u:hs", sender: "bob@example.org", senderName: "Bob", verified: true, subject: "Hi", preview: "Hello there" });
        assert.equal(first.created, true);
        assert.equal(first.row.state, "pending");
        assert.equal(first.row.attempts, 1);
        assert.equal(first.row.notifiedAt, null);
        await store.markContactRequestNotified("@u:hs", "bob@example.org");
        assert.equal(await store.countContactRequestNotices("@u:hs", 0), 1);
        assert.equal(await store.countContactRequestNotices("@u:hs", Date.now() + 60_000), 0);
        assert.equal(await store.countContactRequestNotices("@other:hs", 0), 0);
        const again = await store.noteContactRequest({ userId: "@u:hs", sender: "bob@example.org", senderName: "Robert", verified: false, subject: "Other", preview: "x" });
        assert.equal(again.created, false);
        assert.equal(again.row.attempts, 2);
        assert.equal(again.row.subject, "Hi");
        assert.equal(again.row.senderName, "Bob");
        assert.equal(again.row.verified, true);
        assert.equal(typeof again.row.notifiedAt, "number");
        assert.equal(await store.setContactRequestState("@u:hs", "bob@example.org", "accepted"), true);
        assert.equal(await store.setContactRequestState("@u:hs", "nobody@example.org", "accepted"), false);
        await store.noteContactRequest({ userId: "@u:hs", sender: "bob@example.org", senderName: null, verified: true, subject: null, preview: null });
        assert.equal((await store.getContactRequest("@u:hs", "bob@example.org"))?.state, "accepted");
        await store.noteContactRequest({ userId: "@u:hs", sender: "carol@example.org", senderName: null, verified: false, subject: null, preview: null });
        assert.deepEqual((await store.listContactRequests("@u:hs", "pending")).map((r) => r.sender), ["carol@example.org"]);
        assert.deepEqual((await store.listContactRequests("@u:hs", null)).map((r) => r.sender).sort(), ["bob@example.org", "carol@example.org"]);
        assert.equal(await store.getContactRequest("@other:hs", "bob@example.org"), null);
      });

      it("a room mailbox's signature is set and cleared; a room without a mailbox has none to set", async () => {
        await store.setRoomMailbox("sig", "!sig:hs.test", "@alice:hs.test");
        assert.equal((await store.getRoomMailboxByRoom("!sig:hs.test"))?.signature, null);
        assert.equal(await store.setMailboxSignature("!sig:hs.test", "The Sig team"), true);
        assert.equal((await store.getRoomMailboxByLocalpart("sig"))?.signature, "The Sig team");
        assert.equal(await store.setMailboxSignature("!sig:hs.test", null), true);
        assert.equal((await store.getRoomMailboxByRoom("!sig:hs.test"))?.signature, null);
        assert.equal(await store.setMailboxSignature("!none:hs.test", "x"), false);
      });
    });

    describe("app passwords (submission)", () => {
      it("adds per user with unique labels, lists by label, records use, revokes", async () => {
        const laptop = await store.addAppPassword("@u:hs", "laptop", "scrypt$hash1");
        assert.ok(laptop);
        assert.equal(laptop.userId, "@u:hs");
        assert.equal(laptop.label, "laptop");
        assert.equal(laptop.hash, "scrypt$hash1");
        assert.equal(laptop.lastUsedAt, null);
        assert.ok(laptop.createdAt > 0);
        assert.equal(await store.addAppPassword("@u:hs", "laptop", "scrypt$other"), null, "a label is unique per user");
        assert.ok(await store.addAppPassword("@other:hs", "laptop", "scrypt$hash2"), "another user may use the same label");
        assert.ok(await store.addAppPassword("@u:hs", "backup-script", "scrypt$hash3"));
        assert.deepEqual((await store.listAppPasswords("@u:hs")).map((r) => [r.label, r.hash]), [
          ["backup-script", "scrypt$hash3"],
          ["laptop", "scrypt$hash1"],
        ]);
        await store.markAppPasswordUsed(laptop.id, 1_700_000_000_123);
        const used = (await store.listAppPasswords("@u:hs")).find((r) => r.label === "laptop");
        assert.equal(used?.lastUsedAt, 1_700_000_000_123);
        assert.equal(await store.revokeAppPassword("@u:hs", "laptop"), true);
        assert.equal(await store.revokeAppPassword("@u:hs", "laptop"), false);
        assert.deepEqual((await store.listAppPasswords("@u:hs")).map((r) => r.label), ["backup-script"]);
        assert.deepEqual((await store.listAppPasswords("@other:hs")).map((r) => r.label), ["laptop"]);
      });
    });

    describe("crypto store (end-to-end encryption)", () => {
      it("saves, replaces, loads and forgets a device's sealed state, byte for byte", async () => {
        assert.equal(await store.loadCryptoStore("@emailbot:hs"), null);
        const first = randomBytes(70_000);
        await store.saveCryptoStore("@emailbot:hs", "EMAILBRIDGE", first);
        const loaded = await store.loadCryptoStore("@emailbot:hs");
        assert.equal(loaded?.deviceId, "EMAILBRIDGE");
        assert.ok(loaded?.state.equals(first), "the bytes come back unchanged");
        const second = randomBytes(100);
        await store.saveCryptoStore("@emailbot:hs", "OTHER", second);
        const replaced = await store.loadCryptoStore("@emailbot:hs");
        assert.equal(replaced?.deviceId, "OTHER");
        assert.ok(replaced?.state.equals(second));
        await store.saveCryptoStore("@email_bob=40example.org:hs", "EMAILBRIDGE", first);
        await store.deleteCryptoStore("@emailbot:hs");
        assert.equal(await store.loadCryptoStore("@emailbot:hs"), null);
        assert.ok((await store.loadCryptoStore("@email_bob=40example.org:hs"))?.state.equals(first), "another user's state stays");
      });
    });

    describe("unsubscribing from a portal", () => {
      it("keeps one token per room (the first one stored wins) and finds the room by it; opt-outs are per room", async () => {
        const [a, b] = await Promise.all([store.unsubscribeToken("!r1", "tok1"), store.unsubscribeToken("!r1", "tok2")]);
        assert.equal(a, b);
        assert.equal(await store.unsubscribeToken("!r1", "tok3"), a);
        assert.equal(await store.unsubscribeToken("!r2", "tok9"), "tok9");
        assert.equal(await store.roomOfUnsubscribeToken(a), "!r1");
        assert.equal(await store.roomOfUnsubscribeToken("nope"), null);
        await store.addOptOut("!r1", "bob@example.org");
        await store.addOptOut("!r1", "bob@example.org");
        assert.deepEqual([...(await store.listOptOuts("!r1"))], ["bob@example.org"]);
        assert.deepEqual([...(await store.listOptOuts("!r2"))], []);
      });
    });

    describe("outbound batches", () => {
      const state = (texts: string[]) => ({ parts: texts.map((t, i) => ({ eventId: `$p${i}`, text: t, html: null })), mail: { subject: "Hi" } });

      it("holds a batch until it closes; finds it by key and by Message-ID only while open", async () => {
        const now = Date.now();
        const { row, duplicate } = await store.enqueueOutboundBatch(outbound({ raw: NASTY_BYTES }), { key: "k1", state: state(["one"]), closesAt: now + 60_000 });
        assert.equal(duplicate, false);
        assert.equal(row.nextAttemptAt, now + 60_000);
        assert.equal((await store.listDueOutbound(now, 10)).length, 0, "held back");
        const open = await store.openBatch("k1", now);
        assert.deepEqual(open && { id: open.outboundId, key: open.key, messageId: open.messageId, closesAt: open.closesAt, state: open.state }, {
          id: row.id,
          key: "k1",
          messageId: "out1@bridge.test",
          closesAt: now + 60_000,
          state: state(["one"]),
        });
        assert.equal((await store.openBatchByMessageId("out1@bridge.test", now))?.outboundId, row.id);
        assert.equal(await store.openBatch("other", now), null);
        assert.equal(await store.openBatch("k1", now + 60_000), null, "closed once due");
        assert.equal((await store.listDueOutbound(now + 60_000, 10)).length, 1);
        const replay = await store.enqueueOutboundBatch(outbound(), { key: "k1", state: state(["x"]), closesAt: now + 1 });
        assert.equal(replay.duplicate, true);
      });

      it("updates an open batch (bytes, state, due time), never a closed one", async () => {
        const now = Date.now();
        const { row } = await store.enqueueOutboundBatch(outbound(), { key: "k2", state: state(["one"]), closesAt: now + 10_000 });
        assert.equal(await store.updateBatch(row.id, Buffer.from("two parts"), state(["one", "two"]), now + 20_000, now), true);
        const open = await store.openBatch("k2", now);
        assert.deepEqual(open?.state, state(["one", "two"]));
        assert.equal(open?.closesAt, now + 20_000);
        assert.ok((await store.getOutboundById(row.id))!.raw.equals(Buffer.from("two parts")));
        assert.equal(await store.updateBatch(row.id, Buffer.from("late"), state(["late"]), now + 90_000, now + 20_000), false, "due: closed");
        assert.ok((await store.getOutboundById(row.id))!.raw.equals(Buffer.from("two parts")));
      });

      it("cancels an open batch with its recipients, never a closed one; a message mapping can be forgotten", async () => {
        const now = Date.now();
        const a = await store.enqueueOutboundBatch(outbound({ eventId: "$a", messageId: "a@x" }), { key: "k3", state: state(["a"]), closesAt: now + 10_000 });
        const b = await store.enqueueOutboundBatch(outbound({ eventId: "$b", messageId: "b@x" }), { key: "k4", state: state(["b"]), closesAt: now + 10 });
        assert.equal(await store.cancelBatch(a.row.id, now), true);
        assert.equal(await store.getOutboundById(a.row.id), null);
        assert.deepEqual(await store.listOutboundRecipients(a.row.id), []);
        assert.equal(await store.cancelBatch(b.row.id, now + 10), false);
        assert.ok(await store.getOutboundById(b.row.id));
        assert.equal(await store.outboundIncludes("b@x", "$b"), true, "the mail's own event");
        assert.equal(await store.outboundIncludes("b@x", "$p0"), true, "a batched message");
        assert.equal(await store.outboundIncludes("b@x", "$other"), false);
        assert.equal(await store.outboundIncludes("a@x", "$a"), false, "a cancelled mail carries nothing");
        await store.insertMessage({ roomId: "!r", eventId: "$m", messageId: "b@x", references: [], direction: "outbound", sender: "alice@bridge.test", subject: null, participants: [], viaList: false });
        await store.deleteMessage("!r", "$m");
        assert.equal(await store.getMessageByEvent("!r", "$m"), null);
      });
    });

    describe("outbound queue", () => {
      it("queues a mail, due now, with the exact raw bytes", async () => {
        const before = Date.now();
        const { row, duplicate } = await store.enqueueOutbound(outbound({ raw: NASTY_BYTES }));
        assert.equal(duplicate, false);
        assert.equal(row.state, "queued");
        assert.equal(row.attempts, 0);
        assert.equal(row.lastError, null);
        assert.deepEqual(row.recipients, ["bob@example.org", "carol@example.net"]);
        assert.equal(row.envelopeFrom, "alice@bridge.test");
        assert.equal(row.messageId, "out1@bridge.test");
        assert.ok(row.createdAt >= before && row.nextAttemptAt <= Date.now());
        assert.ok(Buffer.isBuffer(row.raw) && row.raw.equals(NASTY_BYTES));
        const got = await store.getOutboundByEvent("$ev1");
        assert.deepEqual(got, row);
        assert.ok(got!.raw.equals(NASTY_BYTES));
        assert.equal(await store.getOutboundByEvent("$nope"), null);
      });

      it("dedupes a replayed event", async () => {
        const first = await store.enqueueOutbound(outbound());
        const replay = await store.enqueueOutbound(outbound({ messageId: "other@x", recipients: ["z@z"] }));
        assert.equal(replay.duplicate, true);
        assert.deepEqual(replay.row, first.row);
        assert.equal((await store.listDueOutbound(Date.now() + 1, 10)).length, 1);
      });

      it("lists due rows by time, oldest first", async () => {
        const a = (await store.enqueueOutbound(outbound({ eventId: "$a" }))).row;
        const b = (await store.enqueueOutbound(outbound({ eventId: "$b" }))).row;
        const c = (await store.enqueueOutbound(outbound({ eventId: "$c" }))).row;
        const now = Date.now() + 1;
        assert.deepEqual((await store.listDueOutbound(now, 10)).map((r) => r.id), [a.id, b.id, c.id]);
        assert.deepEqual((await store.listDueOutbound(now, 2)).map((r) => r.id), [a.id, b.id]);
        assert.deepEqual(await store.listDueOutbound(a.nextAttemptAt - 1, 10), [], "nothing is due before it was queued");

        await store.markOutboundDeferred(a.id, ["carol@example.net"], now + 60_000, "451 try later");
        assert.deepEqual((await store.listDueOutbound(now, 10)).map((r) => r.id), [b.id, c.id]);
        assert.deepEqual((await store.listDueOutbound(now + 60_000, 10)).map((r) => r.id), [a.id, b.id, c.id]);

        await store.markOutboundSent(b.id);
        await store.markOutboundBounced(c.id, "550 no such user");
        assert.deepEqual((await store.listDueOutbound(now + 120_000, 10)).map((r) => r.id), [a.id]);
      });

      it("keeps the remaining recipients of a deferred mail", async () => {
        const { row } = await store.enqueueOutbound(outbound());
        const retryAt = Date.now() + 300_000.7;
        await store.markOutboundDeferred(row.id, ["carol@example.net"], retryAt, "451 greylisted");
        const d = await store.getOutboundByEvent("$ev1");
        assert.equal(d?.state, "deferred");
        assert.deepEqual(d?.recipients, ["carol@example.net"]);
        assert.equal(d?.nextAttemptAt, Math.trunc(retryAt));
        assert.equal(d?.lastError, "451 greylisted");
        assert.equal(d?.attempts, 1);
        assert.ok(d!.raw.equals(row.raw));
        await store.markOutboundDeferred(row.id, ["carol@example.net"], retryAt + 1000, "451 again");
        assert.equal((await store.getOutboundByEvent("$ev1"))?.attempts, 2);
      });

      it("marks a mail sent", async () => {
        const { row } = await store.enqueueOutbound(outbound());
        await store.markOutboundDeferred(row.id, ["carol@example.net"], Date.now(), "451");
        await store.markOutboundSent(row.id);
        const s = await store.getOutboundByEvent("$ev1");
        assert.equal(s?.state, "sent");
        assert.deepEqual(s?.recipients, []);
        assert.deepEqual(await store.listDueOutbound(Date.now() + 1e9, 10), []);
        const replay = await store.enqueueOutbound(outbound());
        assert.equal(replay.duplicate, true);
        assert.equal(replay.row.state, "sent");
      });

      it("marks a mail bounced", async () => {
        const { row } = await store.enqueueOutbound(outbound());
        await store.markOutboundBounced(row.id, "550 5.1.1 unknown user");
        const b = await store.getOutboundByEvent("$ev1");
        assert.equal(b?.state, "bounced");
        assert.equal(b?.lastError, "550 5.1.1 unknown user");
        assert.deepEqual(await store.listDueOutbound(Date.now() + 1e9, 10), []);
      });
    });

    describe("migrations", () => {
      it("re-running migrations on an existing database is a no-op", async () => {
        await store.upsertGhost({ address: "bob@example.org", userId: "@b:hs.test", displayName: "Bob" });
        const latest = MIGRATIONS.length;
        const res = await migrate(dbOf(store));
        assert.deepEqual(res, { from: latest, to: latest, applied: [] });
        assert.equal((await store.getGhostByAddress("bob@example.org"))?.displayName, "Bob");
        if (fx.reopen) {
          const again = await fx.reopen();
          try {
            assert.equal((await again.getGhostByAddress("bob@example.org"))?.displayName, "Bob");
          } finally {
            await again.close();
          }
        }
      });

      it("refuses a schema version newer than the code knows", async () => {
        const latest = MIGRATIONS.length;
        await assert.rejects(migrate(dbOf(store), MIGRATIONS.slice(0, latest - 1)), (err: Error) => {
          assert.match(err.message, new RegExp(`version ${latest} is newer .*latest known version ${latest - 1}`));
          return true;
        });
        await dbOf(store).execute("INSERT INTO schema_version (version, description, applied_at) VALUES ($1, $2, $3)", [
          999,
          "from the future",
          Date.now(),
        ]);
        await assert.rejects(migrate(dbOf(store)), /version 999 is newer/);
        if (fx.reopen) await assert.rejects(fx.reopen(), /version 999 is newer/);
      });

      it("refuses a Synapse database", async () => {
        await dbOf(store).exec("CREATE TABLE state_groups_state (state_group BIGINT NOT NULL, room_id TEXT NOT NULL)");
        await assert.rejects(migrate(dbOf(store)), /Synapse/);
      });
    });

    describe("outbound recipients", () => {
      const failed = (address: string, reply = "550 5.1.1 No such user") => ({ address, state: "failed" as const, code: 550, reply, nextAttemptAt: null });
      const deferred = (address: string, nextAttemptAt: number) => ({ address, state: "deferred" as const, code: 451, reply: "451 4.7.1 Greylisted", nextAttemptAt });
      const delivered = (address: string) => ({ address, state: "sent" as const, code: 250, reply: "250 2.0.0 OK", nextAttemptAt: null });

      it("enqueue creates one pending row per distinct recipient; a replay adds none", async () => {
        const { row } = await store.enqueueOutbound(outbound({ recipients: ["bob@example.org", "carol@example.net", "bob@example.org"] }));
        assert.equal(row.delayWarnedAt, null);
        const rs = await store.listOutboundRecipients(row.id);
        assert.deepEqual(
          rs.map((r) => ({ ...r, updatedAt: 0 })),
          ["bob@example.org", "carol@example.net"].map((address) => ({
            outboundId: row.id,
            address,
            state: "pending",
            attempts: 0,
            lastCode: null,
            lastReply: null,
            nextAttemptAt: row.createdAt,
            reported: false,
            updatedAt: 0,
          })),
        );
        await store.enqueueOutbound(outbound({ recipients: ["zed@example.org"] }));
        assert.equal((await store.listOutboundRecipients(row.id)).length, 2);
        assert.deepEqual(await store.listOutboundRecipients(row.id + 1000), []);
        assert.deepEqual(await store.getOutboundById(row.id), row);
        assert.equal(await store.getOutboundById(row.id + 1000), null);
      });

      it("records an attempt per recipient and derives the mail's state", async () => {
        const { row } = await store.enqueueOutbound(outbound());
        const retryAt = Date.now() + 60_000.9;
        const first = await store.recordOutboundAttempt(row.id, [failed("bob@example.org"), deferred("carol@example.net", retryAt)], retryAt);
        assert.equal(first.state, "deferred");
        assert.deepEqual(
          first.recipients.map((r) => [r.address, r.state, r.attempts, r.lastCode, r.lastReply, r.nextAttemptAt, r.reported]),
          [
            ["bob@example.org", "failed", 1, 550, "550 5.1.1 No such user", null, false],
            ["carol@example.net", "deferred", 1, 451, "451 4.7.1 Greylisted", Math.trunc(retryAt), false],
          ],
        );
        let m = await store.getOutboundById(row.id);
        assert.equal(m?.state, "deferred");
        assert.deepEqual(m?.recipients, ["carol@example.net"]);
        assert.equal(m?.attempts, 1);
        assert.equal(m?.nextAttemptAt, Math.trunc(retryAt));
        assert.equal(m?.lastError, "bob@example.org: 550 5.1.1 No such user; carol@example.net: 451 4.7.1 Greylisted");
        assert.deepEqual((await store.listDueOutbound(Math.trunc(retryAt), 10)).map((r) => r.id), [row.id]);
        assert.deepEqual(await store.listDueOutbound(Math.trunc(retryAt) - 1, 10), []);

        const second = await store.recordOutboundAttempt(row.id, [delivered("carol@example.net")], Date.now());
        assert.equal(second.state, "bounced", "done, and one recipient failed");
        assert.deepEqual(second.recipients.map((r) => [r.address, r.state, r.attempts]), [
          ["bob@example.org", "failed", 1],
          ["carol@example.net", "sent", 2],
        ]);
        m = await store.getOutboundById(row.id);
        assert.equal(m?.state, "bounced");
        assert.deepEqual(m?.recipients, []);
        assert.equal(m?.attempts, 2);
        assert.equal(m?.lastError, null);
        assert.deepEqual(await store.listDueOutbound(Date.now() + 1e9, 10), []);
      });

      it("a mail whose recipients were all accepted is sent", async () => {
        const { row } = await store.enqueueOutbound(outbound());
        const res = await store.recordOutboundAttempt(row.id, [delivered("bob@example.org"), delivered("carol@example.net")], Date.now());
        assert.equal(res.state, "sent");
        const m = await store.getOutboundByEvent("$ev1");
        assert.equal(m?.state, "sent");
        assert.deepEqual(m?.recipients, []);
        assert.equal(m?.lastError, null);
      });

      it("upserts a recipient without a row and keeps unlisted recipients pending (mail queued before migration 3)", async () => {
        const { row } = await store.enqueueOutbound(outbound());
        await dbOf(store).execute("DELETE FROM outbound_recipients WHERE outbound_id = $1", [row.id]);
        assert.deepEqual(await store.listOutboundRecipients(row.id), []);
        const res = await store.recordOutboundAttempt(row.id, [failed("bob@example.org")], Date.now() + 1000);
        assert.equal(res.state, "deferred", "carol was not attempted: still to do");
        assert.deepEqual(res.recipients.map((r) => [r.address, r.state, r.attempts]), [["bob@example.org", "failed", 1]]);
        assert.deepEqual((await store.getOutboundById(row.id))?.recipients, ["carol@example.net"]);
      });

      it("refuses to record an attempt of an unknown mail, writing nothing", async () => {
        await assert.rejects(store.recordOutboundAttempt(424242, [failed("bob@example.org")], Date.now()), /no outbound mail 424242/);
        assert.deepEqual(await store.listUnreportedOutboundFailures(10), []);
      });

      it("lists unreported failures across mails until they are marked reported", async () => {
        const a = (await store.enqueueOutbound(outbound({ eventId: "$a" }))).row;
        const b = (await store.enqueueOutbound(outbound({ eventId: "$b" }))).row;
        await store.recordOutboundAttempt(b.id, [failed("carol@example.net"), delivered("bob@example.org")], Date.now());
        await store.recordOutboundAttempt(a.id, [failed("carol@example.net"), failed("bob@example.org", "556 5.1.10 null MX")], Date.now());
        const all = await store.listUnreportedOutboundFailures(10);
        assert.deepEqual(all.map((r) => [r.outboundId, r.address, r.lastReply]), [
          [a.id, "bob@example.org", "556 5.1.10 null MX"],
          [a.id, "carol@example.net", "550 5.1.1 No such user"],
          [b.id, "carol@example.net", "550 5.1.1 No such user"],
        ]);
        assert.equal((await store.listUnreportedOutboundFailures(2)).length, 2);
        assert.deepEqual(await store.listUnreportedOutboundFailures(0), []);

        await store.markOutboundRecipientsReported(a.id, ["bob@example.org", "carol@example.net", "nobody@example.org"]);
        await store.markOutboundRecipientsReported(b.id, []);
        assert.deepEqual((await store.listUnreportedOutboundFailures(10)).map((r) => [r.outboundId, r.address]), [[b.id, "carol@example.net"]]);
        const rs = await store.listOutboundRecipients(a.id);
        assert.deepEqual(rs.map((r) => [r.address, r.reported]), [["bob@example.org", true], ["carol@example.net", true]]);
      });

      it("keeps a recipient's reported flag when it is recorded again", async () => {
        const { row } = await store.enqueueOutbound(outbound());
        await store.recordOutboundAttempt(row.id, [failed("bob@example.org"), deferred("carol@example.net", Date.now())], Date.now());
        await store.markOutboundRecipientsReported(row.id, ["bob@example.org"]);
        await store.recordOutboundAttempt(row.id, [failed("bob@example.org", "550 again"), delivered("carol@example.net")], Date.now());
        const [bob] = await store.listOutboundRecipients(row.id);
        assert.equal(bob?.reported, true);
        assert.equal(bob?.attempts, 2);
        assert.equal(bob?.lastReply, "550 again");
      });

      it("remembers the delay warning of a mail", async () => {
        const { row } = await store.enqueueOutbound(outbound());
        const at = Date.now() + 4 * 3_600_000 + 0.5;
        await store.markOutboundDelayWarned(row.id, at);
        assert.equal((await store.getOutboundById(row.id))?.delayWarnedAt, Math.trunc(at));
        assert.equal((await store.getOutboundByEvent("$ev1"))?.delayWarnedAt, Math.trunc(at));
        assert.equal((await store.listDueOutbound(Date.now() + 1, 10))[0]?.delayWarnedAt, Math.trunc(at));
      });

      it("tells the earliest next attempt after a time, among queued and deferred mails", async () => {
        const t = Date.now();
        assert.equal(await store.nextOutboundAttemptAt(0), null, "empty queue");
        const a = (await store.enqueueOutbound(outbound({ eventId: "$a" }))).row;
        const b = (await store.enqueueOutbound(outbound({ eventId: "$b" }))).row;
        const c = (await store.enqueueOutbound(outbound({ eventId: "$c" }))).row;
        assert.equal(await store.nextOutboundAttemptAt(0), a.nextAttemptAt);
        await store.recordOutboundAttempt(a.id, [deferred("bob@example.org", t + 50_000)], t + 50_000);
        await store.recordOutboundAttempt(b.id, [deferred("bob@example.org", t + 20_000)], t + 20_000);
        await store.recordOutboundAttempt(c.id, [delivered("bob@example.org"), delivered("carol@example.net")], t + 10_000);
        const now = Math.max(a.nextAttemptAt, b.nextAttemptAt, c.nextAttemptAt);
        assert.equal(await store.nextOutboundAttemptAt(now), t + 20_000, "the sent mail does not count");
        assert.equal(await store.nextOutboundAttemptAt(t + 20_000), t + 50_000, "strictly later");
        assert.equal(await store.nextOutboundAttemptAt(t + 50_000), null);
      });
    });

    describe("appservice transaction journal", () => {
      const ev = (eventId: string, roomId = "!a:hs.test") => ({ eventId, roomId, json: JSON.stringify({ event_id: eventId, room_id: roomId, type: "m.room.message", body: "ünï 🎉" }) });
      const heads = async () => (await store.listMatrixEventHeads(100)).map((e) => e.eventId);

      it("records a transaction and its events once: a replayed transaction ID writes nothing", async () => {
        assert.deepEqual(await store.recordAppserviceTransaction("t1", [ev("$1"), ev("$2")]), { duplicate: false, recorded: 2 });
        assert.deepEqual(await store.recordAppserviceTransaction("t1", [ev("$1"), ev("$2"), ev("$3")]), { duplicate: true, recorded: 0 });
        assert.equal(await store.getMatrixEvent("$3"), null, "nothing of a replayed transaction is written");
        const one = await store.getMatrixEvent("$1");
        assert.equal(one?.txnId, "t1");
        assert.equal(one?.roomId, "!a:hs.test");
        assert.equal(one?.state, "pending");
        assert.equal(one?.attempts, 0);
        assert.equal(one?.doneAt, null);
        assert.deepEqual(JSON.parse(one!.json), JSON.parse(ev("$1").json));
        assert.ok(one!.nextAttemptAt <= Date.now());
      });

      it("skips an event ID journaled by another transaction, even once it is done", async () => {
        await store.recordAppserviceTransaction("t1", [ev("$1")]);
        await store.markMatrixEventDone("$1");
        assert.deepEqual(await store.recordAppserviceTransaction("t2", [ev("$1"), ev("$2")]), { duplicate: false, recorded: 1 });
        assert.equal((await store.getMatrixEvent("$1"))?.state, "done");
        assert.equal((await store.getMatrixEvent("$1"))?.txnId, "t1");
        assert.deepEqual(await heads(), ["$2"]);
        // The same event twice in one transaction: recorded once.
        assert.deepEqual(await store.recordAppserviceTransaction("t3", [ev("$3"), ev("$3")]), { duplicate: false, recorded: 1 });
        // A transaction with no events still counts as seen.
        assert.deepEqual(await store.recordAppserviceTransaction("t4", []), { duplicate: false, recorded: 0 });
        assert.deepEqual(await store.recordAppserviceTransaction("t4", [ev("$4")]), { duplicate: true, recorded: 0 });
      });

      it("a failed commit records nothing, so the retried transaction is new", async () => {
        const bad = { eventId: "$bad", roomId: "!a:hs.test", json: null as unknown as string };
        await assert.rejects(store.recordAppserviceTransaction("t1", [ev("$1"), bad]));
        assert.equal(await store.getMatrixEvent("$1"), null, "rolled back");
        assert.deepEqual(await store.recordAppserviceTransaction("t1", [ev("$1")]), { duplicate: false, recorded: 1 });
      });

      it("heads: the oldest pending event of each room, in arrival order across transactions", async () => {
        await store.recordAppserviceTransaction("t1", [ev("$a1", "!a:hs.test"), ev("$b1", "!b:hs.test"), ev("$a2", "!a:hs.test")]);
        await store.recordAppserviceTransaction("t2", [ev("$c1", "!c:hs.test"), ev("$a3", "!a:hs.test"), ev("$b2", "!b:hs.test")]);
        assert.deepEqual(await heads(), ["$a1", "$b1", "$c1"]);
        assert.deepEqual((await store.listMatrixEventHeads(2)).map((e) => e.eventId), ["$a1", "$b1"], "limit");
        await store.markMatrixEventDone("$a1");
        assert.deepEqual(await heads(), ["$b1", "$a2", "$c1"]);
        // A head waiting for its retry still holds back its own room, and only it.
        const later = Date.now() + 60_000;
        await store.markMatrixEventRetry("$a2", "boom", later);
        const a2 = (await store.listMatrixEventHeads(100)).find((e) => e.eventId === "$a2");
        assert.equal(a2?.nextAttemptAt, later);
        assert.equal(a2?.attempts, 1);
        assert.equal(a2?.lastError, "boom");
        await store.markMatrixEventDone("$b1");
        assert.deepEqual(await heads(), ["$a2", "$c1", "$b2"]);
        await store.markMatrixEventFailed("$a2", "boom again");
        const failedRow = await store.getMatrixEvent("$a2");
        assert.equal(failedRow?.state, "failed");
        assert.equal(failedRow?.attempts, 2);
        assert.equal(failedRow?.lastError, "boom again");
        assert.ok(failedRow?.doneAt);
        assert.deepEqual(await heads(), ["$c1", "$a3", "$b2"], "a failed event no longer holds back its room");
        const seqs = await Promise.all(["$a1", "$b1", "$a2", "$c1", "$a3", "$b2"].map(async (id) => (await store.getMatrixEvent(id))!.seq));
        assert.deepEqual([...seqs].sort((x, y) => x - y), seqs, "seq is the arrival order");
      });

      it("only a pending event changes state", async () => {
        await store.recordAppserviceTransaction("t1", [ev("$1"), ev("$2")]);
        await store.markMatrixEventDone("$1");
        await store.markMatrixEventFailed("$1", "late failure");
        await store.markMatrixEventRetry("$1", "late retry", Date.now());
        const done = await store.getMatrixEvent("$1");
        assert.equal(done?.state, "done");
        assert.equal(done?.attempts, 0);
        assert.equal(done?.lastError, null);
        await store.markMatrixEventFailed("$2", "x");
        await store.markMatrixEventDone("$2");
        assert.equal((await store.getMatrixEvent("$2"))?.state, "failed");
        await store.markMatrixEventDone("$unknown");
      });

      it("prunes finished events and old transaction IDs, never pending events", async () => {
        await store.recordAppserviceTransaction("t1", [ev("$done"), ev("$failed", "!b:hs.test"), ev("$pending", "!c:hs.test")]);
        await store.markMatrixEventDone("$done");
        await store.markMatrixEventFailed("$failed", "x");
        assert.deepEqual(await store.pruneMatrixJournal(0), { events: 0, txns: 0 });
        assert.deepEqual(await store.pruneMatrixJournal(Date.now() + 1000), { events: 2, txns: 1 });
        assert.equal(await store.getMatrixEvent("$done"), null);
        assert.equal((await store.getMatrixEvent("$pending"))?.state, "pending");
        // The transaction ID is forgotten: the homeserver never replays one that old.
        assert.deepEqual(await store.recordAppserviceTransaction("t1", [ev("$pending", "!c:hs.test")]), { duplicate: false, recorded: 0 });
      });

      it("a replay after a restart is still a no-op, and pending events are still there", async () => {
        if (!fx.reopen) return;
        await store.recordAppserviceTransaction("t1", [ev("$1"), ev("$2")]);
        await store.markMatrixEventDone("$1");
        await store.close();
        const again = await fx.reopen();
        try {
          assert.deepEqual(await again.recordAppserviceTransaction("t1", [ev("$1"), ev("$2")]), { duplicate: true, recorded: 0 });
          assert.deepEqual(await again.recordAppserviceTransaction("t2", [ev("$1"), ev("$2")]), { duplicate: false, recorded: 0 });
          assert.deepEqual((await again.listMatrixEventHeads(10)).map((e) => e.eventId), ["$2"]);
        } finally {
          await again.close();
        }
      });
    });

    describe("queue administration (queue CLI) and queue counts", () => {
      const failed = (address: string) => ({ address, state: "failed" as const, code: 550, reply: "550 5.1.1 No such user", nextAttemptAt: null });
      const deferred = (address: string, nextAttemptAt: number) => ({ address, state: "deferred" as const, code: 451, reply: "451 4.7.1 Greylisted", nextAttemptAt });
      const delivered = (address: string) => ({ address, state: "sent" as const, code: 250, reply: "250 2.0.0 OK", nextAttemptAt: null });
      const bob = "bob@example.org";
      const carol = "carol@example.net";

      it("lists outbound mail newest first, by state, at most limit", async () => {
        const m1 = (await store.enqueueOutbound(outbound({ eventId: "$q1" }))).row;
        const m2 = (await store.enqueueOutbound(outbound({ eventId: "$q2" }))).row;
        const m3 = (await store.enqueueOutbound(outbound({ eventId: "$q3" }))).row;
        await store.recordOutboundAttempt(m2.id, [delivered(bob), failed(carol)], Date.now());
        assert.deepEqual((await store.listOutbound(null, 10)).map((r) => r.id), [m3.id, m2.id, m1.id]);
        assert.deepEqual((await store.listOutbound(null, 2)).map((r) => r.id), [m3.id, m2.id]);
        assert.deepEqual((await store.listOutbound("queued", 10)).map((r) => r.id), [m3.id, m1.id]);
        assert.deepEqual((await store.listOutbound("bounced", 10)).map((r) => r.id), [m2.id]);
        assert.deepEqual(await store.listOutbound("sent", 10), []);
        assert.ok((await store.listOutbound(null, 1))[0]!.raw.equals(m3.raw), "rows carry the raw message");
        await assert.rejects(store.listOutbound(null, -1), RangeError);
      });

      it("retry: a bounced mail's failed recipients are due again, unreported; the accepted ones are not resent", async () => {
        const { row } = await store.enqueueOutbound(outbound());
        await store.recordOutboundAttempt(row.id, [delivered(bob), failed(carol)], Date.now());
        await store.markOutboundRecipientsReported(row.id, [carol]);
        const before = Date.now();
        assert.equal(await store.requeueOutbound(row.id), true);
        const mail = await store.getOutboundById(row.id);
        assert.equal(mail?.state, "deferred");
        assert.deepEqual(mail?.recipients, [carol]);
        assert.equal(mail?.attempts, 1, "attempts are kept");
        assert.ok(mail!.nextAttemptAt >= before && mail!.nextAttemptAt <= Date.now(), "due now");
        assert.deepEqual((await store.listDueOutbound(Date.now(), 10)).map((r) => r.id), [row.id]);
        const rs = await store.listOutboundRecipients(row.id);
        assert.deepEqual(
          rs.map((r) => [r.address, r.state, r.attempts, r.reported, r.lastReply]),
          [
            [bob, "sent", 1, false, "250 2.0.0 OK"],
            [carol, "deferred", 1, false, "550 5.1.1 No such user"],
          ],
        );
        assert.ok(rs[1]!.nextAttemptAt! >= before);
        // A new failure is news again: reported again.
        const again = await store.recordOutboundAttempt(row.id, [failed(carol)], Date.now());
        assert.equal(again.state, "bounced");
        assert.deepEqual((await store.listUnreportedOutboundFailures(10)).map((r) => r.address), [carol]);
      });

      it("retry: a deferred mail is due now with its recipients in order; a new mail stays queued", async () => {
        const fresh = (await store.enqueueOutbound(outbound({ eventId: "$fresh" }))).row;
        assert.equal(await store.requeueOutbound(fresh.id), true);
        assert.equal((await store.getOutboundById(fresh.id))?.state, "queued");
        const { row } = await store.enqueueOutbound(outbound({ eventId: "$later", recipients: [carol, bob] }));
        const later = Date.now() + 3_600_000;
        await store.recordOutboundAttempt(row.id, [deferred(carol, later), deferred(bob, later)], later);
        assert.deepEqual((await store.listDueOutbound(Date.now(), 10)).map((r) => r.id), [fresh.id]);
        assert.equal(await store.requeueOutbound(row.id), true);
        const mail = await store.getOutboundById(row.id);
        assert.equal(mail?.state, "deferred");
        assert.deepEqual(mail?.recipients, [carol, bob]);
        assert.ok(mail!.nextAttemptAt <= Date.now());
        assert.ok((await store.listOutboundRecipients(row.id)).every((r) => r.state === "deferred" && r.nextAttemptAt! <= Date.now()));
      });

      it("retry and drop refuse a sent mail and an unknown id; drop deletes a mail with its recipients", async () => {
        const sent = (await store.enqueueOutbound(outbound({ eventId: "$sent" }))).row;
        await store.recordOutboundAttempt(sent.id, [delivered(bob), delivered(carol)], Date.now());
        assert.equal(await store.requeueOutbound(sent.id), false);
        assert.equal(await store.dropOutbound(sent.id), false);
        assert.equal((await store.getOutboundById(sent.id))?.state, "sent");
        assert.equal((await store.listOutboundRecipients(sent.id)).length, 2, "a refused drop deletes nothing");
        assert.equal(await store.requeueOutbound(sent.id + 1000), false);
        assert.equal(await store.dropOutbound(sent.id + 1000), false);
        const { row } = await store.enqueueOutbound(outbound({ eventId: "$drop" }));
        await store.recordOutboundAttempt(row.id, [failed(bob), deferred(carol, Date.now() + 60_000)], Date.now() + 60_000);
        assert.equal(await store.dropOutbound(row.id), true);
        assert.equal(await store.getOutboundById(row.id), null);
        assert.deepEqual(await store.listOutboundRecipients(row.id), []);
        assert.deepEqual(await store.listUnreportedOutboundFailures(10), []);
        assert.equal(await store.dropOutbound(row.id), false);
        assert.equal(await store.requeueOutbound(row.id), false);
      });

      it("counts waiting and given-up items of both queues and the oldest waiting item's arrival", async () => {
        const empty = { waiting: 0, oldestWaitingAt: null, failed: 0 };
        assert.deepEqual(await store.queueCounts(), { inbound: empty, outbound: empty });
        const a = (await store.insertInbound(inbound({ messageId: "a@x" }))).row;
        await new Promise((r) => setTimeout(r, 5));
        const b = (await store.insertInbound(inbound({ messageId: "b@x" }))).row;
        const c = (await store.insertInbound(inbound({ messageId: "c@x" }))).row;
        await store.markInboundFailed(a.id, "given up");
        await store.markInboundPosted(c.id, "$posted");
        const o1 = (await store.enqueueOutbound(outbound({ eventId: "$o1" }))).row;
        await new Promise((r) => setTimeout(r, 5));
        const o2 = (await store.enqueueOutbound(outbound({ eventId: "$o2" }))).row;
        const o3 = (await store.enqueueOutbound(outbound({ eventId: "$o3" }))).row;
        await store.recordOutboundAttempt(o1.id, [failed(bob), failed(carol)], Date.now());
        await store.recordOutboundAttempt(o2.id, [deferred(bob, Date.now() + 60_000), delivered(carol)], Date.now() + 60_000);
        await store.recordOutboundAttempt(o3.id, [delivered(bob), delivered(carol)], Date.now());
        assert.deepEqual(await store.queueCounts(), {
          inbound: { waiting: 1, oldestWaitingAt: b.receivedAt, failed: 1 },
          outbound: { waiting: 1, oldestWaitingAt: o2.createdAt, failed: 1 },
        });
      });
    });

    describe("stored mail at rest (retention, encryption)", () => {
      const DAY = 86_400_000;
      const T0 = Date.UTC(2030, 0, 1);
      const bob = "bob@example.org";
      const carol = "carol@example.net";
      const keyA: RawKey = { id: "key-a", key: randomBytes(32) };
      const keyB: RawKey = { id: "key-b", key: randomBytes(32) };
      const SECRET = Buffer.from("From: bob@example.org\r\nSubject: top-secret-marker\r\n\r\nThe quarterly numbers are 4 8 15 16 23 42.\r\n");

      /** Another store over the fixture's database (not closed: the fixture closes the database). */
      function storeWith(opts: { now?: () => number; cipher?: RawCipher }): SqlStore {
        return new SqlStore(dbOf(store), opts);
      }
      /** The `raw` column as the database holds it. */
      async function column(table: "inbound_mail" | "outbound_mail", id: number): Promise<Buffer> {
        const [r] = await dbOf(store).query<{ raw: unknown }>(`SELECT raw FROM ${table} WHERE id = $1`, [id]);
        assert.ok(r, `${table} row ${id} exists`);
        return dbBuffer(r.raw);
      }
      const deliveredTo = (address: string) => ({ address, state: "sent" as const, code: 250, reply: "250 2.0.0 OK", nextAttemptAt: null });
      const failedTo = (address: string) => ({ address, state: "failed" as const, code: 550, reply: "550 5.1.1 No such user", nextAttemptAt: null });
      const deferredTo = (address: string) => ({ address, state: "deferred" as const, code: 451, reply: "451 4.7.1 Greylisted", nextAttemptAt: T0 + DAY });

      it("empties the raw bytes of posted inbound mail after the retention; the row and its dedupe stay", async () => {
        let now = T0;
        const s = storeWith({ now: () => now });
        const posted = (await s.insertInbound(inbound({ messageId: "posted@x", raw: SECRET }))).row;
        await s.markInboundPosted(posted.id, "$posted");
        const pending = (await s.insertInbound(inbound({ messageId: "pending@x" }))).row;
        const failed = (await s.insertInbound(inbound({ messageId: "failed@x", roomId: "!other:hs.test" }))).row;
        await s.markInboundFailed(failed.id, "given up");
        now = T0 + 29 * DAY;
        assert.deepEqual(await s.purgeRawMail(now - 30 * DAY, 100), { inbound: 0, outbound: 0 }, "younger than the retention: kept");
        now = T0 + 31 * DAY;
        assert.deepEqual(await s.purgeRawMail(now - 30 * DAY, 100), { inbound: 1, outbound: 0 });
        const after = await s.getInbound(posted.id);
        assert.equal(after?.raw.length, 0, "raw emptied");
        assert.equal(after?.rawPurgedAt, now);
        assert.equal(after?.state, "posted");
        assert.equal(after?.eventId, "$posted");
        assert.equal((await column("inbound_mail", posted.id)).length, 0, "the bytes are gone from the database");
        for (const kept of [pending, failed]) {
          const row = await s.getInbound(kept.id);
          assert.ok(row?.raw.equals(kept.raw), `${row?.state} mail is kept however old`);
          assert.equal(row?.rawPurgedAt, null);
        }
        assert.equal(posted.rawPurgedAt, null);
        const replay = await s.insertInbound(inbound({ messageId: "posted@x", raw: SECRET }));
        assert.equal(replay.duplicate, true, "a replay of a purged mail is still a duplicate");
        assert.equal(replay.row.id, posted.id);
        assert.deepEqual(await s.purgeRawMail(now - 30 * DAY, 100), { inbound: 0, outbound: 0 }, "purging again changes nothing");
      });

      it("empties sent and finally bounced outbound mail; queued, deferred and unreported bounces are kept", async () => {
        let now = T0;
        const s = storeWith({ now: () => now });
        const mail = async (eventId: string) => (await s.enqueueOutbound(outbound({ eventId, recipients: [bob, carol] }))).row;
        const sent = await mail("$sent");
        await s.recordOutboundAttempt(sent.id, [deliveredTo(bob), deliveredTo(carol)], T0);
        const reported = await mail("$reported");
        await s.recordOutboundAttempt(reported.id, [deliveredTo(bob), failedTo(carol)], T0);
        await s.markOutboundRecipientsReported(reported.id, [carol]);
        const unreported = await mail("$unreported");
        await s.recordOutboundAttempt(unreported.id, [failedTo(bob), failedTo(carol)], T0);
        const deferred = await mail("$deferred");
        await s.recordOutboundAttempt(deferred.id, [deliveredTo(bob), deferredTo(carol)], T0 + DAY);
        const queued = await mail("$queued");
        now = T0 + 31 * DAY;
        assert.deepEqual(await s.purgeRawMail(now - 30 * DAY, 100), { inbound: 0, outbound: 2 });
        for (const gone of [sent, reported]) {
          const row = await s.getOutboundById(gone.id);
          assert.equal(row?.raw.length, 0);
          assert.equal(row?.rawPurgedAt, now);
          assert.equal((await s.listOutboundRecipients(gone.id)).length, 2, "the queue history stays");
        }
        for (const kept of [unreported, deferred, queued]) {
          const row = await s.getOutboundById(kept.id);
          assert.ok(row?.raw.equals(kept.raw), `${row?.state} mail is kept`);
          assert.equal(row?.rawPurgedAt, null);
        }
        assert.equal(await s.requeueOutbound(reported.id), false, "a purged mail cannot be sent again (its bytes are gone)");
        await s.markOutboundRecipientsReported(unreported.id, [bob, carol]);
        assert.deepEqual(await s.purgeRawMail(now - 30 * DAY, 100), { inbound: 0, outbound: 1 }, "a bounce is purged once reported");
        assert.equal((await s.getOutboundById(unreported.id))?.raw.length, 0);
      });

      it("purges in bounded batches, oldest first, per table", async () => {
        let now = T0;
        const s = storeWith({ now: () => now });
        const ids: number[] = [];
        for (let i = 0; i < 5; i++) {
          const { row } = await s.insertInbound(inbound({ messageId: `b${i}@x`, contentHash: `h${i}` }));
          await s.markInboundPosted(row.id, `$b${i}`);
          ids.push(row.id);
          const out = (await s.enqueueOutbound(outbound({ eventId: `$o${i}`, recipients: [bob] }))).row;
          await s.recordOutboundAttempt(out.id, [deliveredTo(bob)], T0);
        }
        now = T0 + DAY;
        const purgedIds = async () => (await Promise.all(ids.map((id) => s.getInbound(id)))).filter((r) => r?.rawPurgedAt !== null).map((r) => r!.id);
        assert.deepEqual(await s.purgeRawMail(now, 2), { inbound: 2, outbound: 2 });
        assert.deepEqual(await purgedIds(), ids.slice(0, 2));
        assert.deepEqual(await s.purgeRawMail(now, 2), { inbound: 2, outbound: 2 });
        assert.deepEqual(await s.purgeRawMail(now, 2), { inbound: 1, outbound: 1 });
        assert.deepEqual(await s.purgeRawMail(now, 2), { inbound: 0, outbound: 0 });
        assert.deepEqual(await purgedIds(), ids);
        await assert.rejects(s.purgeRawMail(Number.NaN, 2), RangeError);
        await assert.rejects(s.purgeRawMail(now, -1), RangeError);
      });

      it("encrypts raw on write and decrypts it on read; the database holds no plaintext", async () => {
        const enc = storeWith({ cipher: new RawCipher({ current: keyA }) });
        const { row } = await enc.insertInbound(inbound({ raw: SECRET }));
        assert.ok(row.raw.equals(SECRET), "the returned row holds the plaintext");
        assert.ok((await enc.getInbound(row.id))?.raw.equals(SECRET));
        assert.ok((await enc.listPendingInbound(10))[0]?.raw.equals(SECRET));
        const stored = await column("inbound_mail", row.id);
        assert.ok(isRawEnvelope(stored), "starts with the MEB1 envelope");
        assert.equal(rawEnvelopeKeyId(stored), "key-a");
        assert.equal(stored.includes(Buffer.from("top-secret-marker")), false, "no plaintext in the column");
        assert.equal(stored.includes(Buffer.from("quarterly")), false);
        assert.equal(stored.length, SECRET.length + 5 + 1 + "key-a".length + 12 + 16);

        const nasty = (await enc.insertInbound(inbound({ messageId: "nasty@x", raw: NASTY_BYTES }))).row;
        assert.ok((await enc.getInbound(nasty.id))?.raw.equals(NASTY_BYTES), "every byte value round-trips");
        const big = randomBytes(2 * 1024 * 1024);
        const bigRow = (await enc.insertInbound(inbound({ messageId: "big@x", raw: big }))).row;
        assert.ok((await enc.getInbound(bigRow.id))?.raw.equals(big));

        const out = (await enc.enqueueOutbound(outbound({ raw: SECRET }))).row;
        assert.ok(out.raw.equals(SECRET));
        assert.ok((await enc.getOutboundById(out.id))?.raw.equals(SECRET));
        assert.ok((await enc.getOutboundByEvent("$ev1"))?.raw.equals(SECRET));
        assert.ok((await enc.listDueOutbound(Date.now() + 1000, 10))[0]?.raw.equals(SECRET));
        const outStored = await column("outbound_mail", out.id);
        assert.equal(rawEnvelopeKeyId(outStored), "key-a");
        assert.equal(outStored.includes(Buffer.from("top-secret-marker")), false);
        const again = await enc.enqueueOutbound(outbound({ raw: SECRET }));
        assert.equal(again.duplicate, true);
        assert.ok(again.row.raw.equals(SECRET), "a duplicate returns the decrypted row");
      });

      it("reads plaintext rows written before encryption was turned on", async () => {
        const plainIn = (await store.insertInbound(inbound({ raw: SECRET }))).row;
        const plainOut = (await store.enqueueOutbound(outbound({ raw: SECRET }))).row;
        assert.ok((await column("inbound_mail", plainIn.id)).equals(SECRET), "written in plaintext without a key");
        const enc = storeWith({ cipher: new RawCipher({ current: keyA }) });
        assert.ok((await enc.getInbound(plainIn.id))?.raw.equals(SECRET));
        assert.ok((await enc.getOutboundById(plainOut.id))?.raw.equals(SECRET));
      });

      it("fails loudly, naming the row and the key ID, on a wrong key, an unknown key ID or altered bytes", async () => {
        const enc = storeWith({ cipher: new RawCipher({ current: keyA }) });
        const { row } = await enc.insertInbound(inbound({ raw: SECRET }));
        const out = (await enc.enqueueOutbound(outbound({ raw: SECRET }))).row;
        const isDecryptError = (table: string, id: number, keyId: string, reason: string) => (err: unknown) => {
          assert.ok(err instanceof RawDecryptError, String(err));
          assert.equal(err.table, table);
          assert.equal(err.rowId, id);
          assert.equal(err.keyId, keyId);
          assert.equal(err.reason, reason);
          assert.ok(err.message.includes(`${table} row ${id}`) && err.message.includes(`"${keyId}"`), err.message);
          return true;
        };
        const wrong = storeWith({ cipher: new RawCipher({ current: { id: "key-a", key: randomBytes(32) } }) });
        await assert.rejects(wrong.getInbound(row.id), isDecryptError("inbound_mail", row.id, "key-a", "authentication"));
        await assert.rejects(wrong.listPendingInbound(10), isDecryptError("inbound_mail", row.id, "key-a", "authentication"));
        await assert.rejects(wrong.getOutboundById(out.id), isDecryptError("outbound_mail", out.id, "key-a", "authentication"));
        await assert.rejects(store.getInbound(row.id), isDecryptError("inbound_mail", row.id, "key-a", "unknown-key"), "no key configured at all");
        const onlyB = storeWith({ cipher: new RawCipher({ current: keyB }) });
        await assert.rejects(onlyB.getOutboundByEvent("$ev1"), isDecryptError("outbound_mail", out.id, "key-a", "unknown-key"));
        const stored = await column("inbound_mail", row.id);
        const altered = Buffer.from(stored);
        altered[altered.length - 1] = altered[altered.length - 1]! ^ 0x01;
        await dbOf(store).execute("UPDATE inbound_mail SET raw = $2 WHERE id = $1", [row.id, altered]);
        await assert.rejects(enc.getInbound(row.id), isDecryptError("inbound_mail", row.id, "key-a", "authentication"));
      });

      it("rotates keys: old rows read with the old key kept, new rows use the new key, re-encryption moves the rest", async () => {
        const plain = (await store.insertInbound(inbound({ messageId: "plain@x", raw: SECRET }))).row;
        const encA = storeWith({ cipher: new RawCipher({ current: keyA }) });
        const a1 = (await encA.insertInbound(inbound({ messageId: "a1@x", raw: SECRET }))).row;
        const o1 = (await encA.enqueueOutbound(outbound({ eventId: "$a1", raw: SECRET }))).row;
        const rotated = new RawCipher({ current: keyB, previous: [keyA] });
        const encB = storeWith({ cipher: rotated });
        assert.ok((await encB.getInbound(a1.id))?.raw.equals(SECRET), "a row under the old key still reads");
        assert.ok((await encB.getOutboundById(o1.id))?.raw.equals(SECRET));
        assert.ok((await encB.getInbound(plain.id))?.raw.equals(SECRET));
        const b1 = (await encB.insertInbound(inbound({ messageId: "b1@x", raw: SECRET }))).row;
        const o2 = (await encB.enqueueOutbound(outbound({ eventId: "$b1", raw: SECRET }))).row;
        assert.equal(rawEnvelopeKeyId(await column("inbound_mail", b1.id)), "key-b", "new rows use the new key");
        assert.equal(rawEnvelopeKeyId(await column("outbound_mail", o2.id)), "key-b");
        assert.equal(rawEnvelopeKeyId(await column("inbound_mail", a1.id)), "key-a", "old rows are not rewritten on read");

        // A purged row is not re-encrypted (nothing to protect).
        await encB.markInboundPosted(b1.id, "$b1");
        await encB.purgeRawMail(Date.now() + 1000, 10);
        assert.deepEqual(await reencryptRawMail(dbOf(store), rotated, { batchSize: 1 }), { inbound: 2, inboundChunks: 0, outbound: 1 });
        for (const id of [plain.id, a1.id]) assert.equal(rawEnvelopeKeyId(await column("inbound_mail", id)), "key-b");
        assert.equal(rawEnvelopeKeyId(await column("outbound_mail", o1.id)), "key-b");
        assert.equal((await column("inbound_mail", b1.id)).length, 0);
        const onlyB = storeWith({ cipher: new RawCipher({ current: keyB }) });
        for (const id of [plain.id, a1.id]) assert.ok((await onlyB.getInbound(id))?.raw.equals(SECRET), "key A can be retired");
        assert.ok((await onlyB.getOutboundById(o1.id))?.raw.equals(SECRET));
        assert.deepEqual(await reencryptRawMail(dbOf(store), rotated), { inbound: 0, inboundChunks: 0, outbound: 0 }, "a second run has nothing to do");
        await assert.rejects(reencryptRawMail(dbOf(store), RawCipher.plaintext()), /no current key/);
      });
    });
    describe("large inbound mail in chunks (migration 13)", () => {
      const CHUNK = 16;
      const MAIL = Buffer.concat([Buffer.from("From: bob@example.org\r\nSubject: chunked\r\n\r\n"), NASTY_BYTES]);
      const keyA: RawKey = { id: "key-a", key: randomBytes(32) };
      const keyB: RawKey = { id: "key-b", key: randomBytes(32) };
      /** Another store over the fixture's database with small chunks (not closed: the fixture closes the database). */
      function chunked(opts: { cipher?: RawCipher; now?: () => number } = {}): SqlStore {
        return new SqlStore(dbOf(store), { ...opts, rawChunkBytes: CHUNK });
      }
      async function chunkRows(id: number): Promise<{ seq: number; data: Buffer }[]> {
        const rows = await dbOf(store).query<{ seq: unknown; data: unknown }>("SELECT seq, data FROM inbound_raw_chunk WHERE inbound_id = $1 ORDER BY seq", [id]);
        return rows.map((r) => ({ seq: Number(r.seq), data: dbBuffer(r.data) }));
      }
      async function readAll(s: BridgeStore, id: number): Promise<Buffer[]> {
        const raw = await s.readInboundRaw(id);
        assert.ok(raw, `inbound row ${id} is stored`);
        const out: Buffer[] = [];
        for await (const chunk of raw.chunks()) out.push(chunk);
        return out;
      }

      it("chunks of 1 MiB by default", () => {
        assert.equal(RAW_CHUNK_BYTES, 1024 * 1024);
      });

      it("stores the first chunk in the row and the rest in order; every read gives the whole message back", async () => {
        const s = chunked();
        const { row, duplicate } = await s.insertInbound(inbound({ messageId: "big@x", raw: MAIL }));
        assert.equal(duplicate, false);
        assert.ok(row.raw.equals(MAIL), "the inserted row carries the whole message");
        const [col] = await dbOf(store).query<{ raw: unknown; raw_chunks: unknown }>("SELECT raw, raw_chunks FROM inbound_mail WHERE id = $1", [row.id]);
        assert.ok(dbBuffer(col!.raw).equals(MAIL.subarray(0, CHUNK)), "the row holds the first chunk");
        const expected = Math.ceil(MAIL.length / CHUNK) - 1;
        assert.equal(Number(col!.raw_chunks), expected);
        const rows = await chunkRows(row.id);
        assert.deepEqual(rows.map((r) => r.seq), Array.from({ length: expected }, (_, i) => i + 1));
        assert.ok(rows.every((r, i) => r.data.equals(MAIL.subarray((i + 1) * CHUNK, (i + 2) * CHUNK))));

        assert.ok((await s.getInbound(row.id))?.raw.equals(MAIL), "getInbound");
        assert.ok((await s.listInbound(null, 10))[0]?.raw.equals(MAIL), "listInbound");
        assert.ok((await s.listPendingInbound(10))[0]?.raw.equals(MAIL), "listPendingInbound");
        await s.markInboundPosted(row.id, "$big");
        assert.ok((await s.getInboundByEvent("!room:hs.test", "$big"))?.raw.equals(MAIL), "getInboundByEvent");
        const pieces = await readAll(s, row.id);
        assert.equal(pieces.length, expected + 1, "read one chunk at a time");
        assert.ok(Buffer.concat(pieces).equals(MAIL));
        const raw = await s.readInboundRaw(row.id);
        assert.equal(raw?.chunked, true);
        assert.ok(raw?.head.equals(MAIL.subarray(0, CHUNK)));
        assert.ok((await raw!.whole()).equals(MAIL));
        // The default store (1 MiB chunks) reads what a store with other chunks wrote.
        assert.ok((await store.getInbound(row.id))?.raw.equals(MAIL));
        assert.equal(await s.readInboundRaw(row.id + 1000), null);
      });

      it("a mail no larger than a chunk stays in the row alone", async () => {
        const s = chunked();
        const small = MAIL.subarray(0, CHUNK);
        const { row } = await s.insertInbound(inbound({ messageId: "small@x", raw: small }));
        assert.deepEqual(await chunkRows(row.id), []);
        const raw = await s.readInboundRaw(row.id);
        assert.equal(raw?.chunked, false);
        assert.deepEqual(await readAll(s, row.id), [small]);
      });

      it("lists due rows without their bytes; a replay is a duplicate with the whole message and no second set of chunks", async () => {
        const s = chunked();
        const first = (await s.insertInbound(inbound({ messageId: "dup@x", raw: MAIL }))).row;
        const due = await s.listDueInbound(Date.now() + 1000, 10);
        assert.equal(due.length, 1);
        assert.equal("raw" in due[0]!, false, "the poster reads the bytes as it goes");
        assert.equal(due[0]!.id, first.id);
        const again = await s.insertInbound(inbound({ messageId: "dup@x", raw: MAIL }));
        assert.equal(again.duplicate, true);
        assert.equal(again.row.id, first.id);
        assert.ok(again.row.raw.equals(MAIL));
        assert.equal((await chunkRows(first.id)).length, Math.ceil(MAIL.length / CHUNK) - 1);
      });

      it("a missing chunk is an error naming the row and the chunk, never a short message", async () => {
        const s = chunked();
        const { row } = await s.insertInbound(inbound({ messageId: "cut@x", raw: MAIL }));
        await dbOf(store).execute("DELETE FROM inbound_raw_chunk WHERE inbound_id = $1 AND seq = 2", [row.id]);
        await assert.rejects(s.getInbound(row.id), new RegExp(`inbound mail ${row.id}: chunk 2 of \\d+ is missing`));
        await assert.rejects(readAll(s, row.id), /chunk 2 of/);
      });

      it("dropping the row or purging its bytes deletes its chunks", async () => {
        const DAY = 86_400_000;
        let now = Date.UTC(2030, 0, 1);
        const s = chunked({ now: () => now });
        const dropped = (await s.insertInbound(inbound({ messageId: "drop@x", raw: MAIL }))).row;
        const posted = (await s.insertInbound(inbound({ messageId: "purge@x", raw: MAIL }))).row;
        const kept = (await s.insertInbound(inbound({ messageId: "keep@x", raw: MAIL }))).row;
        assert.equal(await s.dropInbound(dropped.id), true);
        assert.deepEqual(await chunkRows(dropped.id), []);
        await s.markInboundPosted(posted.id, "$p");
        now += 31 * DAY;
        assert.deepEqual(await s.purgeRawMail(now - 30 * DAY, 10), { inbound: 1, outbound: 0 });
        assert.deepEqual(await chunkRows(posted.id), []);
        const purged = await s.getInbound(posted.id);
        assert.equal(purged?.raw.length, 0);
        assert.notEqual(purged?.rawPurgedAt, null);
        assert.deepEqual(await readAll(s, posted.id), [Buffer.alloc(0)]);
        assert.ok((await s.getInbound(kept.id))?.raw.equals(MAIL), "a pending mail keeps its chunks");
      });

      it("encrypts every chunk at rest, bound to its mail and place; re-encryption rewrites the chunks too", async () => {
        const enc = chunked({ cipher: new RawCipher({ current: keyA }) });
        const marker = Buffer.from("top-secret-marker-".repeat(4));
        const secret = Buffer.concat([Buffer.from("From: bob@example.org\r\n\r\n"), marker, marker]);
        const a = (await enc.insertInbound(inbound({ messageId: "enc-a@x", raw: secret }))).row;
        const b = (await enc.insertInbound(inbound({ messageId: "enc-b@x", raw: secret }))).row;
        const rows = await chunkRows(a.id);
        assert.ok(rows.length >= 3);
        for (const r of rows) {
          assert.ok(isRawEnvelope(r.data), `chunk ${r.seq} is an envelope`);
          assert.equal(rawEnvelopeKeyId(r.data, "inbound_raw_chunk"), "key-a");
          assert.equal(r.data.includes(Buffer.from("secret")), false);
        }
        assert.ok((await enc.getInbound(a.id))?.raw.equals(secret));
        // Chunks cannot be reordered, nor moved to another mail.
        await dbOf(store).execute("UPDATE inbound_raw_chunk SET data = $3 WHERE inbound_id = $1 AND seq = $2", [a.id, 1, rows[1]!.data]);
        await assert.rejects(enc.getInbound(a.id), RawDecryptError);
        await dbOf(store).execute("UPDATE inbound_raw_chunk SET data = $3 WHERE inbound_id = $1 AND seq = $2", [a.id, 1, (await chunkRows(b.id))[0]!.data]);
        await assert.rejects(enc.getInbound(a.id), RawDecryptError);
        await dbOf(store).execute("UPDATE inbound_raw_chunk SET data = $3 WHERE inbound_id = $1 AND seq = $2", [a.id, 1, rows[0]!.data]);
        assert.ok((await enc.getInbound(a.id))?.raw.equals(secret), "put back, it reads again");

        const rotated = new RawCipher({ current: keyB, previous: [keyA] });
        const chunks = (await chunkRows(a.id)).length + (await chunkRows(b.id)).length;
        assert.deepEqual(await reencryptRawMail(dbOf(store), rotated, { batchSize: 2 }), { inbound: 2, inboundChunks: chunks, outbound: 0 });
        for (const r of [...(await chunkRows(a.id)), ...(await chunkRows(b.id))]) assert.equal(rawEnvelopeKeyId(r.data, "inbound_raw_chunk"), "key-b");
        const onlyB = chunked({ cipher: new RawCipher({ current: keyB }) });
        for (const id of [a.id, b.id]) assert.ok((await onlyB.getInbound(id))?.raw.equals(secret), "key A can be retired");
        assert.deepEqual(await reencryptRawMail(dbOf(store), rotated), { inbound: 0, inboundChunks: 0, outbound: 0 });
      });
    });
  });
}
