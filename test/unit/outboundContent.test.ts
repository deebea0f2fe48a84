/**
 * What OutboundHandler mails for a room message, on the real store (SQLite :memory:): notices
 * stay in Matrix unless `outbound.mail_notices` is on, and a new topic in a room without a name
 * takes the message's first line as its subject. The Matrix side answers only what the handler
 * asks of a DM portal (a display name; no room name). Files over `outbound.max_attachment_bytes`
 * are linked (a bridge-served `/media/` link, or matrix.to for encrypted files), and a caption's
 * `formatted_body` becomes the HTML part.
 */
import { afterEach, beforeEach, describe, it } from "node:test";
import assert from "node:assert/strict";
import { simpleParser } from "mailparser";
import { openStore } from "../../src/store/open.ts";
import type { BridgeStore, PortalRow } from "../../src/store/Store.ts";
import { NotSentError, OutboundHandler, mailSenderName, type RoomMessageEvent } from "../../src/bridge/OutboundHandler.ts";
import type { MessageContent } from "../../src/bridge/format/toMail.ts";
import type { MatrixActions } from "../../src/bridge/ports.ts";
import type { IdContext } from "../../src/bridge/ids.ts";
import { configureLogging } from "../../src/util/logger.ts";
import { MediaLinks } from "../../src/bridge/mediaLinks.ts";

configureLogging({ level: "error" });
const ids: IdContext = { ghostPrefix: "email_", serverName: "hs.example", mailDomain: "bridge.example", botLocalpart: "emailbot", caseSensitiveLocalparts: false };

/** Matrix side of a DM portal: a display name, no room name, and a 10-byte PDF behind every mxc URI. */
const matrix = {
  displayName: async () => "Alice",
  stateContent: async () => null,
  downloadContent: async (_mxc: string, maxBytes: number) => {
    return maxBytes >= 10 ? { tooLarge: false, data: Buffer.from("0123456789"), contentType: "application/pdf" } : { tooLarge: true };
  },
} as unknown as MatrixActions;

/**
 * A DM portal of alice with bob@example.org on a fresh store per test (registers the hooks in
 * the calling `describe`), with helpers to make events, handlers and read queued mail.
 */
function dmPortal() {
  const fx = { store: null as unknown as BridgeStore, portal: null as unknown as PortalRow };
  let n = 0;
  beforeEach(async () => {
    fx.store = await openStore({ url: null, sqliteFile: ":memory:" });
    fx.portal = await fx.store.upsertPortal({ roomId: "!dm:hs.example", kind: "dm", localUserId: "@alice:hs.example", remoteAddress: "bob@example.org", subject: null, encrypted: false, remoteVerified: true });
  });
  afterEach(async () => {
    await fx.store.close();
  });
  return {
    get store() {
      return fx.store;
    },
    get portal() {
      return fx.portal;
    },
    event(content: MessageContent): RoomMessageEvent {
      n++;
      return { room_id: fx.portal.roomId, event_id: `$e${n}`, sender: "@alice:hs.example", origin_server_ts: Date.now(), content };
    },
    handler(opts: { mailNotices?: boolean; maxAttachmentBytes?: number; mediaLinks?: MediaLinks | null } = {}): OutboundHandler {
      return new OutboundHandler({
        store: fx.store,
        matrix,
        ids,
        dkim: null,
        onQueued: () => undefined,
        limits: { mailsPerHour: 0, newRecipientsPerDay: 0 },
        maxAttachmentBytes: opts.maxAttachmentBytes ?? 10_000_000,
        mailNotices: opts.mailNotices ?? false,
        batchDelayMs: 0,
        mediaLinks: opts.mediaLinks ?? null,
      });
    },
    async queued(eventId: string) {
      const row = await fx.store.getOutboundByEvent(eventId);
      assert.ok(row, `a mail was queued for ${eventId}`);
      return simpleParser(row.raw);
    },
  };
}

describe("mailSenderName: the name a user's mail carries", () => {
  it("cleaned as a ghost's; one that reads as an address, or nothing left, gives way to the user ID's localpart", () => {
    assert.equal(mailSenderName("Alice Example", "@alice:hs.test"), "Alice Example");
    assert.equal(mailSenderName("Alice \u202Egnp.exe\u202C", "@alice:hs.test"), "Alice gnp.exe");
    assert.equal(mailSenderName('"ceo@bank.test" <ceo@bank.test>', "@alice:hs.test"), "alice");
    assert.equal(mailSenderName("ceo\uFF20bank.test", "@alice:hs.test"), "alice", "a fullwidth @ reads as @ (NFKC)");
    assert.equal(mailSenderName("\u200B\u0000 ", "@bob:hs.test"), "bob");
    assert.equal([...mailSenderName("x".repeat(500), "@alice:hs.test")].length, 100);
  });
});

describe("OutboundHandler: the address a user sends from", () => {
  const dm = dmPortal();

  it("a user whose address is a room mailbox's, or an alias, sends nothing; the notice says why", async () => {
    await dm.store.setRoomMailbox("alice", "!team:hs.example", "@mod:hs.example");
    await assert.rejects(dm.handler().handle(dm.event({ msgtype: "m.text", body: "hi (from-1)" }), dm.portal), (err: unknown) => err instanceof NotSentError && /alice@bridge\.example is the address of a room mailbox or an alias/.test(err.message));
    await dm.store.removeRoomMailbox("!team:hs.example");
    await dm.store.addMailAlias("alice@bridge.example", "@carol:hs.example", "@admin:hs.example");
    await assert.rejects(dm.handler().handle(dm.event({ msgtype: "m.text", body: "hi (from-2)" }), dm.portal), NotSentError);
    await dm.store.removeMailAliases({ address: "alice@bridge.example" });
    const ok = dm.event({ msgtype: "m.text", body: "hi (from-3)" });
    assert.ok(await dm.handler().handle(ok, dm.portal));
    assert.equal((await dm.queued(ok.event_id)).from?.value[0]?.address, "alice@bridge.example");
  });

  it("a user name that is no usable address (alice+boss, postmaster) sends nothing", async () => {
    for (const sender of ["@alice+boss:hs.example", "@postmaster:hs.example"]) {
      const event = { ...dm.event({ msgtype: "m.text", body: "hi" }), sender };
      await assert.rejects(dm.handler().handle(event, dm.portal), (err: unknown) => err instanceof NotSentError && /has no personal mailbox on this bridge: /.test(err.message), sender);
    }
  });
});

describe("OutboundHandler: notices and new-topic subjects", () => {
  const dm = dmPortal();
  const handler = (mailNotices: boolean) => dm.handler({ mailNotices });
  const event = (c: MessageContent) => dm.event(c);
  const queued = (id: string) => dm.queued(id);

  it("m.notice stays in Matrix by default; outbound.mail_notices: true mails it like text", async () => {
    const off = event({ msgtype: "m.notice", body: "build passed (n-1)" });
    assert.equal(await handler(false).handle(off, dm.portal), null);
    assert.equal(await dm.store.getOutboundByEvent(off.event_id), null, "nothing queued for a notice by default");
    const on = event({ msgtype: "m.notice", body: "build passed (n-2)" });
    assert.ok(await handler(true).handle(on, dm.portal));
    assert.match((await queued(on.event_id)).text ?? "", /^build passed \(n-2\)/);
  });

  it("a new topic in a room without a name takes its first line as the subject, cut at 78 characters", async () => {
    const short = event({ msgtype: "m.text", body: "\n  Dinner on Friday?  \nDetails follow." });
    await handler(false).handle(short, dm.portal);
    assert.equal((await queued(short.event_id)).subject, "Dinner on Friday?");
    const line = "word ".repeat(30).trim();
    const long = event({ msgtype: "m.text", body: line });
    await handler(false).handle(long, dm.portal);
    const subject = (await queued(long.event_id)).subject ?? "";
    assert.equal(subject, `${line.slice(0, 77).trimEnd()}…`);
    assert.ok([...subject].length <= 78);
  });
});

describe("OutboundHandler: files over max_attachment_bytes, and captions with HTML", () => {
  const dm = dmPortal();
  const handler = (maxAttachmentBytes: number, mediaLinks: MediaLinks | null) => dm.handler({ maxAttachmentBytes, mediaLinks });
  const event = (c: MessageContent) => dm.event(c);
  const queued = (id: string) => dm.queued(id);
  const links = new MediaLinks({ asToken: "as-token-1", publicUrl: "https://bridge.example.org", days: 30, clock: () => Date.UTC(2026, 0, 1) });

  it("with a media link: the line says why (size vs limit), links <public_url>/media/, and says until when", async () => {
    const ev = event({ msgtype: "m.file", body: "the report", filename: "report.pdf", url: "mxc://hs.example/Rep0rt", info: { size: 5000 } });
    await handler(100, links).handle(ev, dm.portal);
    const mail = await queued(ev.event_id);
    const text = mail.text ?? "";
    assert.equal(mail.attachments.length, 0);
    assert.match(text, /^the report\n\n📎 report\.pdf \(5000 bytes\) is larger than this bridge sends by email \(100 bytes\), so it is not attached\. Download it here \(the link works until 2026-01-31\): https:\/\/bridge\.example\.org\/media\/[A-Za-z0-9_-]+\.[A-Za-z0-9_-]{43}\/report\.pdf/);
    const m = /\/media\/([^/\s]+)\/report\.pdf/.exec(text);
    assert.equal(links.read(m![1]!, "report.pdf")?.mxc, "mxc://hs.example/Rep0rt");
    assert.ok(!text.includes("matrix.to"));
  });

  it("an encrypted file over the limit keeps the matrix.to link, media links or not", async () => {
    const file = { url: "mxc://hs.example/Cipher", key: { alg: "A256CTR", k: "x", kty: "oct" }, iv: "AAAAAAAAAAAAAAAAAAAAAA", hashes: { sha256: "x" }, v: "v2" };
    const ev = event({ msgtype: "m.file", body: "secret.pdf", filename: "secret.pdf", file, info: { size: 5000 } } as MessageContent);
    await handler(100, links).handle(ev, dm.portal);
    const text = (await queued(ev.event_id)).text ?? "";
    assert.ok(text.includes(`https://matrix.to/#/${encodeURIComponent(dm.portal.roomId)}/${encodeURIComponent(ev.event_id)}`), text);
    assert.ok(!text.includes("/media/"), text);
  });

  it("a caption's formatted_body becomes the HTML part, next to the attachment; over the limit, the link is in the HTML too", async () => {
    const content = { msgtype: "m.file", body: "see **this**", format: "org.matrix.custom.html", formatted_body: "see <strong>this</strong>", filename: "a.pdf", url: "mxc://hs.example/Aaa" };
    const small = event(content);
    await handler(1000, links).handle(small, dm.portal);
    const mail = await queued(small.event_id);
    assert.match(String(mail.html), /see <strong>this<\/strong>/);
    assert.match(mail.text ?? "", /^see this/);
    assert.equal(mail.attachments[0]?.filename, "a.pdf");
    assert.ok(mail.attachments[0]?.content.equals(Buffer.from("0123456789")));
    const big = event(content);
    await handler(5, null).handle(big, dm.portal);
    const html = String((await queued(big.event_id)).html);
    assert.match(html, /see <strong>this<\/strong>/);
    assert.match(html, new RegExp(`<a href="https://matrix\\.to/#/${encodeURIComponent(dm.portal.roomId)}/[^"]+">`));
  });
});
