/**
 * End to end, on PostgreSQL: a real Synapse, the bridge in-process, real SMTP both ways.
 * What is asserted is what a Matrix client sees through the Client-Server API and what
 * a remote MTA receives.
 */
import { after, before, describe, it } from "node:test";
import assert from "node:assert/strict";
import { simpleParser } from "mailparser";
import { dkimVerify } from "mailauth";
import { startEnv, runCli, MAIL_DOMAIN, type E2eEnv } from "./env.ts";
import type { MatrixTestClient } from "../harness/matrixClient.ts";
import { DnsResolver } from "../../src/mail/dns.ts";

const BOB_GHOST = "@email_bob=40example.org:localhost";
const BOT = "@emailbot:localhost";

describe("bridge end to end (PostgreSQL store)", () => {
  let env: E2eEnv;
  let alice: MatrixTestClient;

  before(async () => {
    env = await startEnv("postgres", { allowedUsers: ["@alice:localhost", "@dora:localhost"], rspamd: true });
    alice = await env.synapse.registerUser("alice", { displayName: "Alice Liddell" });
  });
  after(async () => {
    await env?.stop();
  });

  it("invite a ghost: the ghost joins, a message becomes DKIM-signed mail, the reply comes back as a Matrix reply", async () => {
    const roomId = await alice.createRoom({ preset: "private_chat", name: "Tea party" });
    // The ghost does not exist yet: Synapse asks the bridge (appservice user query), which provisions it.
    await assert.rejects(alice.getProfile(BOB_GHOST));
    await alice.invite(roomId, BOB_GHOST);
    await alice.waitForMembership(roomId, BOB_GHOST, "join");

    const eventId = await alice.sendText(roomId, "Hello Bob, *tea* at five?", { html: "Hello Bob, <em>tea</em> at five?" });
    const sent = await env.sink.waitForMail((m) => m.rcptTo.includes("bob@example.org"));
    assert.equal(sent.mailFrom, `alice@${MAIL_DOMAIN}`);
    const mail = await simpleParser(sent.raw);
    assert.equal(mail.from?.value[0]?.address, `alice@${MAIL_DOMAIN}`);
    assert.equal(mail.from?.value[0]?.name, "Alice Liddell");
    // The text/plain alternative is made from formatted_body, not from the Markdown of `body`.
    assert.match(mail.text ?? "", /Hello Bob, tea at five\?/);
    assert.match(String(mail.html), /<em>tea<\/em>/);
    assert.equal(mail.subject, "Tea party");
    const messageId = mail.messageId!;
    assert.match(messageId, new RegExp(`^<[A-Za-z0-9_-]+\\.[a-z0-9]+@${MAIL_DOMAIN.replace(".", "\\.")}>$`));
    assert.ok(!messageId.includes(eventId.slice(1, 10)), "Message-ID must not contain the event ID");

    // DKIM verifies against the key that `dns-records` prints, served by the test DNS server.
    const zone = runCli(["dns-records", "-c", env.configFile]);
    assert.ok(zone.includes(`e2e._domainkey.${MAIL_DOMAIN}`), `dns-records printed no DKIM record:\n${zone}`);
    const lookup = new DnsResolver({ nameservers: [env.dns.nameserver], timeoutMs: 1000, tries: 1, cacheEntries: 0, cacheTtlMs: 0 }).lookup;
    const result = await dkimVerify(sent.raw, { resolver: lookup as never });
    const sig = result.results[0];
    assert.equal(sig?.status.result, "pass", JSON.stringify(result.results));
    assert.equal(sig?.signingDomain, MAIL_DOMAIN);

    // Bob answers by email; it lands as a reply from his ghost, with his display name.
    const reply = await env.sendMail({
      from: '"Bob Example" <bob@example.org>',
      to: `alice@${MAIL_DOMAIN}`,
      subject: "Re: Tea party",
      text: "Yes, see you at five!\n\nOn Mon, Alice wrote:\n> Hello Bob, *tea* at five?\n",
      inReplyTo: messageId,
      references: [messageId],
    });
    assert.match(reply, /^250/);
    const answer = await alice.waitForEvent(roomId, (e) => e.sender === BOB_GHOST && e.type === "m.room.message");
    assert.equal((answer.content["m.relates_to"] as { "m.in_reply_to": { event_id: string } })["m.in_reply_to"].event_id, eventId);
    assert.equal(answer.content.body, "Yes, see you at five!");
    const profile = await alice.getProfile(BOB_GHOST);
    assert.equal(profile.displayname, "Bob Example");

    // Alice answers Bob's reply: the mail threads under Bob's Message-ID.
    await alice.sendText(roomId, "Great!", { replyTo: answer.event_id });
    const second = await env.sink.waitForMail((m) => m.rcptTo.includes("bob@example.org") && m.raw.includes("Great!"));
    const parsed = await simpleParser(second.raw);
    assert.ok(parsed.inReplyTo, "In-Reply-To missing");
    assert.match(String(parsed.references), new RegExp(messageId.replace(/[.*+?^${}()|[\]\\]/g, "\\$&")));
    assert.equal(parsed.subject, "Re: Tea party");
  });

  it("email a room: a moderator gives the room a mailbox; mail to it is posted by the sender's ghost; a reply goes back to the sender", async () => {
    const roomId = await alice.createRoom({ preset: "private_chat", name: "Team", room_alias_name: "team" });
    await alice.invite(roomId, BOT);
    await alice.waitForMembership(roomId, BOT, "join");
    const cmd = await alice.sendText(roomId, "!email mailbox on");
    const done = await alice.waitForEvent(roomId, (e) => e.sender === BOT && typeof e.content.body === "string" && e.content.body.startsWith("Done"));
    assert.match(String(done.content.body), new RegExp(`team@${MAIL_DOMAIN}`));
    assert.ok(cmd);

    const reply = await env.sendMail({ from: "Carol <carol@example.net>", to: `team@${MAIL_DOMAIN}`, subject: "Quarterly numbers", text: "Numbers are up." });
    assert.match(reply, /^250/);
    const carolGhost = "@email_carol=40example.net:localhost";
    const posted = await alice.waitForEvent(roomId, (e) => e.sender === carolGhost && e.type === "m.room.message");
    assert.match(String(posted.content.body), /^Quarterly numbers\n\nNumbers are up\./);
    assert.match(String(posted.content.formatted_body), /<strong>Quarterly numbers<\/strong>/);

    // A reply in Carol's conversation goes to Carol (top-level messages go to subscribers only).
    await alice.sendText(roomId, "Thanks Carol, great news.", { replyTo: posted.event_id });
    const out = await env.sink.waitForMail((m) => m.rcptTo.includes("carol@example.net"));
    const parsed = await simpleParser(out.raw);
    assert.equal(parsed.replyTo?.value[0]?.address, `team@${MAIL_DOMAIN}`);
    assert.match(parsed.text ?? "", /Thanks Carol/);

    // Errors name the command.
    await alice.sendText(roomId, "!email mailbox sideways");
    const err = await alice.waitForEvent(roomId, (e) => e.sender === BOT && String(e.content.body).includes("sideways"));
    assert.match(String(err.content.body), /^`mailbox sideways`: expected `on`, `off`, `policy`/);
  });

  it("email a Matrix user: a stranger's mail opens a DM portal that invites the user; later mail goes to the same room", async () => {
    const dora = await env.synapse.registerUser("dora");
    const reply = await env.sendMail({ from: "Dave <dave@example.com>", to: `dora@${MAIL_DOMAIN}`, subject: "Hi Dora", text: "We met at the conference." });
    assert.match(reply, /^250/);
    const daveGhost = "@email_dave=40example.com:localhost";
    const roomId = await dora.waitForInvite(30_000, (i) => i.inviter === daveGhost);
    await dora.join(roomId);
    const first = await dora.waitForEvent(roomId, (e) => e.sender === daveGhost && e.type === "m.room.message");
    assert.match(String(first.content.body), /^Hi Dora\n\nWe met at the conference\./);

    await env.sendMail({ from: "Dave <dave@example.com>", to: `dora@${MAIL_DOMAIN}`, subject: "One more thing", text: "Slides attached soon." });
    await dora.waitForEvent(roomId, (e) => e.sender === daveGhost && String(e.content.body).includes("Slides attached soon."));
    assert.equal((await dora.joinedRooms()).filter((r) => r === roomId).length, 1);

    // Dora answers in the DM (no explicit reply): it goes to Dave by mail, continuing his
    // latest mail's thread with a Re: subject, as a mail client's Reply would.
    await dora.sendText(roomId, "Looking forward to them.");
    const out = await env.sink.waitForMail((m) => m.rcptTo.includes("dave@example.com"));
    assert.equal(out.mailFrom, `dora@${MAIL_DOMAIN}`);
    const answer = await simpleParser(out.raw);
    assert.equal(answer.subject, "Re: One more thing");
    assert.ok(answer.inReplyTo, "answers Dave's latest mail");
    assert.equal(answer.to && !Array.isArray(answer.to) ? answer.to.value[0]?.name : null, "Dave", "To: shows the ghost's display name");
  });

  it("mail to an unknown address gets 550 5.1.1 and posts nothing; the bridge is no open relay", async () => {
    const pendingBefore = (await env.bridge.store.listPendingInbound(100)).length;
    await assert.rejects(env.sendMail({ from: "x@example.org", to: `nobody-here@${MAIL_DOMAIN}` }), (err: Error & { responseCode?: number; response?: string }) => {
      assert.equal(err.responseCode, 550);
      assert.match(String(err.response), /5\.1\.1/);
      return true;
    });
    await assert.rejects(env.sendMail({ from: "x@example.org", to: "someone@example.net" }), (err: Error & { responseCode?: number; response?: string }) => {
      assert.equal(err.responseCode, 550);
      assert.match(String(err.response), /5\.7\.1/);
      return true;
    });
    assert.equal((await env.bridge.store.listPendingInbound(100)).length, pendingBefore);
  });

  it("rspamd's reject verdict refuses the mail with 550 5.7.1 and posts nothing", async () => {
    const pendingBefore = (await env.bridge.store.listPendingInbound(100)).length;
    const gtube = "XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X";
    await assert.rejects(env.sendMail({ from: "spammer@example.org", to: `team@${MAIL_DOMAIN}`, subject: "Cheap", text: `Buy now\n${gtube}\n` }), (err: Error & { responseCode?: number; response?: string }) => {
      assert.equal(err.responseCode, 550);
      assert.match(String(err.response), /5\.7\.1/);
      return true;
    });
    assert.equal((await env.bridge.store.listPendingInbound(100)).length, pendingBefore);
    assert.equal(await env.bridge.store.getGhostByAddress("spammer@example.org"), null);
  });

  it("a user who is not allowed to bridge gets a notice from the bot and no mail is sent", async () => {
    const mallory = await env.synapse.registerUser("mallory");
    const roomId = await mallory.createRoom({ preset: "private_chat" });
    const before = env.sink.mails.length;
    await mallory.invite(roomId, "@email_eve=40example.org:localhost");
    const notice = await mallory.waitForEvent(roomId, (e) => e.sender === BOT && String(e.content.body).includes("not allowed"));
    assert.match(String(notice.content.body), /@mallory:localhost is not allowed/);
    await mallory.sendText(roomId, "secret");
    await new Promise((r) => setTimeout(r, 500));
    assert.equal(env.sink.mails.length, before);
  });

  it("an encrypted room gets a notice and nothing is bridged", async () => {
    const roomId = await alice.createRoom({
      preset: "private_chat",
      initial_state: [{ type: "m.room.encryption", state_key: "", content: { algorithm: "m.megolm.v1.aes-sha2" } }],
    });
    await alice.invite(roomId, "@email_frank=40example.org:localhost");
    const notice = await alice.waitForEvent(roomId, (e) => e.sender === BOT && String(e.content.body).includes("end-to-end encrypted"));
    assert.ok(notice);
  });
});
