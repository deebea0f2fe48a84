/**
 * End to end: only authenticated senders speak as ghosts. A real Synapse, the bridge
 * in-process on the embedded SQLite store, and a real DNS server on loopback that publishes
 * the bridge's own records (from `dns-records`) plus the test domains' SPF, DKIM and DMARC
 * records, with DKIM keys made here. What is asserted is what a Matrix client sees.
 */
import { after, before, describe, it } from "node:test";
import assert from "node:assert/strict";
import { generateKeyPairSync } from "node:crypto";
import { dkimSign } from "mailauth";
import { createMailboxRoom, startEnv, MAIL_DOMAIN, type E2eEnv } from "./env.ts";
import type { MatrixEvent, MatrixTestClient } from "../harness/matrixClient.ts";
import { dkimTxtRecord } from "../../src/mail/outbound/dkim.ts";
import { AUTH_FIELD } from "../../src/bridge/format/toMatrix.ts";

const BANK = "@email_alerts=40bank.test:localhost";
const NEWS = "@email_news=40none.test:localhost";
const NEWS_UNVERIFIED = "@email_news=40none.test/unverified:localhost";
const CEO = "@email_ceo=40paypal.test:localhost";

const bankKey = generateKeyPairSync("rsa", { modulusLength: 2048 }).privateKey.export({ type: "pkcs8", format: "pem" }).toString();
const slowKey = generateKeyPairSync("rsa", { modulusLength: 2048 }).privateKey.export({ type: "pkcs8", format: "pem" }).toString();

let counter = 0;
function rfc5322(from: string, to: string, subject: string, body: string, extraHeaders: string[] = []): string {
  counter++;
  return [
    `From: ${from}`,
    `To: ${to}`,
    `Subject: ${subject}`,
    "Date: Mon, 2 Nov 2026 10:00:00 +0000",
    `Message-ID: <auth-${counter}-${Date.now()}@sender.test>`,
    ...extraHeaders,
    "",
    body,
    "",
  ].join("\r\n");
}

async function sign(raw: string, domain: string, privateKey: string): Promise<string> {
  const { signatures } = await dkimSign(Buffer.from(raw), { signatureData: [{ signingDomain: domain, selector: "s1", privateKey, canonicalization: "relaxed/relaxed" }] } as never);
  assert.ok(signatures, "DKIM signing produced a signature");
  return signatures + raw;
}

function smtpError(code: number, enhanced: string): (err: Error & { responseCode?: number; response?: string }) => boolean {
  return (err) => {
    assert.equal(err.responseCode, code, err.response);
    assert.match(String(err.response), new RegExp(`^${code} ${enhanced.replace(/\./g, "\\.")} `));
    return true;
  };
}

describe("sender authentication end to end (embedded SQLite store)", () => {
  let env: E2eEnv;
  let alice: MatrixTestClient;
  let roomId: string;

  before(async () => {
    env = await startEnv("sqlite", { allowedUsers: ["@alice:localhost"] });
    await env.setDnsRecords(
      {
        "bank.test": { TXT: ["v=spf1 -all"] },
        "_dmarc.bank.test": { TXT: ["v=DMARC1; p=reject; adkim=s"] },
        "s1._domainkey.bank.test": { TXT: [dkimTxtRecord(bankKey)] },
        "paypal.test": { TXT: ["v=spf1 -all"] },
        "_dmarc.paypal.test": { TXT: ["v=DMARC1; p=reject"] },
        "mailer.unrelated.test": { TXT: ["v=spf1 ip4:127.0.0.1 -all"] },
        "none.test": { TXT: ["v=spf1 ip4:127.0.0.1 -all"] },
        "_dmarc.none.test": { TXT: ["v=DMARC1; p=none"] },
        "slow.test": { TXT: ["v=spf1 -all"] },
        "_dmarc.slow.test": { TXT: ["v=DMARC1; p=reject"] },
      },
      { timeout: ["s1._domainkey.slow.test"] },
    );
    alice = await env.synapse.registerUser("alice", { displayName: "Alice" });
    roomId = await createMailboxRoom(alice, "inbox", "Inbox");
  });
  after(async () => {
    await env?.stop();
  });

  /** Send a verified sentinel mail and wait for it: everything sent before it has been handled. */
  async function settle(): Promise<MatrixEvent[]> {
    const mark = `sentinel ${Date.now()}`;
    await env.sendMail({ from: "Sentinel <sentinel@example.org>", to: `inbox@${MAIL_DOMAIN}`, subject: mark, text: mark });
    await alice.waitForEvent(roomId, (e) => String(e.content.body).includes(mark));
    return alice.getRoomMessages(roomId, { limit: 100 });
  }

  it("a DKIM-signed mail from a p=reject domain is posted by the verified ghost, with the verdict", async () => {
    const raw = await sign(rfc5322('"Bank Alerts" <alerts@bank.test>', `inbox@${MAIL_DOMAIN}`, "Statement", "Your statement is ready."), "bank.test", bankKey);
    assert.match(await env.sendRaw(raw, { from: "bounces@mailer.unrelated.test", to: `inbox@${MAIL_DOMAIN}` }), /^250 /);
    const ev = await alice.waitForEvent(roomId, (e) => e.sender === BANK && String(e.content.body).includes("Your statement is ready."));
    assert.deepEqual(ev.content[AUTH_FIELD], { spf: "pass", dkim: "pass", dmarc: "pass", arc: "none", verified: true });
    assert.ok(!String(ev.content.body).includes("Unverified"));
    assert.equal((await alice.getProfile(BANK)).displayname, "Bank Alerts");
  });

  it("the same mail with its body altered after signing gets 550 5.7.1 and posts nothing", async () => {
    const signed = await sign(rfc5322('"Bank Alerts" <alerts@bank.test>', `inbox@${MAIL_DOMAIN}`, "Statement", "Your statement is ready."), "bank.test", bankKey);
    const tampered = signed.replace("Your statement is ready.", "Urgent: wire 5000 EUR today.");
    await assert.rejects(env.sendRaw(tampered, { from: "bounces@mailer.unrelated.test", to: `inbox@${MAIL_DOMAIN}` }), smtpError(550, "5.7.1"));
    const events = await settle();
    assert.ok(!events.some((e) => String(e.content.body ?? "").includes("wire 5000")), "the tampered mail was not posted");
  });

  it("a spoofed From under p=reject gets 550 5.7.1: no ghost, no DM, no invite", async () => {
    const raw = rfc5322('"PayPal Security" <ceo@paypal.test>', `alice@${MAIL_DOMAIN}`, "Account locked", "Click here to unlock your account.");
    await assert.rejects(env.sendRaw(raw, { from: "bounce-8812@mailer.unrelated.test", to: `alice@${MAIL_DOMAIN}` }), smtpError(550, "5.7.1"));
    await settle();
    await assert.rejects(alice.getProfile(CEO), "the forged sender's ghost was never created");
    const sync = await alice.sync();
    assert.deepEqual(Object.keys(sync.rooms?.invite ?? {}), [], "no DM invite");
  });

  it("an unaligned sender under p=none is posted by the unverified ghost, visibly; the verified ghost's name is unchanged", async () => {
    // First, the real sender: SPF aligned (the envelope domain is the From domain), no DKIM.
    await env.sendRaw(rfc5322('"News Desk" <news@none.test>', `inbox@${MAIL_DOMAIN}`, "Weekly", "The real newsletter."), { from: "news@none.test", to: `inbox@${MAIL_DOMAIN}` });
    const real = await alice.waitForEvent(roomId, (e) => e.sender === NEWS && String(e.content.body).includes("The real newsletter."));
    assert.deepEqual(real.content[AUTH_FIELD], { spf: "pass", dkim: "none", dmarc: "pass", arc: "none", verified: true }, "an SPF-only aligned sender is verified");
    assert.equal((await alice.getProfile(NEWS)).displayname, "News Desk");

    // Then a forgery with another name, sent through an unrelated domain's envelope.
    const forged = rfc5322('"Email bridge" <news@none.test>', `inbox@${MAIL_DOMAIN}`, "Weekly", "Reset your password at evil.example.");
    assert.match(await env.sendRaw(forged, { from: "x@mailer.unrelated.test", to: `inbox@${MAIL_DOMAIN}` }), /^250 /);
    const fake = await alice.waitForEvent(roomId, (e) => String(e.content.body ?? "").includes("Reset your password"));
    assert.equal(fake.sender, NEWS_UNVERIFIED, "posted by the unverified ghost, never the verified one");
    assert.match(String(fake.content.body), /^⚠️ Unverified sender: this mail claims to be from news@none\.test/);
    assert.match(String(fake.content.formatted_body), /Unverified sender/);
    assert.deepEqual(fake.content[AUTH_FIELD], { spf: "pass", dkim: "none", dmarc: "fail", arc: "none", verified: false });
    assert.equal((await alice.getProfile(NEWS_UNVERIFIED)).displayname, "news@none.test (unverified)");
    assert.equal((await alice.getProfile(NEWS)).displayname, "News Desk", "unverified mail never renames the verified ghost");
  });

  it("header tricks get 550 5.7.1 and post nothing", async () => {
    const tricks = [
      "From: a@example.org\r\nFrom: admin@legit.example\r\nTo: inbox@x\r\nSubject: two froms\r\n\r\ntrick-1\r\n",
      "From\r\n : admin@legit.example\r\nTo: inbox@x\r\nSubject: folded\r\n\r\ntrick-2\r\n",
      "From: a@example.org\r\nSubject: continuation\r\n From: admin@legit.example\r\n\r\ntrick-3\r\n",
      "From: a@example.org, admin@legit.example\r\nTo: inbox@x\r\nSubject: two addresses\r\n\r\ntrick-4\r\n",
    ];
    for (const raw of tricks) {
      await assert.rejects(env.sendRaw(raw, { from: "a@example.org", to: `inbox@${MAIL_DOMAIN}` }), smtpError(550, "5.7.1"));
    }
    const events = await settle();
    assert.ok(!events.some((e) => /trick-\d/.test(String(e.content.body ?? ""))), "no trick mail was posted");
    await assert.rejects(alice.getProfile("@email_admin=40legit.example:localhost"));
  });

  it("display names with CR/LF, U+202E or over 256 characters come out cleaned and cut", async () => {
    const name = `Bob\r\nAdmin\u202e${"x".repeat(300)}`;
    const encoded = `=?utf-8?b?${Buffer.from(name).toString("base64")}?=`;
    // A '+' address: the ghost's user ID is exactly the canonical one (no re-escaping on the way).
    const ghost = "@email_bob+news=40example.org:localhost";
    await env.sendRaw(rfc5322(`${encoded} <bob+news@example.org>`, `inbox@${MAIL_DOMAIN}`, "Hi", "name test"), { from: "bob+news@example.org", to: `inbox@${MAIL_DOMAIN}` });
    await alice.waitForEvent(roomId, (e) => e.sender === ghost && String(e.content.body).includes("name test"));
    const shown = (await alice.getProfile(ghost)).displayname ?? "";
    assert.ok(shown.startsWith("Bob Admin xxx"), shown.slice(0, 40));
    assert.ok(!/[\r\n\u202e]/.test(shown));
    assert.equal([...shown].length, 256);
  });

  it("a DNS timeout during authentication gets 451 4.4.3 and loses nothing", async () => {
    const raw = await sign(rfc5322("alerts@slow.test", `inbox@${MAIL_DOMAIN}`, "Slow", "slow dns"), "slow.test", slowKey);
    await assert.rejects(env.sendRaw(raw, { from: "bounces@mailer.unrelated.test", to: `inbox@${MAIL_DOMAIN}` }), smtpError(451, "4.4.3"));
    const events = await settle();
    assert.ok(!events.some((e) => String(e.content.body ?? "").includes("slow dns")));
  });
});
