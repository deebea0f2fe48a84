/**
 * End to end, the mail shapes real clients send (test/fixtures/eml/corpus/, described in its
 * README.md) arrive in Matrix as a reader expects: each fixture is delivered over SMTP from
 * bob@example.org (SPF-verified) to the room mailbox corpus@bridge.test of a real Synapse, and
 * what a Matrix client reads through the Client-Server API is checked: msgtype, body,
 * formatted_body, the thread relation of replies, and every posted file downloaded back
 * (authenticated media API) and compared byte for byte with the fixture's part, decoded here
 * from the fixture's bytes without the bridge's parser.
 */
import { after, before, describe, it } from "node:test";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { setTimeout as sleep } from "node:timers/promises";
import { createMailboxRoom, startEnv, MAIL_DOMAIN, type E2eEnv } from "./env.ts";
import type { MatrixEvent, MatrixTestClient } from "../harness/matrixClient.ts";

const BOB = "@email_bob=40example.org:localhost";
const MAILER_DAEMON = "@email_mailer-daemon=40example.org:localhost";
const BOT = "@emailbot:localhost";
const CORPUS = new URL("../fixtures/eml/corpus/", import.meta.url);

/** A fixture's bytes. */
function fixture(name: string): Buffer {
  return readFileSync(new URL(name, CORPUS));
}

/**
 * The decoded content of the part of `raw` whose header section contains `marker` (a file
 * name, a Content-ID): its body up to the next boundary delimiter (RFC 2046 §5.1.1: the CRLF
 * before `--boundary` belongs to the delimiter), base64-decoded when its
 * Content-Transfer-Encoding says so. Independent of the bridge's parser.
 */
function part(raw: Buffer, marker: string): Buffer {
  const text = raw.toString("latin1");
  const at = text.indexOf(marker);
  assert.ok(at >= 0, `the fixture has a part with ${marker}`);
  // The delimiter line above the part's header section names its boundary.
  const delimiterStart = text.lastIndexOf("\r\n--", at) + 2;
  const delimiter = text.slice(delimiterStart, text.indexOf("\r\n", delimiterStart));
  const bodyStart = text.indexOf("\r\n\r\n", at) + 4;
  const headers = text.slice(delimiterStart, bodyStart);
  const bodyEnd = text.indexOf(`\r\n${delimiter}`, bodyStart);
  assert.ok(bodyEnd > 0, `the part with ${marker} ends with ${delimiter}`);
  const body = raw.subarray(bodyStart, bodyEnd);
  return /content-transfer-encoding:\s*base64/iu.test(headers) ? Buffer.from(body.toString("latin1"), "base64") : body;
}

/** `m.relates_to` of an event, or undefined. */
function relation(ev: MatrixEvent): Record<string, unknown> | undefined {
  return ev.content["m.relates_to"] as Record<string, unknown> | undefined;
}

/** The `formatted_body` of a plain-text message: the text escaped, line breaks as `<br>`. */
function escapedHtml(text: string): string {
  return text.replace(/&/gu, "&amp;").replace(/</gu, "&lt;").replace(/>/gu, "&gt;").replace(/"/gu, "&quot;").replace(/\n/gu, "<br>");
}

describe("the mail shapes real clients send (corpus, embedded SQLite store)", () => {
  let env: E2eEnv;
  let alice: MatrixTestClient;
  let roomId: string;
  const mailbox = `corpus@${MAIL_DOMAIN}`;
  /** The thread root (01) and the latest message in its thread. */
  let root: MatrixEvent;
  let latest: MatrixEvent;

  before(async () => {
    env = await startEnv("sqlite", { allowedUsers: ["@alice:localhost"] });
    alice = await env.synapse.registerUser("alice", { displayName: "Alice" });
    roomId = await createMailboxRoom(alice, "corpus", "Corpus");
  });
  after(async () => {
    await env?.stop();
  });

  /** Deliver a fixture over SMTP from `from` (default bob@example.org; "" for the null reverse-path) and expect 250. */
  async function deliver(name: string, from = "bob@example.org", helo?: string): Promise<Buffer> {
    const raw = fixture(name);
    assert.match(await env.sendRaw(raw, { from, to: mailbox }, helo ? { helo } : {}), /^250 /, name);
    return raw;
  }

  /** The message event whose body includes `text`. */
  function message(text: string, sender = BOB): Promise<MatrixEvent> {
    return alice.waitForEvent(roomId, (e) => e.sender === sender && (e.content.msgtype === "m.text" || e.content.msgtype === "m.notice") && String(e.content.body).includes(text));
  }

  /** The file event named `name` posted after `after` (the message it belongs to). */
  async function file(name: string, afterEvent: MatrixEvent, sender = BOB): Promise<MatrixEvent> {
    return alice.waitForEvent(roomId, (e) => e.sender === sender && e.content.body === name && typeof e.content.url === "string" && e.origin_server_ts >= afterEvent.origin_server_ts && e.event_id !== afterEvent.event_id);
  }

  /** Download an `mxc://` URL through the authenticated media API, as Alice. */
  async function download(mxc: string): Promise<Buffer> {
    const [server, id] = mxc.slice("mxc://".length).split("/");
    const res = await fetch(`${env.synapse.url}/_matrix/client/v1/media/download/${server}/${id}`, { headers: { authorization: `Bearer ${alice.accessToken}` } });
    assert.equal(res.status, 200, `download ${mxc}`);
    return Buffer.from(await res.arrayBuffer());
  }

  /** The ghost's display name (its profile), as any client reads it. */
  async function displayName(userId: string): Promise<string> {
    const res = await alice.request<{ displayname?: string }>("GET", `/_matrix/client/v3/profile/${encodeURIComponent(userId)}/displayname`);
    return String(res.displayname);
  }

  /** All events of the room (oldest first). */
  async function timeline(): Promise<MatrixEvent[]> {
    return (await alice.getRoomMessages(roomId, { limit: 500 })).reverse();
  }

  it("Gmail: multipart/alternative, text and HTML; starts a conversation", async () => {
    await deliver("01-gmail-alternative.eml");
    root = await message("The quarterly plan is ready");
    latest = root;
    assert.equal(root.content.msgtype, "m.text");
    assert.equal(relation(root), undefined);
    assert.equal(
      root.content.body,
      "Quarterly plan\n\nHi team,\n\nThe quarterly plan is ready: the plan <https://example.org/plan>\n\nHighlights:\n\n   - hiring two engineers\n   - moving the offsite to Lisbon – in spring\n\nBob",
    );
    const html = String(root.content.formatted_body);
    assert.ok(html.startsWith("<p><strong>Quarterly plan</strong></p><div>"), html);
    assert.ok(html.includes('The <b>quarterly plan</b> is ready: <a href="https://example.org/plan">the plan</a>'), html);
    assert.ok(html.includes("<ul><li>hiring two engineers</li><li>moving the offsite to Lisbon – in spring</li></ul>"), html);
  });

  it("Apple Mail: multipart/related; the cid: image is shown inline, the unreferenced inline image is posted after", async () => {
    const raw = await deliver("02-apple-inline-images.eml");
    const ev = await message("Here is the new logo");
    assert.equal(ev.content.msgtype, "m.text");
    assert.equal(ev.content.body, "The new logo\n\nHere is the new logo:\n\n\nAnd the photo from the offsite is attached.");
    const html = String(ev.content.formatted_body);
    const img = /<div>Here is the new logo:<\/div><div><br \/><\/div><div><img src="(mxc:\/\/localhost\/[^"]+)" width="48" height="16" alt="logo" \/><\/div><div><br \/><\/div><div>And the photo/u.exec(html);
    assert.ok(img, `the logo is shown where the mail shows it: ${html}`);
    assert.ok((await download(img[1]!)).equals(part(raw, "Content-Id: <4F2A6C1E")), "the inline image's bytes");
    const photo = await file("offsite.png", ev);
    assert.equal(photo.content.msgtype, "m.image");
    assert.equal((photo.content.info as { mimetype?: string }).mimetype, "image/png");
    assert.ok((await download(String(photo.content.url))).equals(part(raw, "Content-Id: <9A8B7C6D")), "the unreferenced image's bytes");
  });

  it("Outlook: multipart/mixed with related and alternative; signature image inline, PDF and CSV attached", async () => {
    const raw = await deliver("03-outlook-attachments.eml");
    const ev = await message("Please find the Q3 report");
    assert.equal(ev.content.body, "Q3 report and figures\n\nHello,\n\nPlease find the Q3 report and the figures attached.\n\nKind regards\nBob Example\n[ACME]");
    const html = String(ev.content.formatted_body);
    const img = /<img src="(mxc:\/\/localhost\/[^"]+)" width="40" height="12" alt="ACME" \/>/u.exec(html);
    assert.ok(img, html);
    assert.ok(html.indexOf("Bob Example") < html.indexOf("<img"), "the image stays below the name");
    assert.ok((await download(img[1]!)).equals(part(raw, "Content-ID: <image001.png")));
    const pdf = await file("Q3 report.pdf", ev);
    assert.equal(pdf.content.msgtype, "m.file");
    assert.deepEqual(pdf.content.info, { mimetype: "application/pdf", size: part(raw, 'filename="Q3 report.pdf"').length });
    assert.ok((await download(String(pdf.content.url))).equals(part(raw, 'filename="Q3 report.pdf"')));
    const csv = await file("figures.csv", ev);
    assert.ok((await download(String(csv.content.url))).equals(part(raw, 'filename="figures.csv"')));
  });

  const replies: [string, string, string][] = [
    ["04-reply-gmail-en.eml", "Gmail, English: attribution and > quote, signature", "Sounds good to me. Can we add the budget review to the agenda?"],
    ["05-reply-outlook-en.eml", "Outlook, English: underscore rule and From/Sent header block", "Works for me, I booked the room for Tuesday."],
    ["06-reply-apple-en.eml", "Apple Mail (iOS), English: Sent from my iPhone, quoted attribution", "Great, thanks! I will bring the slides."],
    ["07-reply-thunderbird-de.eml", "Thunderbird, German: Am … schrieb, RFC 3676 signature", "Gerne, ich bringe die Zahlen für Q4 mit.\n\nViele Grüße\nBob"],
    ["08-reply-gmail-de.eml", "Gmail, German: attribution wrapped inside the address", "Klingt gut. Sollen wir das Budget auch besprechen?"],
    ["09-reply-gmail-fr.eml", "Gmail, French: Le … a écrit :", "Ça me va très bien. À mardi !"],
    ["10-reply-outlook-es.eml", "Outlook, Spanish: Mensaje original, windows-1252", "De acuerdo, nos vemos el martes.\n\nSaludos,\nBob"],
    ["11-reply-outlook-de.eml", "Outlook, German: Ursprüngliche Nachricht", "Einverstanden.\n\nMit freundlichen Grüßen\nBob Example"],
    ["12-reply-gmail-es.eml", "Gmail, Spanish: El … escribió, wrapped", "¡Perfecto! Llevo las diapositivas."],
    ["13-reply-apple-fr.eml", "Apple Mail, French: quoted Le … a écrit :", "Parfait, merci.\n\nBob"],
  ];
  for (const [name, shape, kept] of replies) {
    it(`reply, ${shape}: a thread message with the new text only; the whole mail attached`, async () => {
      const raw = await deliver(name);
      const ev = await message(kept.split("\n")[0]!);
      const body = kept;
      assert.equal(ev.content.msgtype, "m.text");
      assert.equal(ev.content.body, body);
      assert.equal(ev.content.formatted_body, escapedHtml(body));
      assert.deepEqual(relation(ev), { rel_type: "m.thread", event_id: root.event_id, is_falling_back: true, "m.in_reply_to": { event_id: latest.event_id } });
      latest = ev;
      const eml = await file("message.eml", ev);
      assert.deepEqual(relation(eml), { rel_type: "m.thread", event_id: root.event_id, is_falling_back: true, "m.in_reply_to": { event_id: ev.event_id } });
      const original = await download(String(eml.content.url));
      assert.ok(original.subarray(original.length - raw.length).equals(raw), "message.eml is the mail as received (after the bridge's Received header)");
    });
  }

  const charsets: [string, string, string, string, string, string][] = [
    ["14-charset-iso-2022-jp.eml", "ISO-2022-JP", "会議の議事録について", "山田 太郎", "お疲れ様です。山田です。\n\n本日の会議の議事録を添付いたします。\nご確認のほど、よろしくお願いいたします。", "議事録.txt"],
    ["15-charset-shift_jis.eml", "Shift_JIS", "見積書の送付", "鈴木 花子", "いつもお世話になっております。\n見積書を添付いたしますので、ご査収ください。", "見積書.txt"],
    ["16-charset-gb2312.eml", "GB2312", "会议通知：下周一上午十点", "王伟", "各位同事：\n\n下周一上午十点在三楼会议室开会，请准时参加。\n\n谢谢！", "会议议程.txt"],
    ["17-charset-windows-1251.eml", "windows-1251", "Встреча в понедельник", "Иван Петров", "Добрый день!\n\nВстреча переносится на понедельник, 10:00.\nПовестка во вложении.", "Повестка дня.txt"],
    ["18-charset-iso-8859-2.eml", "ISO-8859-2", "Spotkanie w środę", "Łukasz Żółkiewski", "Dzień dobry,\n\nspotkanie odbędzie się w środę o 10:00 w sali 4.2.\nZażółć gęślą jaźń.", "Zażółć.txt"],
    ["19-charset-iso-8859-15.eml", "ISO-8859-15", "Facture n° 42 : 50 €", "Œdipe Müller", "Bonjour,\n\nVeuillez trouver ci-joint la facture n° 42 d'un montant de 50 € (cinquante euros).\nCœur, œuvre.", "Facture 42 €.txt"],
  ];
  for (const [name, charset, subject, sender, text, filename] of charsets) {
    it(`${charset}: body, RFC 2047 Subject and From name, RFC 2231 file name`, async () => {
      const raw = await deliver(name);
      const ev = await message(text.split("\n")[0]!);
      assert.equal(ev.content.msgtype, "m.text");
      assert.equal(ev.content.body, `${subject}\n\n${text}`);
      assert.equal(ev.content.formatted_body, `<p><strong>${escapedHtml(subject)}</strong></p>${escapedHtml(text)}`);
      assert.equal(await displayName(BOB), sender, "the ghost's name is the decoded From name");
      const att = await file(filename, ev);
      assert.equal(att.content.filename, filename);
      assert.ok((await download(String(att.content.url))).equals(part(raw, "filename*=")), "the attachment's bytes, undecoded");
    });
  }

  it("calendar invitation, Google: summary with time zone; the calendar posted once (text/calendar and invite.ics are one)", async () => {
    const raw = await deliver("20-calendar-invite-google.eml");
    const ev = await message("You have been invited to the following event.");
    const body = String(ev.content.body);
    const summary = [
      "📅 Invitation: Project review: the quarterly plan, its budget and the offsite in Lisbon",
      "When: Mon, 9 Nov 2026, 15:00–16:00 (Europe/Berlin, UTC+01:00)",
      "Where: Room 4.2, Building A",
      "Organizer: Bob Example <bob@example.org>",
      "(the calendar file is attached as invite.ics)",
    ].join("\n");
    assert.ok(body.endsWith(`Invitation from Google Calendar\n\n${summary}`), body);
    const html = String(ev.content.formatted_body);
    assert.ok(
      html.includes(
        "<p><strong>📅 Invitation: Project review: the quarterly plan, its budget and the offsite in Lisbon</strong><br />When: Mon, 9 Nov 2026, 15:00–16:00 (Europe/Berlin, UTC+01:00)<br />Where: Room 4.2, Building A<br />Organizer: Bob Example &lt;bob@example.org&gt;</p>",
      ),
      html,
    );
    const ics = await file("invite.ics", ev);
    assert.equal(ics.content.msgtype, "m.file");
    assert.ok((await download(String(ics.content.url))).equals(part(raw, 'filename="invite.ics"')));
  });

  it("calendar invitation, Outlook: Windows time zone from its VTIMEZONE, weekly; the unnamed text/calendar posted as invite.ics", async () => {
    const raw = await deliver("21-calendar-invite-outlook.eml");
    const ev = await message("Weekly sync, every Monday.");
    assert.equal(
      ev.content.body,
      [
        "Weekly sync",
        "",
        "Weekly sync, every Monday.",
        "",
        "📅 Invitation: Weekly sync",
        "When: Mon, 16 Nov 2026, 09:30–10:00 (W. Europe Standard Time, UTC+01:00)",
        "Repeats: FREQ=WEEKLY;BYDAY=MO",
        "Where: Microsoft Teams Meeting",
        "Organizer: Bob Example <bob@example.org>",
        "(the calendar file is attached as invite.ics)",
      ].join("\n"),
    );
    const ics = await file("invite.ics", ev);
    assert.ok((await download(String(ics.content.url))).equals(part(raw, "Content-Type: text/calendar")));
  });

  it("forwarded as attachment (Thunderbird): a quoted block with its headers and text; the message attached as .eml", async () => {
    const raw = await deliver("22-forwarded-attachment.eml");
    const ev = await message("FYI, Carol's budget numbers.");
    assert.equal(
      ev.content.body,
      [
        "Fwd: Budget 2027",
        "",
        "FYI, Carol's budget numbers.",
        "",
        "Bob",
        "",
        "---------- Forwarded message ----------",
        "> From: Carol Example <carol@example.net>",
        "> Date: Fri, 30 Oct 2026 16:45:00 +0100",
        "> Subject: Budget 2027",
        "> To: Bob Example <bob@example.org>",
        "> Cc: Dave <dave@example.com>",
        ">",
        "> Hi Bob,",
        ">",
        "> here are the numbers for 2027. Total: 1 250 000 €.",
        ">",
        "> Carol",
        ">",
        "> 📎 numbers.csv",
        "(the forwarded message is attached as Budget 2027.eml)",
      ].join("\n"),
    );
    const html = String(ev.content.formatted_body);
    assert.ok(
      html.includes(
        "<blockquote><p><strong>From:</strong> Carol Example &lt;carol@example.net&gt;<br /><strong>Date:</strong> Fri, 30 Oct 2026 16:45:00 +0100<br /><strong>Subject:</strong> Budget 2027<br /><strong>To:</strong> Bob Example &lt;bob@example.org&gt;<br /><strong>Cc:</strong> Dave &lt;dave@example.com&gt;</p><p>Hi Bob,<br /><br />here are the numbers for 2027. Total: 1 250 000 €.<br /><br />Carol</p><p>📎 numbers.csv</p></blockquote>",
      ),
      html,
    );
    const eml = await file("Budget 2027.eml", ev);
    assert.equal((eml.content.info as { mimetype?: string }).mimetype, "message/rfc822");
    assert.ok((await download(String(eml.content.url))).equals(part(raw, 'filename="Budget 2027.eml"')));
  });

  it("forwarded inline (Gmail): the forward is text of the mail and shown as it is", async () => {
    await deliver("23-forwarded-inline-gmail.eml");
    const ev = await message("The venue in Lisbon is booked.");
    assert.equal(
      ev.content.body,
      "Fwd: Venue\n\nFYI\n\n---------- Forwarded message ---------\nFrom: Carol Example <carol@example.net>\nDate: Fri, 30 Oct 2026 at 16:50\nSubject: Venue\nTo: Bob Example <bob@example.org>\n\n\nThe venue in Lisbon is booked.",
    );
  });

  it("auto-reply (Auto-Submitted: auto-replied): a notice, in the thread it answers", async () => {
    await deliver("24-auto-reply-outlook.eml");
    const ev = await message("I am out of the office");
    assert.equal(ev.content.msgtype, "m.notice");
    assert.equal(ev.content.body, "I am out of the office until 16 November with no access to email.");
    assert.deepEqual(relation(ev), { rel_type: "m.thread", event_id: root.event_id, is_falling_back: true, "m.in_reply_to": { event_id: latest.event_id } });
  });

  it("bulk mail (Precedence: bulk): a notice; the remote tracking image is dropped", async () => {
    await deliver("25-newsletter-bulk.eml");
    const ev = await message("Our offsite moves to Lisbon.");
    assert.equal(ev.content.msgtype, "m.notice");
    assert.equal(ev.content.body, "Example Org news, November\n\nNovember news\n\nOur offsite moves to Lisbon.");
    assert.equal(ev.content.formatted_body, "<p><strong>Example Org news, November</strong></p><h1>November news</h1><p>Our offsite moves to <b>Lisbon</b>.</p>");
  });

  it("bounce from the null reverse-path: a notice", async () => {
    await deliver("26-bounce-null-sender.eml", "", "example.org");
    const ev = await message("could not\nbe delivered", MAILER_DAEMON);
    assert.equal(ev.content.msgtype, "m.notice");
    assert.ok(String(ev.content.body).startsWith("Undelivered Mail Returned to Sender\n\nThis is the mail system at host mx.example.org."), String(ev.content.body));
  });

  it("automatic mail posted as a notice is not answered (RFC 3834 §2): no mail goes back to the auto-reply's, bulk mail's or bounce's sender", async () => {
    // The three notices above are posted, so their rows are done; a DSN or any other answer
    // would be queued by now. Give the outbound queue a moment to hand it to the sink.
    await sleep(1000);
    const senders = ["bob@example.org", "mailer-daemon@example.org"];
    const answers = env.sink.mails.filter((m) => m.rcptTo.some((r) => senders.includes(r.toLowerCase())));
    assert.deepEqual(answers.map((m) => `${m.mailFrom || "<>"} -> ${m.rcptTo.join(",")}`), [], "no mail to the senders reached the sink");
    const { inbound, outbound } = await env.bridge.store.queueCounts();
    assert.deepEqual({ inboundWaiting: inbound.waiting, inboundFailed: inbound.failed }, { inboundWaiting: 0, inboundFailed: 0 }, "every fixture was posted (a failure would be the only reason to bounce)");
    assert.deepEqual({ outboundWaiting: outbound.waiting, outboundFailed: outbound.failed }, { outboundWaiting: 0, outboundFailed: 0 }, "and nothing waits to go out either");
  });

  it("nothing is posted twice: inline images shown are not files, the calendar of two parts is one file", async () => {
    const names = (await timeline()).map((e) => String(e.content.body ?? ""));
    const count = (n: string) => names.filter((b) => b === n).length;
    assert.equal(count("logo.png"), 0);
    assert.equal(count("image001.png"), 0);
    assert.equal(count("offsite.png"), 1);
    assert.equal(count("invite.ics"), 2, "one for each invitation");
    assert.equal(count("message.eml"), replies.length, "one for each folded reply, none for the auto-reply");
  });

  it("an auto-reply that cannot be posted gets no DSN (RFC 3834 §2); a person's mail that cannot be posted does", async () => {
    // A room mailbox the bridge can no longer enter (the bot is banned): nothing sent to it can be posted.
    const locked = await createMailboxRoom(alice, "corpus-locked", "Locked");
    await alice.request("POST", `/rooms/${encodeURIComponent(locked)}/ban`, { user_id: BOT, reason: "test: nothing can be posted here" });
    const to = `corpus-locked@${MAIL_DOMAIN}`;
    const stamp = Date.now();
    const autoId = `a2-auto-${stamp}@example.org`;
    const personId = `a2-person-${stamp}@example.org`;
    /** A corpus fixture under a fresh Message-ID (the corpus room already has the original). */
    const renamed = (name: string, id: string) => Buffer.from(fixture(name).toString("latin1").replace(/^Message-ID: <[^>]+>/imu, `Message-ID: <${id}>`), "latin1");
    assert.match(await env.sendRaw(renamed("24-auto-reply-outlook.eml", autoId), { from: "bob@example.org", to }), /^250 /);
    assert.match(await env.sendRaw(renamed("01-gmail-alternative.eml", personId), { from: "bob@example.org", to }), /^250 /);

    // The control: the person's mail comes back as a DSN (null reverse-path, its headers quoted).
    await env.sink.waitForMail((m) => !m.mailFrom && m.rcptTo.includes("bob@example.org") && m.raw.includes(personId), 60_000);
    // The auto-reply is given up on as well (it was received first), and nothing about it waits to go out.
    const givenUp = async () => (await env.bridge.store.listInbound("failed", 50)).some((r) => r.messageId === autoId);
    for (const deadline = Date.now() + 30_000; !(await givenUp()) && Date.now() < deadline; ) await sleep(200);
    assert.ok(await givenUp(), "the auto-reply could not be posted either");
    await sleep(1000);
    assert.equal((await env.bridge.store.queueCounts()).outbound.waiting, 0);
    const answers = env.sink.mails.filter((m) => m.raw.includes(autoId));
    assert.deepEqual(answers.map((m) => `${m.mailFrom || "<>"} -> ${m.rcptTo.join(",")}`), [], "no DSN or other answer to the auto-reply");
  });
});
