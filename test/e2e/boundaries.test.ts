/**
 * End to end, nobody enters uninvited: a stranger who knows a Message-ID stays out of the room
 * and gets nothing afterwards; a room mailbox answers a conversation's people only and sends
 * top-level messages to its (confirmed) subscribers only, each hidden from the others; the
 * posting policy holds; postmaster@ reaches the admins. A real Synapse, the bridge in-process
 * on the embedded SQLite store, a real DNS server, a loopback SMTP sink as the remote MTAs.
 */
import { after, before, describe, it } from "node:test";
import assert from "node:assert/strict";
import { simpleParser } from "mailparser";
import { createMailboxRoom, startEnv, MAIL_DOMAIN, type E2eEnv } from "./env.ts";
import type { MatrixTestClient } from "../harness/matrixClient.ts";

const BOT = "@emailbot:localhost";

describe("room boundaries end to end (embedded SQLite store)", () => {
  let env: E2eEnv;
  let alice: MatrixTestClient;

  before(async () => {
    env = await startEnv("sqlite", {
      allowedUsers: ["@alice:localhost"],
      config: { permissions: { admins: ["@alice:localhost"] } },
    });
    await env.setDnsRecords({
      "evil.test": { TXT: ["v=spf1 ip4:127.0.0.1 -all"] },
      "none.test": { TXT: ["v=spf1 -all"] },
      "_dmarc.none.test": { TXT: ["v=DMARC1; p=none"] },
      "mailer.unrelated.test": { TXT: ["v=spf1 ip4:127.0.0.1 -all"] },
    });
    alice = await env.synapse.registerUser("alice", { displayName: "Alice" });
  });
  after(async () => {
    await env?.stop();
  });

  it("a stranger replying to a known Message-ID does not enter the room and receives nothing afterwards", async () => {
    const room = await alice.createRoom({ preset: "private_chat", name: "Private plans" });
    const bobGhost = "@email_bob=40example.org:localhost";
    await alice.invite(room, bobGhost);
    await alice.waitForMembership(room, bobGhost, "join");
    await alice.sendText(room, "Secret plan, part one");
    const sent = await env.sink.waitForMail((m) => m.rcptTo.includes("bob@example.org") && m.raw.includes("Secret plan, part one"));
    const messageId = (await simpleParser(sent.raw)).messageId!;

    // Mallory authenticates fine (SPF) but never took part in that message.
    const reply = await env.sendMail({ from: "Mallory <mallory@evil.test>", to: `alice@${MAIL_DOMAIN}`, subject: "Re: plans", text: "Count me in", inReplyTo: messageId, references: [messageId] });
    assert.match(reply, /^250 /);
    const mallory = "@email_mallory=40evil.test:localhost";
    const dm = await alice.waitForInvite(30_000, (i) => i.inviter === mallory);
    assert.notEqual(dm, room, "her mail opens a DM of its own");
    const members = await alice.getJoinedMembers(room);
    assert.ok(!Object.keys(members).includes(mallory), "the stranger's ghost is not in the private room");
    const history = await alice.getRoomMessages(room, { limit: 50 });
    assert.ok(!history.some((e) => String(e.content.body ?? "").includes("Count me in")));

    await alice.sendText(room, "Secret plan, part two");
    await env.sink.waitForMail((m) => m.rcptTo.includes("bob@example.org") && m.raw.includes("Secret plan, part two"));
    assert.ok(!env.sink.mails.some((m) => m.rcptTo.includes("mallory@evil.test")), "nothing was mailed to the stranger");
  });

  it("a ghost a member removed stays out: its reply by mail opens a DM instead of bringing it back, and later room messages are not mailed to it", async () => {
    const room = await alice.createRoom({ preset: "private_chat", name: "Removed" });
    const carol = "@email_carol=40example.org:localhost";
    const dave = "@email_dave=40example.org:localhost";
    for (const ghost of [carol, dave]) {
      await alice.invite(room, ghost);
      await alice.waitForMembership(room, ghost, "join");
    }
    await alice.sendText(room, "Before the removal");
    const sent = await env.sink.waitForMail((m) => m.rcptTo.includes("carol@example.org") && m.raw.includes("Before the removal"));
    const messageId = (await simpleParser(sent.raw)).messageId!;
    await alice.request("POST", `/rooms/${encodeURIComponent(room)}/kick`, { user_id: carol, reason: "removed" });
    await alice.waitForMembership(room, carol, "leave");

    // Carol authenticates (SPF) and took part in the message she replies to, but is out now.
    const reply = await env.sendMail({ from: "Carol <carol@example.org>", to: `alice@${MAIL_DOMAIN}`, subject: "Re: Removed", text: "Let me back in", inReplyTo: messageId, references: [messageId] });
    assert.match(reply, /^250 /);
    const dm = await alice.waitForInvite(30_000, (i) => i.inviter === carol);
    assert.notEqual(dm, room, "her reply opens a DM of its own");
    assert.ok(!Object.keys(await alice.getJoinedMembers(room)).includes(carol), "the removed ghost was not invited back");
    const history = await alice.getRoomMessages(room, { limit: 50 });
    assert.ok(!history.some((e) => String(e.content.body ?? "").includes("Let me back in")));

    await alice.sendText(room, "After the removal");
    const after = await env.sink.waitForMail((m) => m.raw.includes("After the removal"));
    assert.deepEqual(after.rcptTo, ["dave@example.org"], "only the ghost still in the room gets the room's mail");
  });

  it("a room mailbox with three correspondents: a reply reaches only its conversation; a top-level message only the subscribers, hidden from each other", async () => {
    const room = await createMailboxRoom(alice, "team", "Team");
    const team = `team@${MAIL_DOMAIN}`;

    for (const who of ["carol@example.net", "dave@example.net", "erin@example.net"]) {
      assert.match(await env.sendMail({ from: who, to: team, subject: `Topic from ${who}`, text: `Hello from ${who}` }), /^250 /);
    }
    const carolMail = await alice.waitForEvent(room, (e) => String(e.content.body ?? "").includes("Hello from carol@example.net"));
    await alice.waitForEvent(room, (e) => String(e.content.body ?? "").includes("Hello from erin@example.net"));

    // Two subscribers: frank by mail (double opt-in), grace by a moderator's invite.
    assert.match(await env.sendMail({ from: "frank@example.com", to: `team+subscribe@${MAIL_DOMAIN}`, subject: "subscribe", text: "please" }), /^250 /);
    const confirm = await env.sink.waitForMail((m) => m.rcptTo.includes("frank@example.com") && m.raw.includes("Confirm your subscription"));
    const confirmParsed = await simpleParser(confirm.raw);
    assert.equal(confirm.mailFrom ? confirm.mailFrom : "", "", "sent from the null reverse-path");
    const confirmAddress = confirmParsed.replyTo?.value[0]?.address ?? "";
    assert.match(confirmAddress, new RegExp(`^team\\+confirm-[a-f0-9]+@${MAIL_DOMAIN.replace(".", "\\.")}$`));
    assert.match(await env.sendMail({ from: "frank@example.com", to: confirmAddress, subject: "Re: confirm", text: "yes" }), /^250 /);
    await alice.sendText(room, "!email invite grace@example.com");
    await alice.waitForEvent(room, (e) => e.sender === BOT && String(e.content.body ?? "").includes("grace@example.com now gets"));
    // Someone else cannot confirm a subscription for an address that did not ask.
    await alice.sendText(room, "!email subscribers");
    const list = await alice.waitForEvent(room, (e) => e.sender === BOT && String(e.content.body ?? "").startsWith("This room's messages go by mail to"));
    assert.match(String(list.content.body), /frank@example\.com/);
    assert.match(String(list.content.body), /grace@example\.com/);

    const before = env.sink.mails.length;
    // A reply in Carol's conversation goes to Carol only.
    await alice.sendText(room, "Thanks Carol", { replyTo: carolMail.event_id });
    const toCarol = await env.sink.waitForMail((m) => m.raw.includes("Thanks Carol"));
    assert.deepEqual(toCarol.rcptTo, ["carol@example.net"]);
    // A top-level message goes to the subscribers only, with the list address in To:.
    await alice.sendText(room, "News for subscribers");
    const news = await env.sink.waitForMail((m) => m.raw.includes("News for subscribers"));
    const newsMails = env.sink.mails.filter((m) => m.raw.includes("News for subscribers"));
    assert.deepEqual(newsMails.flatMap((m) => m.rcptTo).sort(), ["frank@example.com", "grace@example.com"]);
    const parsed = await simpleParser(news.raw);
    assert.deepEqual(parsed.to && !Array.isArray(parsed.to) ? parsed.to.value.map((a) => a.address) : [], [team]);
    assert.ok(!news.raw.includes("frank@example.com") || !news.raw.includes("grace@example.com"), "no subscriber sees the other");
    assert.match(news.raw.toString(), /^List-Unsubscribe: <mailto:team\+unsubscribe@/m);
    const after = env.sink.mails.slice(before);
    for (const who of ["dave@example.net", "erin@example.net"]) assert.ok(!after.some((m) => m.rcptTo.includes(who)), `${who} got nothing`);

    // Unsubscribing by mail (authenticated sender).
    assert.match(await env.sendMail({ from: "frank@example.com", to: `team+unsubscribe@${MAIL_DOMAIN}`, subject: "unsubscribe", text: "bye" }), /^250 /);
    await alice.sendText(room, "Second news");
    await env.sink.waitForMail((m) => m.raw.includes("Second news"));
    assert.deepEqual(env.sink.mails.filter((m) => m.raw.includes("Second news")).flatMap((m) => m.rcptTo), ["grace@example.com"]);
  });

  it("posting policy `verified`: mail whose sender does not authenticate gets 550 5.7.1", async () => {
    const room = await createMailboxRoom(alice, "strict", "Strict");
    await alice.sendText(room, "!email mailbox policy verified");
    await alice.waitForEvent(room, (e) => e.sender === BOT && String(e.content.body).includes("now takes mail from only senders whose mail authenticates"));
    const raw = "From: news@none.test\r\nTo: strict@x\r\nSubject: hi\r\nMessage-ID: <p1@none.test>\r\n\r\nunverified hello\r\n";
    await assert.rejects(env.sendRaw(raw, { from: "x@mailer.unrelated.test", to: `strict@${MAIL_DOMAIN}` }), (err: Error & { responseCode?: number; response?: string }) => {
      assert.equal(err.responseCode, 550);
      assert.match(String(err.response), /^550 5\.7\.1 .*authenticated senders only/);
      return true;
    });
    assert.match(await env.sendMail({ from: "bob@example.org", to: `strict@${MAIL_DOMAIN}`, subject: "hi", text: "verified hello" }), /^250 /);
    await alice.waitForEvent(room, (e) => String(e.content.body ?? "").includes("verified hello"));
  });

  it("postmaster@ and bare postmaster reach the bridge admins", async () => {
    assert.match(await env.sendMail({ from: "Ops <ops@example.com>", to: `postmaster@${MAIL_DOMAIN}`, subject: "Your MX", text: "Your MX looks fine." }), /^250 /);
    const ops = "@email_ops=40example.com:localhost";
    const dm = await alice.waitForInvite(30_000, (i) => i.inviter === ops);
    await alice.join(dm);
    await alice.waitForEvent(dm, (e) => String(e.content.body ?? "").includes("Your MX looks fine."));
    assert.match(await env.sendRaw("From: ops@example.com\r\nTo: postmaster\r\nSubject: bare\r\n\r\nbare postmaster\r\n", { from: "ops@example.com", to: "postmaster" }), /^250 /);
    await alice.waitForEvent(dm, (e) => String(e.content.body ?? "").includes("bare postmaster"));
  });
});
