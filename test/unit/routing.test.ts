/**
 * Inbound routing decisions: thread (In-Reply-To/References) first, then room mailbox,
 * then personal mailbox → DM portal. Uses the real store (SQLite, temp file); the Matrix
 * side is a strict fake that answers only what routing asks.
 */
import { afterEach, beforeEach, describe, it } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { openStore } from "../../src/store/open.ts";
import type { BridgeStore } from "../../src/store/Store.ts";
import { InboundRouter } from "../../src/bridge/InboundRouter.ts";
import type { InboundEnvelope } from "../../src/mail/inbound/SmtpListener.ts";
import { SmtpReply } from "../../src/mail/inbound/rejections.ts";
import { configureLogging } from "../../src/util/logger.ts";
import type { IdContext } from "../../src/bridge/ids.ts";

configureLogging({ level: "error" });
const ids: IdContext = { ghostPrefix: "email_", serverName: "hs.example", mailDomain: "bridge.example", botLocalpart: "emailbot", caseSensitiveLocalparts: false };
const USERS = new Set(["@alice:hs.example", "@bob:hs.example"]);
const MEMBERS: Record<string, string[]> = { "!group:hs.example": ["@alice:hs.example", "@emailbot:hs.example"] };

function envelope(rcptTo: string[], mailFrom = "carol@example.org"): InboundEnvelope {
  return { mailFrom, rcptTo, remoteAddress: "127.0.0.1", clientHostname: "client", heloName: "client", sessionId: "s1", secure: false };
}

function mail(opts: { from?: string; messageId?: string; inReplyTo?: string; references?: string[] } = {}): Buffer {
  const lines = [`From: Carol <${opts.from ?? "carol@example.org"}>`, "To: someone@bridge.example", "Subject: Hi"];
  if (opts.messageId) lines.push(`Message-ID: <${opts.messageId}>`);
  if (opts.inReplyTo) lines.push(`In-Reply-To: <${opts.inReplyTo}>`);
  if (opts.references) lines.push(`References: ${opts.references.map((r) => `<${r}>`).join(" ")}`);
  return Buffer.from(lines.join("\r\n") + "\r\n\r\nHello\r\n");
}

describe("inbound routing", () => {
  let dir: string;
  let store: BridgeStore;
  let router: InboundRouter;
  let committed = 0;

  beforeEach(async () => {
    dir = mkdtempSync(join(tmpdir(), "meb-route-"));
    store = await openStore({ url: null, sqliteFile: join(dir, "s.sqlite") });
    committed = 0;
    router = new InboundRouter({
      store,
      ids,
      mayBridge: (u) => u.endsWith(":hs.example"),
      onCommitted: () => committed++,
      hostname: "mx.bridge.example",
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
    await store.upsertPortal({ roomId: "!team:hs.example", kind: "mailbox", localUserId: null, remoteAddress: null, subject: null, encrypted: false });
    await store.upsertPortal({ roomId: "!group:hs.example", kind: "group", localUserId: null, remoteAddress: null, subject: null, encrypted: false });
    await store.insertMessage({ roomId: "!group:hs.example", eventId: "$out1", messageId: "out1@bridge.example", references: [], direction: "outbound", sender: "alice@bridge.example", subject: "Tea" });
  });
  afterEach(async () => {
    await store.close();
    rmSync(dir, { recursive: true, force: true });
  });

  it("accepts room and personal mailboxes, refuses the rest with 550 5.1.1", async () => {
    await router.checkRecipient("team@bridge.example", envelope([]));
    await router.checkRecipient("alice@bridge.example", envelope([]));
    for (const bad of ["nobody@bridge.example", "emailbot@bridge.example", "email_bob=40example.org@bridge.example"]) {
      await assert.rejects(router.checkRecipient(bad, envelope([])), (e: SmtpReply) => e instanceof SmtpReply && e.responseCode === 550 && e.enhancedStatus === "5.1.1", bad);
    }
  });

  it("a reply goes to the portal and event its In-Reply-To belongs to, when the recipient is a member", async () => {
    await router.deliver(mail({ messageId: "r1@example.org", inReplyTo: "out1@bridge.example" }), envelope(["alice@bridge.example"]));
    const [row] = await store.listPendingInbound(10);
    assert.equal(row?.roomId, "!group:hs.example");
    assert.equal(row?.replyToEventId, "$out1");
    assert.equal(committed, 1);
    assert.match(row!.raw.toString(), /^Received: from client \(client \[127\.0\.0\.1\]\)\r\n\tby mx\.bridge\.example with ESMTP id s1\r\n\tfor <alice@bridge\.example>;\r\n\t\w{3}, \d\d \w{3} \d{4} [\d:]{8} \+0000\r\nFrom: Carol/);
  });

  it("References are searched newest first when In-Reply-To is unknown", async () => {
    await router.deliver(mail({ messageId: "r2@example.org", inReplyTo: "unknown@x.org", references: ["out1@bridge.example", "unknown@x.org"] }), envelope(["alice@bridge.example"]));
    const [row] = await store.listPendingInbound(10);
    assert.equal(row?.replyToEventId, "$out1");
  });

  it("a known Message-ID does not route to a room the recipient is not in", async () => {
    await router.deliver(mail({ messageId: "r3@example.org", inReplyTo: "out1@bridge.example" }), envelope(["bob@bridge.example"]));
    const [row] = await store.listPendingInbound(10);
    assert.equal(row?.roomId, null);
    assert.equal(row?.dmLocalUserId, "@bob:hs.example");
  });

  it("a room mailbox routes to its room; a personal one to the DM portal, once it exists", async () => {
    await router.deliver(mail({ messageId: "m1@example.org" }), envelope(["team@bridge.example"]));
    await router.deliver(mail({ messageId: "m2@example.org" }), envelope(["alice@bridge.example"]));
    let rows = await store.listPendingInbound(10);
    assert.deepEqual(rows.map((r) => [r.roomId, r.dmLocalUserId]), [["!team:hs.example", null], [null, "@alice:hs.example"]]);
    await store.upsertPortal({ roomId: "!dm:hs.example", kind: "dm", localUserId: "@alice:hs.example", remoteAddress: "carol@example.org", subject: null, encrypted: false });
    await router.deliver(mail({ messageId: "m3@example.org" }), envelope(["alice@bridge.example"]));
    rows = await store.listPendingInbound(10);
    assert.equal(rows[2]?.roomId, "!dm:hs.example");
  });

  it("one mail to two mailboxes of one room is committed once; a replay is a duplicate", async () => {
    await router.deliver(mail({ messageId: "d1@example.org" }), envelope(["team@bridge.example", "TEAM@bridge.example"]));
    await router.deliver(mail({ messageId: "d1@example.org" }), envelope(["team@bridge.example"]));
    assert.equal((await store.listPendingInbound(10)).length, 1);
  });

  it("refuses senders on the bridge's own domain and unusable senders", async () => {
    await assert.rejects(router.deliver(mail({ from: "alice@bridge.example" }), envelope(["team@bridge.example"])), (e: SmtpReply) => e.responseCode === 550 && e.enhancedStatus === "5.7.1");
    await assert.rejects(router.deliver(Buffer.from("Subject: x\r\n\r\nbody\r\n"), envelope(["team@bridge.example"], "")), (e: SmtpReply) => e.enhancedStatus === "5.1.7");
    assert.equal((await store.listPendingInbound(10)).length, 0);
  });
});
