/**
 * The parts a received mail's message shows (bridge/format/mailParts.ts): `cid:` links found and pointed
 * at their uploads, forwarded messages as quoted blocks, calendar parts summarised once, read one
 * part at a time from the message; and which mail counts as automatic (bridge/InboundPoster.ts).
 */
import { describe, it } from "node:test";
import assert from "node:assert/strict";
import { MAX_DATA_IMAGES, dataImageOf, forwardedBlock, forwardedName, prepareParts, referencedCids, referencedDataImages, replaceImages } from "../../src/bridge/format/mailParts.ts";
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

  it("replaceImages points known ids (any case) at their mxc URL, leaves the rest; the sanitizer keeps mxc and drops the rest", () => {
    const urls = new Map([
      ["A@x", "mxc://hs/1"],
      ["b@x", "mxc://hs/2"],
    ]);
    const html = '<p><img src="cid:a@X" alt="one"> <img src=\'cid:b%40x\'> <img src="cid:unknown@x" alt="gone"></p>';
    const replaced = replaceImages(html, urls);
    assert.equal(replaced, '<p><img src="mxc://hs/1" alt="one"> <img src="mxc://hs/2"> <img src="cid:unknown@x" alt="gone"></p>');
    assert.equal(sanitizeMailHtml(replaced), '<p><img src="mxc://hs/1" alt="one" /> <img src="mxc://hs/2" /> </p>');
    assert.equal(replaceImages(html, new Map()), html);
  });
});

describe("data: images (RFC 2397)", () => {
  const png = Buffer.from("89504e470d0a1a0a0000000d49484452", "hex");
  const b64 = png.toString("base64");

  it("referencedDataImages: base64 raster images in img src, distinct, in order; other data: URLs and tags ignored", () => {
    const html = [
      `<img src="data:image/png;base64,${b64}">`,
      `<IMG SRC='data:image/jpeg;base64,${b64}' alt=x>`,
      `<img src="data:image/png;base64,${b64}">`,
      '<img src="data:image/svg+xml;base64,PHN2Zy8+">',
      '<a href="data:image/png;base64,AAAA">a link</a>',
      '<img src="https://example.org/x.png">',
    ].join("");
    const urls = referencedDataImages(html);
    assert.deepEqual(urls, [`data:image/png;base64,${b64}`, `data:image/jpeg;base64,${b64}`, "data:image/svg+xml;base64,PHN2Zy8+"]);
    assert.deepEqual(dataImageOf(urls[0]!), { contentType: "image/png", content: png });
    assert.equal(dataImageOf(urls[2]!), null, "SVG is not shown (it can carry script)");
    assert.equal(dataImageOf("data:image/png,rawbytes"), null, "not base64");
    assert.equal(dataImageOf("data:image/png;base64,"), null, "empty");
    assert.deepEqual(dataImageOf(`data:image/jpg;name=a.jpg;base64,${b64.slice(0, 8)}\n${b64.slice(8)}`)?.contentType, "image/jpeg", "parameters and folded base64 are read");
    assert.deepEqual(referencedDataImages("<p>no images</p>"), []);
  });

  it("prepareParts uploads each (named image-N), points the HTML at it; one that cannot be inline becomes a file; past the limit, counted", async () => {
    const imgs = Array.from({ length: MAX_DATA_IMAGES + 2 }, (_, i) => `<img src="data:image/gif;base64,${Buffer.from(`GIF89a-${i}`).toString("base64")}" alt="i${i}">`);
    const html = `<p>Hi</p>${imgs.join("")}<img src="data:image/png;base64,!!!!">`;
    const raw = Buffer.from(["From: bob@example.org", "Subject: s", "MIME-Version: 1.0", "Content-Type: text/html", "", html, ""].join("\r\n"));
    const summary = await parseMail(raw, { attachments: "metadata" });
    const uploaded: string[] = [];
    const parts = await prepareParts(raw, summary, {
      showHtml: true,
      // The second image is refused inline (an encrypted room, over the upload limit).
      upload: async (img, i) => (uploaded.push(`${i}:${img.filename}:${img.contentType}:${img.content.toString()}`), i === 1 ? null : { url: `mxc://hs/d${i}`, mimetype: img.contentType }),
      ctx: {},
    });
    assert.equal(uploaded.length, MAX_DATA_IMAGES);
    assert.equal(uploaded[0], "0:image-1.gif:image/gif:GIF89a-0");
    assert.equal(parts.dataUrls.size, MAX_DATA_IMAGES - 1);
    assert.deepEqual(parts.dataFiles.map((f) => [f.filename, f.content.toString()]), [["image-2.gif", "GIF89a-1"]]);
    assert.equal(parts.dataDropped, 3, "two past the limit and one not decodable");
    const shown = sanitizeMailHtml(replaceImages(summary.html!, parts.cidUrls, parts.dataUrls));
    assert.ok(shown.includes('<img src="mxc://hs/d0" alt="i0" />'), shown.slice(0, 200));
    assert.ok(!shown.includes("data:"), "no data: URL is left");
    assert.equal((shown.match(/<img /g) ?? []).length, MAX_DATA_IMAGES - 1);
    const reply = await prepareParts(raw, summary, { showHtml: false, upload: async () => assert.fail("nothing is uploaded for a reply"), ctx: {} });
    assert.equal(reply.dataUrls.size + reply.dataFiles.length + reply.dataDropped, 0);
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
