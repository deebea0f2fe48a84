import { test } from "node:test";
import assert from "node:assert/strict";
import { readFile } from "node:fs/promises";
import { forEachAttachment, parseMail, stripQuotedReply, extractMessageIds } from "../../src/mail/inbound/parse.ts";
import { ParsedMailCache } from "../../src/bridge/ParsedMailCache.ts";
import { sanitizeHtml } from "../../src/bridge/format/sanitize.ts";
import { largeWork } from "../../src/util/reclaim.ts";

const fixture = (name: string): Promise<Buffer> => readFile(new URL(`../fixtures/eml/${name}`, import.meta.url));

test("plain text mail: headers, addresses, groups, body", async () => {
  const m = await parseMail(await fixture("plain.eml"));
  assert.equal(m.messageId, "plain-1@example.org");
  assert.equal(m.inReplyTo, null);
  assert.deepEqual(m.references, []);
  assert.deepEqual(m.from, { address: "alice@example.org", name: "Alice Example" });
  assert.equal(m.replyTo, null);
  assert.deepEqual(m.to, [
    { address: "room-one@bridge.test", name: null },
    { address: "bob@example.net", name: "Bob B." },
  ]);
  // The group "Friends:" is flattened into its members.
  assert.deepEqual(m.cc, [
    { address: "carol@example.com", name: null },
    { address: "dave@example.com", name: "Dave" },
  ]);
  assert.equal(m.subject, "Plain hello");
  assert.equal(m.date?.toISOString(), "2024-01-02T10:00:00.000Z");
  assert.match(m.text, /^Hello room,\n\nthis is a plain message\.\n/);
  assert.equal(m.html, null);
  assert.equal(m.autoSubmitted, null);
  assert.deepEqual(m.attachments, []);
});

test("multipart/mixed with multipart/alternative: both bodies, attachment, Reply-To", async () => {
  const m = await parseMail(await fixture("alternative.eml"));
  assert.equal(m.messageId, "alt-1@example.org");
  assert.equal(m.text, "Plain version with *stars*. \nSecond line.\n");
  assert.equal(sanitizeHtml(m.html ?? ""), '<p>HTML version with <b>bold</b> and <a href="https://example.org/x">a link</a>.</p>');
  assert.deepEqual(m.replyTo, { address: "list@example.org", name: "Lists" });
  assert.equal(m.date?.toISOString(), "2024-01-03T10:30:00.000Z");
  assert.equal(m.attachments.length, 1);
  const a = m.attachments[0]!;
  assert.equal(a.filename, "report.pdf");
  assert.equal(a.contentType, "application/pdf");
  assert.equal(a.size, a.content.length);
  assert.ok(a.content.subarray(0, 5).equals(Buffer.from("%PDF-")));
});

/** A mail with `n` base64 attachments of `size` bytes each (byte i of attachment k is (i + k) % 251). */
function withAttachments(n: number, size: number): Buffer {
  const parts = ["From: a@example.org", "To: room@bridge.test", "Subject: files", "MIME-Version: 1.0", 'Content-Type: multipart/mixed; boundary="b"', "", "--b", "Content-Type: text/plain", "", "see attached", ""];
  for (let k = 0; k < n; k++) {
    const data = Buffer.from(Buffer.alloc(size, 0).map((_, i) => (i + k) % 251));
    parts.push("--b", "Content-Type: application/octet-stream", `Content-Disposition: attachment; filename="f${k}.bin"`, "Content-Transfer-Encoding: base64", "", ...(data.toString("base64").match(/.{1,76}/g) ?? []), "");
  }
  parts.push("--b--", "");
  return Buffer.from(parts.join("\r\n"));
}

test("parse once: metadata mode counts attachments without keeping them; forEachAttachment reads them one at a time", async () => {
  const raw = withAttachments(3, 100_000);
  const full = await parseMail(raw);
  const summary = await parseMail(raw, { attachments: "metadata" });
  assert.equal(summary.text, full.text);
  assert.deepEqual(
    summary.attachments,
    full.attachments.map(({ content: _content, ...info }) => info),
  );
  assert.deepEqual(summary.attachments.map((a) => a.size), [100_000, 100_000, 100_000]);
  assert.ok(!("content" in summary.attachments[0]!), "no content is kept");

  const seen: number[] = [];
  let inFlight = 0;
  await forEachAttachment(raw, async (att, i) => {
    inFlight++;
    assert.equal(inFlight, 1, "one attachment at a time");
    assert.equal(att.filename, `f${i}.bin`);
    assert.ok(att.content.equals(full.attachments[i]!.content));
    await new Promise((r) => setTimeout(r, 5));
    seen.push(i);
    inFlight--;
  });
  assert.deepEqual(seen, [0, 1, 2]);
  // An error from the consumer stops the walk and is what rejects.
  await assert.rejects(
    forEachAttachment(raw, async (_att, i) => {
      if (i === 1) throw new Error("upload failed");
    }),
    /upload failed/,
  );
});

test("a message read in chunks gives the same attachments; a chunk that cannot be read, or a failing consumer, rejects (never hangs)", async () => {
  const raw = withAttachments(3, 100_000);
  const full = await parseMail(raw);
  /** `raw` as the store hands out a chunked mail: `head` first, then 7 KiB chunks read one at a time. */
  const head = raw.subarray(0, 7000);
  const chunked = (failAt: number | null = null) => ({
    head,
    maxBytes: raw.length,
    async *chunks(): AsyncGenerator<Buffer> {
      for (let at = 0, n = 0; at < raw.length; at += 7000, n++) {
        if (n === failAt) throw new Error(`chunk ${n} is missing`);
        await new Promise((r) => setImmediate(r));
        yield n === 0 ? head : raw.subarray(at, at + 7000);
      }
    },
  });
  const got: Buffer[] = [];
  const noted = largeWork.noted;
  await forEachAttachment(chunked(), async (att) => {
    got.push(att.content);
  });
  assert.deepEqual(got, full.attachments.map((a) => a.content));
  assert.equal(largeWork.noted - noted, raw.length - 7000, "every chunk after the head is counted as large-message work (util/reclaim.ts)");
  await assert.rejects(forEachAttachment(chunked(20), async () => undefined), /chunk 20 is missing/);
  await assert.rejects(
    forEachAttachment(chunked(), async (_att, i) => {
      if (i === 0) throw new Error("upload failed");
    }),
    /upload failed/,
  );
});

test("an attachment over 1 MiB is read whole and byte for byte, with a true size bound of the message and with one too small", async () => {
  const raw = withAttachments(2, 1_600_000);
  const expected = (await parseMail(raw)).attachments.map((a) => a.content);
  assert.deepEqual(expected.map((c) => c.length), [1_600_000, 1_600_000]);
  /** `raw` in 64 KiB chunks, claiming `maxBytes` as the store does. */
  const source = (maxBytes: number) => ({
    head: raw.subarray(0, 65_536),
    maxBytes,
    async *chunks(): AsyncGenerator<Buffer> {
      for (let at = 0; at < raw.length; at += 65_536) yield raw.subarray(at, at + 65_536);
    },
  });
  for (const [what, src] of [
    ["whole", raw],
    ["chunked, true bound", source(raw.length)],
    ["chunked, bound below the attachment", source(1_200_000)],
    ["chunked, no bound", source(0)],
  ] as const) {
    const got: Buffer[] = [];
    await forEachAttachment(src, async (att) => {
      assert.equal(att.size, att.content.length, what);
      got.push(Buffer.from(att.content));
    });
    assert.deepEqual(got, expected, what);
  }
});

test("ParsedMailCache: take once, bounded in bytes, oldest out first", async () => {
  const m = await parseMail(Buffer.from("From: a@example.org\r\nSubject: s\r\n\r\n" + "x".repeat(1000) + "\r\n"), { attachments: "metadata" });
  const cache = new ParsedMailCache(3 * (2 * 1010 + 512));
  for (let id = 1; id <= 4; id++) cache.put(id, m);
  assert.equal(cache.take(1), null, "the oldest went first");
  assert.equal(cache.take(4), m);
  assert.equal(cache.take(4), null, "taken once");
  assert.ok(cache.bytes > 0 && cache.bytes <= 3 * (2 * 1010 + 512));
  assert.equal(new ParsedMailCache(0).take(1), null);
  const none = new ParsedMailCache(0);
  none.put(1, m);
  assert.equal(none.take(1), null, "a bound of 0 keeps nothing");
  assert.throws(() => new ParsedMailCache(-1), RangeError);
});

test("HTML-only mail: raw html (sanitized by the bridge before posting), text from html-to-text", async () => {
  const m = await parseMail(await fixture("html-only.eml"));
  assert.ok(m.html?.includes("<script"), "parsing hands the HTML over as the mail has it");
  const html = sanitizeHtml(m.html ?? "");
  assert.ok(html.includes("<h1>Big news</h1>"));
  assert.ok(html.includes('<a href="https://example.org/ok">a good link</a>'));
  // Scripts, styles, the head and comments are gone with their content.
  for (const gone of ["script", "alert", "style", "color: red", "Secret title", "tracking comment", "<!--"]) {
    assert.ok(!html.includes(gone), `html still contains ${gone}`);
  }
  // javascript: link loses its href, event handlers and style attributes are dropped.
  assert.ok(!html.includes("javascript:"));
  assert.ok(!/on(click|mouseover)=/.test(html));
  assert.ok(!html.includes("style="));
  assert.ok(html.includes("<a>a bad link</a>"));
  // Only mxc:// images survive; the tracking pixel and the iframe are removed.
  assert.ok(!html.includes("tracker.example.org"));
  assert.ok(html.includes('<img src="mxc://matrix.example.org/AbCdEf" alt="logo" />'));
  assert.ok(!html.includes("<iframe"));

  assert.match(m.text, /^Big news\n\nFirst paragraph with a bad link\s+and a good link \[https:\/\/example\.org\/ok\]\./);
  assert.ok(m.text.includes("Second paragraph."));
  for (const gone of ["alert", "Secret title", "color", "javascript", "tracker"]) {
    assert.ok(!m.text.includes(gone), `text still contains ${gone}`);
  }
  assert.equal(m.date?.toISOString(), "2024-01-04T13:00:00.000Z");
});

test("reply: In-Reply-To, folded References, quoted text stripped", async () => {
  const m = await parseMail(await fixture("reply.eml"));
  assert.equal(m.messageId, "reply-3@example.net");
  assert.equal(m.inReplyTo, "orig-2@bridge.test");
  // Folded over lines, two ids without a space between, one repeated: oldest first, deduplicated.
  assert.deepEqual(m.references, ["orig-1@bridge.test", "orig-0@example.org", "orig-2@bridge.test"]);
  assert.equal(m.subject, "Re: Plain hello");
  assert.ok(m.text.includes("> Hello room,"));
  assert.equal(stripQuotedReply(m.text), "Thanks, sounds good to me.\n\nSee you tomorrow.");
});

test("encoded words: UTF-8 subject (Q and B mixed) and display names", async () => {
  const m = await parseMail(await fixture("encoded.eml"));
  assert.equal(m.subject, "Grüße aus München € 😀");
  assert.deepEqual(m.from, { address: "juergen@example.de", name: "Jürgen Müller" });
  assert.deepEqual(m.to, [{ address: "room-one@bridge.test", name: "Zürich Team" }]);
  assert.equal(m.text.trim(), "Schöne Grüße €");
});

test("missing Message-ID, Date and Subject give null", async () => {
  const m = await parseMail(await fixture("no-message-id.eml"));
  assert.equal(m.messageId, null);
  assert.equal(m.date, null);
  assert.equal(m.subject, null);
  assert.equal(m.inReplyTo, null);
  assert.deepEqual(m.references, []);
  assert.deepEqual(m.from, { address: "bare@example.org", name: null });
  assert.equal(m.text.trim(), "No Message-ID, no Date, no Subject.");
});

test("Message-ID and In-Reply-To without brackets, bad Date, Auto-Submitted", async () => {
  const m = await parseMail(await fixture("bare-message-id.eml"));
  assert.equal(m.messageId, "bare-id-7@example.org");
  assert.equal(m.inReplyTo, "orig-9@bridge.test");
  assert.equal(m.date, null);
  assert.equal(m.autoSubmitted, "auto-replied");
});

test("a message that is only headers parses to an empty body", async () => {
  const m = await parseMail(Buffer.from("From: a@example.org\r\nSubject: empty\r\n\r\n"));
  assert.equal(m.text, "");
  assert.equal(m.html, null);
  assert.equal(m.subject, "empty");
});

test("the subject loses C0/C1 controls and DEL as the body does, named in losses; whitespace and bidi characters are left to the bridge", async () => {
  const mail = (subject: string) => Buffer.from(`From: a@example.org\r\nSubject: ${subject}\r\n\r\nHello.\r\n`, "utf8");
  const nul = await parseMail(mail("Nul\u0000in subject"));
  assert.equal(nul.subject, "Nulin subject");
  assert.deepEqual(nul.losses, ["control characters in the subject"]);
  // From encoded words too: ESC, DEL, a C1 control (U+009B CSI); CRLF and NEL are line ends (LF), not losses.
  const encoded = await parseMail(mail("=?utf-8?q?a=1Bb=7Fc=C2=9Bd_e=0D=0Af=C2=85g?="));
  assert.equal(encoded.subject, "abcd e\nf\ng");
  assert.deepEqual(encoded.losses, ["control characters in the subject"]);
  // A clean subject, and one with only a bidi override (cleaned where it is shown, bridge/format/toMatrix.ts), lose nothing.
  for (const subject of ["Grüße \t aus München", "=?utf-8?q?invoice=E2=80=AEfdp.exe?="]) assert.deepEqual((await parseMail(mail(subject))).losses, [], subject);
  assert.equal((await parseMail(mail("=?utf-8?q?invoice=E2=80=AEfdp.exe?="))).subject, "invoice\u202efdp.exe");
});

test("body line ends: a bare CR and NEL become LF (no loss); C0 and C1 controls are removed and named in losses", async () => {
  const mail = (text: string, charset = "utf-8") =>
    Buffer.from(`From: a@example.org\r\nSubject: x\r\nContent-Type: text/plain; charset=${charset}\r\nContent-Transfer-Encoding: base64\r\n\r\n${Buffer.from(text, "utf8").toString("base64")}\r\n`);
  const cr = await parseMail(mail("one\rtwo\r\nthree\r\rfour\u0085five"));
  assert.equal(cr.text, "one\ntwo\nthree\n\nfour\nfive");
  assert.deepEqual(cr.losses, []);
  const controls = await parseMail(mail("bell\u0007 esc\u001b[31m csi\u009b nul\u0000 tab\tkept"));
  assert.equal(controls.text, "bell esc[31m csi nul tab\tkept");
  assert.deepEqual(controls.losses, ["control characters"]);
  // HTML: line ends made LF, controls removed (the text made from it names the loss).
  const html = await parseMail(Buffer.from(`From: a@example.org\r\nSubject: x\r\nContent-Type: text/html; charset=utf-8\r\nContent-Transfer-Encoding: base64\r\n\r\n${Buffer.from("<p>a\rb\u0000c</p>").toString("base64")}\r\n`));
  assert.equal(html.html, "<p>a\nbc</p>");
  assert.deepEqual(html.losses, ["control characters"]);
});

test("extractMessageIds handles brackets, folding, missing brackets", () => {
  assert.deepEqual(extractMessageIds("<a@b>"), ["a@b"]);
  assert.deepEqual(extractMessageIds(" <a@b>\r\n\t<c@d><e@f> "), ["a@b", "c@d", "e@f"]);
  assert.deepEqual(extractMessageIds("a@b c@d"), ["a@b", "c@d"]);
  assert.deepEqual(extractMessageIds("Alice's message of today <x@y>"), ["x@y"]);
  assert.deepEqual(extractMessageIds("  "), []);
});

test("stripQuotedReply: attribution + quote", () => {
  const text = "New text.\n\nOn Mon, 1 Jan 2024 at 10:00, Alice <alice@example.org> wrote:\n> old\n> stuff\n";
  assert.equal(stripQuotedReply(text), "New text.");
});

test("stripQuotedReply: attribution wrapped over two lines, CRLF kept", () => {
  const text = "Yes.\r\n\r\nOn Mon, 1 Jan 2024 at 10:00, Alice Example <\r\nalice@example.org> wrote:\r\n\r\n> old\r\n";
  assert.equal(stripQuotedReply(text), "Yes.");
  const text2 = "Ja.\nline two\n\nAm 01.01.2024 um 10:00 schrieb Alice:\n> alt\n";
  assert.equal(stripQuotedReply(text2), "Ja.\nline two");
});

test("stripQuotedReply: trailing quote block without attribution", () => {
  assert.equal(stripQuotedReply("Agreed\n> you said\n>\n> more\n\n"), "Agreed");
});

test("stripQuotedReply: interleaved quotes in the middle are kept, only the trailing block goes", () => {
  const text = "> question 1\nanswer 1\n> question 2\nanswer 2\n> rest\n> of it\n";
  assert.equal(stripQuotedReply(text), "> question 1\nanswer 1\n> question 2\nanswer 2");
});

test("stripQuotedReply: Outlook original message block", () => {
  const text = "Fine by me.\r\n\r\n-----Original Message-----\r\nFrom: Alice <a@example.org>\r\nSent: Monday\r\n\r\nold text\r\n";
  assert.equal(stripQuotedReply(text), "Fine by me.");
});

test("stripQuotedReply: text unchanged when there is no quote, or when it is all quote", () => {
  for (const t of ["Hello\n\nno quote here\n", "a > b\n", "", "price > 5\nok", "> only\n> quote\n"]) {
    assert.equal(stripQuotedReply(t), t);
  }
});

test("the listener's skeleton parses to the same mail as the message, no attachment decoded (every fixture)", async () => {
  const { skeletonOf } = await import("../harness/smtpListener.ts");
  const { readdir } = await import("node:fs/promises");
  const dir = new URL("../fixtures/eml/", import.meta.url);
  const files = [
    ...(await readdir(dir)).filter((f) => f.endsWith(".eml")).map((f) => new URL(f, dir)),
    ...(await readdir(new URL("corpus/", dir))).filter((f) => f.endsWith(".eml")).map((f) => new URL(`corpus/${f}`, dir)),
  ];
  assert.ok(files.length >= 30, `fixtures found: ${files.length}`);
  let smaller = 0;
  for (const file of files) {
    const raw = (await readFile(file)).toString("latin1").replace(/\r?\n/g, "\r\n");
    const bytes = Buffer.from(raw, "latin1");
    const skeleton = await skeletonOf(bytes);
    if (skeleton.length < bytes.length) smaller++;
    const full = await parseMail(bytes, { attachments: "metadata" });
    const fromSkeleton = await parseMail(bytes, { attachments: "metadata", skeleton });
    const noSizes = (m: typeof full) => ({ ...m, attachments: m.attachments.map((a) => ({ ...a, size: 0 })) });
    assert.deepEqual(noSizes(fromSkeleton), noSizes(full), file.pathname);
  }
  assert.ok(smaller >= 3, `the fixtures with binary attachments get a smaller skeleton (${smaller})`);
});
