/**
 * Contact requests end to end against a real Synapse: who may reach a user's personal mailbox.
 * - `invite` mode (the default): a stranger's mail opens a DM invite whose reason previews the
 *   mail (sender, subject, verdict); joining accepts the sender.
 * - `hold` mode: the stranger's MTA gets 451 4.7.1 until the user decides; the bot tells the
 *   user once, in its DM; `accept` lets the retry in, `refuse [reason]` and `refuse-quietly`
 *   make the retry get 550 5.7.1 with the reason or without one.
 * Also `headers` (said in a DM portal, answered in the bot DM), `personal name` on outgoing
 * mail, and a room mailbox's signature.
 */
import { after, before, describe, it } from "node:test";
import assert from "node:assert/strict";
import { simpleParser } from "mailparser";
import { MAIL_DOMAIN, openBotDm, startEnv, type BotDm, type E2eEnv } from "./env.ts";
import type { MatrixTestClient } from "../harness/matrixClient.ts";

const BOT = "@emailbot:localhost";
const ghostOf = (address: string) => `@email_${address.replace("@", "=40")}:localhost`;

describe("contact requests and personal settings", () => {
  let env: E2eEnv;
  let alice: MatrixTestClient;
  let botDm: string;
  let botReply: BotDm["reply"];

  before(async () => {
    env = await startEnv("sqlite", { allowedUsers: ["@alice:localhost"] });
    alice = await env.synapse.registerUser("alice", { displayName: "Alice" });
    ({ roomId: botDm, reply: botReply } = await openBotDm(alice));
  });
  after(async () => {
    await env?.stop();
  });

  /** Send until the reply is not a 451 (the bridge takes a decision event a moment to handle). */
  async function sendUntilDecided(mail: Parameters<E2eEnv["sendMail"]>[0]): Promise<string> {
    const deadline = Date.now() + 20_000;
    for (;;) {
      const outcome = await env.sendMail(mail).then(
        (reply) => reply,
        (err: unknown) => `error: ${String(err)}`,
      );
      if (!/451 4\.7\.1/.test(outcome) || Date.now() > deadline) return outcome;
      await new Promise((r) => setTimeout(r, 300));
    }
  }

  it("invite mode: a stranger's mail opens a DM invite previewing sender, subject and verdict; joining accepts the sender", async () => {
    const ghost = ghostOf("carl@example.org");
    assert.match(await env.sendMail({ from: "Carl <carl@example.org>", to: `alice@${MAIL_DOMAIN}`, subject: "Board games on Friday?", text: "We need a fourth player. (c-1)" }), /^250 /);
    let reason: unknown;
    let isDirect: unknown;
    const roomId = await alice.waitForInvite(30_000, (i) => {
      const own = i.inviteState.find((e) => e.type === "m.room.member" && e.state_key === alice.userId);
      reason = own?.content.reason;
      isDirect = own?.content.is_direct;
      return i.inviter === ghost;
    });
    assert.equal(reason, '✅ Email from an authenticated sender: Carl <carl@example.org>: "Board games on Friday?". Join to read it and reply; reject to refuse their mail.');
    assert.equal(isDirect, true, "a DM invite (is_direct)");
    await alice.join(roomId);
    await alice.waitForEvent(roomId, (e) => e.sender === ghost && String(e.content.body).includes("(c-1)"));

    await alice.sendText(botDm, "contacts");
    await botReply(/^Mode: invite .*\nAccepted:\n• carl@example\.org$/s);
  });

  it("hold mode: 451 4.7.1 until the user decides; one bot message; accept lets the retry in, refuse answers 550 with the reason, refuse-quietly a bare 550", async () => {
    await alice.sendText(botDm, "contacts hold");
    await botReply(/^Done: mail from people you have not accepted now waits on their server/);

    const dana = { from: "Dana <dana@example.org>", to: `alice@${MAIL_DOMAIN}`, subject: "Quick question", text: "Do you still have the bike?\nIt is for my son. (d-1)", messageId: "dana-1@example.org" };
    await assert.rejects(env.sendMail(dana), /451 4\.7\.1 alice@bridge\.test has not accepted mail from dana@example\.org yet/);
    const request = await botReply(/^📨 ✅ Contact request from an authenticated sender: Dana <dana@example\.org> wants to mail you\./);
    assert.match(String(request.content.body), /\nSubject: Quick question\n> Do you still have the bike\?\n> It is for my son\. \(d-1\)\n/);
    // The MTA retries: still held, and the user is not told twice.
    await assert.rejects(env.sendMail(dana), /451 4\.7\.1/);
    await alice.sendText(botDm, "contacts");
    const listing = await botReply(/^Mode: hold/);
    assert.match(String(listing.content.body), /Waiting for your answer:\n• ✅ dana@example\.org \(authenticated, 2 tries\): "Quick question"/);
    const requests = (await alice.getRoomMessages(botDm, { limit: 100 })).filter((e) => e.sender === BOT && String(e.content.body).startsWith("📨 ✅ Contact request from an authenticated sender: Dana"));
    assert.equal(requests.length, 1, "told once");

    await alice.sendText(botDm, "accept dana@example.org");
    await botReply(/^Accepted dana@example\.org: their mail comes in on their server's next try/);
    assert.match(await sendUntilDecided(dana), /^250 /);
    const roomId = await alice.waitForInvite(30_000, (i) => i.inviter === ghostOf("dana@example.org"));
    await alice.join(roomId);
    await alice.waitForEvent(roomId, (e) => e.sender === ghostOf("dana@example.org") && String(e.content.body).includes("(d-1)"));

    const erik = { from: "erik@example.org", to: `alice@${MAIL_DOMAIN}`, subject: "Offer", text: "Cheap watches (e-1)" };
    await assert.rejects(env.sendMail(erik), /451 4\.7\.1/);
    await alice.sendText(botDm, "refuse erik@example.org no sales mail, thanks");
    await botReply(/^Refused erik@example\.org: their server gets a refusal saying "no sales mail, thanks"/);
    assert.match(await sendUntilDecided(erik), /550 5\.7\.1 alice@bridge\.test does not accept mail from erik@example\.org: no sales mail, thanks/);

    const fay = { from: "fay@example.org", to: `alice@${MAIL_DOMAIN}`, subject: "Hi", text: "(f-1)" };
    await assert.rejects(env.sendMail(fay), /451 4\.7\.1/);
    await alice.sendText(botDm, "refuse-quietly fay@example.org");
    await botReply(/^Refused fay@example\.org: their server gets a bare refusal/);
    const quiet = await sendUntilDecided(fay);
    assert.match(quiet, /550 5\.7\.1 message refused/);
    assert.doesNotMatch(quiet, /alice/, "a quiet refusal names nobody");

    // A known contact is never held: Carl (accepted by joining) writes a new mail.
    assert.match(await env.sendMail({ from: "carl@example.org", to: `alice@${MAIL_DOMAIN}`, subject: "New topic", text: "(c-2)" }), /^250 /);
    await alice.sendText(botDm, "contacts invite");
    await botReply(/^Done: mail from people you have not accepted now opens a chat invite at once/);
  });

  it("`!email headers` in a DM portal, as a reply: the original headers and verdict, answered in the bot DM and never mailed", async () => {
    const ghost = ghostOf("gus@example.org");
    await env.sendMail({ from: "Gus <gus@example.org>", to: `alice@${MAIL_DOMAIN}`, subject: "Headers please", text: "(g-1)", messageId: "gus-1@example.org" });
    const roomId = await alice.waitForInvite(30_000, (i) => i.inviter === ghost);
    await alice.join(roomId);
    const posted = await alice.waitForEvent(roomId, (e) => e.sender === ghost && String(e.content.body).includes("(g-1)"));
    const before = env.sink.mails.length;
    await alice.sendEvent(roomId, "m.room.message", { msgtype: "m.text", body: "!email headers", "m.relates_to": { "m.in_reply_to": { event_id: posted.event_id } } });
    const answer = await botReply(/^Mail from gus@example\.org, Message-ID <gus-1@example\.org>/);
    const body = String(answer.content.body);
    assert.match(body, /\nSPF pass, DKIM \w+, DMARC \w+, ARC \w+: ✅ the sender is authenticated\n/);
    assert.match(body, /\nReceived: from /);
    assert.match(body, /\nSubject: Headers please(\n|$)/);
    assert.doesNotMatch(body, /\(g-1\)/, "the headers only, not the body");
    await new Promise((r) => setTimeout(r, 1000));
    assert.equal(env.sink.mails.filter((m) => m.raw.includes("headers")).length, 0, "the command was not mailed");
    assert.equal(env.sink.mails.length, before);
  });

  it("`personal name` sets the name on outgoing mail; `personal off` refuses new mail but not replies", async () => {
    await alice.sendText(botDm, 'personal name "support@paypal.com" <support@paypal.com>');
    await botReply(/^`personal name`: the name may not contain @: mail clients would show it as an address$/);
    await alice.sendText(botDm, "personal name Alice \u202Egnp.exe");
    await botReply(/^`personal name`: the name may not contain control, bidi or invisible formatting characters$/);
    await alice.sendText(botDm, "personal name Alice Example");
    await botReply(/^Done: your mail now comes from "Alice Example" <alice@bridge\.test>\.$/);
    await alice.sendText(botDm, "start hal@example.org");
    const roomId = await alice.waitForInvite(30_000, (i) => i.inviter === ghostOf("hal@example.org"));
    await alice.join(roomId);
    await alice.sendText(roomId, "Hello Hal (p-1)");
    const out = await env.sink.waitForMail((m) => m.raw.includes("(p-1)"));
    assert.match(out.raw.toString("utf8"), /^From: Alice Example <alice@bridge\.test>\r$/m);

    await alice.sendText(botDm, "personal off");
    await botReply(/^Done: new mail to alice@bridge\.test from anyone you have not accepted is refused/);
    await assert.rejects(env.sendMail({ from: "ida@example.org", to: `alice@${MAIL_DOMAIN}`, subject: "Hi", text: "(p-2)" }), /550 5\.1\.1/);
    // Hal was started by Alice: a known contact, whose mail still arrives.
    assert.match(await env.sendMail({ from: "hal@example.org", to: `alice@${MAIL_DOMAIN}`, subject: "Re: Hello", text: "Hi back (p-3)" }), /^250 /);
    await alice.waitForEvent(roomId, (e) => e.sender === ghostOf("hal@example.org") && String(e.content.body).includes("(p-3)"));
    await alice.sendText(botDm, "personal on");
    await botReply(/^Done: alice@bridge\.test takes new mail again/);
  });

  it("a room mailbox's signature ends its mail; a ghost invited by `!email invite` joins", async () => {
    const roomId = await alice.createRoom({ preset: "private_chat", name: "Choir" });
    await alice.invite(roomId, BOT);
    await alice.waitForMembership(roomId, BOT, "join");
    await alice.sendText(roomId, "!email mailbox on choir");
    await alice.waitForEvent(roomId, (e) => e.sender === BOT && /^Done: mail to choir@/.test(String(e.content.body)));
    await alice.sendText(roomId, "!email mailbox signature The Choir · rehearsals on Tuesdays");
    await alice.waitForEvent(roomId, (e) => e.sender === BOT && String(e.content.body) === "Done: this room's mail now ends with: The Choir · rehearsals on Tuesdays");
    await alice.sendText(roomId, "!email invite jo@example.org");
    await alice.waitForEvent(roomId, (e) => e.sender === BOT && /now gets this room's messages by mail/.test(String(e.content.body)));
    await alice.waitForMembership(roomId, ghostOf("jo@example.org"), "join");
    await alice.sendText(roomId, "Rehearsal moved to 8pm (s-1)");
    const out = await env.sink.waitForMail((m) => m.raw.includes("(s-1)"));
    const text = (await simpleParser(out.raw)).text ?? "";
    assert.match(text, /\n-- \nThe Choir · rehearsals on Tuesdays\nAlice Example wrote this/, "the signature, then the footer with the name from `personal name`");
  });
});
