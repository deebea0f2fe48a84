/**
 * What OutboundHandler mails for a room message, on the real store (SQLite :memory:): notices
 * stay in Matrix unless `outbound.mail_notices` is on, and a new topic in a room without a name
 * takes the message's first line as its subject. The Matrix side answers only what the handler
 * asks of a DM portal (a display name; no room name).
 */
import { afterEach, beforeEach, describe, it } from "node:test";
import assert from "node:assert/strict";
import { simpleParser } from "mailparser";
import { openStore } from "../../src/store/open.ts";
import type { BridgeStore, PortalRow } from "../../src/store/Store.ts";
import { OutboundHandler, type RoomMessageEvent } from "../../src/bridge/OutboundHandler.ts";
import type { MessageContent } from "../../src/bridge/format/toMail.ts";
import type { MatrixActions } from "../../src/bridge/ports.ts";
import type { IdContext } from "../../src/bridge/ids.ts";
import { configureLogging } from "../../src/util/logger.ts";

configureLogging({ level: "error" });
const ids: IdContext = { ghostPrefix: "email_", serverName: "hs.example", mailDomain: "bridge.example", botLocalpart: "emailbot", caseSensitiveLocalparts: false };

describe("OutboundHandler: notices and new-topic subjects", () => {
  let store: BridgeStore;
  let portal: PortalRow;
  let n = 0;
  const matrix = { displayName: async () => "Alice", stateContent: async () => null } as unknown as MatrixActions;

  beforeEach(async () => {
    store = await openStore({ url: null, sqliteFile: ":memory:" });
    portal = await store.upsertPortal({ roomId: "!dm:hs.example", kind: "dm", localUserId: "@alice:hs.example", remoteAddress: "bob@example.org", subject: null, encrypted: false, remoteVerified: true });
  });
  afterEach(async () => {
    await store.close();
  });

  function event(content: MessageContent): RoomMessageEvent {
    n++;
    return { room_id: portal.roomId, event_id: `$e${n}`, sender: "@alice:hs.example", origin_server_ts: Date.now(), content };
  }
  function handler(mailNotices: boolean): OutboundHandler {
    return new OutboundHandler({ store, matrix, ids, dkim: null, onQueued: () => undefined, limits: { mailsPerHour: 0, newRecipientsPerDay: 0 }, maxAttachmentBytes: 10_000_000, mailNotices, batchDelayMs: 0 });
  }
  async function queued(eventId: string) {
    const row = await store.getOutboundByEvent(eventId);
    assert.ok(row, `a mail was queued for ${eventId}`);
    return simpleParser(row.raw);
  }

  it("m.notice stays in Matrix by default; outbound.mail_notices: true mails it like text", async () => {
    const off = event({ msgtype: "m.notice", body: "build passed (n-1)" });
    assert.equal(await handler(false).handle(off, portal), null);
    assert.equal(await store.getOutboundByEvent(off.event_id), null, "nothing queued for a notice by default");
    const on = event({ msgtype: "m.notice", body: "build passed (n-2)" });
    assert.ok(await handler(true).handle(on, portal));
    assert.match((await queued(on.event_id)).text ?? "", /^build passed \(n-2\)/);
  });

  it("a new topic in a room without a name takes its first line as the subject, cut at 78 characters", async () => {
    const short = event({ msgtype: "m.text", body: "\n  Dinner on Friday?  \nDetails follow." });
    await handler(false).handle(short, portal);
    assert.equal((await queued(short.event_id)).subject, "Dinner on Friday?");
    const line = "word ".repeat(30).trim();
    const long = event({ msgtype: "m.text", body: line });
    await handler(false).handle(long, portal);
    const subject = (await queued(long.event_id)).subject ?? "";
    assert.equal(subject, `${line.slice(0, 77).trimEnd()}…`);
    assert.ok([...subject].length <= 78);
  });
});
