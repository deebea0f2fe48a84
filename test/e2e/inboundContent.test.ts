/**
 * End to end, received mail reads natively in Matrix: in a room mailbox each email conversation
 * is a Matrix thread rooted at its first mail; in a DM a reply stays a rich reply; HTML nested
 * deeper than the spec's 100 levels is flattened without losing text; a link whose text names
 * another target shows the real one; an attachment's name loses bidi controls; a subject too long
 * to show whole, or one that lost control characters, brings the original along as message.eml; a
 * mail with nothing to show but a file posts the file alone; a large attachment arrives byte for
 * byte. A real Synapse,
 * the bridge in-process on the embedded SQLite store, a real DNS server. What is asserted is what
 * a Matrix client reads through the Client-Server API.
 */
import { after, before, describe, it } from "node:test";
import assert from "node:assert/strict";
import { createMailboxRoom, startEnv, MAIL_DOMAIN, type E2eEnv } from "./env.ts";
import type { MatrixEvent, MatrixTestClient } from "../harness/matrixClient.ts";
import { depth } from "../harness/html.ts";

const CAROL = "@email_carol=40example.net:localhost";
const DAVE = "@email_dave=40example.net:localhost";
const BOB = "@email_bob=40example.org:localhost";

let counter = 0;
/** A unique Message-ID (without brackets). */
function newId(tag: string): string {
  return `${tag}-${++counter}-${Date.now()}@example.net`;
}

/** An RFC 5322 message. */
function rfc5322(opts: { from: string; to: string; cc?: string; subject: string; messageId: string; inReplyTo?: string; references?: string[]; headers?: string[]; body: string }): string {
  const lines = [`From: ${opts.from}`, `To: ${opts.to}`, `Subject: ${opts.subject}`, "Date: Mon, 2 Nov 2026 10:00:00 +0000", `Message-ID: <${opts.messageId}>`];
  if (opts.cc) lines.push(`Cc: ${opts.cc}`);
  if (opts.inReplyTo) lines.push(`In-Reply-To: <${opts.inReplyTo}>`);
  if (opts.references?.length) lines.push(`References: ${opts.references.map((r) => `<${r}>`).join(" ")}`);
  return [...lines, ...(opts.headers ?? []), "", opts.body, ""].join("\r\n");
}

/** `m.relates_to` of an event, or undefined. */
function relation(ev: MatrixEvent): Record<string, unknown> | undefined {
  return ev.content["m.relates_to"] as Record<string, unknown> | undefined;
}


describe("received mail reads natively in Matrix (embedded SQLite store)", () => {
  let env: E2eEnv;
  let alice: MatrixTestClient;
  let roomId: string;
  const team = `team@${MAIL_DOMAIN}`;

  before(async () => {
    env = await startEnv("sqlite", { allowedUsers: ["@alice:localhost"] });
    alice = await env.synapse.registerUser("alice", { displayName: "Alice" });
    roomId = await createMailboxRoom(alice, "team", "Team");
  });
  after(async () => {
    await env?.stop();
  });

  const send = (raw: string, from: string, to = team) => env.sendRaw(raw, { from, to });

  it("room mailbox: a conversation is a thread rooted at its first mail; replies to replies stay in it", async () => {
    const first = newId("root");
    const carol = "Carol <carol@example.net>";
    const dave = "Dave <dave@example.net>";
    assert.match(await send(rfc5322({ from: carol, to: team, cc: "dave@example.net", subject: "Offsite plans", messageId: first, body: "Where shall we go?" }), "carol@example.net"), /^250 /);
    const root = await alice.waitForEvent(roomId, (e) => e.sender === CAROL && String(e.content.body).includes("Where shall we go?"));
    assert.equal(relation(root), undefined, "the first mail is a top-level event");
    assert.match(String(root.content.body), /^Offsite plans\n\n/, "its subject is its first line");

    // Dave replies to the first mail (References): the thread starts, falling back to the root.
    const second = newId("re1");
    assert.match(await send(rfc5322({ from: dave, to: team, cc: "carol@example.net", subject: "Re: Offsite plans", messageId: second, inReplyTo: first, references: [first], body: "The lake, please." }), "dave@example.net"), /^250 /);
    const reply = await alice.waitForEvent(roomId, (e) => e.sender === DAVE && String(e.content.body).includes("The lake, please."));
    assert.deepEqual(relation(reply), { rel_type: "m.thread", event_id: root.event_id, is_falling_back: true, "m.in_reply_to": { event_id: root.event_id } });
    assert.doesNotMatch(String(reply.content.body), /^Re: Offsite plans/, "no subject line on a reply");

    // Carol answers Dave's reply (the latest thread message): same thread, falling back to it.
    const third = newId("re2");
    assert.match(await send(rfc5322({ from: carol, to: team, cc: "dave@example.net", subject: "Re: Offsite plans", messageId: third, inReplyTo: second, references: [first, second], body: "Lake it is." }), "carol@example.net"), /^250 /);
    const replyToReply = await alice.waitForEvent(roomId, (e) => e.sender === CAROL && String(e.content.body).includes("Lake it is."));
    assert.deepEqual(relation(replyToReply), { rel_type: "m.thread", event_id: root.event_id, is_falling_back: true, "m.in_reply_to": { event_id: reply.event_id } });

    // Dave answers his own earlier message, with a trimmed References: a genuine reply inside the thread.
    const fourth = newId("re3");
    assert.match(await send(rfc5322({ from: dave, to: team, cc: "carol@example.net", subject: "Re: Offsite plans", messageId: fourth, inReplyTo: second, references: [second], body: "Bring boots." }), "dave@example.net"), /^250 /);
    const earlier = await alice.waitForEvent(roomId, (e) => e.sender === DAVE && String(e.content.body).includes("Bring boots."));
    assert.deepEqual(relation(earlier), { rel_type: "m.thread", event_id: root.event_id, is_falling_back: false, "m.in_reply_to": { event_id: reply.event_id } });

    // The homeserver sees one thread (Client-Server API, GET /relations/{root}/m.thread).
    const threaded = await alice.request<{ chunk: MatrixEvent[] }>("GET", `/_matrix/client/v1/rooms/${encodeURIComponent(roomId)}/relations/${encodeURIComponent(root.event_id)}/m.thread`);
    assert.deepEqual(threaded.chunk.map((e) => e.event_id).sort(), [reply.event_id, replyToReply.event_id, earlier.event_id].sort());
  });

  it("DM: a reply by mail stays a rich reply (m.in_reply_to only)", async () => {
    const first = newId("dm");
    const bob = "Bob <bob@example.org>";
    const me = `alice@${MAIL_DOMAIN}`;
    assert.match(await send(rfc5322({ from: bob, to: me, subject: "Lunch?", messageId: first, body: "Lunch on Friday?" }), "bob@example.org", me), /^250 /);
    const dm = await alice.waitForInvite(30_000, (i) => i.inviter === BOB);
    await alice.join(dm);
    const opener = await alice.waitForEvent(dm, (e) => e.sender === BOB && String(e.content.body).includes("Lunch on Friday?"));
    assert.match(await send(rfc5322({ from: bob, to: me, subject: "Re: Lunch?", messageId: newId("dm-re"), inReplyTo: first, references: [first], body: "Or Saturday." }), "bob@example.org", me), /^250 /);
    const reply = await alice.waitForEvent(dm, (e) => e.sender === BOB && String(e.content.body).includes("Or Saturday."));
    assert.deepEqual(relation(reply), { "m.in_reply_to": { event_id: opener.event_id } });
  });

  it("HTML nested 150 deep arrives at most 100 deep, with all its text", async () => {
    const words = Array.from({ length: 150 }, (_, i) => `level${i}`);
    const html = words.map((w, i) => `${i % 2 ? "<blockquote>" : "<div>"}${w} `).join("") + "bottom" + words.map((_, i) => (i % 2 ? "</blockquote>" : "</div>")).reverse().join("");
    const raw = rfc5322({ from: "carol@example.net", to: team, subject: "Deep", messageId: newId("deep"), headers: ["MIME-Version: 1.0", "Content-Type: text/html; charset=utf-8"], body: html });
    assert.match(await send(raw, "carol@example.net"), /^250 /);
    const ev = await alice.waitForEvent(roomId, (e) => e.sender === CAROL && String(e.content.body).includes("level149"));
    const formatted = String(ev.content.formatted_body);
    assert.ok(depth(formatted) <= 100, `formatted_body is ${depth(formatted)} deep`);
    const text = formatted.replace(/<[^>]*>/gu, "");
    for (const w of [...words, "bottom"]) assert.ok(text.includes(w), `${w} is kept`);
  });

  it("a link whose text names another target shows the real one; a harmless link does not", async () => {
    const html =
      '<p>Please log in at <a href="https://evil.example/login">https://bank.example/login</a>, ' +
      'or at <a href="https://bank.example">https://evil.example</a>. ' +
      'Our <a href="https://bank.example/help">help pages</a> and <a href="https://bank.example/">bank.example</a>.</p>';
    const raw = rfc5322({ from: "carol@example.net", to: team, subject: "Links", messageId: newId("links"), headers: ["MIME-Version: 1.0", "Content-Type: text/html; charset=utf-8"], body: html });
    assert.match(await send(raw, "carol@example.net"), /^250 /);
    const ev = await alice.waitForEvent(roomId, (e) => e.sender === CAROL && String(e.content.body).includes("Please log in"));
    const formatted = String(ev.content.formatted_body);
    assert.ok(formatted.includes('<a href="https://evil.example/login">https://bank.example/login</a> (https://evil.example/login)'), formatted);
    assert.ok(formatted.includes('<a href="https://bank.example">https://evil.example</a> (https://bank.example)'), formatted);
    assert.ok(formatted.includes('<a href="https://bank.example/help">help pages</a> and'), formatted);
    assert.ok(formatted.includes('<a href="https://bank.example/">bank.example</a>.'), formatted);
  });

  it("an attachment's name loses its bidi override", async () => {
    const boundary = "b0undary";
    const body = [
      `--${boundary}`,
      "Content-Type: text/plain; charset=utf-8",
      "",
      "The invoice is attached.",
      `--${boundary}`,
      "Content-Type: application/octet-stream",
      "Content-Transfer-Encoding: base64",
      "Content-Disposition: attachment; filename*=utf-8''invoice%E2%80%AEfdp.exe",
      "",
      Buffer.from("MZ not really").toString("base64"),
      `--${boundary}--`,
    ].join("\r\n");
    const raw = rfc5322({ from: "carol@example.net", to: team, subject: "Invoice", messageId: newId("file"), headers: ["MIME-Version: 1.0", `Content-Type: multipart/mixed; boundary="${boundary}"`], body });
    assert.match(await send(raw, "carol@example.net"), /^250 /);
    const file = await alice.waitForEvent(roomId, (e) => e.sender === CAROL && e.content.msgtype === "m.file");
    assert.equal(file.content.body, "invoicefdp.exe");
    assert.equal(file.content.filename, "invoicefdp.exe");
  });

  it("a cut subject brings the original along; a subject loses controls (named) and bidi overrides; a mail with only a file posts the file alone, and a reply threads on it", async () => {
    // A 50 KB subject, folded: the event shows 500 characters, says so, and message.eml has the rest.
    const words = Array.from({ length: 6000 }, (_, i) => `huge${i}`).join(" ");
    const huge = rfc5322({ from: "carol@example.net", to: team, subject: words.replace(/(.{70}) /g, "$1\r\n "), messageId: newId("huge"), body: "huge subject" });
    assert.match(await send(huge, "carol@example.net"), /^250 /);
    const cut = await alice.waitForEvent(roomId, (e) => e.sender === CAROL && String(e.content.body).endsWith("huge subject"));
    const [line, shown] = String(cut.content.body).split("\n\n");
    assert.equal(line, `✂️ The subject is too long to show here (${[...words].length} characters); the original is attached as message.eml.`);
    assert.ok(shown!.startsWith("huge0 huge1") && shown!.endsWith("…"));
    const eml = await alice.waitForEvent(roomId, (e) => e.sender === CAROL && e.content.body === "message.eml" && e.origin_server_ts >= cut.origin_server_ts);
    const [, server, media] = /^mxc:\/\/([^/]+)\/(.+)$/.exec(String(eml.content.url)) ?? [];
    const res = await fetch(`${env.synapse.url}/_matrix/client/v1/media/download/${server}/${media}`, { headers: { authorization: `Bearer ${alice.accessToken}` } });
    assert.ok((await res.text()).includes(`huge${5999}`), "message.eml holds the whole subject");

    // NUL and a right-to-left override in the subject.
    const nul = rfc5322({ from: "carol@example.net", to: team, subject: "Nul\u0000in =?utf-8?q?subject=E2=80=AEtxt.exe?=", messageId: newId("nul"), body: "nul subject" });
    assert.match(await send(nul, "carol@example.net"), /^250 /);
    const cleaned = await alice.waitForEvent(roomId, (e) => e.sender === CAROL && String(e.content.body).endsWith("nul subject"));
    assert.equal(
      cleaned.content.body,
      "⚠️ Parts of this mail could not be decoded (control characters in the subject); the original is attached as message.eml.\n\nNulin subject txt.exe\n\nnul subject",
    );

    // No subject, application/octet-stream, empty body: the file alone.
    const fileOnly = newId("file-only");
    const empty = ["From: carol@example.net", `To: ${team}`, "Date: Mon, 2 Nov 2026 10:00:00 +0000", `Message-ID: <${fileOnly}>`, "MIME-Version: 1.0", "Content-Type: application/octet-stream", "", ""].join("\r\n");
    assert.match(await send(empty, "carol@example.net"), /^250 /);
    const file = await alice.waitForEvent(roomId, (e) => e.sender === CAROL && e.content.msgtype === "m.file" && e.content.body === "attachment-1");
    assert.deepEqual((file.content.info as Record<string, unknown>).size, 0);
    assert.equal((file.content["io.github.matrix-email-bridge.auth"] as { verified: boolean }).verified, true);
    const blank = (await alice.getRoomMessages(roomId, { limit: 100 })).filter((e) => e.sender === CAROL && e.type === "m.room.message" && String(e.content.body ?? "").trim() === "");
    assert.deepEqual(blank, [], "no blank text event");
    // The file stands for the mail: a reply to it is a thread rooted at the file.
    assert.match(await send(rfc5322({ from: "carol@example.net", to: team, subject: "Re: the scan", messageId: newId("file-re"), inReplyTo: fileOnly, references: [fileOnly], body: "Did the file arrive?" }), "carol@example.net"), /^250 /);
    const reply = await alice.waitForEvent(roomId, (e) => e.sender === CAROL && String(e.content.body).includes("Did the file arrive?"));
    assert.deepEqual(relation(reply), { rel_type: "m.thread", event_id: file.event_id, is_falling_back: true, "m.in_reply_to": { event_id: file.event_id } });
  });

  it("a 3 MiB attachment (a mail stored in chunks, the file streamed to the media repository) arrives byte for byte", async () => {
    const boundary = "b1g";
    const data = Buffer.from(Array.from({ length: 3 * 1024 * 1024 + 17 }, (_, i) => (i * 31 + (i >> 12)) % 256));
    const body = [
      `--${boundary}`,
      "Content-Type: text/plain; charset=utf-8",
      "",
      "The recording is attached.",
      `--${boundary}`,
      'Content-Type: audio/ogg; name="call.ogg"',
      "Content-Transfer-Encoding: base64",
      'Content-Disposition: attachment; filename="call.ogg"',
      "",
      ...(data.toString("base64").match(/.{1,76}/g) ?? []),
      `--${boundary}--`,
    ].join("\r\n");
    const raw = rfc5322({ from: "carol@example.net", to: team, subject: "Recording", messageId: newId("big"), headers: ["MIME-Version: 1.0", `Content-Type: multipart/mixed; boundary="${boundary}"`], body });
    assert.match(await send(raw, "carol@example.net"), /^250 /);
    const file = await alice.waitForEvent(roomId, (e) => e.sender === CAROL && e.content.msgtype === "m.audio");
    assert.equal(file.content.body, "call.ogg");
    assert.deepEqual(file.content.info, { mimetype: "audio/ogg", size: data.length });
    const [, server, id] = /^mxc:\/\/([^/]+)\/(.+)$/.exec(String(file.content.url)) ?? [];
    const res = await fetch(`${env.synapse.url}/_matrix/client/v1/media/download/${server}/${id}`, { headers: { authorization: `Bearer ${alice.accessToken}` } });
    assert.equal(res.status, 200);
    assert.ok(Buffer.from(await res.arrayBuffer()).equals(data), "the downloaded file is the attachment");
  });
});
