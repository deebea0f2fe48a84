/**
 * Unsubscribing, end to end: every mail from a portal carries a DKIM-signed
 * `List-Unsubscribe` (RFC 2369) and a footer saying who wrote from where; a mail from the
 * recipient to that address makes its ghost leave the room, the room is told, and the room
 * mails it nothing more. A forged unsubscribe (unauthenticated sender) is refused. A real
 * Synapse and client, the bridge in-process (SQLite), the loopback sink, the test DNS server.
 */
import { after, before, describe, it } from "node:test";
import assert from "node:assert/strict";
import { simpleParser } from "mailparser";
import { dkimVerify } from "mailauth";
import { MAIL_DOMAIN, startEnv, type E2eEnv } from "./env.ts";
import type { MatrixTestClient } from "../harness/matrixClient.ts";
import { DnsResolver } from "../../src/mail/dns.ts";

const BOB_GHOST = "@email_bob=40example.org:localhost";
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

describe("unsubscribing from a portal's mail", () => {
  let env: E2eEnv;
  let alice: MatrixTestClient;
  let roomId: string;

  before(async () => {
    env = await startEnv("sqlite", { allowedUsers: ["@alice:localhost"] });
    alice = await env.synapse.registerUser("alice", { displayName: "Alice" });
    roomId = await alice.createRoom({ preset: "private_chat", name: "Book club" });
    await alice.invite(roomId, BOB_GHOST);
    await alice.waitForMembership(roomId, BOB_GHOST, "join");
  });
  after(async () => {
    await env?.stop();
  });

  it("the mail names its unsubscribe address (signed) and who wrote it from where; a forged unsubscribe is refused; bob's own ends his mail", async () => {
    await alice.sendText(roomId, "Next book? (u1)");
    const sent = await env.sink.waitForMail((m) => m.raw.includes("(u1)"));
    const mail = await simpleParser(sent.raw);
    const header = String(mail.headers.get("list-unsubscribe") ?? (mail.headers.get("list-unsubscribe") as { text?: string } | undefined)?.text ?? "");
    const raw = sent.raw.toString("utf8");
    const m = /List-Unsubscribe:\s*<mailto:(unsubscribe\+([0-9a-f]{24})@[^?>]+)\?subject=unsubscribe>/.exec(raw);
    assert.ok(m, `List-Unsubscribe header: ${header}\n${raw.slice(0, 1500)}`);
    const address = m[1]!;
    assert.equal(address, `unsubscribe+${m[2]}@${MAIL_DOMAIN}`);
    assert.match(mail.text ?? "", new RegExp(`\\n-- \\nAlice wrote this in the room "Book club" on Matrix\\. To get no more mail from there, write to ${address.replace("+", "\\+")}\\.`));
    const lookup = new DnsResolver({ nameservers: [env.dns.nameserver], timeoutMs: 1000, tries: 1, cacheEntries: 0, cacheTtlMs: 0 }).lookup;
    const dkim = (await dkimVerify(sent.raw, { resolver: lookup as never })).results[0];
    assert.equal(dkim?.status.result, "pass");
    assert.ok(String(dkim?.signingHeaders?.keys).toLowerCase().includes("list-unsubscribe"), "List-Unsubscribe is signed");

    // An unauthenticated sender (its envelope domain does not vouch for its From): refused by the
    // unsubscribe rule itself, not by a DMARC policy, and nothing changes.
    const forged = ["From: carol@example.net", `To: ${address}`, "Subject: unsubscribe", "Message-ID: <forged-u@nowhere.invalid>", "", "stop", ""].join("\r\n");
    await assert.rejects(env.sendRaw(forged, { from: "mallory@nowhere.invalid", to: address }, { helo: "nowhere.invalid" }), /550 5\.7\.1 unsubscribing needs an authenticated sender/);

    // An unknown token is no mailbox.
    await assert.rejects(env.sendRaw("From: bob@example.org\r\nSubject: x\r\n\r\nx\r\n", { from: "bob@example.org", to: `unsubscribe+${"0".repeat(24)}@${MAIL_DOMAIN}` }), /550.*5\.1\.1/);

    // Bob's own (SPF-authenticated) unsubscribe.
    const reply = await env.sendRaw(["From: Bob <bob@example.org>", `To: ${address}`, "Subject: unsubscribe", "Message-ID: <unsub-u1@example.org>", "", "unsubscribe", ""].join("\r\n"), {
      from: "bob@example.org",
      to: address,
    });
    assert.match(reply, /^250 /);
    await alice.waitForMembership(roomId, BOB_GHOST, "leave");
    await alice.waitForEvent(roomId, (e) => e.content.msgtype === "m.notice" && String(e.content.body).includes("bob@example.org unsubscribed from this room's mail"));

    // Nothing more goes to bob from this room; the unsubscribe mail itself is not posted.
    const before = env.sink.mails.length;
    await alice.sendText(roomId, "Anyone? (u2)");
    await sleep(1500);
    assert.equal(env.sink.mails.length, before);
    const posted = await alice.getRoomMessages(roomId, { limit: 30 });
    assert.ok(!posted.some((e) => String(e.content.body).includes("unsubscribe") && e.sender === BOB_GHOST), "the unsubscribe mail is not posted");
  });
});
