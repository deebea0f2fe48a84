import { it } from "node:test";
import assert from "node:assert/strict";
import { mailToMatrix } from "../../src/bridge/format/toMatrix.ts";
import { matrixToMail, stripReplyFallback, unpillHtml } from "../../src/bridge/format/toMail.ts";

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
  assert.equal(body.text, "Yes!\n\nOn Mon, 02 Nov 2026 10:00:00 GMT, Bob <b> wrote:\n> Tea?\n>\n> At five");
  assert.equal(body.html, "Bob: <b>yes</b>!<p>On Mon, 02 Nov 2026 10:00:00 GMT, Bob &lt;b&gt; wrote:</p><blockquote>Tea?<br><br>At five</blockquote>");
  const plain = matrixToMail({ msgtype: "m.emote", body: "waves" }, "Alice", null);
  assert.deepEqual(plain, { text: "* Alice waves", html: null });
});
