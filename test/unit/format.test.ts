import { it } from "node:test";
import assert from "node:assert/strict";
import { MAX_SHOWN_SUBJECT_CHARS, cutSubjectWarning, mailToMatrix, showSubject, shownSubject } from "../../src/bridge/format/toMatrix.ts";
import { matrixToMail, messageContentOf, stripReplyFallback, unpillHtml } from "../../src/bridge/format/toMail.ts";

it("strips the rich-reply fallback from replies only", () => {
  const reply = {
    msgtype: "m.text",
    body: "> <@bob:hs> original\n> second line\n\nmy answer",
    format: "org.matrix.custom.html",
    formatted_body: "<mx-reply><blockquote>original</blockquote></mx-reply>my <b>answer</b>",
    "m.relates_to": { "m.in_reply_to": { event_id: "$x" } },
  };
  assert.deepEqual(stripReplyFallback(reply), { body: "my answer", formatted: "my <b>answer</b>" });
  assert.equal(stripReplyFallback({ body: "> quoting is fine\nhere" }).body, "> quoting is fine\nhere");
});

it("turns Matrix messages into mail bodies, sanitizing HTML again", () => {
  assert.deepEqual(matrixToMail({ msgtype: "m.text", body: "hi" }, "Alice"), { text: "hi", html: null });
  const html = matrixToMail({ msgtype: "m.text", body: "hi", format: "org.matrix.custom.html", formatted_body: '<b>hi</b><script>alert(1)</script><img src="https://evil/x.png">' }, "Alice");
  assert.equal(html.html, "<b>hi</b>");
  assert.deepEqual(matrixToMail({ msgtype: "m.emote", body: "waves" }, "Alice"), { text: "* Alice waves", html: null });
});

it("shows the subject when a mail starts a conversation, escapes text as HTML", () => {
  const first = mailToMatrix({ subject: "Plans <2026>", text: "a & b\nc", html: null }, true);
  assert.equal(first.body, "Plans <2026>\n\na & b\nc");
  assert.equal(first.formatted_body, "<p><strong>Plans &lt;2026&gt;</strong></p>a &amp; b<br>c");
  const reply = mailToMatrix({ subject: "Re: Plans", text: "ok", html: "<p>ok</p>" }, false);
  assert.equal(reply.body, "ok");
  assert.equal(reply.formatted_body, "<p>ok</p>");
  assert.equal(reply.msgtype, "m.text");
});

it("matrixToMail: mentions lose their matrix.to link; a quote follows the text in both parts", () => {
  assert.equal(unpillHtml('Hi <a href="https://matrix.to/#/@bob:hs">Bob</a> and <a href=\'https://matrix.to/#/#room:hs\'>#room</a>, <a href="https://example.org">site</a>'), 'Hi Bob and #room, <a href="https://example.org">site</a>');
  const body = matrixToMail(
    { msgtype: "m.text", body: "Yes!", format: "org.matrix.custom.html", formatted_body: '<a href="https://matrix.to/#/@bob:hs">Bob</a>: <b>yes</b>!' },
    "Alice",
    { name: "Bob <b>", date: new Date(Date.UTC(2026, 10, 2, 10, 0)), text: "Tea?\n\nAt five" },
  );
  assert.equal(body.text, "Bob: yes!\n\nOn Mon, 02 Nov 2026 10:00:00 GMT, Bob <b> wrote:\n> Tea?\n>\n> At five");
  assert.equal(body.html, "Bob: <b>yes</b>!<p>On Mon, 02 Nov 2026 10:00:00 GMT, Bob &lt;b&gt; wrote:</p><blockquote>Tea?<br><br>At five</blockquote>");
  const plain = matrixToMail({ msgtype: "m.emote", body: "waves" }, "Alice", null);
  assert.deepEqual(plain, { text: "* Alice waves", html: null });
});

it("matrixToMail: the text/plain alternative is made from formatted_body; body only when there is no HTML or it has no text", () => {
  const rich = matrixToMail(
    {
      msgtype: "m.text",
      body: "**Agenda** for [@bob:hs](https://matrix.to/#/@bob:hs)\n\n- budget\n- offsite",
      format: "org.matrix.custom.html",
      formatted_body: '<p><strong>Agenda</strong> for <a href="https://matrix.to/#/@bob:hs">Bob</a></p><ul><li>budget</li><li>offsite</li></ul><p>See <a href="https://example.org/plan">the plan</a></p>',
    },
    "Alice",
  );
  assert.equal(rich.text, "Agenda for Bob\n\n * budget\n * offsite\n\nSee the plan [https://example.org/plan]");
  const emote = matrixToMail({ msgtype: "m.emote", body: "waves *hard*", format: "org.matrix.custom.html", formatted_body: "waves <em>hard</em>" }, "Alice");
  assert.deepEqual(emote, { text: "* Alice waves hard", html: "* Alice waves <em>hard</em>" });
  const imageOnly = matrixToMail({ msgtype: "m.text", body: "(image)", format: "org.matrix.custom.html", formatted_body: '<img src="mxc://hs/abc" alt="">' }, "Alice");
  // A mail client cannot load mxc:// images: each becomes its alt text in brackets, [image] without one.
  assert.deepEqual(imageOnly, { text: "[image]", html: "[image]" });
  const withAlt = matrixToMail({ msgtype: "m.text", body: "x", format: "org.matrix.custom.html", formatted_body: '<p>Plan: <img src="mxc://hs/abc" alt="floor plan &amp; exits"></p>' }, "Alice");
  assert.equal(withAlt.html, "<p>Plan: [floor plan &amp; exits]</p>");
  assert.equal(withAlt.text, "Plan: [floor plan & exits]");
});

it("shownSubject: folding made one space; a subject longer than the limit is cut with …, whole characters only", () => {
  assert.equal(shownSubject("  Re:\r\n\t Tea   party "), "Re: Tea party");
  const long = "ü".repeat(MAX_SHOWN_SUBJECT_CHARS + 10);
  const shown = shownSubject(long);
  assert.equal([...shown].length, MAX_SHOWN_SUBJECT_CHARS);
  assert.ok(shown.endsWith("…"));
  assert.equal(shownSubject("😀".repeat(5), 3), "😀😀…");
  const content = mailToMatrix({ subject: "x ".repeat(40_000), text: "hi", html: null }, true);
  assert.ok(Buffer.byteLength(JSON.stringify(content)) < 4000, "a huge subject does not make a huge event");
});

it("showSubject: says when it cut and how long the subject is; a 50 KB one-line subject too", () => {
  assert.deepEqual(showSubject("  Tea   party "), { text: "Tea party", cut: false, length: 9 });
  const one = showSubject("s".repeat(50_000));
  assert.equal(one.cut, true);
  assert.equal(one.length, 50_000);
  assert.equal(one.text, `${"s".repeat(MAX_SHOWN_SUBJECT_CHARS - 1)}…`);
  const exact = showSubject("s".repeat(MAX_SHOWN_SUBJECT_CHARS));
  assert.equal(exact.cut, false, "a subject of exactly the limit is whole");
  assert.equal(cutSubjectWarning(50_000), "✂️ The subject is too long to show here (50000 characters); the original is attached as message.eml.");
});

it("shownSubject: controls and bidi controls go as they go from display names; ZWNJ, ZWJ and emoji sequences stay", () => {
  assert.equal(shownSubject("Nul\u0000in \u001b[31msubject\u009b"), "Nul in [31msubject");
  // RLO, PDF, LRI..PDI, LRE: gone (CVE-2021-42574); the text reads in its own order.
  assert.equal(shownSubject("invoice\u202efdp.exe"), "invoice fdp.exe");
  assert.equal(shownSubject("\u2066Pay\u2069 \u202anow\u202c"), "Pay now");
  assert.equal(shownSubject("\u202e\u2067 \u200b"), "", "nothing printable left");
  assert.equal(shownSubject("Team \u{1F469}\u200d\u{1F4BB} news"), "Team \u{1F469}\u200d\u{1F4BB} news", "ZWJ sequence kept");
  assert.equal(shownSubject("\u0645\u06cc\u200c\u062e\u0648\u0627\u0647\u0645"), "\u0645\u06cc\u200c\u062e\u0648\u0627\u0647\u0645", "ZWNJ in Persian kept");
  assert.equal(shownSubject("\u200d Hi \u200c"), "Hi", "joiners at the ends are trimmed");
  // The subject line of the event is the cleaned one.
  const content = mailToMatrix({ subject: "Pay\u202e now\u0007", text: "hi", html: null }, true);
  assert.equal(content.body, "Pay now\n\nhi");
  assert.equal(content.formatted_body, "<p><strong>Pay now</strong></p>hi");
});

it("messageContentOf: a message's content read field by field; wrongly typed fields read as absent (hostile JSON never throws later)", () => {
  assert.deepEqual(
    messageContentOf({
      msgtype: "m.text",
      body: 42,
      format: ["org.matrix.custom.html"],
      formatted_body: "<b>x</b>",
      url: { $ne: 1 },
      info: { mimetype: 7, size: "big" },
      "m.relates_to": { rel_type: "m.thread", event_id: { $ne: 1 }, is_falling_back: "yes", "m.in_reply_to": { event_id: ["$a"] } },
      "m.new_content": { body: "new", "m.new_content": { body: "deeper" } },
      extra: "dropped",
    }),
    {
      msgtype: "m.text",
      formatted_body: "<b>x</b>",
      info: {},
      "m.relates_to": { rel_type: "m.thread", "m.in_reply_to": {} },
      "m.new_content": { body: "new" },
    },
  );
  const file = { url: "mxc://hs/x", key: { k: "secret" } };
  assert.deepEqual(
    messageContentOf({ msgtype: "m.file", body: "a.pdf", filename: "a.pdf", file, info: { mimetype: "application/pdf", size: 10 }, "m.relates_to": { "m.in_reply_to": { event_id: "$p" } } }),
    { msgtype: "m.file", body: "a.pdf", filename: "a.pdf", file, info: { mimetype: "application/pdf", size: 10 }, "m.relates_to": { "m.in_reply_to": { event_id: "$p" } } },
    "well-typed content is kept as it is (an encrypted file's `file` is checked by encryptedFileOf)",
  );
  for (const raw of [null, "text", 5, [1, 2]]) assert.deepEqual(messageContentOf(raw), {});
  assert.deepEqual(messageContentOf({ "m.relates_to": "x", info: null }), {});
});
