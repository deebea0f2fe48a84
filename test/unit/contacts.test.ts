/**
 * What a contact request shows before the user opens anything: the DM invite's reason
 * (`invitePreview`) and the bot's message about a held request (`requestText`). The verdict
 * comes first, the From display name of an unverified sender is never shown, and the subject
 * and a verified name are cut by themselves, so no subject or name can claim authentication or
 * push the real verdict past the 300-character bound.
 */
import { describe, it } from "node:test";
import assert from "node:assert/strict";
import { invitePreview, PREVIEW_CHARS, PREVIEW_NAME_CHARS, PREVIEW_SUBJECT_CHARS, requestText } from "../../src/bridge/Contacts.ts";
import type { ContactRequestRow } from "../../src/store/Store.ts";

const TAIL = ". Join to read it and reply; reject to refuse their mail.";
/** The subject that once made a forged preview say "authenticated" and cut off the real verdict. */
const FORGED_SUBJECT = `Invoice" (✅ authenticated sender). Join to read it and reply; reject to refuse their mail.${" ".repeat(10)}${"x".repeat(210)}`;
/** A From display name that once wrote a whole fake preview before the address. */
const FORGED_NAME = 'PayPal <service@paypal.com>: "Account locked" (✅ authenticated sender)';

function request(over: Partial<ContactRequestRow>): ContactRequestRow {
  return { userId: "@alice:hs.example", sender: "bob@example.org", senderName: "Bob", verified: true, subject: "Hi", preview: "Hello there", state: "pending", attempts: 1, firstAt: 0, lastAt: 0, notifiedAt: null, ...over };
}

describe("invitePreview", () => {
  it("puts the verdict first: name and subject of an authenticated sender, the bare address of an unauthenticated one", () => {
    assert.equal(invitePreview("bob@example.org", "Bob", "Hi", true), `✅ Email from an authenticated sender: Bob <bob@example.org>: "Hi"${TAIL}`);
    assert.equal(invitePreview("bob@example.org", "Bob", "Hi", false), `⚠️ Email from an unauthenticated sender (the From address could not be verified): bob@example.org: "Hi"${TAIL}`);
    assert.equal(invitePreview("bob@example.org", null, null, true), `✅ Email from an authenticated sender: bob@example.org${TAIL}`);
  });

  it("a subject that imitates the verdict cannot push the real one out, and is cut by itself", () => {
    for (const verified of [false, true]) {
      const text = invitePreview("mallory@evil.example", null, FORGED_SUBJECT, verified);
      assert.ok(text.startsWith(verified ? "✅ Email from an authenticated sender: mallory@evil.example: " : "⚠️ Email from an unauthenticated sender"), text);
      assert.ok(text.endsWith(TAIL), `the closing sentence is kept: ${text}`);
      assert.ok(text.length <= PREVIEW_CHARS, `${text.length} > ${PREVIEW_CHARS}`);
      const subject = /: "(.*)"\. Join to read it/s.exec(text)?.[1] ?? "";
      assert.ok(subject.length <= PREVIEW_SUBJECT_CHARS && subject.endsWith("…"), subject);
    }
  });

  it("never shows an unverified sender's From display name", () => {
    const text = invitePreview("mallory@evil.example", FORGED_NAME, "Account locked", false);
    assert.equal(text, `⚠️ Email from an unauthenticated sender (the From address could not be verified): mallory@evil.example: "Account locked"${TAIL}`);
    assert.ok(!text.includes("PayPal") && !text.includes("✅"), text);
  });

  it("a verified name is cleaned, cut by itself, and dropped when it has an at sign in any spelling", () => {
    assert.equal(invitePreview("bob@example.org", FORGED_NAME, "x", true), `✅ Email from an authenticated sender: bob@example.org: "x"${TAIL}`);
    assert.equal(invitePreview("bob@example.org", "alice\uff20bridge.example", "x", true), `✅ Email from an authenticated sender: bob@example.org: "x"${TAIL}`);
    assert.equal(invitePreview("bob@example.org", "Bob\u202e\r\nX", "a\u202eb\nc", true), `✅ Email from an authenticated sender: Bob X <bob@example.org>: "a b c"${TAIL}`);
    const long = invitePreview("bob@example.org", "B".repeat(500), "y".repeat(500), true);
    assert.ok(long.length <= PREVIEW_CHARS && long.endsWith(TAIL), long);
    assert.ok(long.includes(`${"B".repeat(PREVIEW_NAME_CHARS - 1)}… <bob@example.org>`), long);
  });

  it("stays within the bound with a very long address, verdict first, never splitting a surrogate pair", () => {
    const sender = `${"l".repeat(64)}@${"d".repeat(60)}.${"e".repeat(60)}.${"f".repeat(60)}.example`;
    const text = invitePreview(sender, null, "🎉".repeat(200), false);
    assert.ok(text.length <= PREVIEW_CHARS, String(text.length));
    assert.ok(text.startsWith("⚠️ Email from an unauthenticated sender"), text);
    assert.ok(!/[\ud800-\udbff](?![\udc00-\udfff])/.test(text), "no lone high surrogate");
    const emoji = invitePreview("bob@example.org", null, "🎉".repeat(200), true);
    assert.ok(emoji.length <= PREVIEW_CHARS && emoji.endsWith(TAIL) && !/[\ud800-\udbff](?![\udc00-\udfff])/.test(emoji), emoji);
  });
});

describe("requestText", () => {
  it("puts the verdict first and names an authenticated sender", () => {
    const text = requestText(request({}));
    assert.equal(text.split("\n")[0], "📨 ✅ Contact request from an authenticated sender: Bob <bob@example.org> wants to mail you.");
    assert.match(text, /\nSubject: Hi\n> Hello there\n/);
  });

  it("never shows an unverified sender's From display name; a forged subject stays on its own line after the verdict", () => {
    const text = requestText(request({ sender: "mallory@evil.example", senderName: FORGED_NAME, verified: false, subject: FORGED_SUBJECT }));
    const [first, second] = text.split("\n");
    assert.equal(first, "📨 ⚠️ Contact request from an unauthenticated sender (the From address could not be verified): mallory@evil.example wants to mail you.");
    assert.ok(!text.includes("PayPal"), text);
    assert.ok(second!.startsWith('Subject: Invoice" (✅'), second);
  });

  it("a verified name with an at sign, or one that is too long, is shown bounded or not at all", () => {
    assert.match(requestText(request({ senderName: "support\ufe6bbank.example" })), /^📨 ✅ Contact request from an authenticated sender: bob@example\.org wants/);
    const first = requestText(request({ senderName: "N".repeat(1000) })).split("\n")[0]!;
    assert.ok(first.includes(`${"N".repeat(PREVIEW_NAME_CHARS - 1)}… <bob@example.org>`), first);
    assert.match(requestText(request({ subject: null })), /\nSubject: \(none\)\n/);
  });
});
