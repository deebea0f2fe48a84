/**
 * Addressing: mail domains, aliases (1:N, catch-all) and room mailboxes, and how the inbound
 * router resolves and routes them (subaddress tags, catch-all last, each target room once).
 * Uses the real store (SQLite, temp file) and a real DNS server on loopback for sender
 * authentication; the Matrix side is a strict fake that answers only what is asked.
 */
import { after, afterEach, before, beforeEach, describe, it } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { openStore } from "../../src/store/open.ts";
import type { BridgeStore } from "../../src/store/Store.ts";
import { Addressing, AddressingError } from "../../src/bridge/Addressing.ts";
import { InboundRouter, type Mailbox } from "../../src/bridge/InboundRouter.ts";
import { Contacts } from "../../src/bridge/Contacts.ts";
import { Subscriptions } from "../../src/bridge/Subscriptions.ts";
import type { InboundEnvelope } from "../../src/mail/inbound/SmtpListener.ts";
import { SmtpReply } from "../../src/mail/inbound/rejections.ts";
import { DnsResolver } from "../../src/mail/dns.ts";
import { configureLogging } from "../../src/util/logger.ts";
import type { IdContext } from "../../src/bridge/ids.ts";
import { startDnsServer, type TestDns } from "../harness/dns.ts";
import { RawClient, RecordingHandler, startSmtpListener } from "../harness/smtpListener.ts";

configureLogging({ level: "error" });
const ids: IdContext = { ghostPrefix: "email_", serverName: "hs.example", mailDomain: "bridge.example", botLocalpart: "emailbot", caseSensitiveLocalparts: false };
const BOT = "@emailbot:hs.example";
const USERS = new Set(["@alice:hs.example", "@bob:hs.example", "@outsider:hs.example"]);
/** Whether the homeserver gives the bridge end-to-end encryption (per test). */
let bridgesEncrypted = false;
/** Rooms the bot is in; `!enc` is encrypted. */
const BOT_ROOMS = ["!team:hs.example", "!sales:hs.example", "!plain:hs.example", "!enc:hs.example"];

/** Expect an AddressingError with `code` and a message matching `message`. */
function refused(code: AddressingError["code"], message: RegExp): (err: unknown) => boolean {
  return (err) => {
    assert.ok(err instanceof AddressingError, `an AddressingError, not ${String(err)}`);
    assert.equal(err.code, code);
    assert.match(err.message, message);
    return true;
  };
}

describe("addressing", () => {
  let dns: TestDns;
  let dir: string;
  let store: BridgeStore;
  let addressing: Addressing;
  let router: InboundRouter;

  before(async () => {
    dns = await startDnsServer({ records: { "example.org": { TXT: ["v=spf1 ip4:127.0.0.1 -all"] } } });
  });
  after(async () => {
    await dns?.stop();
  });

  beforeEach(async () => {
    dir = mkdtempSync(join(tmpdir(), "meb-addressing-"));
    store = await openStore({ url: null, sqliteFile: join(dir, "s.sqlite") });
    const mayBridge = (u: string) => u.endsWith(":hs.example") && u !== "@outsider:hs.example";
    addressing = new Addressing({
      store,
      ids,
      mayBridge,
      matrix: {
        botUserId: BOT,
        userExists: async (u) => USERS.has(u),
        joinedRooms: async (u) => {
          assert.equal(u, BOT);
          return BOT_ROOMS;
        },
        isEncrypted: async (roomId) => roomId === "!enc:hs.example",
        bridgesEncryptedRooms: () => bridgesEncrypted,
      },
    });
    router = new InboundRouter({
      store,
      ids,
      mayBridge,
      contacts: new Contacts({ store, matrix: { botDm: async (u) => `!dm-${u}`, botNotice: async () => undefined } }),
      onCommitted: () => undefined,
      isLocalDomain: (domain) => addressing.isLocalDomain(domain),
      hostname: "mx.bridge.example",
      subscriptions: new Subscriptions({ store, ids, dkim: null, onQueued: () => undefined }),
      admins: { roomId: "!admin:hs.example", users: [] },
      auth: {
        lookup: new DnsResolver({ nameservers: [dns.nameserver], timeoutMs: 1000, tries: 1, cacheEntries: 0, cacheTtlMs: 0 }).lookup,
        policy: { enforceDmarcReject: true, unverified: "mark", deferOnDnsError: true },
        trustedArcSealers: [],
        minKeyBits: 1024,
      },
      matrix: {
        userExists: async (u) => USERS.has(u),
        joinedMembers: async (roomId) => {
          throw new Error(`unexpected joinedMembers(${roomId})`);
        },
      },
    });
    await addressing.setRoomMailbox("!team:hs.example", "team", "@alice:hs.example");
    await addressing.setRoomMailbox("!sales:hs.example", "sales", "@alice:hs.example");
  });
  afterEach(async () => {
    await store.close();
    rmSync(dir, { recursive: true, force: true });
  });

  describe("domains", () => {
    it("lists the primary first; adds a domain normalised; refuses a duplicate, the primary and a non-domain", async () => {
      const added = await addressing.addDomain("Zwei.Example.", "@alice:hs.example");
      assert.equal(added.domain, "zwei.example");
      assert.equal(added.primary, false);
      await addressing.addDomain("bücher.example", "admin-api");
      const list = await addressing.listDomains();
      assert.deepEqual(list.map((d) => [d.domain, d.primary, d.createdBy]), [
        ["bridge.example", true, null],
        ["xn--bcher-kva.example", false, "admin-api"],
        ["zwei.example", false, "@alice:hs.example"],
      ]);
      assert.equal(list[0]!.createdAt, null);
      await assert.rejects(addressing.addDomain("zwei.example", "@bob:hs.example"), refused("conflict", /already a mail domain/));
      await assert.rejects(addressing.addDomain("bridge.example", "@bob:hs.example"), refused("conflict", /already a mail domain/));
      for (const bad of ["localhost", "not a domain", "-x.example", "a..b"]) {
        await assert.rejects(addressing.addDomain(bad, "@bob:hs.example"), refused("invalid", /is not a domain name/), bad);
      }
    });

    it("isLocalDomain follows changes at once; removing a domain removes its aliases; the primary stays", async () => {
      assert.equal(await addressing.isLocalDomain("bridge.example"), true);
      assert.equal(await addressing.isLocalDomain("zwei.example"), false);
      await addressing.addDomain("zwei.example", "@alice:hs.example");
      assert.equal(await addressing.isLocalDomain("zwei.example"), true);
      await addressing.addAlias("info@zwei.example", "!team:hs.example", "@alice:hs.example");
      await addressing.addAlias("info@bridge.example", "!team:hs.example", "@alice:hs.example");
      assert.equal(await addressing.removeDomain("zwei.example"), true);
      assert.equal(await addressing.isLocalDomain("zwei.example"), false);
      assert.equal(await addressing.removeDomain("zwei.example"), false);
      assert.deepEqual((await addressing.listAliases()).map((a) => a.address), ["info@bridge.example"]);
      await assert.rejects(addressing.removeDomain("bridge.example"), refused("invalid", /primary mail domain .* cannot be removed/));
    });
  });

  describe("aliases", () => {
    beforeEach(async () => {
      await addressing.addDomain("zwei.example", "@alice:hs.example");
    });

    it("adds aliases with several targets (1:N) and a catch-all; lists by domain and target; removes one target or all", async () => {
      await addressing.addAlias("Help@Zwei.Example", "!team:hs.example", "@alice:hs.example");
      await addressing.addAlias("help@zwei.example", "!sales:hs.example", "@alice:hs.example");
      await addressing.addAlias("help@zwei.example", "@bob:hs.example", "@alice:hs.example");
      await addressing.addAlias("*@zwei.example", "@alice:hs.example", "admin-api");
      await addressing.addAlias("desk", "!team:hs.example", "@alice:hs.example");
      assert.deepEqual((await addressing.listAliases({ domain: "zwei.example" })).map((a) => [a.address, a.target]), [
        ["*@zwei.example", "@alice:hs.example"],
        ["help@zwei.example", "!sales:hs.example"],
        ["help@zwei.example", "!team:hs.example"],
        ["help@zwei.example", "@bob:hs.example"],
      ]);
      assert.deepEqual((await addressing.listAliases({ target: "!team:hs.example" })).map((a) => a.address), ["desk@bridge.example", "help@zwei.example"]);
      assert.equal(await addressing.removeAlias("help@zwei.example", "!sales:hs.example"), 1);
      assert.equal(await addressing.removeAlias("help@zwei.example"), 2);
      assert.equal(await addressing.removeAlias("help@zwei.example"), 0);
    });

    it("refuses what is not ours, not usable, reserved or taken", async () => {
      const add = (address: string, target = "!team:hs.example") => addressing.addAlias(address, target, "@alice:hs.example");
      await assert.rejects(add("help@other.example"), refused("invalid", /other\.example is not a mail domain of this bridge/));
      for (const bad of ["he lp", "-help", "help+x", "a..b", "x".repeat(65), ""]) await assert.rejects(add(`${bad}@zwei.example`), refused("invalid", /not a usable address name/), bad);
      for (const reserved of ["postmaster", "abuse", "unsubscribe", "emailbot", "email_bob"]) await assert.rejects(add(`${reserved}@zwei.example`), refused("conflict", /is reserved/), reserved);
      await assert.rejects(add("alice@zwei.example"), refused("conflict", /personal address of @alice:hs\.example/));
      await assert.rejects(add("sales@zwei.example"), refused("conflict", /address of a room mailbox \(sales@bridge\.example\)/));
      await add("help@zwei.example");
      await assert.rejects(add("help@zwei.example"), refused("conflict", /already delivers to !team:hs\.example/));
    });

    it("refuses targets that cannot take the mail", async () => {
      const add = (target: string) => addressing.addAlias("help@zwei.example", target, "@alice:hs.example");
      await assert.rejects(add("!plain:hs.example"), refused("invalid", /has no room mailbox/));
      await store.setRoomMailbox("gone", "!gone:hs.example", "@alice:hs.example");
      await assert.rejects(add("!gone:hs.example"), refused("invalid", /bridge bot is not in !gone:hs\.example/));
      await assert.rejects(add("@outsider:hs.example"), refused("invalid", /not allowed to use this bridge/));
      await assert.rejects(add("@nobody:hs.example"), refused("invalid", /does not exist/));
      for (const bad of ["@alice:other.example", "@emailbot:hs.example", "@email_bob=40example.org:hs.example", "bob@example.org", "#room:hs.example"]) {
        await assert.rejects(add(bad), refused("invalid", /an alias target is a room ID/), bad);
      }
    });
  });

  describe("room mailboxes", () => {
    it("lists them; setRoomMailbox checks the room and the name; removing it removes the room's aliases too", async () => {
      assert.deepEqual(await addressing.listMailboxes(), [
        { address: "sales@bridge.example", roomId: "!sales:hs.example", policy: "open" },
        { address: "team@bridge.example", roomId: "!team:hs.example", policy: "open" },
      ]);
      assert.equal((await store.getPortalByRoom("!team:hs.example"))?.kind, "mailbox");
      const set = (roomId: string, name: string) => addressing.setRoomMailbox(roomId, name, "@alice:hs.example");
      await assert.rejects(set("!enc:hs.example", "secret"), refused("invalid", /end-to-end encrypted/));
      // Where the homeserver gives the bridge encryption, an encrypted room can have an address.
      bridgesEncrypted = true;
      try {
        await set("!enc:hs.example", "secret");
        assert.equal((await store.getPortalByRoom("!enc:hs.example"))?.encrypted, true);
      } finally {
        bridgesEncrypted = false;
      }
      await assert.rejects(set("!elsewhere:hs.example", "x"), refused("invalid", /bot is not in/));
      await assert.rejects(set("!plain:hs.example", "team"), refused("conflict", /room mailbox/));
      await assert.rejects(set("!plain:hs.example", "bob"), refused("conflict", /personal address of @bob:hs\.example/));
      await assert.rejects(set("!plain:hs.example", "no-reply"), refused("conflict", /reserved/));
      await assert.rejects(set("!plain:hs.example", "Not Usable"), refused("invalid", /not a usable address name/));
      await addressing.addAlias("desk@bridge.example", "!team:hs.example", "@alice:hs.example");
      await assert.rejects(set("!plain:hs.example", "desk"), refused("conflict", /desk@bridge\.example is an alias already/));
      assert.equal((await set("!team:hs.example", "team")).localpart, "team", "setting the room's own name again is fine");

      assert.equal(await addressing.removeRoomMailbox("!team:hs.example"), true);
      assert.deepEqual(await addressing.listAliases({ target: "!team:hs.example" }), []);
      assert.equal((await store.getPortalByRoom("!team:hs.example"))?.kind, "group");
      assert.equal(await addressing.removeRoomMailbox("!team:hs.example"), false);
    });
  });

  describe("routing", () => {
    const session = { rcptTo: [], recipients: new Map(), remoteAddress: "127.0.0.1", clientHostname: "client", heloName: "client", sessionId: "s1", secure: false };
    const resolve = (address: string) => router.checkRecipient(address, { mailFrom: "carol@example.org", ...session });
    async function deliver(rcptTo: string[], messageId: string, from = "carol@example.org"): Promise<void> {
      const recipients = new Map<string, Mailbox>();
      for (const r of rcptTo) recipients.set(r, await resolve(r));
      const envelope: InboundEnvelope<Mailbox> = { mailFrom: from, ...session, rcptTo, recipients };
      const raw = Buffer.from(`From: Carol <${from}>\r\nTo: ${rcptTo.join(", ")}\r\nSubject: Hi\r\nMessage-ID: <${messageId}>\r\n\r\nHello\r\n`);
      await router.deliver(raw, envelope);
    }

    beforeEach(async () => {
      await addressing.addDomain("zwei.example", "@alice:hs.example");
    });

    it("room and personal mailboxes exist on every domain; tags are carried; command tags stay commands", async () => {
      assert.deepEqual(await resolve("team@bridge.example"), { kind: "room", localpart: "team", roomId: "!team:hs.example", policy: "open", command: null });
      assert.deepEqual(await resolve("team@zwei.example"), { kind: "room", localpart: "team", roomId: "!team:hs.example", policy: "open", command: null, via: { address: "team@zwei.example", tag: null } });
      assert.deepEqual(await resolve("Team+News@bridge.example"), { kind: "room", localpart: "team", roomId: "!team:hs.example", policy: "open", command: null, via: { address: "team+news@bridge.example", tag: "news" } });
      assert.deepEqual(await resolve("team+subscribe@zwei.example"), { kind: "room", localpart: "team", roomId: "!team:hs.example", policy: "open", command: { kind: "subscribe" } });
      assert.deepEqual(await resolve("bob+shopping@bridge.example"), { kind: "personal", localpart: "bob", userId: "@bob:hs.example", via: { address: "bob+shopping@bridge.example", tag: "shopping" } });
      for (const bad of ["team+confirm-x@bridge.example", "postmaster+x@bridge.example", "unsubscribe+nope@bridge.example"]) {
        await assert.rejects(resolve(bad), (e: SmtpReply) => e instanceof SmtpReply && e.responseCode === 550 && e.enhancedStatus === "5.1.1", bad);
      }
      assert.deepEqual(await resolve("postmaster@zwei.example"), { kind: "admin", localpart: "postmaster" });
    });

    it("an alias resolves to its targets; a catch-all only takes what nothing else on its domain takes", async () => {
      await addressing.addAlias("help@zwei.example", "!team:hs.example", "@alice:hs.example");
      await addressing.addAlias("help@zwei.example", "@bob:hs.example", "@alice:hs.example");
      const help = await resolve("help+urgent@zwei.example");
      assert.equal(help.kind, "alias");
      assert.deepEqual(help.kind === "alias" ? help.targets.map((t) => [t.kind, t.kind === "room" ? t.roomId : t.userId, t.via]) : [], [
        ["room", "!team:hs.example", { address: "help+urgent@zwei.example", tag: "urgent" }],
        ["personal", "@bob:hs.example", { address: "help+urgent@zwei.example", tag: "urgent" }],
      ]);
      await assert.rejects(resolve("nobody@zwei.example"), (e: SmtpReply) => e instanceof SmtpReply && e.responseCode === 550 && e.enhancedStatus === "5.1.1");
      await assert.rejects(resolve("help@bridge.example"), SmtpReply, "an alias belongs to its domain only");
      await addressing.addAlias("*@zwei.example", "!sales:hs.example", "admin-api");
      const any = await resolve("nobody@zwei.example");
      assert.equal(any.kind === "alias" && any.address, "nobody@zwei.example");
      assert.equal((await resolve("team@zwei.example")).kind, "room", "a room mailbox wins over the catch-all");
      assert.equal((await resolve("alice@zwei.example")).kind, "personal", "so does a personal mailbox");
      assert.equal((await resolve("help@zwei.example")).kind, "alias");
      await assert.rejects(resolve("nobody@bridge.example"), SmtpReply, "the catch-all is its domain's only");
    });

    it("mail From any of the bridge's domains is refused from outside (550 5.7.1), not only the primary", async () => {
      for (const from of ["alice@bridge.example", "alice@zwei.example"]) {
        await assert.rejects(deliver(["team@bridge.example"], `own-${from}`, from), (e: SmtpReply) => e instanceof SmtpReply && e.responseCode === 550 && e.enhancedStatus === "5.7.1", from);
      }
      assert.equal((await store.listPendingInbound(10)).length, 0);
    });

    it("1:N: one mail to an alias and a room it includes is committed once per target, with the address it came to", async () => {
      await addressing.addAlias("all@zwei.example", "!team:hs.example", "@alice:hs.example");
      await addressing.addAlias("all@zwei.example", "!sales:hs.example", "@alice:hs.example");
      await addressing.addAlias("all@zwei.example", "@bob:hs.example", "@alice:hs.example");
      await deliver(["all+q3@zwei.example", "team@bridge.example"], "one@example.org");
      const rows = await store.listPendingInbound(10);
      assert.deepEqual(rows.map((r) => [r.roomId ?? r.dmLocalUserId, r.deliveredTo, r.recipientTag]).sort(), [
        ["!sales:hs.example", "all+q3@zwei.example", "q3"],
        ["!team:hs.example", "all+q3@zwei.example", "q3"],
        ["@bob:hs.example", "all+q3@zwei.example", "q3"],
      ]);
      await deliver(["team@bridge.example"], "two@example.org");
      const plain = (await store.listPendingInbound(10)).find((r) => r.messageId === "two@example.org");
      assert.equal(plain?.deliveredTo, null, "a room's own address is not shown");
      assert.equal(plain?.recipientTag, null);
    });
  });
});

describe("the SMTP listener's other mail domains", () => {
  it("asks isLocalDomain about domains other than mail.domain: ours go to the handler, others are relaying, a failure is 451", async () => {
    const asked: string[] = [];
    const handler = new RecordingHandler();
    const { listener, port } = await startSmtpListener(handler, {}, {
      isLocalDomain: async (domain) => {
        asked.push(domain);
        if (domain === "broken.test") throw new Error("store down");
        return domain === "zwei.test";
      },
    });
    const c = await RawClient.open(port);
    try {
      await c.reply();
      await c.command("EHLO client.example.org");
      assert.deepEqual(await c.command("MAIL FROM:<alice@example.org>"), ["250 2.1.0 Accepted"]);
      assert.deepEqual(await c.command("RCPT TO:<team@bridge.test>"), ["250 2.1.5 Accepted"]);
      assert.deepEqual(await c.command("RCPT TO:<Team@ZWEI.test>"), ["250 2.1.5 Accepted"]);
      assert.deepEqual(await c.command("RCPT TO:<nobody@zwei.test>"), ["550 5.1.1 <nobody@zwei.test>: no such mailbox here"]);
      assert.deepEqual(await c.command("RCPT TO:<team@other.test>"), ["550 5.7.1 <team@other.test>: relaying denied"]);
      assert.deepEqual(await c.command("RCPT TO:<team@broken.test>"), ["451 4.3.0 temporary local failure, try again later"]);
      assert.deepEqual(await c.command("RCPT TO:<team@[127.0.0.1]>"), ["550 5.7.1 <team@[127.0.0.1]>: relaying denied"]);
    } finally {
      c.close();
      await listener.close();
    }
    assert.deepEqual(asked, ["zwei.test", "zwei.test", "other.test", "broken.test"], "mail.domain and address literals are never asked");
    assert.deepEqual(handler.checked, ["team@bridge.test", "Team@zwei.test", "nobody@zwei.test"], "the handler hears only of our domains");
  });
});
