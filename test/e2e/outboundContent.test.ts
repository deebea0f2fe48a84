/**
 * Matrix → email content, end to end: files from a real client become attachments (bytes
 * compared), a file over `outbound.max_attachment_bytes` becomes a link (to its event; with
 * `appservice.public_url`, to the bridge's `/media/` route, which streams it), an edit becomes a
 * "Correction:" mail in the thread, notices and reactions stay in Matrix, a reply or a thread
 * message continues the mail thread. A real Synapse, the
 * bridge in-process (SQLite), the loopback SMTP sink as the remote MTA; the mail is read back
 * with mailparser and its DKIM signature checked.
 */
import { after, before, describe, it } from "node:test";
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { simpleParser } from "mailparser";
import { dkimVerify } from "mailauth";
import { startEnv, type E2eEnv } from "./env.ts";
import type { MatrixTestClient } from "../harness/matrixClient.ts";
import type { SinkMail } from "../harness/smtpSink.ts";
import { DnsResolver } from "../../src/mail/dns.ts";
import { readFileSync } from "node:fs";
import { parse as parseYaml } from "yaml";
import { MediaLinks } from "../../src/bridge/mediaLinks.ts";

const BOB_GHOST = "@email_bob=40example.org:localhost";
const LIMIT = 50_000;

describe("Matrix → email content (files, edits, notices, reactions)", () => {
  let env: E2eEnv;
  let alice: MatrixTestClient;
  let roomId: string;

  before(async () => {
    env = await startEnv("sqlite", { allowedUsers: ["@alice:localhost"], config: { outbound: { max_attachment_bytes: LIMIT } } });
    alice = await env.synapse.registerUser("alice", { displayName: "Alice" });
    roomId = await alice.createRoom({ preset: "private_chat", name: "Files" });
    await alice.invite(roomId, BOB_GHOST);
    await alice.waitForMembership(roomId, BOB_GHOST, "join");
  });
  after(async () => {
    await env?.stop();
  });

  /** Upload through the Client-Server API (`POST /_matrix/media/v3/upload`); returns the mxc URI. */
  async function upload(data: Buffer, contentType: string, filename: string): Promise<string> {
    const res = await fetch(`${env.synapse.url}/_matrix/media/v3/upload?filename=${encodeURIComponent(filename)}`, {
      method: "POST",
      headers: { authorization: `Bearer ${alice.accessToken}`, "content-type": contentType },
      body: data,
    });
    assert.equal(res.status, 200, `upload: ${await res.clone().text()}`);
    return ((await res.json()) as { content_uri: string }).content_uri;
  }

  async function mailFor(marker: string): Promise<SinkMail> {
    return env.sink.waitForMail((m) => m.rcptTo.includes("bob@example.org") && m.raw.includes(marker));
  }

  async function dkimPasses(raw: Buffer): Promise<void> {
    const lookup = new DnsResolver({ nameservers: [env.dns.nameserver], timeoutMs: 1000, tries: 1, cacheEntries: 0, cacheTtlMs: 0 }).lookup;
    const result = await dkimVerify(raw, { resolver: lookup as never });
    assert.equal(result.results[0]?.status.result, "pass", JSON.stringify(result.results));
  }

  it("an image with a caption becomes an attachment, byte for byte, with the caption as the text", async () => {
    const png = Buffer.concat([Buffer.from("89504e470d0a1a0a", "hex"), randomBytes(20_000)]);
    const url = await upload(png, "image/png", "cat.png");
    await alice.sendEvent(roomId, "m.room.message", { msgtype: "m.image", body: "Look at this cat (caption-1)", filename: "cat.png", url, info: { mimetype: "image/png", size: png.length } });
    const sent = await mailFor("caption-1");
    const mail = await simpleParser(sent.raw);
    assert.match(mail.text ?? "", /Look at this cat \(caption-1\)/);
    assert.equal(mail.attachments.length, 1);
    const att = mail.attachments[0]!;
    assert.equal(att.filename, "cat.png");
    assert.equal(att.contentType, "image/png");
    assert.ok(att.content.equals(png), "the attachment is the uploaded bytes");
    await dkimPasses(sent.raw);
  });

  it("a file without a caption is attached under its name; the body is its name", async () => {
    const data = randomBytes(3000);
    const url = await upload(data, "application/pdf", "report-2.pdf");
    await alice.sendEvent(roomId, "m.room.message", { msgtype: "m.file", body: "report-2.pdf", url, info: { mimetype: "application/pdf", size: data.length } });
    const sent = await mailFor("report-2.pdf");
    const mail = await simpleParser(sent.raw);
    assert.equal(mail.attachments[0]?.filename, "report-2.pdf");
    assert.ok(mail.attachments[0]?.content.equals(data));
  });

  it("audio and video are attached too, byte for byte, each typed and named as sent", async () => {
    const ogg = Buffer.concat([Buffer.from("OggS"), randomBytes(4000)]);
    const mp4 = Buffer.concat([Buffer.from("000000186674797069736f6d", "hex"), randomBytes(6000)]);
    for (const [msgtype, data, type, name] of [
      ["m.audio", ogg, "audio/ogg", "voice-7.ogg"],
      ["m.video", mp4, "video/mp4", "clip-7.mp4"],
    ] as const) {
      const url = await upload(data, type, name);
      await alice.sendEvent(roomId, "m.room.message", { msgtype, body: name, filename: name, url, info: { mimetype: type, size: data.length } });
      const sent = await mailFor(name);
      const mail = await simpleParser(sent.raw);
      assert.equal(mail.attachments.length, 1, msgtype);
      assert.equal(mail.attachments[0]?.filename, name);
      assert.equal(mail.attachments[0]?.contentType, type);
      assert.ok(mail.attachments[0]?.content.equals(data), `${msgtype}: the attachment is the uploaded bytes`);
      await dkimPasses(sent.raw);
    }
  });

  it("without appservice.public_url, a file over outbound.max_attachment_bytes is sent as a link to its event, with why", async () => {
    const data = randomBytes(LIMIT + 1000);
    const url = await upload(data, "video/mp4", "big-3.mp4");
    // The size in info is left out: the bridge stops reading at the limit.
    const eventId = await alice.sendEvent(roomId, "m.room.message", { msgtype: "m.video", body: "holiday video (big-3)", filename: "big-3.mp4", url });
    const sent = await mailFor("big-3");
    const mail = await simpleParser(sent.raw);
    assert.equal(mail.attachments.length, 0);
    assert.match(mail.text ?? "", /holiday video \(big-3\)/);
    assert.match(mail.text ?? "", new RegExp(`big-3\\.mp4 is larger than this bridge sends by email \\(${LIMIT} bytes\\)`));
    assert.ok((mail.text ?? "").includes(`https://matrix.to/#/${encodeURIComponent(roomId)}/${encodeURIComponent(eventId)}`));
  });

  it("an edit sends a short Correction: mail in the same thread; notices and reactions are not mailed", async () => {
    const original = await alice.sendText(roomId, "We meet at five (edit-4)");
    const first = await simpleParser((await mailFor("edit-4")).raw);
    assert.equal(first.subject, "Files", "a new topic takes the room's name as its subject");
    await alice.sendEvent(roomId, "m.room.message", { msgtype: "m.notice", body: "a bot's notice (notice-5)" });
    await alice.sendEvent(roomId, "m.reaction", { "m.relates_to": { rel_type: "m.annotation", event_id: original, key: "👍" } });
    await alice.sendEvent(roomId, "m.room.message", {
      msgtype: "m.text",
      body: "* We meet at six (edit-4b)",
      "m.new_content": { msgtype: "m.text", body: "We meet at six (edit-4b)" },
      "m.relates_to": { rel_type: "m.replace", event_id: original },
    });
    const correctionRaw = (await mailFor("edit-4b")).raw;
    await dkimPasses(correctionRaw);
    const correction = await simpleParser(correctionRaw);
    assert.equal(correction.subject, `Correction: ${first.subject}`);
    assert.equal(correction.inReplyTo, first.messageId);
    assert.match(String(correction.references), new RegExp(first.messageId!.replace(/[.*+?^${}()|[\]\\]/g, "\\$&")));
    assert.match(correction.text ?? "", /We meet at six \(edit-4b\)/);
    assert.doesNotMatch(correction.text ?? "", /^\* /, "the edit's fallback star is not mailed");
    // The notice and the reaction came before the edit in the room: nothing of them was mailed.
    assert.ok(!env.sink.mails.some((m) => m.raw.includes("notice-5")), "the notice stays in Matrix");
    assert.equal(env.sink.mails.filter((m) => m.raw.includes("edit-4")).length, 2, "the original and the correction, nothing for the reaction");
  });

  it("a Matrix reply is mailed with the message it answers quoted; mentions show as names, without matrix.to links", async () => {
    const asked = await alice.sendText(roomId, "Shall we bring cake?\nOr pie? (quote-6)");
    const firstMail = await simpleParser((await mailFor("quote-6")).raw);
    await alice.sendEvent(roomId, "m.room.message", {
      msgtype: "m.text",
      body: "> <@alice:localhost> Shall we bring cake?\n> Or pie? (quote-6)\n\nBob: cake, surely (answer-6)",
      format: "org.matrix.custom.html",
      formatted_body:
        `<mx-reply><blockquote><a href="https://matrix.to/#/${roomId}/${asked}">In reply to</a> <a href="https://matrix.to/#/@alice:localhost">@alice:localhost</a><br>Shall we bring cake?</blockquote></mx-reply>` +
        `<a href="https://matrix.to/#/${BOB_GHOST}">Bob</a>: cake, <em>surely</em> (answer-6)`,
      "m.relates_to": { "m.in_reply_to": { event_id: asked } },
    });
    const mail = await simpleParser((await mailFor("answer-6")).raw);
    assert.equal(mail.inReplyTo, firstMail.messageId);
    assert.match(mail.text ?? "", /^Bob: cake, surely \(answer-6\)\n\nOn .+, Alice wrote:\n> Shall we bring cake\?\n> Or pie\? \(quote-6\)/);
    const html = String(mail.html);
    assert.ok(!html.includes("matrix.to"), `no matrix.to links in the HTML: ${html}`);
    assert.match(html, /Bob: cake, <em>surely<\/em> \(answer-6\)/);
    assert.match(html, /Alice wrote:.*<blockquote>Shall we bring cake\?<br>Or pie\? \(quote-6\)<\/blockquote>/s);
  });

  it("a thread message continues the mail thread of its root: In-Reply-To, References, Re: subject", async () => {
    const root = await alice.sendText(roomId, "Who brings the cake? (thread-8)");
    const rootMail = await simpleParser((await mailFor("thread-8")).raw);
    // As Element sends it: the thread relation with its reply fallback (Client-Server API, "Threading").
    await alice.sendEvent(roomId, "m.room.message", {
      msgtype: "m.text",
      body: "I do (thread-8b)",
      "m.relates_to": { rel_type: "m.thread", event_id: root, is_falling_back: true, "m.in_reply_to": { event_id: root } },
    });
    const sent = await mailFor("thread-8b");
    const mail = await simpleParser(sent.raw);
    assert.equal(mail.subject, `Re: ${rootMail.subject}`);
    assert.equal(mail.inReplyTo, rootMail.messageId);
    assert.match(String(mail.references), new RegExp(rootMail.messageId!.replace(/[.*+?^${}()|[\]\\]/g, "\\$&")));
    assert.match(mail.text ?? "", /^I do \(thread-8b\)/);
    assert.ok(!/wrote:|Who brings the cake/.test(mail.text ?? ""), `the fallback reply is not quoted: ${mail.text}`);
    await dkimPasses(sent.raw);
    // A real reply inside the thread (is_falling_back: false) quotes what it answers.
    const answer = await alice.sendEvent(roomId, "m.room.message", {
      msgtype: "m.text",
      body: "With candles? (thread-8c)",
      "m.relates_to": { rel_type: "m.thread", event_id: root, is_falling_back: false, "m.in_reply_to": { event_id: root } },
    });
    assert.ok(answer);
    const quoted = await simpleParser((await mailFor("thread-8c")).raw);
    assert.match(quoted.text ?? "", /wrote:\n> Who brings the cake\? \(thread-8\)/);
  });

  it("hostile content JSON (a relation whose event_id is an object) is read as no relation: mailed at once, the next message not held", async () => {
    const t0 = Date.now();
    await alice.sendEvent(roomId, "m.room.message", { msgtype: "m.text", body: "odd relation (poison-9)", "m.relates_to": { "m.in_reply_to": { event_id: { $ne: 1 } }, rel_type: ["m.thread"], event_id: 7 } });
    await alice.sendText(roomId, "the next one (poison-9b)");
    const odd = await simpleParser((await mailFor("poison-9")).raw);
    assert.match(odd.text ?? "", /^odd relation \(poison-9\)/);
    assert.equal(odd.inReplyTo, undefined, "no relation was read");
    await mailFor("poison-9b");
    assert.ok(Date.now() - t0 < 20_000, `both mailed within 20 s (took ${Date.now() - t0} ms)`);
    const notices = (await alice.getRoomMessages(roomId, { limit: 50 })).filter((e) => e.sender === "@emailbot:localhost" && /could not be sent/.test(String(e.content.body)));
    assert.deepEqual(notices.map((e) => e.content.body), [], "no failure notice");
  });

  /** The bot's notice answering `eventId` (a reply to it), within 20 s. */
  async function noticeFor(eventId: string): Promise<string> {
    const ev = await alice.waitForEvent(roomId, (e) => e.sender === "@emailbot:localhost" && (e.content["m.relates_to"] as { "m.in_reply_to"?: { event_id?: string } } | undefined)?.["m.in_reply_to"]?.event_id === eventId, 20_000);
    return String(ev.content.body);
  }

  it("a sticker is mailed as its image; a poll, an empty message and a file the homeserver cannot provide get one notice each, at once", async () => {
    const png = Buffer.concat([Buffer.from("89504e470d0a1a0a", "hex"), randomBytes(500)]);
    const url = await upload(png, "image/png", "wave.png");
    await alice.sendEvent(roomId, "m.sticker", { body: "A cat waving (sticker-10)", url, info: { mimetype: "image/png", size: png.length } });
    const sticker = await simpleParser((await mailFor("sticker-10")).raw);
    assert.match(sticker.text ?? "", /^A cat waving \(sticker-10\)/, "the description is the text");
    assert.equal(sticker.attachments.length, 1);
    assert.equal(sticker.attachments[0]!.filename, "sticker.png");
    assert.ok(sticker.attachments[0]!.content.equals(png), "the sticker's bytes are attached");

    const t0 = Date.now();
    const poll = await alice.sendEvent(roomId, "org.matrix.msc3381.poll.start", {
      "org.matrix.msc3381.poll.start": { question: { "org.matrix.msc1767.text": "Cake or pie? (poll-10)" }, kind: "org.matrix.msc3381.poll.disclosed", max_selections: 1, answers: [{ id: "a", "org.matrix.msc1767.text": "Cake" }] },
      "org.matrix.msc1767.text": "Cake or pie? (poll-10)\n1. Cake",
    });
    assert.equal(await noticeFor(poll), "Messages of type org.matrix.msc3381.poll.start are not sent by email; text, emotes, images, files, audio and video are.");
    const blank = await alice.sendEvent(roomId, "m.room.message", { msgtype: "m.text", body: " \n\t " });
    assert.equal(await noticeFor(blank), "This message has no text, so nothing was sent by email.");
    const missing = await alice.sendEvent(roomId, "m.room.message", { msgtype: "m.file", body: "gone.pdf", url: "mxc://localhost/DoesNotExist123", info: { mimetype: "application/pdf", size: 10 } });
    assert.match(await noticeFor(missing), /^This file cannot be sent by email: the homeserver could not provide it \(404 /);
    const remote = await alice.sendEvent(roomId, "m.room.message", { msgtype: "m.image", body: "b.png", url: "https://evil.test/b.png" });
    assert.equal(await noticeFor(remote), "This file cannot be sent by email: its media URL is not an mxc:// URI.");
    assert.ok(Date.now() - t0 < 30_000, `told within 30 s (took ${Date.now() - t0} ms)`);
    await alice.sendText(roomId, "after them (after-10)");
    await mailFor("after-10");
    assert.ok(!env.sink.mails.some((m) => m.raw.includes("poll-10") || m.raw.includes("gone.pdf")), "none of them was mailed");
  });
});

describe("Matrix → email: files over the limit with appservice.public_url (the bridge's /media/ links)", () => {
  let env: E2eEnv;
  let alice: MatrixTestClient;
  let roomId: string;
  let base: string;

  before(async () => {
    // The appservice listener serves the links; the test reaches it directly, as a reverse proxy would.
    env = await startEnv("sqlite", { allowedUsers: ["@alice:localhost"], publicUrl: true, config: { outbound: { max_attachment_bytes: LIMIT } } });
    base = env.config.appservice.public_url!;
    alice = await env.synapse.registerUser("alice", { displayName: "Alice" });
    roomId = await alice.createRoom({ preset: "private_chat", name: "Big files" });
    await alice.invite(roomId, BOB_GHOST);
    await alice.waitForMembership(roomId, BOB_GHOST, "join");
  });
  after(async () => {
    await env?.stop();
  });

  it("the mail says why and links <public_url>/media/<token>/<name>; the link serves the exact bytes, as a download, sandboxed", async () => {
    const data = randomBytes(LIMIT * 3);
    const name = "Ferien ü (big-4).mp4";
    const res = await fetch(`${env.synapse.url}/_matrix/media/v3/upload?filename=${encodeURIComponent(name)}`, {
      method: "POST",
      headers: { authorization: `Bearer ${alice.accessToken}`, "content-type": "video/mp4" },
      body: data,
    });
    assert.equal(res.status, 200);
    const url = ((await res.json()) as { content_uri: string }).content_uri;
    await alice.sendEvent(roomId, "m.room.message", {
      msgtype: "m.video",
      body: "holiday video (big-4)",
      format: "org.matrix.custom.html",
      formatted_body: "<em>holiday</em> video (big-4)",
      filename: name,
      url,
      info: { mimetype: "video/mp4", size: data.length },
    });
    const sent = await env.sink.waitForMail((m) => m.rcptTo.includes("bob@example.org") && m.raw.includes("big-4"));
    const mail = await simpleParser(sent.raw);
    assert.equal(mail.attachments.length, 0);
    const text = mail.text ?? "";
    assert.match(text, /holiday video \(big-4\)/);
    assert.ok(text.includes(`${name} (${data.length} bytes) is larger than this bridge sends by email (${LIMIT} bytes), so it is not attached.`), text);
    assert.ok(!text.includes("matrix.to"), text);
    const m = /(http:\/\/127\.0\.0\.1:\d+\/media\/([A-Za-z0-9_-]+\.[A-Za-z0-9_-]{43})\/(\S+))/.exec(text);
    assert.ok(m, `a /media/ link in:\n${text}`);
    const [, link, token, encodedName] = m as unknown as [string, string, string, string];
    assert.ok(link.startsWith(`${base}/media/`));
    assert.equal(decodeURIComponent(encodedName), name);
    // The caption's HTML went too, with the link.
    assert.match(String(mail.html), /<em>holiday<\/em> video \(big-4\)/);
    assert.ok(String(mail.html).includes(`href="${link}"`), String(mail.html));

    const got = await fetch(link, { redirect: "manual" });
    assert.equal(got.status, 200);
    assert.equal(got.headers.get("content-type"), "video/mp4");
    assert.equal(got.headers.get("content-length"), String(data.length));
    assert.equal(got.headers.get("content-disposition"), `attachment; filename="Ferien _ (big-4).mp4"; filename*=UTF-8''Ferien%20%C3%BC%20%28big-4%29.mp4`);
    assert.equal(got.headers.get("x-content-type-options"), "nosniff");
    assert.match(got.headers.get("content-security-policy") ?? "", /^sandbox(;|$)/);
    assert.equal(got.headers.get("set-cookie"), null);
    assert.ok(Buffer.from(await got.arrayBuffer()).equals(data), "the served bytes are the uploaded ones");

    const head = await fetch(link, { method: "HEAD" });
    assert.equal(head.status, 200);
    assert.equal(head.headers.get("content-length"), String(data.length));
    assert.equal(head.headers.get("content-disposition"), got.headers.get("content-disposition"));
    assert.equal((await head.arrayBuffer()).byteLength, 0);

    // Forged, tampered or renamed links: 404, nothing served.
    const mac = token.split(".")[1]!;
    const flipped = `${token.split(".")[0]}.${mac[0] === "A" ? "B" : "A"}${mac.slice(1)}`;
    for (const bad of [`${base}/media/${flipped}/${encodedName}`, `${base}/media/${token}/evil.html`, `${base}/media/nonsense/${encodedName}`, `${base}/media/${token}`]) {
      const r = await fetch(bad, { redirect: "manual" });
      assert.equal(r.status, 404, bad);
      assert.equal(r.headers.get("content-type"), "text/plain; charset=utf-8");
      assert.ok(!Buffer.from(await r.arrayBuffer()).includes(data.subarray(0, 64)));
    }
    const post = await fetch(link, { method: "POST", redirect: "manual" });
    assert.equal(post.status, 405);
    assert.equal(post.headers.get("allow"), "GET, HEAD");
  });

  it("a valid link to media the homeserver does not have: 502 with a short text", async () => {
    const registration = parseYaml(readFileSync(env.config.appservice.registration_file, "utf8")) as { as_token: string };
    const links = new MediaLinks({ asToken: registration.as_token, publicUrl: base, days: 1 });
    const { url } = links.linkFor("mxc://localhost/NoSuchMedia0123", roomId, "gone.bin");
    const r = await fetch(url, { redirect: "manual" });
    assert.equal(r.status, 502);
    assert.equal(r.headers.get("content-type"), "text/plain; charset=utf-8");
    assert.match(await r.text(), /could not be fetched from the Matrix homeserver/);
  });
});
