/**
 * Inbound routing decisions: thread (In-Reply-To/References) first, then room mailbox,
 * then personal mailbox → DM portal. Uses the real store (SQLite, temp file) and a real DNS
 * server on loopback for sender authentication (example.org and evil.test publish SPF for
 * 127.0.0.1; unsigned.test publishes nothing); the Matrix side is a strict fake that answers
 * only what routing asks.
 */
import { after, afterEach, before, beforeEach, describe, it } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { openStore } from "../../src/store/open.ts";
import type { BridgeStore } from "../../src/store/Store.ts";
import { InboundRouter, type Mailbox } from "../../src/bridge/InboundRouter.ts";
import { Contacts } from "../../src/bridge/Contacts.ts";
import type { InboundEnvelope } from "../../src/mail/inbound/SmtpListener.ts";
import { SmtpReply } from "../../src/mail/inbound/rejections.ts";
import { configureLogging } from "../../src/util/logger.ts";
import type { IdContext } from "../../src/bridge/ids.ts";
import { DnsResolver } from "../../src/mail/dns.ts";
import { Subscriptions } from "../../src/bridge/Subscriptions.ts";
import { startDnsServer, type TestDns } from "../harness/dns.ts";

configureLogging({ level: "error" });
const ids: IdContext = { ghostPrefix: "email_", serverName: "hs.example", mailDomain: "bridge.example", botLocalpart: "emailbot", caseSensitiveLocalparts: false };
const USERS = new Set(["@alice:hs.example", "@bob:hs.example"]);
const CAROL_GHOST = "@email_carol=40example.org:hs.example";
/** Joined members of the rooms routing may ask about (reset before each test). */
let MEMBERS: Record<string, string[]> = {};

async function envelope(rcptTo: string[], mailFrom = "carol@example.org"): Promise<InboundEnvelope<Mailbox>> {
  // As the listener does: each recipient resolved once at RCPT time, carried to DATA.
  const recipients = new Map<string, Mailbox>();
  for (const r of rcptTo) {
    const key = r.toLowerCase();
    if (!recipients.has(key)) recipients.set(key, await router.checkRecipient(r, { mailFrom, rcptTo: [], recipients: new Map(), remoteAddress: "127.0.0.1", clientHostname: "client", heloName: "client", sessionId: "s1", secure: false }));
  }
  return { mailFrom, rcptTo, recipients, remoteAddress: "127.0.0.1", clientHostname: "client", heloName: "client", sessionId: "s1", secure: false };
}

function mail(opts: { from?: string; messageId?: string; inReplyTo?: string; references?: string[] } = {}): Buffer {
  const lines = [`From: Carol <${opts.from ?? "carol@example.org"}>`, "To: someone@bridge.example", "Subject: Hi"];
  if (opts.messageId) lines.push(`Message-ID: <${opts.messageId}>`);
  if (opts.inReplyTo) lines.push(`In-Reply-To: <${opts.inReplyTo}>`);
  if (opts.references) lines.push(`References: ${opts.references.map((r) => `<${r}>`).join(" ")}`);
  return Buffer.from(lines.join("\r\n") + "\r\n\r\nHello\r\n");
}

let router: InboundRouter;

describe("inbound routing", () => {
  let dns: TestDns;
  before(async () => {
    dns = await startDnsServer({
      records: {
        "example.org": { TXT: ["v=spf1 ip4:127.0.0.1 -all"] },
        "evil.test": { TXT: ["v=spf1 ip4:127.0.0.1 -all"] },
        "unsigned.test": { A: ["192.0.2.1"] },
      },
    });
  });
  after(async () => {
    await dns?.stop();
  });
  let dir: string;
  let store: BridgeStore;
  let committed = 0;
  /** The bot's messages about contact requests: the bot DM is `!dm-<user>`. */
  let notified: { roomId: string; text: string }[] = [];

  beforeEach(async () => {
    dir = mkdtempSync(join(tmpdir(), "meb-route-"));
    store = await openStore({ url: null, sqliteFile: join(dir, "s.sqlite") });
    committed = 0;
    notified = [];
    MEMBERS = { "!group:hs.example": ["@alice:hs.example", "@emailbot:hs.example", CAROL_GHOST] };
    router = new InboundRouter({
      store,
      ids,
      contacts: new Contacts({
        store,
        matrix: {
          botDm: async (userId) => `!dm-${userId}`,
          botNotice: async (roomId, text) => {
            notified.push({ roomId, text });
          },
        },
      }),
      mayBridge: (u) => u.endsWith(":hs.example"),
      onCommitted: () => committed++,
      hostname: "mx.bridge.example",
      subscriptions: new Subscriptions({ store, ids, dkim: null, onQueued: () => undefined }),
      admins: { roomId: null, users: ["@admin:hs.example"] },
      auth: {
        lookup: new DnsResolver({ nameservers: [dns.nameserver], timeoutMs: 1000, tries: 1, cacheEntries: 0, cacheTtlMs: 0 }).lookup,
        policy: { enforceDmarcReject: true, unverified: "mark", deferOnDnsError: true },
        trustedArcSealers: [],
        minKeyBits: 1024,
      },
      matrix: {
        userExists: async (u) => USERS.has(u),
        joinedMembers: async (roomId) => {
          const m = MEMBERS[roomId];
          if (!m) throw new Error(`unexpected joinedMembers(${roomId})`);
          return m;
        },
      },
    });
    await store.setRoomMailbox("team", "!team:hs.example", "@alice:hs.example");
    await store.upsertPortal({ roomId: "!team:hs.example", kind: "mailbox", localUserId: null, remoteAddress: null, subject: null, encrypted: false, remoteVerified: true });
    await store.upsertPortal({ roomId: "!group:hs.example", kind: "group", localUserId: null, remoteAddress: null, subject: null, encrypted: false, remoteVerified: true });
    await store.insertMessage({ roomId: "!group:hs.example", eventId: "$out1", messageId: "out1@bridge.example", references: [], direction: "outbound", sender: "alice@bridge.example", subject: "Tea", participants: ["carol@example.org"], viaList: false });
  });
  afterEach(async () => {
    await store.close();
    rmSync(dir, { recursive: true, force: true });
  });

  it("accepts room and personal mailboxes, refuses the rest with 550 5.1.1", async () => {
    await router.checkRecipient("team@bridge.example", await envelope([]));
    await router.checkRecipient("alice@bridge.example", await envelope([]));
    for (const bad of ["nobody@bridge.example", "emailbot@bridge.example", "email_bob=40example.org@bridge.example"]) {
      await assert.rejects(router.checkRecipient(bad, await envelope([])), (e: SmtpReply) => e instanceof SmtpReply && e.responseCode === 550 && e.enhancedStatus === "5.1.1", bad);
    }
  });

  it("a reply goes to the portal and event its In-Reply-To belongs to, when the recipient is a member", async () => {
    await router.deliver(mail({ messageId: "r1@example.org", inReplyTo: "out1@bridge.example" }), await envelope(["alice@bridge.example"]));
    const [row] = await store.listPendingInbound(10);
    assert.equal(row?.roomId, "!group:hs.example");
    assert.equal(row?.replyToEventId, "$out1");
    assert.equal(committed, 1);
    assert.match(row!.raw.toString(), /^Received: from client \(client \[127\.0\.0\.1\]\)\r\n\tby mx\.bridge\.example with ESMTP id s1\r\n\tfor <alice@bridge\.example>;\r\n\t\w{3}, \d\d \w{3} \d{4} [\d:]{8} \+0000\r\nFrom: Carol/);
  });

  it("References are searched newest first when In-Reply-To is unknown", async () => {
    await router.deliver(mail({ messageId: "r2@example.org", inReplyTo: "unknown@x.org", references: ["out1@bridge.example", "unknown@x.org"] }), await envelope(["alice@bridge.example"]));
    const [row] = await store.listPendingInbound(10);
    assert.equal(row?.replyToEventId, "$out1");
  });

  it("a stranger who knows a Message-ID does not enter the thread, even authenticated", async () => {
    await router.deliver(mail({ from: "mallory@evil.test", messageId: "h1@evil.test", inReplyTo: "out1@bridge.example" }), await envelope(["alice@bridge.example"], "mallory@evil.test"));
    const [row] = await store.listPendingInbound(10);
    assert.equal(row?.roomId, null, "not posted into the group portal");
    assert.equal(row?.dmLocalUserId, "@alice:hs.example");
    assert.equal(row?.replyToEventId, null);
    assert.equal(row?.senderVerified, true);
  });

  it("an unverified sender never joins a thread and gets its own DM portal", async () => {
    await store.upsertPortal({ roomId: "!dmv:hs.example", kind: "dm", localUserId: "@alice:hs.example", remoteAddress: "carol@unsigned.test", subject: null, encrypted: false, remoteVerified: true });
    await store.insertMessage({ roomId: "!group:hs.example", eventId: "$out2", messageId: "out2@bridge.example", references: [], direction: "outbound", sender: "alice@bridge.example", subject: "Tea", participants: ["carol@unsigned.test"], viaList: false });
    await router.deliver(mail({ from: "carol@unsigned.test", messageId: "u1@unsigned.test", inReplyTo: "out2@bridge.example" }), await envelope(["alice@bridge.example"], "carol@unsigned.test"));
    const [row] = await store.listPendingInbound(10);
    assert.equal(row?.senderVerified, false);
    assert.deepEqual(row?.auth, { spf: "none", dkim: "none", dmarc: "none", arc: "none", verified: false });
    assert.equal(row?.roomId, null, "neither the thread nor the verified DM");
    assert.equal(row?.dmLocalUserId, "@alice:hs.example");
  });

  it("a participant whose ghost was removed from the room does not come back by replying: the reply goes where mail without thread headers goes", async () => {
    MEMBERS["!group:hs.example"] = ["@alice:hs.example", "@emailbot:hs.example"];
    await router.deliver(mail({ messageId: "k1@example.org", inReplyTo: "out1@bridge.example" }), await envelope(["alice@bridge.example"]));
    const [row] = await store.listPendingInbound(10);
    assert.equal(row?.roomId, null, "not posted into the group portal it was removed from");
    assert.equal(row?.dmLocalUserId, "@alice:hs.example");
    assert.equal(row?.replyToEventId, null);
    assert.equal(row?.senderVerified, true);
  });

  it("a known Message-ID does not route to a room the recipient is not in", async () => {
    await router.deliver(mail({ messageId: "r3@example.org", inReplyTo: "out1@bridge.example" }), await envelope(["bob@bridge.example"]));
    const [row] = await store.listPendingInbound(10);
    assert.equal(row?.roomId, null);
    assert.equal(row?.dmLocalUserId, "@bob:hs.example");
  });

  it("a room mailbox routes to its room; a personal one to the DM portal, once it exists", async () => {
    await router.deliver(mail({ messageId: "m1@example.org" }), await envelope(["team@bridge.example"]));
    await router.deliver(mail({ messageId: "m2@example.org" }), await envelope(["alice@bridge.example"]));
    let rows = await store.listPendingInbound(10);
    assert.deepEqual(rows.map((r) => [r.roomId, r.dmLocalUserId]), [["!team:hs.example", null], [null, "@alice:hs.example"]]);
    await store.upsertPortal({ roomId: "!dm:hs.example", kind: "dm", localUserId: "@alice:hs.example", remoteAddress: "carol@example.org", subject: null, encrypted: false, remoteVerified: true });
    await router.deliver(mail({ messageId: "m3@example.org" }), await envelope(["alice@bridge.example"]));
    rows = await store.listPendingInbound(10);
    assert.equal(rows[2]?.roomId, "!dm:hs.example");
  });

  it("one mail to two mailboxes of one room is committed once; a replay is a duplicate", async () => {
    await router.deliver(mail({ messageId: "d1@example.org" }), await envelope(["team@bridge.example", "TEAM@bridge.example"]));
    await router.deliver(mail({ messageId: "d1@example.org" }), await envelope(["team@bridge.example"]));
    assert.equal((await store.listPendingInbound(10)).length, 1);
  });

  it("a different mail reusing a Message-ID is kept; a mail without one is deduplicated by content", async () => {
    await router.deliver(mail({ messageId: "same@example.org" }), await envelope(["team@bridge.example"]));
    await router.deliver(Buffer.concat([mail({ messageId: "same@example.org" }), Buffer.from("A different body\r\n")]), await envelope(["team@bridge.example"]));
    assert.equal((await store.listPendingInbound(10)).length, 2);
    await router.deliver(mail(), await envelope(["team@bridge.example"]));
    await router.deliver(mail(), await envelope(["team@bridge.example"]));
    const rows = await store.listPendingInbound(10);
    assert.equal(rows.length, 3);
    assert.match(rows[2]!.messageId, /^[0-9a-f]{32}\.derived@bridge\.example$/);
  });

  it("refuses senders on the bridge's own domain and unusable senders", async () => {
    await assert.rejects(router.deliver(mail({ from: "alice@bridge.example" }), await envelope(["team@bridge.example"])), (e: SmtpReply) => e.responseCode === 550 && e.enhancedStatus === "5.7.1");
    await assert.rejects(router.deliver(Buffer.from("Subject: x\r\n\r\nbody\r\n"), await envelope(["team@bridge.example"], "")), (e: SmtpReply) => e.responseCode === 550 && e.enhancedStatus === "5.7.1");
    assert.equal((await store.listPendingInbound(10)).length, 0);
  });

  describe("contact requests", () => {
    const contacts = () => new Contacts({ store, matrix: { botDm: async (u) => `!dm-${u}`, botNotice: async () => undefined } });
    const is = (code: number, status: string, text?: RegExp) => (e: SmtpReply) =>
      e instanceof SmtpReply && e.responseCode === code && e.enhancedStatus === status && (!text || text.test(e.text));

    it("hold: a stranger's mail gets 451 4.7.1 and one bot message; a retry gets 451 again, and nothing is committed", async () => {
      await store.updateUserSettings("@alice:hs.example", { contactMode: "hold" });
      const m = Buffer.from("From: Carol <carol@example.org>\r\nTo: alice@bridge.example\r\nSubject: Lunch?\r\nMessage-ID: <h1@example.org>\r\n\r\nShall we meet\r\non Friday?\r\n");
      await assert.rejects(router.deliver(m, await envelope(["alice@bridge.example"])), is(451, "4.7.1", /alice@bridge\.example has not accepted mail from carol@example\.org/));
      await assert.rejects(router.deliver(m, await envelope(["alice@bridge.example"])), is(451, "4.7.1"));
      assert.equal((await store.listPendingInbound(10)).length, 0, "nothing committed while held");
      assert.equal(notified.length, 1, "told once");
      assert.equal(notified[0]!.roomId, "!dm-@alice:hs.example");
      assert.match(notified[0]!.text, /^📨 ✅ Contact request from an authenticated sender: Carol <carol@example\.org> wants to mail you\./);
      assert.match(notified[0]!.text, /Subject: Lunch\?\n> Shall we meet\n> on Friday\?/);
      assert.match(notified[0]!.text, /`accept carol@example\.org`.*`refuse carol@example\.org \[reason\]`.*`refuse-quietly carol@example\.org`/s);
      const req = await store.getContactRequest("@alice:hs.example", "carol@example.org");
      assert.equal(req?.state, "pending");
      assert.equal(req?.attempts, 2);
      assert.equal(req?.verified, true);
      assert.notEqual(req?.notifiedAt, null);
    });

    it("hold with the homeserver down: still 451 4.7.1, nothing committed; the user is told on the next attempt once it is back", async () => {
      await store.updateUserSettings("@alice:hs.example", { contactMode: "hold" });
      let down = true;
      const told: string[] = [];
      const flaky = new Contacts({
        store,
        matrix: {
          botDm: async (u) => {
            if (down) throw Object.assign(new Error("connect ECONNREFUSED 127.0.0.1:8008"), { code: "ECONNREFUSED" });
            return `!dm-${u}`;
          },
          botNotice: async (_roomId, text) => void told.push(text),
        },
      });
      const m = mail({ messageId: "down@example.org" });
      const reply = await flaky.hold("@alice:hs.example", "alice@bridge.example", { sender: "carol@example.org", senderName: "Carol", verified: true, subject: "Hi", text: "Hello" });
      assert.equal(reply.line, "451 4.7.1 alice@bridge.example has not accepted mail from carol@example.org yet; try again later");
      assert.equal((await store.getContactRequest("@alice:hs.example", "carol@example.org"))?.notifiedAt, null, "not told: the homeserver was down");
      assert.equal(told.length, 0);
      down = false;
      await flaky.hold("@alice:hs.example", "alice@bridge.example", { sender: "carol@example.org", senderName: "Carol", verified: true, subject: "Hi", text: "Hello" });
      assert.equal(told.length, 1, "told on the retry");
      await flaky.hold("@alice:hs.example", "alice@bridge.example", { sender: "carol@example.org", senderName: "Carol", verified: true, subject: "Hi", text: "Hello" });
      assert.equal(told.length, 1, "and only once");
      assert.equal((await store.getContactRequest("@alice:hs.example", "carol@example.org"))?.attempts, 3);
      // Through the router too: a held mail is never committed, whatever the homeserver does.
      await assert.rejects(router.deliver(m, await envelope(["alice@bridge.example"])), is(451, "4.7.1"));
      assert.equal((await store.listPendingInbound(10)).length, 0);
    });

    it("hold: at most 10 requests a user is told of per hour; the rest are told on a later attempt", async () => {
      await store.updateUserSettings("@alice:hs.example", { contactMode: "hold" });
      for (let i = 0; i < 12; i++) {
        const from = `s${i}@example.org`;
        await assert.rejects(router.deliver(mail({ from, messageId: `f${i}@example.org` }), await envelope(["alice@bridge.example"], from)), is(451, "4.7.1"));
      }
      assert.equal(notified.length, 10);
      assert.equal((await store.listContactRequests("@alice:hs.example", "pending")).length, 12, "all recorded");
      assert.equal((await store.getContactRequest("@alice:hs.example", "s11@example.org"))?.notifiedAt, null);
    });

    it("hold: after accept the retry is committed; after refuse it gets 550 5.7.1 with the reason; refuse-quietly a bare 550", async () => {
      await store.updateUserSettings("@alice:hs.example", { contactMode: "hold" });
      await assert.rejects(router.deliver(mail({ messageId: "a1@example.org" }), await envelope(["alice@bridge.example"])), is(451, "4.7.1"));
      await contacts().accept("@alice:hs.example", "carol@example.org");
      await router.deliver(mail({ messageId: "a1@example.org" }), await envelope(["alice@bridge.example"]));
      assert.equal((await store.listPendingInbound(10))[0]?.dmLocalUserId, "@alice:hs.example");
      assert.equal((await store.getContactRequest("@alice:hs.example", "carol@example.org"))?.state, "accepted");

      await assert.rejects(router.deliver(mail({ from: "mallory@evil.test", messageId: "x1@evil.test" }), await envelope(["alice@bridge.example"], "mallory@evil.test")), is(451, "4.7.1"));
      await contacts().refuse("@alice:hs.example", "mallory@evil.test", { reason: "no sales mail, thanks", quiet: false });
      await assert.rejects(
        router.deliver(mail({ from: "mallory@evil.test", messageId: "x1@evil.test" }), await envelope(["alice@bridge.example"], "mallory@evil.test")),
        is(550, "5.7.1", /^alice@bridge\.example does not accept mail from mallory@evil\.test: no sales mail, thanks$/),
      );
      await contacts().refuse("@alice:hs.example", "mallory@evil.test", { reason: null, quiet: true });
      await assert.rejects(router.deliver(mail({ from: "mallory@evil.test", messageId: "x2@evil.test" }), await envelope(["alice@bridge.example"], "mallory@evil.test")), is(550, "5.7.1", /^message refused$/));
      assert.equal((await store.listPendingInbound(10)).length, 1, "only the accepted mail");
    });

    it("hold never delays a reply in a conversation or mail into an existing DM", async () => {
      await store.updateUserSettings("@alice:hs.example", { contactMode: "hold" });
      await router.deliver(mail({ messageId: "t1@example.org", inReplyTo: "out1@bridge.example" }), await envelope(["alice@bridge.example"]));
      await store.upsertPortal({ roomId: "!dm:hs.example", kind: "dm", localUserId: "@alice:hs.example", remoteAddress: "carol@example.org", subject: null, encrypted: false, remoteVerified: true });
      await router.deliver(mail({ messageId: "t2@example.org" }), await envelope(["alice@bridge.example"]));
      assert.deepEqual((await store.listPendingInbound(10)).map((r) => r.roomId), ["!group:hs.example", "!dm:hs.example"]);
      assert.equal(notified.length, 0);
    });

    it("hold with another recipient: the held copy opens a DM invite instead, the other is not kept waiting", async () => {
      await store.updateUserSettings("@alice:hs.example", { contactMode: "hold" });
      await router.deliver(mail({ messageId: "mix@example.org" }), await envelope(["alice@bridge.example", "team@bridge.example"]));
      const rows = await store.listPendingInbound(10);
      assert.deepEqual(rows.map((r) => `${r.roomId} ${r.dmLocalUserId}`).sort(), ["!team:hs.example null", "null @alice:hs.example"]);
    });

    it("invite mode (the default) commits a stranger's mail at once; a block refuses the address, a domain block the domain", async () => {
      await router.deliver(mail({ messageId: "i1@example.org" }), await envelope(["alice@bridge.example"]));
      assert.equal((await store.listPendingInbound(10)).length, 1);
      await contacts().refuse("@alice:hs.example", "example.org", { reason: null, quiet: false });
      await assert.rejects(router.deliver(mail({ messageId: "i2@example.org" }), await envelope(["alice@bridge.example"])), is(550, "5.7.1", /does not accept mail from carol@example\.org$/));
      await contacts().accept("@alice:hs.example", "carol@example.org");
      await router.deliver(mail({ messageId: "i3@example.org" }), await envelope(["alice@bridge.example"]));
      assert.equal((await store.listPendingInbound(10)).length, 2, "the address rule wins over its domain's");
    });

    it("personal off: new mail gets 550 5.1.1, a reply in a conversation still arrives", async () => {
      await store.updateUserSettings("@alice:hs.example", { personalMailbox: false });
      await assert.rejects(router.deliver(mail({ messageId: "o1@example.org" }), await envelope(["alice@bridge.example"])), is(550, "5.1.1"));
      await router.deliver(mail({ messageId: "o2@example.org", inReplyTo: "out1@bridge.example" }), await envelope(["alice@bridge.example"]));
      assert.equal((await store.listPendingInbound(10))[0]?.roomId, "!group:hs.example");
    });
  });
});
