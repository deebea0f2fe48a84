/**
 * The parts a received mail's message shows (bridge/format/mailParts.ts): `cid:` links found and pointed
 * at their uploads, forwarded messages as quoted blocks, calendar parts summarised once, read one
 * part at a time from the message; and which mail counts as automatic (bridge/InboundPoster.ts).
 */
import { describe, it } from "node:test";
import assert from "node:assert/strict";
import { forwardedBlock, forwardedName, prepareParts, referencedCids, replaceCids } from "../../src/bridge/format/mailParts.ts";
import { isAutomatic } from "../../src/bridge/InboundPoster.ts";
import { sanitizeMailHtml } from "../../src/bridge/format/sanitize.ts";
import { parseMail, type MailAttachment } from "../../src/mail/inbound/parse.ts";
import { configureLogging } from "../../src/util/logger.ts";

if (!process.env.MEB_LOG_LEVEL) configureLogging({ level: "error" });

describe("cid: links", () => {
  it("referencedCids: img src in any quoting, URL-encoded (RFC 2392), brackets tolerated; other URLs and tags ignored", () => {
    const html = [
      '<img src="cid:a@x">',
      "<IMG alt='b' SRC='cid:b%40x'>",
      "<img src=cid:c@x width=2>",
      '<img src="cid:&lt;d@x&gt;">',
      '<img src="https://example.org/e.png">',
      '<a href="cid:f@x">not an image</a>',
      '<img src="cid:%zz@x">',
    ].join("");
    assert.deepEqual([...referencedCids(html)].sort(), ["%zz@x", "&lt;d@x&gt;", "a@x", "b@x", "c@x"].sort());
  });

  it("replaceCids points known ids (any case) at their mxc URL, leaves the rest; the sanitizer keeps mxc and drops the rest", () => {
    const urls = new Map([
      ["A@x", "mxc://hs/1"],
      ["b@x", "mxc://hs/2"],
    ]);
    const html = '<p><img src="cid:a@X" alt="one"> <img src=\'cid:b%40x\'> <img src="cid:unknown@x" alt="gone"></p>';
    const replaced = replaceCids(html, urls);
    assert.equal(replaced, '<p><img src="mxc://hs/1" alt="one"> <img src="mxc://hs/2"> <img src="cid:unknown@x" alt="gone"></p>');
    assert.equal(sanitizeMailHtml(replaced), '<p><img src="mxc://hs/1" alt="one" /> <img src="mxc://hs/2" /> </p>');
    assert.equal(replaceCids(html, new Map()), html);
  });
});

describe("forwarded messages", () => {
  it("a quoted block with headers, text and its attachments' names; HTML in a blockquote", async () => {
    const message = await parseMail(
      Buffer.from(
        [
          "From: Carol <carol@example.net>",
          "To: Bob <bob@example.org>, dave@example.com",
          "Subject: Numbers <Q4>",
          "Date: Fri, 30 Oct 2026 16:45:00 +0100",
          "MIME-Version: 1.0",
          'Content-Type: multipart/mixed; boundary="b"',
          "",
          "--b",
          "Content-Type: text/plain",
          "",
          "Line one\r\n\r\nLine two",
          "--b",
          "Content-Type: text/csv; name=n.csv",
          "",
          "a,b",
          "--b--",
          "",
        ].join("\r\n"),
      ),
      { attachments: "metadata" },
    );
    const block = forwardedBlock(message, "Numbers.eml");
    assert.equal(
      block.text,
      "---------- Forwarded message ----------\n> From: Carol <carol@example.net>\n> Date: Fri, 30 Oct 2026 16:45:00 +0100\n> Subject: Numbers <Q4>\n> To: Bob <bob@example.org>, dave@example.com\n>\n> Line one\n>\n> Line two\n>\n> 📎 n.csv\n(the forwarded message is attached as Numbers.eml)",
    );
    assert.equal(
      sanitizeMailHtml(block.html),
      "<p><em>---------- Forwarded message ----------</em></p><blockquote><p><strong>From:</strong> Carol &lt;carol@example.net&gt;<br /><strong>Date:</strong> Fri, 30 Oct 2026 16:45:00 +0100<br /><strong>Subject:</strong> Numbers &lt;Q4&gt;<br /><strong>To:</strong> Bob &lt;bob@example.org&gt;, dave@example.com</p><p>Line one<br /><br />Line two</p><p>📎 n.csv</p></blockquote><p><em>(the forwarded message is attached as Numbers.eml)</em></p>",
    );
  });

  it("the file name: its own (with .eml), else its subject cleaned, else forwarded-message.eml", () => {
    assert.equal(forwardedName({ filename: "Budget.eml" }, null), "Budget.eml");
    assert.equal(forwardedName({ filename: "Budget 2027" }, null), "Budget 2027.eml");
    assert.equal(forwardedName({ filename: null }, { subject: 'Re: a/b: "c"?' }), "Re a b c.eml");
    assert.equal(forwardedName({ filename: null }, { subject: null }), "forwarded-message.eml");
    assert.equal(forwardedName({ filename: null }, null), "forwarded-message.eml");
  });
});

describe("prepareParts", () => {
  const ics = "BEGIN:VCALENDAR\r\nMETHOD:REQUEST\r\nBEGIN:VEVENT\r\nUID:u\r\nSUMMARY:Review\r\nDTSTART:20261109T140000Z\r\nEND:VEVENT\r\nEND:VCALENDAR";
  /** A mail with the given parts after an HTML body that shows `cid:logo@x`. */
  function mail(parts: string[]): Buffer {
    const body = ["--m", "Content-Type: text/html", "", '<p>Hi <img src="cid:logo@x"></p>', ...parts.flatMap((p) => ["--m", p]), "--m--", ""];
    return Buffer.from(["From: bob@example.org", "Subject: s", "MIME-Version: 1.0", 'Content-Type: multipart/mixed; boundary="m"', "", ...body].join("\r\n"));
  }
  const logo = "Content-Type: image/png\r\nContent-ID: <logo@x>\r\nContent-Transfer-Encoding: base64\r\n\r\niVBORw0KGgo=";
  const other = "Content-Type: image/png; name=other.png\r\nContent-ID: <other@x>\r\nContent-Transfer-Encoding: base64\r\n\r\niVBORw0KGgo=";

  it("uploads only the images the HTML shows, and only when it is shown", async () => {
    const raw = mail([logo, other]);
    const summary = await parseMail(raw, { attachments: "metadata" });
    const uploaded: string[] = [];
    const upload = async (img: MailAttachment, i: number) => {
      uploaded.push(`${i}:${img.contentId}`);
      return { url: `mxc://hs/${i}`, mimetype: "image/png" };
    };
    const parts = await prepareParts(raw, summary, { showHtml: true, upload, ctx: {} });
    assert.deepEqual(uploaded, ["0:logo@x"]);
    assert.deepEqual([...parts.cidUrls], [["logo@x", "mxc://hs/0"]]);
    assert.deepEqual([...parts.inline.keys()], [0]);
    uploaded.length = 0;
    const hidden = await prepareParts(raw, summary, { showHtml: false, upload, ctx: {} });
    assert.deepEqual(uploaded, [], "a reply shows no HTML: nothing is uploaded before it");
    assert.equal(hidden.cidUrls.size, 0);
  });

  it("an image that cannot be uploaded is not inline; an upload's temporary failure is thrown", async () => {
    const raw = mail([logo]);
    const summary = await parseMail(raw, { attachments: "metadata" });
    const parts = await prepareParts(raw, summary, { showHtml: true, upload: async () => null, ctx: {} });
    assert.equal(parts.cidUrls.size, 0);
    assert.equal(parts.inline.size, 0);
    await assert.rejects(
      prepareParts(raw, summary, {
        showHtml: true,
        upload: async () => {
          throw new Error("homeserver down");
        },
        ctx: {},
      }),
      /homeserver down/u,
    );
  });

  it("a calendar in two parts (body part and named file) is one summary and one file: the named one", async () => {
    const raw = mail([
      `Content-Type: text/calendar; method=REQUEST; charset=utf-8\r\n\r\n${ics}`,
      `Content-Type: application/ics; name=meeting.ics\r\nContent-Disposition: attachment; filename=meeting.ics\r\nContent-Transfer-Encoding: base64\r\n\r\n${Buffer.from(`${ics}\r\n`).toString("base64")}`,
      "Content-Type: text/calendar\r\n\r\nBEGIN:VCALENDAR\r\nBROKEN",
    ]);
    const summary = await parseMail(raw, { attachments: "metadata" });
    const parts = await prepareParts(raw, summary, { showHtml: false, upload: async () => null, ctx: {} });
    // Attachments: 0 text/calendar, 1 meeting.ics, 2 the broken calendar.
    assert.deepEqual([...parts.skip], [0]);
    assert.equal(parts.names.get(1), "meeting.ics");
    assert.equal(parts.names.get(2), "invite.ics");
    assert.equal(parts.blocks.length, 2);
    assert.equal(parts.blocks[0]!.text, "📅 Invitation: Review\nWhen: Mon, 9 Nov 2026, 14:00 (UTC)\n(the calendar file is attached as meeting.ics)");
    assert.match(parts.blocks[1]!.text, /^📅 A calendar file is attached as invite\.ics, but it could not be read \(/u);
  });

  it("a mail without such parts is not read again", async () => {
    const raw = Buffer.from("From: bob@example.org\r\nSubject: s\r\n\r\nplain\r\n");
    const parts = await prepareParts(raw, await parseMail(raw, { attachments: "metadata" }), {
      showHtml: true,
      upload: async () => {
        throw new Error("no upload expected");
      },
      ctx: {},
    });
    assert.deepEqual(parts.blocks, []);
  });
});

describe("isAutomatic (RFC 3834 §2)", () => {
  const mail = (autoSubmitted: string | null, precedence: string | null = null) => ({ autoSubmitted, precedence });
  it("Auto-Submitted other than no, Precedence bulk/list/junk, the null reverse-path", () => {
    assert.equal(isAutomatic({ envelopeFrom: "bob@example.org" }, mail(null)), false);
    assert.equal(isAutomatic({ envelopeFrom: "bob@example.org" }, mail("no")), false);
    for (const keyword of ["auto-replied", "auto-generated", "auto-notified", "x-something"]) assert.equal(isAutomatic({ envelopeFrom: "bob@example.org" }, mail(keyword)), true, keyword);
    for (const p of ["bulk", "list", "junk"]) assert.equal(isAutomatic({ envelopeFrom: "bob@example.org" }, mail(null, p)), true, p);
    assert.equal(isAutomatic({ envelopeFrom: "bob@example.org" }, mail(null, "first-class")), false);
    assert.equal(isAutomatic({ envelopeFrom: null }, mail(null)), true);
    assert.equal(isAutomatic({ envelopeFrom: "<>" }, mail(null)), true);
  });
});
