/**
 * Outbound batching (`outbound.batch_delay_ms`), end to end: messages one person sends in a
 * portal within the delay go out as one mail; an edit inside the window changes that mail and
 * sends nothing extra, an edit after it sends a Correction: mail; a redaction inside the window
 * takes the message out (and a mail left empty is never sent); a redaction after it sends
 * nothing. A real Synapse and client, the bridge in-process (PostgreSQL), the loopback sink.
 */
import { after, before, describe, it } from "node:test";
import assert from "node:assert/strict";
import { simpleParser } from "mailparser";
import { startEnv, type E2eEnv } from "./env.ts";
import type { MatrixTestClient } from "../harness/matrixClient.ts";

const BOB_GHOST = "@email_bob=40example.org:localhost";
const DELAY_MS = 1500;
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

describe("outbound batching (the email delay)", () => {
  let env: E2eEnv;
  let alice: MatrixTestClient;
  let roomId: string;

  before(async () => {
    env = await startEnv("postgres", { allowedUsers: ["@alice:localhost"], config: { outbound: { batch_delay_ms: DELAY_MS } } });
    alice = await env.synapse.registerUser("alice", { displayName: "Alice" });
    roomId = await alice.createRoom({ preset: "private_chat", name: "Batches" });
    await alice.invite(roomId, BOB_GHOST);
    await alice.waitForMembership(roomId, BOB_GHOST, "join");
  });
  after(async () => {
    await env?.stop();
  });

  const mailsWith = (marker: string) => env.sink.mails.filter((m) => m.raw.includes(marker));

  it("three quick messages go out as one mail, in order, after the delay", async () => {
    const t0 = Date.now();
    await alice.sendText(roomId, "first line (b1)");
    await alice.sendText(roomId, "second line (b1)", { html: "<b>second</b> line (b1)" });
    await alice.sendText(roomId, "third line (b1)");
    const sent = await env.sink.waitForMail((m) => m.raw.includes("third line (b1)"));
    assert.ok(sent.receivedAt - t0 >= DELAY_MS, `held for the delay (${sent.receivedAt - t0} ms)`);
    const mail = await simpleParser(sent.raw);
    assert.match(mail.text ?? "", /first line \(b1\)\n\nsecond line \(b1\)\n\nthird line \(b1\)/);
    assert.match(String(mail.html), /first line \(b1\)<br><br><b>second<\/b> line \(b1\)<br><br>third line \(b1\)/);
    await sleep(DELAY_MS);
    assert.equal(mailsWith("(b1)").length, 1, "one mail for the three messages");
  });

  it("an edit inside the window changes the waiting mail; an edit after it sends a Correction:", async () => {
    const original = await alice.sendText(roomId, "meet at five (b2)");
    await alice.sendEvent(roomId, "m.room.message", {
      msgtype: "m.text",
      body: "* meet at six (b2-edited)",
      "m.new_content": { msgtype: "m.text", body: "meet at six (b2-edited)" },
      "m.relates_to": { rel_type: "m.replace", event_id: original },
    });
    const sent = await env.sink.waitForMail((m) => m.raw.includes("(b2-edited)"));
    const mail = await simpleParser(sent.raw);
    assert.doesNotMatch(mail.text ?? "", /meet at five/);
    assert.doesNotMatch(mail.subject ?? "", /^Correction:/);
    await sleep(DELAY_MS);
    assert.equal(mailsWith("(b2").length, 1, "no correction mail for an edit inside the window");

    await alice.sendEvent(roomId, "m.room.message", {
      msgtype: "m.text",
      body: "* meet at seven (b2-late)",
      "m.new_content": { msgtype: "m.text", body: "meet at seven (b2-late)" },
      "m.relates_to": { rel_type: "m.replace", event_id: original },
    });
    const late = await simpleParser((await env.sink.waitForMail((m) => m.raw.includes("(b2-late)"))).raw);
    assert.equal(late.subject, `Correction: ${mail.subject}`);
    assert.equal(late.inReplyTo, mail.messageId);
  });

  it("a redaction inside the window takes the message out; a mail left empty is never sent; after the window nothing happens", async () => {
    const gone = await alice.sendText(roomId, "oops, wrong room (b3-gone)");
    await alice.sendText(roomId, "this one stays (b3-kept)");
    await alice.request("PUT", `/rooms/${encodeURIComponent(roomId)}/redact/${encodeURIComponent(gone)}/redact-b3`, { reason: "wrong room" });
    const sent = await simpleParser((await env.sink.waitForMail((m) => m.raw.includes("(b3-kept)"))).raw);
    assert.doesNotMatch(sent.text ?? "", /b3-gone/);

    const alone = await alice.sendText(roomId, "never mind (b4)");
    await alice.request("PUT", `/rooms/${encodeURIComponent(roomId)}/redact/${encodeURIComponent(alone)}/redact-b4`, {});
    // A later message proves the bridge handled both events and its queue ran past their window.
    await sleep(DELAY_MS + 500);
    await alice.sendText(roomId, "later (b5)");
    await env.sink.waitForMail((m) => m.raw.includes("later (b5)"));
    assert.equal(mailsWith("(b4)").length, 0, "the redacted only message is never mailed");

    // After the window: the mail stays sent, nothing more goes out, and no notice is posted.
    const before = env.sink.mails.length;
    const b5 = (await alice.getRoomMessages(roomId, { limit: 20 })).find((e) => String(e.content.body) === "later (b5)");
    await alice.request("PUT", `/rooms/${encodeURIComponent(roomId)}/redact/${encodeURIComponent(b5!.event_id)}/redact-b5`, {});
    await sleep(DELAY_MS + 500);
    assert.equal(env.sink.mails.length, before);
    const notices = (await alice.getRoomMessages(roomId, { limit: 20 })).filter((e) => e.content.msgtype === "m.notice");
    assert.deepEqual(notices.map((e) => e.content.body), [], "the sender gets no notice");
  });
});
