/**
 * Internationalized mail (RFC 6531 SMTPUTF8, RFC 6532 UTF-8 header fields), end to end: a
 * sender whose address has a non-ASCII local part reaches a room mailbox, is shown by its ghost
 * under its own name, and a reply from Matrix reaches that address.
 */
import { after, before, describe, it } from "node:test";
import assert from "node:assert/strict";
import { simpleParser } from "mailparser";
import { createMailboxRoom, MAIL_DOMAIN, startEnv, type E2eEnv } from "./env.ts";
import type { MatrixTestClient } from "../harness/matrixClient.ts";

const JURGEN = "jürgen@example.org";

describe("internationalized addresses (SMTPUTF8)", () => {
  let env: E2eEnv;
  let alice: MatrixTestClient;
  let roomId: string;

  before(async () => {
    env = await startEnv("sqlite", { allowedUsers: ["@alice:localhost"] });
    alice = await env.synapse.registerUser("alice", { displayName: "Alice" });
    roomId = await createMailboxRoom(alice, "intl", "International");
  });
  after(async () => {
    await env?.stop();
  });

  it("a non-ASCII local part: accepted over SMTPUTF8, posted by its ghost under its UTF-8 name, and a reply from Matrix reaches it", async () => {
    const raw = Buffer.from(
      [
        `From: "Jürgen Groß" <${JURGEN}>`,
        `To: <intl@${MAIL_DOMAIN}>`,
        "Subject: Grüße aus München",
        "Message-ID: <gruesse.1@example.org>",
        `Date: ${new Date().toUTCString()}`,
        "MIME-Version: 1.0",
        "Content-Type: text/plain; charset=utf-8",
        "Content-Transfer-Encoding: 8bit",
        "",
        "Schöne Grüße, Jürgen",
        "",
      ].join("\r\n"),
      "utf8",
    );
    assert.match(await env.sendRaw(raw, { from: JURGEN, to: `intl@${MAIL_DOMAIN}` }), /^250 /);
    const posted = await alice.waitForEvent(roomId, (e) => e.type === "m.room.message" && String(e.content.body).includes("Schöne Grüße"));
    assert.ok(posted.sender.startsWith("@email_j"), posted.sender);
    assert.ok(!posted.sender.includes("/unverified"), `SPF-aligned mail is verified: ${posted.sender}`);
    const profile = await alice.request<{ displayname?: string }>("GET", `/profile/${encodeURIComponent(posted.sender)}`);
    assert.equal(profile.displayname, "Jürgen Groß");
    assert.match(String(posted.content.body), /Grüße aus München/);

    const before = env.sink.mails.length;
    await alice.sendEvent(roomId, "m.room.message", {
      msgtype: "m.text",
      body: "Danke, Jürgen!",
      "m.relates_to": { "m.in_reply_to": { event_id: posted.event_id } },
    });
    const sent = await env.sink.waitForMail((m) => m.rcptTo.includes(JURGEN), 30_000);
    assert.ok(env.sink.mails.length > before);
    const mail = await simpleParser(sent.raw);
    assert.equal(mail.to && !Array.isArray(mail.to) ? mail.to.value[0]?.address : undefined, JURGEN);
    assert.match(mail.text ?? "", /Danke, Jürgen!/);
    assert.match(mail.subject ?? "", /^Re: Grüße aus München/);
  });
});
