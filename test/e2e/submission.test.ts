/**
 * SMTP submission (RFC 6409) end to end against a real Synapse: app passwords made by the bot
 * command, the submission port with STARTTLS required (RFC 3207) and AUTH PLAIN/LOGIN
 * (RFC 4954), mail to an outside address reaching the sink DKIM-signed with the user's From and
 * noted in the DM portal, mail to a room mailbox and a personal mailbox posted into Matrix by the
 * bot, the refusals (535 5.7.8, 530 5.7.0, 553 5.7.1, 454 4.7.0), and no AUTH on the MX port.
 */
import { after, before, describe, it } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import nodemailer from "nodemailer";
import { simpleParser } from "mailparser";
import { dkimVerify } from "mailauth";
import { MAIL_DOMAIN, startEnv, type E2eEnv } from "./env.ts";
import type { MatrixTestClient } from "../harness/matrixClient.ts";
import { RawClient, makeCert } from "../harness/smtpListener.ts";
import { DnsResolver } from "../../src/mail/dns.ts";

const BOT = "@emailbot:localhost";
const BOB_GHOST = "@email_bob=40example.org:localhost";
const ALICE = `alice@${MAIL_DOMAIN}`;

/** `AUTH PLAIN` initial response (RFC 4616): authzid NUL authcid NUL password, base64. */
function plain(login: string, password: string): string {
  return Buffer.from(`\0${login}\0${password}`).toString("base64");
}

/**
 * The bot's post holding `marker` in a room of `client` other than `except`, joining rooms the
 * bot invites it to meanwhile. @throws Error after 30 s
 */
async function botPost(client: MatrixTestClient, marker: string, except: string): Promise<{ roomId: string; content: Record<string, unknown> }> {
  const deadline = Date.now() + 30_000;
  while (Date.now() < deadline) {
    for (const roomId of await client.joinedRooms()) {
      if (roomId === except) continue;
      const hit = (await client.getRoomMessages(roomId, { limit: 20 })).find((e) => e.sender === BOT && String(e.content.body).includes(marker));
      if (hit) return { roomId, content: hit.content };
    }
    const invited = await client.waitForInvite(1000, (i) => i.inviter === BOT).catch(() => null);
    if (invited) await client.join(invited);
  }
  throw new Error(`no post of the bot with ${marker} in any room of ${client.userId}`);
}

describe("SMTP submission with app passwords", () => {
  let env: E2eEnv;
  let alice: MatrixTestClient;
  let carol: MatrixTestClient;
  let botDm: string;
  let password: string;
  let certDir: string;
  let submissionPort: number;

  before(async () => {
    certDir = mkdtempSync(join(tmpdir(), "meb-submission-"));
    const { cert, key } = await makeCert(certDir, "mx.bridge.test");
    env = await startEnv("sqlite", {
      allowedUsers: ["@alice:localhost", "@carol:localhost"],
      config: { submission: { enabled: true, bind_address: "127.0.0.1", port: 0, tls_cert_file: cert, tls_key_file: key, max_auth_failures_per_ip: 3 } },
    });
    submissionPort = env.bridge.submissionPort!;
    alice = await env.synapse.registerUser("alice", { displayName: "Alice" });
    carol = await env.synapse.registerUser("carol", { displayName: "Carol" });
    botDm = await alice.createRoom({ preset: "trusted_private_chat", is_direct: true, invite: [BOT] });
    await alice.waitForMembership(botDm, BOT, "join");
  });
  after(async () => {
    await env?.stop();
    if (certDir) rmSync(certDir, { recursive: true, force: true });
  });

  const botReply = (roomId: string, pattern: RegExp) => alice.waitForEvent(roomId, (e) => e.sender === BOT && pattern.test(String(e.content.body)));

  /** A nodemailer transport to the submission port: STARTTLS required, the test certificate trusted as is. */
  const transport = (user: string, pass: string) =>
    nodemailer.createTransport({ host: "127.0.0.1", port: submissionPort, secure: false, requireTLS: true, tls: { rejectUnauthorized: false }, auth: { user, pass } });

  /** A raw client on the submission port, past EHLO and STARTTLS and the second EHLO; returns it with that EHLO reply. */
  const secureClient = async (): Promise<{ client: RawClient; ehlo: string[] }> => {
    const client = await RawClient.open(submissionPort);
    await client.hello();
    await client.startTls();
    return { client, ehlo: await client.command("EHLO client.example.org") };
  };

  it("`password new` is refused in a shared room, shows a password once in the DM with the bot, and `passwords` lists it", async () => {
    const shared = await alice.createRoom({ preset: "private_chat", name: "Shared" });
    await alice.invite(shared, BOT);
    await alice.waitForMembership(shared, BOT, "join");
    await alice.invite(shared, carol.userId);
    await carol.join(shared);
    await alice.sendText(shared, "!email password new laptop");
    await botReply(shared, /^`password new`: say this in a direct chat with me .*others in this room would read it/);

    await alice.sendText(botDm, "password new laptop");
    const reply = await botReply(botDm, /^New app password `laptop`: /);
    const m = /^New app password `laptop`: ([a-z2-9]{5}(?:-[a-z2-9]{5}){3})$/m.exec(String(reply.content.body));
    assert.ok(m, String(reply.content.body));
    password = m[1]!;
    assert.match(String(reply.content.body), new RegExp(`login: ${ALICE.replace(".", "\\.")}`));

    await alice.sendText(botDm, "password new laptop");
    await botReply(botDm, /^`password new`: you already have an app password labelled `laptop`/);
    await alice.sendText(botDm, "passwords");
    await botReply(botDm, /^Your app passwords .*\n• `laptop`: made \d{4}-\d\d-\d\d \d\d:\d\d UTC, never used$/);
    const stored = await env.bridge.store.listAppPasswords("@alice:localhost");
    assert.equal(stored.length, 1);
    assert.ok(!stored[0]!.hash.includes(password), "only a hash is stored");
    assert.match(stored[0]!.hash, /^scrypt\$16384\$8\$1\$/);
  });

  it("the MX port offers no AUTH and refuses it", async () => {
    const client = await RawClient.open(env.bridge.smtpPort);
    try {
      const ehlo = await client.hello();
      assert.ok(!ehlo.some((l) => /AUTH/i.test(l)), ehlo.join("\n"));
      const reply = await client.command(`AUTH PLAIN ${plain(ALICE, password)}`);
      assert.match(reply[0] ?? "", /^5\d\d /);
    } finally {
      client.close();
    }
  });

  it("before STARTTLS: no AUTH offered; AUTH and MAIL get 530 5.7.0 Must issue a STARTTLS command first", async () => {
    const client = await RawClient.open(submissionPort);
    try {
      const ehlo = await client.hello();
      assert.ok(ehlo.some((l) => /STARTTLS/.test(l)), ehlo.join("\n"));
      assert.ok(!ehlo.some((l) => /AUTH/.test(l)), `no AUTH in the clear: ${ehlo.join("\n")}`);
      assert.deepEqual(await client.command(`AUTH PLAIN ${plain(ALICE, password)}`), ["530 5.7.0 Must issue a STARTTLS command first"]);
      assert.deepEqual(await client.command("AUTH LOGIN"), ["530 5.7.0 Must issue a STARTTLS command first"]);
      assert.deepEqual(await client.command(`MAIL FROM:<${ALICE}>`), ["530 5.7.0 Must issue a STARTTLS command first"]);
    } finally {
      client.close();
    }
  });

  it("after STARTTLS: MAIL without AUTH 530 5.7.0; a wrong password 535 5.7.8; someone else's MAIL FROM or From 553 5.7.1", async () => {
    const { client, ehlo } = await secureClient();
    try {
      assert.ok(ehlo.some((l) => /AUTH PLAIN LOGIN/.test(l)), ehlo.join("\n"));
      assert.deepEqual(await client.command(`MAIL FROM:<${ALICE}>`), ["530 5.7.0 Authentication required"]);
      assert.deepEqual(await client.command(`AUTH PLAIN ${plain(ALICE, "wrong-password")}`), ["535 5.7.8 Authentication credentials invalid"]);
      // AUTH LOGIN (user name and password in two steps), right password.
      assert.deepEqual(await client.command("AUTH LOGIN"), ["334 VXNlcm5hbWU6"]);
      assert.deepEqual(await client.command(Buffer.from(ALICE).toString("base64")), ["334 UGFzc3dvcmQ6"]);
      assert.match((await client.command(Buffer.from(password).toString("base64")))[0] ?? "", /^235 /);
      assert.deepEqual(await client.command("MAIL FROM:<bob@example.org>"), [`553 5.7.1 <bob@example.org> is not your address; you may send as <${ALICE}> only`]);
      assert.match((await client.command(`MAIL FROM:<${ALICE}>`))[0] ?? "", /^250 /);
      assert.match((await client.command("RCPT TO:<bob@example.org>"))[0] ?? "", /^250 /);
      assert.deepEqual(await client.command(`RCPT TO:<nobody@${MAIL_DOMAIN}>`), [`550 5.1.1 <nobody@${MAIL_DOMAIN}>: no such mailbox here`]);
      assert.match((await client.command("DATA"))[0] ?? "", /^354 /);
      client.write("From: Mallory <mallory@example.org>\r\nTo: bob@example.org\r\nSubject: forged\r\n\r\nnot me (sub-forged)\r\n.\r\n");
      assert.deepEqual(await client.reply(), [`553 5.7.1 the From address <mallory@example.org> is not your address; you may send as <${ALICE}> only`]);
      await client.command("QUIT");
    } finally {
      client.close();
    }
    await new Promise((r) => setTimeout(r, 500));
    assert.ok(!env.sink.mails.some((m) => m.raw.includes("(sub-forged)")), "the refused mail went nowhere");
  });

  it("a valid password: mail to an outside address reaches the MTA DKIM-signed with the user's From, and the DM portal notes it", async () => {
    await alice.sendText(botDm, "start bob@example.org");
    const dm = await alice.waitForInvite(30_000, (i) => i.inviter === BOB_GHOST);
    await alice.join(dm);

    const t = transport(ALICE, password);
    try {
      const info = await t.sendMail({ from: `"Alice" <${ALICE}>`, to: "bob@example.org", subject: "Quarterly report", text: "Numbers attached in spirit. (sub-1)" });
      assert.match(info.response, /^250 /);
    } finally {
      t.close();
    }
    const sent = await env.sink.waitForMail((m) => m.raw.includes("(sub-1)"));
    assert.equal(sent.mailFrom, ALICE);
    assert.deepEqual(sent.rcptTo, ["bob@example.org"]);
    const mail = await simpleParser(sent.raw);
    assert.equal(mail.from?.value[0]?.address, ALICE);
    assert.equal(mail.subject, "Quarterly report");
    const lookup = new DnsResolver({ nameservers: [env.dns.nameserver], timeoutMs: 1000, tries: 1, cacheEntries: 0, cacheTtlMs: 0 }).lookup;
    const dkim = await dkimVerify(sent.raw, { resolver: lookup as never });
    assert.equal(dkim.results[0]?.status.result, "pass", JSON.stringify(dkim.results));
    assert.equal(dkim.results[0]?.signingDomain, MAIL_DOMAIN);

    const notice = await alice.waitForEvent(dm, (e) => String(e.content.body).includes("Quarterly report"));
    assert.equal(notice.content.msgtype, "m.notice");
    assert.equal(notice.content.body, "📤 You sent “Quarterly report” to bob@example.org by mail (from a mail client).");

    // Bob's reply continues the conversation in the same DM.
    await env.sendMail({ from: "Bob <bob@example.org>", to: ALICE, subject: "Re: Quarterly report", text: "Thanks! (sub-2)", inReplyTo: mail.messageId!, references: [mail.messageId!] });
    await alice.waitForEvent(dm, (e) => e.sender === BOB_GHOST && String(e.content.body).includes("(sub-2)"));

    await alice.sendText(botDm, "passwords");
    await botReply(botDm, /• `laptop`: made .* UTC, last used \d{4}-\d\d-\d\d \d\d:\d\d UTC$/);
  });

  it("mail to a room mailbox and to a personal mailbox lands in Matrix, posted by the bot naming the user (login by Matrix ID)", async () => {
    // A room of three (not taken for anyone's DM with the bot) with the address team@.
    const team = await alice.createRoom({ preset: "private_chat", name: "Team", room_alias_name: "team", invite: [BOT, carol.userId] });
    await carol.join(team);
    await alice.waitForMembership(team, BOT, "join");
    await alice.sendText(team, "!email mailbox on");
    await botReply(team, /^Done: mail to team@bridge\.test now lands in this room/);
    const t = transport("@alice:localhost", password);
    try {
      const info = await t.sendMail({ from: ALICE, to: [`team@${MAIL_DOMAIN}`, ALICE], subject: "Standup notes", text: "Shipped the thing. (sub-3)" });
      assert.match(info.response, /^250 /);
    } finally {
      t.close();
    }
    const posted = await alice.waitForEvent(team, (e) => e.sender === BOT && String(e.content.body).includes("(sub-3)"));
    assert.match(String(posted.content.body), /^✉️ Mail from @alice:localhost \(alice@bridge\.test\), sent from a mail client:\nSubject: Standup notes\n\nShipped the thing\. \(sub-3\)/);
    // The personal mailbox: the bot's DM with its owner (the one she talks to the bot in, or one
    // the bot opens and invites her to).
    const personal = await botPost(alice, "(sub-3)", team);
    assert.match(String(personal.content.body), /^✉️ Mail from @alice:localhost \(alice@bridge\.test\)/);
    assert.ok(!env.sink.mails.some((m) => m.raw.includes("(sub-3)")), "local mail does not leave");
  });

  it("a mail without Message-ID and Date gets both (RFC 6409 §8.3, §8.4) before signing; the same mail submitted again is queued once", async () => {
    const raw = `From: ${ALICE}\r\nTo: carol@example.net\r\nSubject: bare\r\n\r\nNo id, no date. (sub-4)\r\n`;
    for (let i = 0; i < 2; i++) {
      const t = transport(ALICE, password);
      try {
        const info = await t.sendMail({ envelope: { from: ALICE, to: ["carol@example.net"] }, raw });
        assert.match(info.response, /^250 /);
      } finally {
        t.close();
      }
    }
    const sent = await env.sink.waitForMail((m) => m.raw.includes("(sub-4)"));
    const mail = await simpleParser(sent.raw);
    assert.match(mail.messageId ?? "", new RegExp(`@${MAIL_DOMAIN.replace(".", "\\.")}>$`));
    assert.ok(mail.date instanceof Date && Math.abs(mail.date.getTime() - Date.now()) < 120_000, String(mail.date));
    const lookup = new DnsResolver({ nameservers: [env.dns.nameserver], timeoutMs: 1000, tries: 1, cacheEntries: 0, cacheTtlMs: 0 }).lookup;
    assert.equal((await dkimVerify(sent.raw, { resolver: lookup as never })).results[0]?.status.result, "pass");
    await new Promise((r) => setTimeout(r, 1500));
    assert.equal(env.sink.mails.filter((m) => m.raw.includes("(sub-4)")).length, 1, "the retry was not queued again");
  });

  it("a submitted mail the remote MTA refuses: the failure is posted in the sender's DM with the bot (no portal with that address)", async () => {
    env.sink.refuse.set("dave@example.com", { code: 550, message: "5.1.1 no such user here" });
    const t = transport(ALICE, password);
    try {
      await t.sendMail({ from: ALICE, to: "dave@example.com", subject: "Hello Dave", text: "Are you there? (sub-5)" });
    } finally {
      t.close();
    }
    const notice = await botPost(alice, "dave@example.com", "");
    assert.match(String(notice.content.body), /^⚠️ This message could not be delivered by email to:\n• dave@example\.com: 550 5\.1\.1 no such user here/);
    assert.equal(notice.content["m.relates_to"], undefined, "no reply: no Matrix event carries the mail");
  });

  it("too many failed logins from one address: 454 4.7.0, even for the right password", async () => {
    const { client } = await secureClient();
    try {
      const replies: string[] = [];
      for (let i = 0; i < 3; i++) replies.push((await client.command(`AUTH PLAIN ${plain(ALICE, `wrong-${i}`)}`))[0] ?? "");
      // One failure came from the test before: the third here is over the limit of 3.
      assert.deepEqual(replies.slice(0, 2), ["535 5.7.8 Authentication credentials invalid", "535 5.7.8 Authentication credentials invalid"]);
      assert.match(replies[2]!, /^454 4\.7\.0 /);
      assert.match((await client.command(`AUTH PLAIN ${plain(ALICE, password)}`))[0] ?? "", /^454 4\.7\.0 Temporary authentication failure: too many failed logins/);
    } finally {
      client.close();
    }
  });
});
