/**
 * Links to files too large to attach (src/bridge/mediaLinks.ts): the token (HMAC over the mxc
 * URI, room, expiry and the linked name), its expiry, and the `Content-Disposition` the
 * listener serves them with (src/matrix/appserviceHttp.ts).
 */
import { describe, it } from "node:test";
import assert from "node:assert/strict";
import { makeMediaToken, mediaLinkName, MediaLinks, mediaUrl, readMediaToken } from "../../src/bridge/mediaLinks.ts";
import { makeUnsubscribeToken, unsubscribeKey } from "../../src/bridge/unsubscribeLinks.ts";
import { attachmentDisposition } from "../../src/matrix/appserviceHttp.ts";

const MXC = "mxc://hs.example/AbCdEf123";
const ROOM = "!files:hs.example";
const NOW = Date.UTC(2026, 10, 22, 12, 0, 0);
const DAY = 86_400_000;

describe("media link tokens", () => {
  const key = unsubscribeKey("as-token-1");

  it("round-trip: the token names the mxc URI, the room and the expiry (whole seconds)", () => {
    const token = makeMediaToken(key, { mxc: MXC, roomId: ROOM, expiresAt: NOW + DAY }, "film.mp4");
    assert.match(token, /^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]{43}$/);
    assert.deepEqual(readMediaToken(key, token, "film.mp4", NOW), { mxc: MXC, roomId: ROOM, expiresAt: NOW + DAY });
    const never = makeMediaToken(key, { mxc: MXC, roomId: ROOM, expiresAt: null }, "film.mp4");
    assert.deepEqual(readMediaToken(key, never, "film.mp4", NOW + 100 * 365 * DAY), { mxc: MXC, roomId: ROOM, expiresAt: null });
  });

  it("a tampered MAC or payload, another name, another key, or an unsubscribe token: refused", () => {
    const token = makeMediaToken(key, { mxc: MXC, roomId: ROOM, expiresAt: NOW + DAY }, "film.mp4");
    const [payload, mac] = token.split(".") as [string, string];
    assert.equal(readMediaToken(key, `${payload}.${mac[0] === "A" ? "B" : "A"}${mac.slice(1)}`, "film.mp4", NOW), null, "flipped MAC");
    const later = Buffer.from(`${MXC}\n${ROOM}\n${Math.ceil((NOW + 400 * DAY) / 1000)}`).toString("base64url");
    assert.equal(readMediaToken(key, `${later}.${mac}`, "film.mp4", NOW), null, "extended expiry");
    assert.equal(readMediaToken(key, token, "film.html", NOW), null, "renamed");
    assert.equal(readMediaToken(unsubscribeKey("as-token-2"), token, "film.mp4", NOW), null, "another key");
    assert.equal(readMediaToken(key, makeUnsubscribeToken(key, ROOM, "bob@example.org"), "film.mp4", NOW), null, "an unsubscribe token");
    assert.equal(readMediaToken(key, "x".repeat(2000), "film.mp4", NOW), null, "too long");
    assert.equal(readMediaToken(key, "not a token", "film.mp4", NOW), null, "malformed");
  });

  it("another mxc URI with the same MAC is refused; each file's own token is accepted", () => {
    const token = makeMediaToken(key, { mxc: MXC, roomId: ROOM, expiresAt: NOW + DAY }, "film.mp4");
    const mac = token.split(".")[1]!;
    const other = "mxc://hs.example/Other456";
    const swapped = Buffer.from(`${other}\n${ROOM}\n${Math.ceil((NOW + DAY) / 1000)}`).toString("base64url");
    assert.equal(readMediaToken(key, `${swapped}.${mac}`, "film.mp4", NOW), null);
    const own = makeMediaToken(key, { mxc: other, roomId: ROOM, expiresAt: NOW + DAY }, "film.mp4");
    assert.notEqual(own, token);
    assert.equal(readMediaToken(key, own, "film.mp4", NOW)?.mxc, other);
  });

  it("expiry: valid until the second it names, refused from then on", () => {
    const expiresAt = NOW + DAY;
    const token = makeMediaToken(key, { mxc: MXC, roomId: ROOM, expiresAt }, "a.bin");
    assert.ok(readMediaToken(key, token, "a.bin", expiresAt - 1));
    assert.equal(readMediaToken(key, token, "a.bin", expiresAt), null);
    assert.equal(readMediaToken(key, token, "a.bin", expiresAt + DAY), null);
  });

  it("refuses to make a token of a malformed mxc URI, room ID or expiry", () => {
    assert.throws(() => makeMediaToken(key, { mxc: "https://hs.example/x", roomId: ROOM, expiresAt: null }, "a"), TypeError);
    assert.throws(() => makeMediaToken(key, { mxc: MXC, roomId: "!a\n:b", expiresAt: null }, "a"), TypeError);
    assert.throws(() => makeMediaToken(key, { mxc: MXC, roomId: ROOM, expiresAt: Number.NaN }, "a"), TypeError);
  });
});

describe("MediaLinks", () => {
  it("links <public_url>/media/<token>/<encoded name>, valid media_link_days; the name is cleaned", () => {
    let now = NOW;
    const links = new MediaLinks({ asToken: "as-token-1", publicUrl: "https://bridge.example.org/mail", days: 30, clock: () => now });
    const { url, expiresAt } = links.linkFor(MXC, ROOM, "Ferien/Video \u202Egnp.exe ü.mp4");
    assert.equal(expiresAt, NOW + 30 * DAY);
    const m = /^https:\/\/bridge\.example\.org\/mail\/media\/([^/]+)\/([^/]+)$/.exec(url);
    assert.ok(m, url);
    const name = decodeURIComponent(m[2]!);
    assert.equal(name, "FerienVideo gnp.exe ü.mp4");
    assert.equal(url, mediaUrl("https://bridge.example.org/mail", m[1]!, name));
    assert.deepEqual(links.read(m[1]!, name), { mxc: MXC, roomId: ROOM, expiresAt: NOW + 30 * DAY });
    now = NOW + 30 * DAY;
    assert.equal(links.read(m[1]!, name), null, "expired");
  });

  it("media_link_days: 0 makes links that never expire", () => {
    let now = NOW;
    const links = new MediaLinks({ asToken: "as-token-1", publicUrl: "https://b.example", days: 0, clock: () => now });
    const { url, expiresAt } = links.linkFor(MXC, ROOM, "a.bin");
    assert.equal(expiresAt, null);
    now = NOW + 10_000 * DAY;
    const token = url.split("/")[4]!;
    assert.equal(links.read(token, "a.bin")?.mxc, MXC);
  });

  it("mediaLinkName: controls, bidi overrides and separators go; empty becomes `file`", () => {
    assert.equal(mediaLinkName("a\u0000b\\c/d\u2066.txt"), "abcd.txt");
    assert.equal(mediaLinkName(" \u202E "), "file");
    assert.equal([...mediaLinkName("é".repeat(500))].length, 200);
  });
});

describe("attachmentDisposition (RFC 6266, RFC 8187)", () => {
  it("an ASCII fallback and the UTF-8 name percent-encoded outside attr-char", () => {
    assert.equal(attachmentDisposition("report.pdf"), `attachment; filename="report.pdf"; filename*=UTF-8''report.pdf`);
    assert.equal(attachmentDisposition('Grüße "1" (a).txt'), `attachment; filename="Gr__e _1_ (a).txt"; filename*=UTF-8''Gr%C3%BC%C3%9Fe%20%221%22%20%28a%29.txt`);
    assert.equal(attachmentDisposition("a\\b;c'd*e"), `attachment; filename="a_b;c'd*e"; filename*=UTF-8''a%5Cb%3Bc%27d%2Ae`);
  });
});
