/**
 * End to end, a 250 is a promise: odd mail is made postable, never dropped; what truly cannot
 * be posted comes back to its sender as a DSN; outbound failures are reported per recipient.
 * A real Synapse, the bridge in-process on PostgreSQL, a real DNS server, a loopback SMTP sink
 * as the remote MTAs. What is asserted is what a Matrix client and a remote MTA see.
 */
import { after, before, describe, it } from "node:test";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { parse as parseYaml } from "yaml";
import { simpleParser } from "mailparser";
import { createMailboxRoom, startEnv, MAIL_DOMAIN, type E2eEnv } from "./env.ts";
import { MatrixTestClient, type MatrixEvent } from "../harness/matrixClient.ts";
import { composeDsn, parseDsn } from "../../src/mail/dsn.ts";

const BOT = "@emailbot:localhost";
const BOB = "@email_bob=40example.org:localhost";

let counter = 0;
function rfc5322(opts: { from?: string; to: string; subject?: string; messageId?: string | null; headers?: string[]; body: string }): string {
  counter++;
  const lines = [`From: ${opts.from ?? "Bob <bob@example.org>"}`, `To: ${opts.to}`, `Subject: ${opts.subject ?? `Test ${counter}`}`, "Date: Mon, 2 Nov 2026 10:00:00 +0000"];
  if (opts.messageId !== null) lines.push(`Message-ID: <${opts.messageId ?? `dur-${counter}-${Date.now()}@example.org`}>`);
  return [...lines, ...(opts.headers ?? []), "", opts.body, ""].join("\r\n");
}

describe("a 250 is a promise, end to end (PostgreSQL store)", () => {
  let env: E2eEnv;
  let alice: MatrixTestClient;
  let roomId: string;

  before(async () => {
    env = await startEnv("postgres", {
      allowedUsers: ["@alice:localhost", "@dora:localhost", "@erin:localhost"],
      config: { inbound: { retry_base_ms: 200, retry_max_ms: 2000 }, outbound: { delay_warning_hours: 0 } },
    });
    alice = await env.synapse.registerUser("alice", { displayName: "Alice" });
    roomId = await createMailboxRoom(alice, "durable", "Durable");
  });
  after(async () => {
    await env?.stop();
  });

  const to = `durable@${MAIL_DOMAIN}`;
  const send = (raw: string, from = "bob@example.org", rcpt = to) => env.sendRaw(raw, { from, to: rcpt });

  async function download(mxc: string): Promise<Buffer> {
    const [server, id] = mxc.replace("mxc://", "").split("/");
    const res = await fetch(`${env.synapse.url}/_matrix/client/v1/media/download/${server}/${id}`, { headers: { authorization: `Bearer ${alice.accessToken}` } });
    assert.equal(res.status, 200, `download ${mxc}`);
    return Buffer.from(await res.arrayBuffer());
  }

  it("a 200 KiB text mail is posted cut at a marker, with the full text attached", async () => {
    const line = "All work and no play makes Jack a dull boy. ";
    const text = Array.from({ length: 4700 }, (_, i) => `${i} ${line}`).join("\n");
    assert.ok(Buffer.byteLength(text) > 200 * 1024);
    assert.match(await send(rfc5322({ to, subject: "Long one", body: text })), /^250 /);
    const ev = await alice.waitForEvent(roomId, (e) => e.sender === BOB && String(e.content.body).includes("Long one"));
    assert.ok(Buffer.byteLength(JSON.stringify(ev.content)) < 60_000, "the event fits the homeserver's limit");
    assert.match(String(ev.content.body), /✂️ \[This mail is longer than fits in one message; the full text is attached as message\.txt\]$/);
    const file = await alice.waitForEvent(roomId, (e) => e.sender === BOB && e.content.body === "message.txt");
    assert.equal(file.content.msgtype, "m.file");
    const full = await download(String(file.content.url));
    assert.equal(full.toString("utf8").trim(), text.trim().replace(/\r\n/g, "\n"));
  });

  it("an attachment with a hostile Content-Type is posted, and so is the one after it", async () => {
    const boundary = "b0undary";
    const body = [
      `--${boundary}`,
      "Content-Type: text/plain; charset=utf-8",
      "",
      "Two files attached.",
      `--${boundary}`,
      'Content-Type: application/x-€; name="weird.bin"',
      "Content-Transfer-Encoding: base64",
      'Content-Disposition: attachment; filename="weird.bin"',
      "",
      Buffer.from("binary payload one").toString("base64"),
      `--${boundary}`,
      'Content-Type: text/csv; name="data.csv"',
      'Content-Disposition: attachment; filename="data.csv"',
      "",
      "a,b\r\n1,2",
      `--${boundary}--`,
    ].join("\r\n");
    const raw = rfc5322({ to, subject: "Files", headers: ["MIME-Version: 1.0", `Content-Type: multipart/mixed; boundary="${boundary}"`], body });
    assert.match(await send(raw), /^250 /);
    const weird = await alice.waitForEvent(roomId, (e) => e.sender === BOB && e.content.body === "weird.bin");
    assert.equal((weird.content.info as { mimetype: string }).mimetype, "application/octet-stream");
    assert.equal((await download(String(weird.content.url))).toString(), "binary payload one");
    const csv = await alice.waitForEvent(roomId, (e) => e.sender === BOB && e.content.body === "data.csv");
    assert.equal((csv.content.info as { mimetype: string }).mimetype, "text/csv");
  });

  it("two different mails with one Message-ID both appear; the same mail sent twice appears once, with and without a Message-ID", async () => {
    const id = `reused-${Date.now()}@example.org`;
    await send(rfc5322({ to, messageId: id, body: "first mail with a reused id" }));
    await send(rfc5322({ to, messageId: id, body: "second, different mail with the reused id" }));
    const same = rfc5322({ to, body: "sent twice with an id" });
    await send(same);
    await send(same);
    const noId = rfc5322({ to, messageId: null, body: "sent twice without an id" });
    await send(noId);
    await send(noId);
    await alice.waitForEvent(roomId, (e) => String(e.content.body).includes("sent twice without an id"));
    // Let a duplicate, if any, arrive: a marker mail after everything else.
    await send(rfc5322({ to, body: "dedupe marker" }));
    await alice.waitForEvent(roomId, (e) => String(e.content.body).includes("dedupe marker"));
    const bodies = (await alice.getRoomMessages(roomId, { limit: 100 })).map((e) => String(e.content.body ?? ""));
    const count = (s: string) => bodies.filter((b) => b.includes(s)).length;
    assert.equal(count("first mail with a reused id"), 1);
    assert.equal(count("second, different mail with the reused id"), 1);
    assert.equal(count("sent twice with an id"), 1);
    assert.equal(count("sent twice without an id"), 1);
  });

  it("a mail that cannot be read at all gets 554 5.6.0 at DATA; one that decodes with losses is posted with the original", async () => {
    const noBoundary = rfc5322({ to, subject: "Broken", headers: ["MIME-Version: 1.0", "Content-Type: multipart/mixed"], body: "--x\r\nContent-Type: text/plain\r\n\r\nhello\r\n--x--" });
    await assert.rejects(send(noBoundary), (err: Error & { responseCode?: number; response?: string }) => {
      assert.equal(err.responseCode, 554);
      assert.match(String(err.response), /^554 5\.6\.0 /);
      return true;
    });
    const badBase64 = rfc5322({ to, subject: "Lossy", headers: ["MIME-Version: 1.0", "Content-Type: text/plain; charset=x-unknown-42", "Content-Transfer-Encoding: 8bit"], body: "caf\u00e9 au lait" });
    assert.match(await env.sendRaw(Buffer.from(badBase64, "latin1"), { from: "bob@example.org", to }), /^250 /);
    const ev = await alice.waitForEvent(roomId, (e) => e.sender === BOB && String(e.content.body).includes("Lossy"));
    assert.match(String(ev.content.body), /could not be decoded/);
    const eml = await alice.waitForEvent(roomId, (e) => e.sender === BOB && e.content.body === "message.eml");
    assert.ok((await download(String(eml.content.url))).includes(Buffer.from("caf\u00e9 au lait", "latin1")));
  });

  it("a DM the user left: the next mail opens a new DM and invites her again", async () => {
    const dora = await env.synapse.registerUser("dora");
    await send(rfc5322({ to: `dora@${MAIL_DOMAIN}`, subject: "Hello Dora", body: "first DM mail" }), "bob@example.org", `dora@${MAIL_DOMAIN}`);
    const first = await dora.waitForInvite(30_000, (i) => i.inviter === BOB);
    await dora.join(first);
    await dora.waitForEvent(first, (e) => String(e.content.body).includes("first DM mail"));
    await dora.leave(first);
    await send(rfc5322({ to: `dora@${MAIL_DOMAIN}`, subject: "Are you there?", body: "second DM mail" }), "bob@example.org", `dora@${MAIL_DOMAIN}`);
    let isDirect: unknown;
    const second = await dora.waitForInvite(30_000, (i) => {
      if (i.inviter !== BOB || i.roomId === first) return false;
      isDirect = i.inviteState.find((s) => s.type === "m.room.member" && s.state_key === "@dora:localhost")?.content.is_direct;
      return true;
    });
    assert.notEqual(second, first);
    assert.equal(isDirect, true, "the invite carries is_direct");
    await dora.join(second);
    await dora.waitForEvent(second, (e) => String(e.content.body).includes("second DM mail"));
  });

  it("a mail that truly cannot be posted comes back to its sender as a DSN (multipart/report)", async () => {
    // A room whose mailbox stays but that the bridge can no longer enter: the bot is banned.
    const locked = await createMailboxRoom(alice, "locked", "Locked");
    await alice.request("POST", `/rooms/${encodeURIComponent(locked)}/ban`, { user_id: BOT, reason: "test" });
    const subject = `Unpostable ${Date.now()}`;
    assert.match(await env.sendRaw(rfc5322({ from: "Carol <carol@example.net>", to: `locked@${MAIL_DOMAIN}`, subject, body: "nobody will read this" }), { from: "carol@example.net", to: `locked@${MAIL_DOMAIN}` }), /^250 /);
    const dsn = await env.sink.waitForMail((m) => m.rcptTo.includes("carol@example.net") && !m.mailFrom, 60_000);
    const parsed = await simpleParser(dsn.raw);
    assert.match(String(parsed.headers.get("content-type") && (parsed.headers.get("content-type") as { value: string }).value), /^multipart\/report$/);
    assert.equal(parsed.headers.get("auto-submitted"), "auto-replied");
    const report = await parseDsn(dsn.raw);
    assert.ok(report, "the DSN parses as a delivery-status report");
    assert.equal(report.recipients[0]?.address, `locked@${MAIL_DOMAIN}`);
    assert.equal(report.recipients[0]?.action, "failed");
    assert.match(report.recipients[0]?.status ?? "", /^5\./);
    const failed = await env.bridge.store.listInbound("failed", 10);
    assert.ok(failed.some((r) => r.sender === "carol@example.net"), "the raw mail is kept (queue show)");
  });

  it("a recipient MTA answers 550 to one of two recipients: the notice comes at once, while the other is still deferred", async () => {
    env.sink.refuse.set("eve@example.com", { code: 550, message: "5.1.1 <eve@example.com>: no such user" });
    env.sink.refuse.set("frank@example.com", { code: 451, message: "4.3.0 try again later" });
    const room = await alice.createRoom({ preset: "private_chat", name: "Two recipients" });
    for (const ghost of ["@email_eve=40example.com:localhost", "@email_frank=40example.com:localhost"]) {
      await alice.invite(room, ghost);
      await alice.waitForMembership(room, ghost, "join");
    }
    const eventId = await alice.sendText(room, "Hello both");
    const notice: MatrixEvent = await alice.waitForEvent(room, (e) => String(e.content.body ?? "").includes("could not be delivered"), 60_000);
    assert.match(String(notice.content.body), /eve@example\.com: .*550/);
    assert.ok(!String(notice.content.body).includes("frank@example.com"));
    assert.equal((notice.content["m.relates_to"] as { "m.in_reply_to": { event_id: string } })["m.in_reply_to"].event_id, eventId);
    const row = await env.bridge.store.getOutboundByEvent(eventId);
    assert.equal(row?.state, "deferred", "frank is still being retried");
    env.sink.refuse.clear();
  });
  it("a bounce for mail the bridge sent comes back as a notice replying to that message", async () => {
    const room = await alice.createRoom({ preset: "private_chat", name: "Bouncy" });
    const ghost = "@email_gone=40example.org:localhost";
    await alice.invite(room, ghost);
    await alice.waitForMembership(room, ghost, "join");
    const eventId = await alice.sendText(room, "This one will bounce later");
    const sent = await env.sink.waitForMail((m) => m.rcptTo.includes("gone@example.org"));
    const headerEnd = sent.raw.indexOf("\r\n\r\n");
    const dsn = await composeDsn({
      reportingMta: "mx.example.org",
      fromAddress: "MAILER-DAEMON@example.org",
      to: `alice@${MAIL_DOMAIN}`,
      arrivalDate: new Date(),
      recipients: [{ address: "gone@example.org", status: "5.1.1", diagnostic: "smtp; 550 5.1.1 <gone@example.org>: user unknown" }],
      humanText: "Your message could not be delivered.",
      originalHeaders: sent.raw.subarray(0, headerEnd + 2),
      messageIdDomain: "example.org",
    });
    // A report comes from the null reverse-path; SPF then checks the HELO name, example.org.
    assert.match(await env.sendRaw(dsn, { from: "", to: `alice@${MAIL_DOMAIN}` }, { helo: "example.org" }), /^250 /);
    const notice = await alice.waitForEvent(room, (e) => e.content.msgtype === "m.notice" && String(e.content.body ?? "").includes("delivery report"));
    assert.match(String(notice.content.body), /gone@example\.org: failed \(5\.1\.1\)/);
    assert.equal((notice.content["m.relates_to"] as { "m.in_reply_to": { event_id: string } })["m.in_reply_to"].event_id, eventId);
  });
  it("a DM room left without its portal by a crash is adopted on the retry, not made again", async () => {
    // What a kill -9 between the ghost creating the DM room and the portal row leaves behind.
    const erin = await env.synapse.registerUser("erin");
    const asToken = String((parseYaml(readFileSync(env.config.appservice.registration_file, "utf8")) as { as_token: string }).as_token);
    const ghost = await MatrixTestClient.registerAppserviceUser(env.synapse.url, asToken, "email_frank=40example.org");
    const orphan = await ghost.createRoom({ preset: "private_chat", is_direct: true, invite: [erin.userId] });
    await erin.waitForInvite(30_000, (i) => i.roomId === orphan);

    await send(rfc5322({ from: "Frank <frank@example.org>", to: `erin@${MAIL_DOMAIN}`, subject: "Hi Erin", body: "adopted, not duplicated" }), "frank@example.org", `erin@${MAIL_DOMAIN}`);
    await erin.join(orphan);
    await erin.waitForEvent(orphan, (e) => String(e.content.body ?? "").includes("adopted, not duplicated"));
    const sync = await erin.sync();
    assert.deepEqual(Object.keys(sync.rooms?.invite ?? {}), [], "no second invite");
    assert.equal((await env.bridge.store.getDmPortal(erin.userId, "frank@example.org", true))?.roomId, orphan);
  });
});
