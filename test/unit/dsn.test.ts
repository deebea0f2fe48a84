import { describe, it } from "node:test";
import assert from "node:assert/strict";
import { readFile } from "node:fs/promises";
import { simpleParser } from "mailparser";
import { composeDsn, mayBounce, parseDsn, MAX_DIAGNOSTIC_CHARS, type DsnInput } from "../../src/mail/dsn.ts";

const fixture = (name: string): Promise<Buffer> => readFile(new URL(`../fixtures/eml/${name}`, import.meta.url));

const ORIGINAL_HEADERS =
  "Received: from mx.example.org (mx.example.org [192.0.2.1]) by mx.bridge.test with ESMTPS; Tue, 02 Jan 2024 03:04:05 +0000\r\n" +
  "Message-ID: <orig-1@example.org>\r\n" +
  "From: Alice <alice@example.org>\r\n" +
  "To: room-one@bridge.test\r\n" +
  "Subject: Hello room\r\n" +
  "\r\n";

function baseInput(over: Partial<DsnInput> = {}): DsnInput {
  return {
    reportingMta: "mx.bridge.test",
    fromAddress: "mailer-daemon@bridge.test",
    to: "alice@example.org",
    arrivalDate: new Date(Date.UTC(2024, 0, 2, 3, 4, 5)),
    originalEnvelopeId: null,
    recipients: [{ address: "room-one@bridge.test", status: "5.3.4", diagnostic: "X-Matrix; M_TOO_LARGE event too large" }],
    humanText: "This is the mail system at mx.bridge.test.\n\nYour message could not be delivered to the Matrix room.\n",
    originalHeaders: Buffer.from(ORIGINAL_HEADERS),
    messageIdDomain: "bridge.test",
    date: new Date(Date.UTC(2024, 0, 2, 3, 10, 0)),
    ...over,
  };
}

/** The top-level header block (up to the first empty line). */
function headerBlock(raw: Buffer): string {
  const s = raw.toString("latin1");
  const end = s.indexOf("\r\n\r\n");
  assert.ok(end > 0, "message has a header/body separator");
  return s.slice(0, end + 2);
}

/** Lower-case names of the top-level header fields. */
function fieldNames(raw: Buffer): string[] {
  return headerBlock(raw)
    .split("\r\n")
    .filter((l) => l.length > 0 && !/^[ \t]/.test(l))
    .map((l) => l.slice(0, l.indexOf(":")).toLowerCase());
}

/** The body of the message/delivery-status part, as written (lines with CRLF). */
function statusPartBody(raw: Buffer): string {
  const s = raw.toString("latin1");
  const start = s.indexOf("Content-Type: message/delivery-status");
  assert.ok(start > 0, "has a message/delivery-status part");
  const bodyStart = s.indexOf("\r\n\r\n", start) + 4;
  const end = s.indexOf("\r\n--", bodyStart);
  return s.slice(bodyStart, end);
}

function assertWellFormed(raw: Buffer): void {
  const s = raw.toString("latin1");
  assert.equal(/[^\r]\n/.test(s) || s.startsWith("\n"), false, "no bare LF");
  assert.equal(/\r(?!\n)/.test(s), false, "no bare CR");
  for (const line of s.split("\r\n")) assert.ok(Buffer.byteLength(line, "latin1") <= 998, `line over 998 octets: ${line.slice(0, 60)}...`);
}

describe("composeDsn", () => {
  it("builds an RFC 6522 multipart/report with the three parts and the RFC 3834 marker", async () => {
    const raw = await composeDsn(baseInput());
    assertWellFormed(raw);

    const mail = await simpleParser(raw, { keepDeliveryStatus: true });
    const ct = mail.headers.get("content-type") as { value: string; params: Record<string, string> };
    assert.equal(ct.value, "multipart/report");
    assert.equal(ct.params["report-type"], "delivery-status");
    assert.deepEqual(mail.from?.value, [{ address: "mailer-daemon@bridge.test", name: "Mail Delivery System" }]);
    assert.equal(mail.headers.get("auto-submitted"), "auto-replied");
    assert.equal(mail.subject, "Undelivered Mail Returned to Sender");
    assert.match(mail.messageId ?? "", /^<[^<>@\s]+@bridge\.test>$/);
    assert.equal(mail.date?.toISOString(), "2024-01-02T03:10:00.000Z");
    assert.equal(mail.headers.get("mime-version"), "1.0");
    const to = Array.isArray(mail.to) ? mail.to[0] : mail.to;
    assert.deepEqual(to?.value, [{ address: "alice@example.org", name: "" }]);

    // Part 1: the human text; then the machine-readable report; then the original headers.
    assert.equal(mail.text, "This is the mail system at mx.bridge.test.\n\nYour message could not be delivered to the Matrix room.\n");
    assert.deepEqual(
      mail.attachments.map((a) => a.contentType),
      ["message/delivery-status", "text/rfc822-headers"],
    );
    const s = raw.toString("latin1");
    assert.ok(s.indexOf("Content-Type: text/plain") < s.indexOf("Content-Type: message/delivery-status"));
    assert.ok(s.indexOf("Content-Type: message/delivery-status") < s.indexOf("Content-Type: text/rfc822-headers"));

    const status = statusPartBody(raw);
    assert.equal(
      status,
      [
        "Reporting-MTA: dns; mx.bridge.test",
        "Arrival-Date: Tue, 02 Jan 2024 03:04:05 +0000",
        "",
        "Final-Recipient: rfc822; room-one@bridge.test",
        "Action: failed",
        "Status: 5.3.4",
        "Diagnostic-Code: X-Matrix; M_TOO_LARGE event too large",
        "",
      ].join("\r\n"),
    );

    // The original header section, 7bit, without its terminating empty line.
    assert.equal(mail.attachments[1]?.content.toString("latin1"), ORIGINAL_HEADERS.replace(/\r\n\r\n$/, "\r\n"));
    assert.match(s, /Content-Type: text\/rfc822-headers\r\nContent-Description: Undelivered Message Headers\r\nContent-Transfer-Encoding: 7bit\r\n/);
  });

  it("round trips through parseDsn: envelope id, two recipient blocks, delayed subject", async () => {
    const raw = await composeDsn(
      baseInput({
        originalEnvelopeId: "QQ314159",
        recipients: [
          { address: "room-one@bridge.test", status: "5.3.4", diagnostic: "X-Matrix; M_TOO_LARGE event too large" },
          { address: "room-two@bridge.test", status: "5.6.0", diagnostic: "smtp; 554 5.6.0 Message content rejected" },
        ],
      }),
    );
    assert.deepEqual(await parseDsn(raw), {
      reportingMta: "mx.bridge.test",
      originalMessageId: "orig-1@example.org",
      originalEnvelopeId: "QQ314159",
      recipients: [
        {
          address: "room-one@bridge.test",
          action: "failed",
          status: "5.3.4",
          diagnostic: "X-Matrix; M_TOO_LARGE event too large",
          remoteMta: null,
        },
        {
          address: "room-two@bridge.test",
          action: "failed",
          status: "5.6.0",
          diagnostic: "smtp; 554 5.6.0 Message content rejected",
          remoteMta: null,
        },
      ],
    });

    const delayed = await composeDsn(
      baseInput({
        recipients: [
          {
            address: "room-one@bridge.test",
            status: "4.3.0",
            diagnostic: "X-Matrix; M_LIMIT_EXCEEDED retry later",
            action: "delayed",
            willRetryUntil: new Date(Date.UTC(2024, 0, 4, 3, 4, 5)),
          },
        ],
      }),
    );
    const mail = await simpleParser(delayed);
    assert.equal(mail.subject, "Delayed Mail");
    assert.match(statusPartBody(delayed), /\r\nAction: delayed\r\nStatus: 4\.3\.0\r\n.*\r\nWill-Retry-Until: Thu, 04 Jan 2024 03:04:05 \+0000\r\n/s);
    const parsed = await parseDsn(delayed);
    assert.equal(parsed?.recipients[0]?.action, "delayed");
  });

  it("keeps a diagnostic with CR/LF inside its own field: no header, part or block injection", async () => {
    const evil = "smtp; 550 no\r\nBcc: victim@example.net\r\n\r\nFinal-Recipient: rfc822; x@evil.example\r\n\r\n--boundary\nSubject: pwned";
    const raw = await composeDsn(
      baseInput({
        to: "alice@example.org",
        originalEnvelopeId: "id\r\nBcc: x@evil.example",
        recipients: [{ address: "room-one@bridge.test", status: "5.0.0", diagnostic: evil }],
      }),
    );
    assertWellFormed(raw);
    assert.equal(fieldNames(raw).includes("bcc"), false);
    assert.equal(fieldNames(raw).filter((n) => n === "subject").length, 1);

    const status = statusPartBody(raw);
    const starts = status.split("\r\n").filter((l) => /^[A-Za-z-]+:/.test(l)).map((l) => l.slice(0, l.indexOf(":")));
    assert.deepEqual(starts, ["Original-Envelope-Id", "Reporting-MTA", "Arrival-Date", "Final-Recipient", "Action", "Status", "Diagnostic-Code"]);

    const mail = await simpleParser(raw, { keepDeliveryStatus: true });
    assert.equal(mail.bcc, undefined);
    assert.equal(mail.attachments.length, 2);

    const parsed = await parseDsn(raw);
    assert.equal(parsed?.recipients.length, 1);
    assert.equal(parsed?.originalEnvelopeId, "id Bcc: x@evil.example");
    assert.equal(
      parsed?.recipients[0]?.diagnostic,
      "smtp; 550 no Bcc: victim@example.net Final-Recipient: rfc822; x@evil.example --boundary Subject: pwned",
    );
  });

  it("folds long diagnostics and cuts very long ones; lines stay within 998 octets", async () => {
    const long = `smtp; 550 5.7.1 ${"blocked ".repeat(60)}${"x".repeat(2000)}`;
    const raw = await composeDsn(baseInput({ recipients: [{ address: "room-one@bridge.test", status: "5.7.1", diagnostic: long }] }));
    assertWellFormed(raw);
    const status = statusPartBody(raw);
    assert.ok(status.includes("\r\n blocked"), "folded at a space");
    const diagnostic = (await parseDsn(raw))?.recipients[0]?.diagnostic ?? "";
    assert.ok(diagnostic.startsWith("smtp; 550 5.7.1 blocked blocked"));
    assert.ok(diagnostic.endsWith("..."));
    assert.ok(diagnostic.length <= "smtp; ".length + MAX_DIAGNOSTIC_CHARS + 2, `cut: ${diagnostic.length}`);
  });

  it("keeps the report 7-bit: non-ASCII addresses as utf-8 xtext (RFC 6533), UTF-8 headers as message/global-headers", async () => {
    const raw = await composeDsn(
      baseInput({
        recipients: [{ address: "jürgen@bridge.test", status: "5.1.1", diagnostic: "X-Matrix; Raum nicht gefunden: “Küche”" }],
        originalHeaders: Buffer.from("Subject: Grüße\r\nMessage-ID: <utf8@example.org>\r\n\r\n"),
        humanText: "Zustellung fehlgeschlagen.\n",
      }),
    );
    assertWellFormed(raw);
    assert.ok(raw.every((b) => b < 0x80), "every octet is ASCII");
    const status = statusPartBody(raw);
    assert.match(status, /^Final-Recipient: utf-8; j\\x\{FC\}rgen@bridge\.test$/m);
    assert.match(status, /^Diagnostic-Code: X-Matrix; Raum nicht gefunden: \\x\{201C\}K\\x\{FC\}che\\x\{201D\}$/m);

    const mail = await simpleParser(raw, { keepDeliveryStatus: true });
    assert.deepEqual(mail.attachments.map((a) => a.contentType), ["message/delivery-status", "message/global-headers"]);
    assert.equal(mail.attachments[1]?.content.toString("utf8"), "Subject: Grüße\r\nMessage-ID: <utf8@example.org>\r\n");

    const parsed = await parseDsn(raw);
    assert.equal(parsed?.recipients[0]?.address, "jürgen@bridge.test");
    assert.equal(parsed?.originalMessageId, "utf8@example.org");
  });

  it("quoted-printable original headers when a line is over 998 octets", async () => {
    const headers = `X-Long: ${"a".repeat(1200)}\r\nMessage-ID: <long@example.org>\r\n\r\n`;
    const raw = await composeDsn(baseInput({ originalHeaders: Buffer.from(headers) }));
    assertWellFormed(raw);
    const mail = await simpleParser(raw, { keepDeliveryStatus: true });
    assert.equal(mail.attachments[1]?.contentType, "text/rfc822-headers");
    assert.equal(mail.attachments[1]?.content.toString("latin1"), headers.replace(/\r\n\r\n$/, "\r\n"));
    assert.equal((await parseDsn(raw))?.originalMessageId, "long@example.org");
  });

  it("rejects invalid input with TypeError", async () => {
    const rec = { address: "room-one@bridge.test", status: "5.3.4", diagnostic: "X-Matrix; x" };
    const bad: [string, Partial<DsnInput>][] = [
      ["no recipients", { recipients: [] }],
      ["null sender as To", { to: "" }],
      ["To with a header", { to: "alice@example.org\r\nBcc: x@y" }],
      ["fromAddress", { fromAddress: "Mailer Daemon" }],
      ["reportingMta", { reportingMta: "mx bridge" }],
      ["messageIdDomain", { messageIdDomain: "bridge.test>" }],
      ["arrivalDate", { arrivalDate: new Date(Number.NaN) }],
      ["status syntax", { recipients: [{ ...rec, status: "550" }] }],
      ["success status for failed", { recipients: [{ ...rec, status: "2.0.0" }] }],
      ["status class vs delayed", { recipients: [{ ...rec, status: "5.2.2", action: "delayed" }] }],
      ["diagnostic without type", { recipients: [{ ...rec, diagnostic: "550 user unknown" }] }],
      ["recipient address", { recipients: [{ ...rec, address: "<room@bridge.test>" }] }],
      ["messageId", { messageId: "<dsn-1@bridge.test>" }],
      ["messageId with CRLF", { messageId: "dsn-1@bridge.test\r\nBcc: x@y" }],
    ];
    for (const [what, over] of bad) {
      await assert.rejects(composeDsn(baseInput(over)), TypeError, what);
    }
  });

  it("accepts a transient class for a failure the bridge gave up on (4.4.7, RFC 3463 §3.5)", async () => {
    const raw = await composeDsn(baseInput({ recipients: [{ address: "room-one@bridge.test", status: "4.4.7", diagnostic: "X-Matrix; homeserver unreachable for 48 hours" }] }));
    assert.deepEqual((await parseDsn(raw))?.recipients.map((r) => [r.action, r.status]), [["failed", "4.4.7"]]);
    assert.equal((await simpleParser(raw)).subject, "Undelivered Mail Returned to Sender");
  });

  it("uses the caller's Message-ID when given", async () => {
    const mail = await simpleParser(await composeDsn(baseInput({ messageId: "dsn-1.abc@bridge.test" })));
    assert.equal(mail.messageId, "<dsn-1.abc@bridge.test>");
  });

  it("omits Diagnostic-Code for an empty diagnostic", async () => {
    const raw = await composeDsn(baseInput({ recipients: [{ address: "room-one@bridge.test", status: "5.0.0", diagnostic: " \r\n " }] }));
    assert.equal(statusPartBody(raw).includes("Diagnostic-Code"), false);
    assert.equal((await parseDsn(raw))?.recipients[0]?.diagnostic, null);
  });
});

describe("mayBounce", () => {
  const plain = { autoSubmitted: null };
  const cases: [string | null, { autoSubmitted: string | null; precedence?: string | null; contentType?: string | null }, boolean][] = [
    ["alice@example.org", plain, true],
    ["<alice@example.org>", plain, true],
    ["alice@example.org", { autoSubmitted: "no" }, true],
    ["alice@example.org", { autoSubmitted: "No; comment" }, true],
    ["alice@example.org", { autoSubmitted: null, precedence: null, contentType: "text/plain; charset=utf-8" }, true],
    ["alice@example.org", { autoSubmitted: null, precedence: "first-class" }, true],
    ["alice@example.org", { autoSubmitted: null, contentType: "multipart/mixed; boundary=x" }, true],
    // RFC 5321 §4.5.5 / §6.2: never answer the null reverse-path.
    [null, plain, false],
    ["", plain, false],
    ["<>", plain, false],
    [" <> ", plain, false],
    // Bounce senders.
    ["MAILER-DAEMON@mail.example", plain, false],
    ["mailer-daemon@mail.example", plain, false],
    ["<Postmaster@mail.example>", plain, false],
    // RFC 3834 §2, §5.
    ["alice@example.org", { autoSubmitted: "auto-replied" }, false],
    ["alice@example.org", { autoSubmitted: "auto-generated" }, false],
    ["alice@example.org", { autoSubmitted: "Auto-Generated (failure)" }, false],
    ["alice@example.org", { autoSubmitted: "auto-notified; owner-email=x@y" }, false],
    ["alice@example.org", { autoSubmitted: null, precedence: "bulk" }, false],
    ["alice@example.org", { autoSubmitted: null, precedence: "List" }, false],
    ["alice@example.org", { autoSubmitted: null, precedence: " junk " }, false],
    // Reports (RFC 6522): DSNs and MDNs.
    ["alice@example.org", { autoSubmitted: null, contentType: "multipart/report; report-type=delivery-status; boundary=x" }, false],
    ["alice@example.org", { autoSubmitted: null, contentType: "Multipart/Report; report-type=disposition-notification" }, false],
    ["alice@example.org", { autoSubmitted: null, contentType: "message/delivery-status" }, false],
  ];
  for (const [from, headers, expected] of cases) {
    it(`${JSON.stringify(from)} ${JSON.stringify(headers)} → ${expected}`, () => {
      assert.equal(mayBounce(from, headers), expected);
    });
  }
});

describe("parseDsn on real-world-shaped reports", () => {
  it("Postfix: text/rfc822-headers, folded Diagnostic-Code, Final- before Original-Recipient, CRLF", async () => {
    const raw = await fixture("dsn-postfix.eml");
    assert.ok(raw.includes("\r\n"), "fixture has CRLF line ends");
    assert.deepEqual(await parseDsn(raw), {
      reportingMta: "mail.example",
      originalMessageId: "evt1.abc@bridge.test",
      originalEnvelopeId: null,
      recipients: [
        {
          address: "bob@example.org",
          action: "failed",
          status: "5.1.1",
          diagnostic: "smtp; 550 5.1.1 <bob@example.org>: Recipient address rejected: User unknown",
          remoteMta: "mx.example.org",
        },
      ],
    });
  });

  it("Exim: message/rfc822 original (folded Message-ID, only its header section read), LF", async () => {
    assert.deepEqual(await parseDsn(await fixture("dsn-exim.eml")), {
      reportingMta: "exim.example.net",
      originalMessageId: "evt2.def@bridge.test",
      originalEnvelopeId: null,
      recipients: [
        { address: "carol@example.net", action: "failed", status: "5.0.0", diagnostic: "smtp; 550 5.1.1 No such user here", remoteMta: "mx.example.net" },
      ],
    });
  });

  it("Gmail: nested multipart/related first part, Remote-MTA comment, long folded diagnostic", async () => {
    const dsn = await parseDsn(await fixture("dsn-gmail.eml"));
    assert.equal(dsn?.reportingMta, "googlemail.com");
    assert.equal(dsn?.originalMessageId, "evt3.ghi@bridge.test");
    assert.equal(dsn?.recipients.length, 1);
    const r = dsn?.recipients[0];
    assert.equal(r?.address, "dave@example.com");
    assert.equal(r?.action, "failed");
    assert.equal(r?.status, "5.1.1");
    assert.equal(r?.remoteMta, "gmail-smtp-in.l.google.com");
    assert.match(r?.diagnostic ?? "", /^smtp; 550-5\.1\.1 The email account that you tried to reach does not exist\. Please try .* - gsmtp$/);
    assert.equal(r?.diagnostic?.includes("\n"), false);
  });

  it("Microsoft: no spaces after `;`, Original-Recipient first, 5.1.10, text/rfc822-headers, CRLF", async () => {
    assert.deepEqual(await parseDsn(await fixture("dsn-microsoft.eml")), {
      reportingMta: "DM6PR11MB1234.namprd11.prod.outlook.com",
      originalMessageId: "evt4.jkl@bridge.test",
      originalEnvelopeId: null,
      recipients: [
        {
          address: "erin@fabrikam.example",
          action: "failed",
          status: "5.1.10",
          diagnostic: "smtp;550 5.1.10 RESOLVER.ADR.RecipientNotFound; Recipient not found by SMTP address lookup",
          remoteMta: null,
        },
      ],
    });
  });

  it("two recipients, one failed and one delayed (Sendmail-style, upper-case types and values)", async () => {
    const dsn = await parseDsn(await fixture("dsn-mixed.eml"));
    assert.equal(dsn?.reportingMta, "relay.example.net");
    assert.equal(dsn?.originalMessageId, "evt5.mno@bridge.test");
    assert.deepEqual(dsn?.recipients, [
      { address: "frank@example.net", action: "failed", status: "5.2.2", diagnostic: "SMTP; 552 5.2.2 Mailbox full", remoteMta: "mx.example.net" },
      { address: "grace@example.net", action: "delayed", status: "4.4.1", diagnostic: "SMTP; 451 4.4.1 Connection timed out", remoteMta: "mx2.example.net" },
    ]);
  });

  it("RFC 6533 global report: base64 message/global-delivery-status, utf-8 addresses, message/global-headers", async () => {
    const fields =
      "Reporting-MTA: dns; mx.example.net\r\nOriginal-Envelope-Id: env-42\r\n\r\n" +
      "Final-Recipient: utf-8; josé@example.org\r\nAction: failed\r\nStatus: 5.1.1\r\n\r\n" +
      "Final-Recipient: utf-8; j\\x{FC}rgen@example.org\r\nAction: failed\r\nStatus: 5.1.1\r\n";
    const raw = Buffer.from(
      'Content-Type: multipart/report; report-type=global-delivery-status; boundary="g"\r\nMIME-Version: 1.0\r\n\r\n' +
        "--g\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nNicht zugestellt.\r\n" +
        `--g\r\nContent-Type: message/global-delivery-status\r\nContent-Transfer-Encoding: base64\r\n\r\n${Buffer.from(fields).toString("base64")}\r\n` +
        "--g\r\nContent-Type: message/global-headers\r\n\r\nSubject: Grüße\r\nMessage-ID: <g1@bridge.test>\r\n\r\n--g--\r\n",
    );
    const dsn = await parseDsn(raw);
    assert.equal(dsn?.originalEnvelopeId, "env-42");
    assert.equal(dsn?.originalMessageId, "g1@bridge.test");
    assert.deepEqual(dsn?.recipients.map((r) => r.address), ["josé@example.org", "jürgen@example.org"]);
  });

  it("lenient: LF, lower-case names, whitespace-only separators, run-together blocks; skips unreadable blocks", async () => {
    const raw = Buffer.from(
      [
        "content-type: MULTIPART/REPORT; REPORT-TYPE=Delivery-Status;",
        " boundary=zz",
        "",
        "--zz",
        "content-type: Message/Delivery-Status",
        "",
        "reporting-mta: dns;",
        "  mx.example.net",
        "   ",
        "final-recipient: rfc822; <one@example.net>",
        "action: FAILED",
        "status: 5.1.1 (user unknown)",
        "final-recipient: rfc822; two@example.net",
        "action: failed",
        "status: 5.2.1",
        "",
        "Action: failed",
        "Status: 5.0.0",
        "Diagnostic-Code: smtp; block without a recipient",
        "",
        "Final-Recipient: rfc822; three@example.net",
        "Status: 5.0.0",
        "",
        "Final-Recipient: rfc822; four@example.net",
        "Action: failed",
        "Status: failed",
        "",
        "Original-Recipient: rfc822;five@example.net",
        "Action: failed",
        "Status: 5.4.4",
        "garbage line without a colon",
        "",
        "--zz--",
        "",
      ].join("\n"),
    );
    const dsn = await parseDsn(raw);
    assert.equal(dsn?.reportingMta, "mx.example.net");
    assert.equal(dsn?.originalMessageId, null);
    assert.deepEqual(
      dsn?.recipients.map((r) => [r.address, r.action, r.status]),
      [
        ["one@example.net", "failed", "5.1.1"],
        ["two@example.net", "failed", "5.2.1"],
        ["five@example.net", "failed", "5.4.4"],
      ],
    );
  });

  it("lenient: per-message fields run into the first recipient block without an empty line", async () => {
    const raw = Buffer.from(
      "Content-Type: multipart/report; report-type=delivery-status; boundary=q\n\n" +
        "--q\nContent-Type: message/delivery-status\n\n" +
        "Reporting-MTA: dns; mx.example.net\nOriginal-Envelope-Id: abc\nFinal-Recipient: rfc822; one@example.net\nAction: failed\nStatus: 5.1.1\n" +
        "--q--\n",
    );
    assert.deepEqual(await parseDsn(raw), {
      reportingMta: "mx.example.net",
      originalMessageId: null,
      originalEnvelopeId: "abc",
      recipients: [{ address: "one@example.net", action: "failed", status: "5.1.1", diagnostic: null, remoteMta: null }],
    });
  });

  it("returns null for mail that is not a delivery-status report", async () => {
    assert.equal(await parseDsn(await fixture("plain.eml")), null);
    assert.equal(await parseDsn(await fixture("alternative.eml")), null);
    // An MDN (RFC 8098) is a multipart/report too, but not a DSN.
    const mdn = Buffer.from(
      "Content-Type: multipart/report; report-type=disposition-notification; boundary=m\r\n\r\n" +
        "--m\r\nContent-Type: text/plain\r\n\r\nRead.\r\n" +
        "--m\r\nContent-Type: message/disposition-notification\r\n\r\nFinal-Recipient: rfc822; a@b.example\r\nDisposition: manual-action/MDN-sent-manually; displayed\r\n" +
        "--m--\r\n",
    );
    assert.equal(await parseDsn(mdn), null);
    // Claims to be a DSN but has no delivery-status part.
    const hollow = Buffer.from(
      "Content-Type: multipart/report; report-type=delivery-status; boundary=h\r\n\r\n--h\r\nContent-Type: text/plain\r\n\r\nsorry\r\n--h--\r\n",
    );
    assert.equal(await parseDsn(hollow), null);
  });

  it("returns null for garbage and never throws", async () => {
    const inputs = [
      Buffer.alloc(0),
      Buffer.from("\r\n\r\n"),
      Buffer.from("garbage \x00\x01\x02 no headers at all"),
      Buffer.from([0xff, 0xfe, 0x00, 0x80, 0x0a, 0x0d, 0x3a]),
      Buffer.from("Content-Type: multipart/report; report-type=delivery-status\r\n\r\nno boundary, no parts\r\n"),
      Buffer.from("Content-Type: multipart/report; report-type=delivery-status; boundary=\"unterminated\r\n\r\n--unterminated\r\n"),
    ];
    for (const raw of inputs) assert.equal(await parseDsn(raw), null, JSON.stringify(raw.toString("latin1")));
  });
});
