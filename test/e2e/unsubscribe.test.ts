/**
 * Unsubscribing, end to end: every mail from a portal carries a DKIM-signed
 * `List-Unsubscribe` (RFC 2369) and a footer saying who wrote from where; a mail from the
 * recipient to that address makes its ghost leave the room, the room is told, and the room
 * mails it nothing more. A forged unsubscribe (unauthenticated sender) is refused. With
 * `appservice.public_url`, each recipient's copy also carries its own https one-click link and
 * `List-Unsubscribe-Post` (RFC 8058), both signed; a GET of the link changes nothing, a POST of
 * `List-Unsubscribe=One-Click` unsubscribes, a forged link is 404. A real Synapse and client,
 * the bridge in-process (SQLite), the loopback sink, the test DNS server.
 */
import { after, before, describe, it } from "node:test";
import assert from "node:assert/strict";
import { simpleParser } from "mailparser";
import { dkimVerify } from "mailauth";
import { MAIL_DOMAIN, startEnv, type E2eEnv } from "./env.ts";
import type { MatrixTestClient } from "../harness/matrixClient.ts";
import { DnsResolver } from "../../src/mail/dns.ts";

const BOB_GHOST = "@email_bob=40example.org:localhost";
const CAROL_GHOST = "@email_carol=40example.net:localhost";
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
    // Without appservice.public_url: the mailto form only, no one-click POST (RFC 8058 needs an https URI).
    assert.doesNotMatch(raw, /List-Unsubscribe:[^\r]*(?:\r\n [^\r]*)*https?:/);
    assert.doesNotMatch(raw, /^List-Unsubscribe-Post:/m);
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

describe("one-click unsubscribe (RFC 8058) with appservice.public_url", () => {
  let env: E2eEnv;
  let alice: MatrixTestClient;
  let roomId: string;
  let base: string;

  before(async () => {
    // The appservice listener serves the links; the test reaches it directly, as a reverse proxy would.
    env = await startEnv("sqlite", { allowedUsers: ["@alice:localhost"], publicUrl: true });
    base = env.config.appservice.public_url!;
    alice = await env.synapse.registerUser("alice", { displayName: "Alice" });
    roomId = await alice.createRoom({ preset: "private_chat", name: "Reading group" });
    for (const ghost of [BOB_GHOST, CAROL_GHOST]) {
      await alice.invite(roomId, ghost);
      await alice.waitForMembership(roomId, ghost, "join");
    }
  });
  after(async () => {
    await env?.stop();
  });

  it("each recipient's copy has its own signed link and List-Unsubscribe-Post; GET changes nothing, a forged link is 404, POST One-Click unsubscribes", async () => {
    await alice.sendText(roomId, "Chapter two? (o1)");
    const copies = new Map<string, Buffer>();
    for (const address of ["bob@example.org", "carol@example.net"]) {
      const m = await env.sink.waitForMail((x) => x.raw.includes("(o1)") && x.rcptTo.includes(address));
      assert.deepEqual(m.rcptTo, [address], "a copy per recipient");
      copies.set(address, m.raw);
    }
    const lookup = new DnsResolver({ nameservers: [env.dns.nameserver], timeoutMs: 1000, tries: 1, cacheEntries: 0, cacheTtlMs: 0 }).lookup;
    const links = new Map<string, string>();
    for (const [address, raw] of copies) {
      const text = raw.toString("utf8");
      const m = /^List-Unsubscribe: <mailto:unsubscribe\+[0-9a-f]{24}@[^?>]+\?subject=unsubscribe>,\r\n <(http:\/\/127\.0\.0\.1:\d+\/unsubscribe\/[A-Za-z0-9_.-]+)>\r\n/m.exec(text);
      assert.ok(m, `List-Unsubscribe with mailto and https for ${address}:\n${text.slice(0, 2000)}`);
      assert.ok(m[1]!.startsWith(`${base}/unsubscribe/`));
      links.set(address, m[1]!);
      assert.match(text, /^List-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n/m);
      const dkim = (await dkimVerify(raw, { resolver: lookup as never })).results;
      assert.equal(dkim.length, 1, "one signature");
      assert.equal(dkim[0]?.status.result, "pass", `DKIM for ${address}`);
      const signed = String(dkim[0]?.signingHeaders?.keys).toLowerCase().split(/:\s*/);
      assert.ok(signed.includes("list-unsubscribe") && signed.includes("list-unsubscribe-post"), `signed: ${signed.join(":")}`);
      assert.match((await simpleParser(raw)).text ?? "", /Chapter two\? \(o1\)/);
    }
    const bobLink = links.get("bob@example.org")!;
    const carolLink = links.get("carol@example.net")!;
    assert.notEqual(bobLink, carolLink, "each recipient gets its own URL");

    // GET (what a link scanner does) shows a page with a button and unsubscribes nobody.
    const page = await fetch(bobLink, { redirect: "manual" });
    assert.equal(page.status, 200);
    assert.match(page.headers.get("content-type") ?? "", /^text\/html/);
    assert.equal(page.headers.get("set-cookie"), null);
    const html = await page.text();
    assert.match(html, /<form method="post"><input type="hidden" name="List-Unsubscribe" value="One-Click">/);

    // Forged: bob's room and address with carol's MAC; a made-up token. 404, nothing changes.
    const [bobPayload] = bobLink.split("/").pop()!.split(".");
    const carolMac = carolLink.split(".").pop()!;
    for (const forged of [`${base}/unsubscribe/${bobPayload}.${carolMac}`, `${base}/unsubscribe/${"A".repeat(20)}.${"B".repeat(43)}`]) {
      const get = await fetch(forged, { redirect: "manual" });
      assert.equal(get.status, 404);
      assert.match(await get.text(), /not valid/);
      const post = await fetch(forged, { method: "POST", redirect: "manual", headers: { "Content-Type": "application/x-www-form-urlencoded" }, body: "List-Unsubscribe=One-Click" });
      assert.equal(post.status, 404);
      await post.text();
    }
    // A POST without the one-click body is refused.
    const empty = await fetch(bobLink, { method: "POST", redirect: "manual", headers: { "Content-Type": "application/x-www-form-urlencoded" }, body: "" });
    assert.equal(empty.status, 400);
    await empty.text();

    await alice.sendText(roomId, "Still there? (o2)");
    await env.sink.waitForMail((x) => x.raw.includes("(o2)") && x.rcptTo.includes("bob@example.org"));
    await env.sink.waitForMail((x) => x.raw.includes("(o2)") && x.rcptTo.includes("carol@example.net"));
    assert.ok(BOB_GHOST in (await alice.getJoinedMembers(roomId)), "bob is still in the room after the GET and the forged links");

    // The one-click POST (RFC 8058 §3.2): bob's ghost leaves, the room is told, no more mail to bob.
    const click = await fetch(bobLink, { method: "POST", redirect: "manual", headers: { "Content-Type": "application/x-www-form-urlencoded" }, body: "List-Unsubscribe=One-Click" });
    assert.equal(click.status, 200);
    assert.equal(click.headers.get("set-cookie"), null);
    assert.equal(click.headers.get("location"), null);
    assert.match(await click.text(), /unsubscribed/);
    await alice.waitForMembership(roomId, BOB_GHOST, "leave");
    await alice.waitForEvent(roomId, (e) => e.content.msgtype === "m.notice" && String(e.content.body).includes("bob@example.org unsubscribed from this room's mail"));

    const bobBefore = env.sink.mails.filter((x) => x.rcptTo.includes("bob@example.org")).length;
    await alice.sendText(roomId, "Chapter three (o3)");
    await env.sink.waitForMail((x) => x.raw.includes("(o3)") && x.rcptTo.includes("carol@example.net"));
    await sleep(1000);
    assert.equal(env.sink.mails.filter((x) => x.rcptTo.includes("bob@example.org")).length, bobBefore, "no more mail to bob from this room");
    assert.ok(CAROL_GHOST in (await alice.getJoinedMembers(roomId)), "carol is still in the room");
  });

  it("a click while the homeserver is down: 503 with Retry-After, yet carol is already opted out; the repeated click once it is back makes her ghost leave", async () => {
    const mail = await env.sink.waitForMail((x) => x.raw.includes("(o3)") && x.rcptTo.includes("carol@example.net"));
    const carolLink = /<(http:\/\/127\.0\.0\.1:\d+\/unsubscribe\/[A-Za-z0-9_.-]+)>/.exec(mail.raw.toString("utf8"))?.[1];
    assert.ok(carolLink, "carol's copy has her link");
    const click = () => fetch(carolLink, { method: "POST", redirect: "manual", headers: { "Content-Type": "application/x-www-form-urlencoded" }, body: "List-Unsubscribe=One-Click" });

    await env.synapse.stopProcess();
    try {
      const down = await click();
      assert.equal(down.status, 503, "the room cannot be told yet: the click is to be repeated");
      assert.ok(down.headers.get("retry-after"), "Retry-After says when");
      await down.text();
    } finally {
      await env.synapse.startProcess();
    }

    // Recorded before the homeserver was asked: nothing more is mailed to carol from this room.
    const carolBefore = env.sink.mails.filter((x) => x.rcptTo.includes("carol@example.net")).length;
    await alice.sendText(roomId, "After the outage (o4)");
    await sleep(3000);
    assert.equal(env.sink.mails.filter((x) => x.rcptTo.includes("carol@example.net")).length, carolBefore, "no mail to carol after her click");

    const again = await click();
    assert.equal(again.status, 200);
    await again.text();
    await alice.waitForMembership(roomId, CAROL_GHOST, "leave");
    await alice.waitForEvent(roomId, (e) => e.content.msgtype === "m.notice" && String(e.content.body).includes("carol@example.net unsubscribed from this room's mail"));
  });
});
