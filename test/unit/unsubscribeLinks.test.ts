/**
 * One-click unsubscribe (RFC 8058): the link token (HMAC of room and address), the per-recipient
 * copy of a composed mail (both list fields added and DKIM-signed anew), and what a click does
 * in each kind of portal.
 */
import { describe, it } from "node:test";
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { dkimVerify } from "mailauth";
import { simpleParser } from "mailparser";
import { composeMail, withOneClickUnsubscribe, type OutgoingMail } from "../../src/mail/outbound/compose.ts";
import { dkimTxtRecord, generateDkimKey, type DkimSigner } from "../../src/mail/outbound/dkim.ts";
import { makeUnsubscribeToken, OneClickUnsubscribe, readUnsubscribeToken, unsubscribeKey, unsubscribeUrl } from "../../src/bridge/unsubscribeLinks.ts";
import type { PortalRow } from "../../src/store/Store.ts";

const ROOM = "!book:hs.example";
const BOB = "bob@example.org";

describe("unsubscribe tokens", () => {
  const key = unsubscribeKey("as-token-1");

  it("round-trip: the token names the room and the address; base64url with a 43-character MAC", () => {
    const token = makeUnsubscribeToken(key, ROOM, BOB);
    assert.match(token, /^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]{43}$/);
    assert.deepEqual(readUnsubscribeToken(key, token), { roomId: ROOM, address: BOB });
    assert.equal(unsubscribeUrl("https://bridge.example.org/email", token), `https://bridge.example.org/email/unsubscribe/${token}`);
  });

  it("a tampered MAC, another room or address with the same MAC, or another key: refused", () => {
    const token = makeUnsubscribeToken(key, ROOM, BOB);
    const [payload, mac] = token.split(".") as [string, string];
    const flipped = `${payload}.${mac[0] === "A" ? "B" : "A"}${mac.slice(1)}`;
    assert.equal(readUnsubscribeToken(key, flipped), null);
    const other = (room: string, address: string) => `${Buffer.from(`${room}\n${address}`).toString("base64url")}.${mac}`;
    assert.equal(readUnsubscribeToken(key, other("!other:hs.example", BOB)), null, "wrong room");
    assert.equal(readUnsubscribeToken(key, other(ROOM, "carol@example.org")), null, "wrong address");
    assert.equal(readUnsubscribeToken(unsubscribeKey("as-token-2"), token), null, "another key");
    // A token made for carol is not one for bob.
    assert.deepEqual(readUnsubscribeToken(key, makeUnsubscribeToken(key, ROOM, "carol@example.org")), { roomId: ROOM, address: "carol@example.org" });
  });

  it("malformed tokens are refused, not thrown on", () => {
    for (const bad of ["", ".", "abc", `abc.${"A".repeat(42)}`, `abc.${"A".repeat(44)}`, `a b.${"A".repeat(43)}`, `${"A".repeat(900)}.${"A".repeat(43)}`]) {
      assert.equal(readUnsubscribeToken(key, bad), null, bad);
    }
    // A payload without the line break between room and address, with a valid MAC for it, is still no token.
    assert.throws(() => makeUnsubscribeToken(key, ROOM, "bob\n@example.org"), TypeError);
    assert.throws(() => makeUnsubscribeToken(key, "", BOB), TypeError);
  });
});

const DOMAIN = "bridge.example";
const SELECTOR = "meb";

function mail(over: Partial<OutgoingMail> = {}): OutgoingMail {
  return {
    from: { name: "Alice", address: `alice@${DOMAIN}` },
    to: [{ name: "Bob", address: BOB }, { name: null, address: "carol@example.net" }],
    subject: "Book club",
    text: "Next book?",
    html: "<p>Next book?</p>",
    messageId: `u1.abc@${DOMAIN}`,
    inReplyTo: null,
    references: [],
    date: new Date(Date.UTC(2026, 0, 2, 3, 4, 5)),
    headers: { "List-Unsubscribe": `<mailto:unsubscribe+0123456789abcdef01234567@${DOMAIN}?subject=unsubscribe>` },
    footer: "Alice wrote this in the room \"Book club\" on Matrix.",
    ...over,
  };
}

function keyResolver(txt: string) {
  return async (name: string, rrtype: string): Promise<string[][]> => {
    if (rrtype === "TXT" && name === `${SELECTOR}._domainkey.${DOMAIN}`) return [[txt]];
    throw Object.assign(new Error(`no ${rrtype} for ${name}`), { code: "ENOTFOUND" });
  };
}

describe("withOneClickUnsubscribe", () => {
  const pair = generateDkimKey();
  const dkim: DkimSigner = { domainName: DOMAIN, keySelector: SELECTOR, privateKey: pair.privateKeyPem };
  const txt = dkimTxtRecord(pair.publicKeyPem);
  const url = `https://bridge.example.org/unsubscribe/${makeUnsubscribeToken(randomBytes(32), ROOM, BOB)}`;

  it("adds the https URI after the mailto one and List-Unsubscribe-Post; both are signed, the body is untouched", async () => {
    const raw = await composeMail(mail(), dkim);
    const copy = await withOneClickUnsubscribe(raw, url, dkim);
    assert.ok(copy);
    const text = copy.toString("latin1");
    assert.equal(text.match(/^DKIM-Signature:/gm)?.length, 1, "one signature, the new one");
    assert.match(text, new RegExp(`^List-Unsubscribe: <mailto:unsubscribe\\+0123456789abcdef01234567@${DOMAIN}\\?subject=unsubscribe>,\\r\\n <${url.replace(/[.?+]/g, "\\$&")}>\\r\\n`, "m"));
    assert.match(text, /^List-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n/m);
    const result = (await dkimVerify(copy, { resolver: keyResolver(txt) as never })).results[0];
    assert.equal(result?.status.result, "pass");
    const signed = String(result?.signingHeaders?.keys).toLowerCase().split(/:\s*/);
    assert.ok(signed.includes("list-unsubscribe") && signed.includes("list-unsubscribe-post"), `signed: ${signed.join(":")}`);
    const body = (b: Buffer) => b.subarray(b.indexOf("\r\n\r\n"));
    assert.ok(body(copy).equals(body(raw)), "body byte for byte");
    const parsed = await simpleParser(copy);
    assert.equal(parsed.text?.trim().startsWith("Next book?"), true);
    assert.equal(parsed.subject, "Book club");
  });

  it("unsigned without a signer; null for a mail without List-Unsubscribe; a URL that cannot stand in the field is refused", async () => {
    const copy = await withOneClickUnsubscribe(await composeMail(mail(), dkim), url, null);
    assert.ok(copy);
    assert.doesNotMatch(copy.toString("latin1"), /^DKIM-Signature:/m);
    assert.equal(await withOneClickUnsubscribe(await composeMail(mail({ headers: {} }), dkim), url, dkim), null);
    await assert.rejects(withOneClickUnsubscribe(await composeMail(mail(), null), "https://x.example/a>b", null), TypeError);
    await assert.rejects(withOneClickUnsubscribe(await composeMail(mail(), null), "mailto:x@y", null), TypeError);
  });
});

describe("OneClickUnsubscribe", () => {
  const key = unsubscribeKey("as-token-1");
  function setup(kind: PortalRow["kind"] | null) {
    const calls: string[] = [];
    const oneClick = new OneClickUnsubscribe({
      key,
      publicUrl: "https://bridge.example.org",
      dkim: null,
      store: { getPortalByRoom: async (roomId) => (kind ? ({ roomId, kind } as PortalRow) : null) },
      subscriptions: {
        optOut: async (roomId, address) => void calls.push(`optOut ${roomId} ${address}`),
        unsubscribe: async (roomId, address) => (calls.push(`unsubscribe ${roomId} ${address}`), true),
      },
    });
    return { oneClick, calls };
  }

  it("a DM or group portal opts the address out; a room mailbox ends its subscription; a forged token or a gone portal does nothing", async () => {
    const token = makeUnsubscribeToken(key, ROOM, BOB);
    for (const kind of ["dm", "group"] as const) {
      const { oneClick, calls } = setup(kind);
      assert.equal(oneClick.verify(token), true);
      assert.equal(await oneClick.unsubscribe(token), true);
      assert.deepEqual(calls, [`optOut ${ROOM} ${BOB}`]);
    }
    const mailbox = setup("mailbox");
    assert.equal(await mailbox.oneClick.unsubscribe(token), true);
    assert.deepEqual(mailbox.calls, [`unsubscribe ${ROOM} ${BOB}`]);
    const forged = setup("dm");
    const other = makeUnsubscribeToken(unsubscribeKey("another"), ROOM, BOB);
    assert.equal(forged.oneClick.verify(other), false);
    assert.equal(await forged.oneClick.unsubscribe(other), false);
    assert.deepEqual(forged.calls, []);
    const gone = setup(null);
    assert.equal(await gone.oneClick.unsubscribe(token), false);
    assert.deepEqual(gone.calls, []);
  });

  it("copies: each recipient's link names them; no copy for mail from no room, submitted mail, or mail without List-Unsubscribe", async () => {
    const { oneClick } = setup("dm");
    const raw = await composeMail(mail(), null);
    const copy = await oneClick.copyFor({ roomId: ROOM, eventId: "$e1", raw }, BOB);
    assert.ok(copy);
    const link = /<(https:\/\/bridge\.example\.org\/unsubscribe\/([^>]+))>/.exec(copy.toString("latin1"));
    assert.ok(link);
    assert.equal(link[1], oneClick.linkFor(ROOM, BOB));
    assert.deepEqual(readUnsubscribeToken(key, link[2]!), { roomId: ROOM, address: BOB });
    assert.equal(await oneClick.copyFor({ roomId: "", eventId: "subscribe:x", raw }, BOB), null);
    assert.equal(await oneClick.copyFor({ roomId: ROOM, eventId: "submission:abc", raw }, BOB), null);
    assert.equal(await oneClick.copyFor({ roomId: ROOM, eventId: "$e2", raw: await composeMail(mail({ headers: {} }), null) }, BOB), null);
  });
});
