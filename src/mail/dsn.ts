/**
 * Delivery status notifications (DSNs), both directions:
 *
 * - {@link composeDsn}: the failure (or delay) report the bridge sends to the envelope sender
 *   of a mail it accepted with 250 but could not deliver into Matrix (RFC 3464 fields in an
 *   RFC 6522 `multipart/report`, marked `Auto-Submitted: auto-replied` per RFC 3834 §5).
 * - {@link mayBounce}: whether a mail may be answered with a DSN at all (RFC 3834 §2,
 *   RFC 5321 §6.2 / §4.5.5: never answer a bounce, an auto-reply or bulk mail).
 * - {@link parseDsn}: read a DSN that a remote MTA sends back about mail the bridge sent.
 *
 * The MIME tree is built with nodemailer's MimeNode (the building block of its MailComposer,
 * used directly because MailComposer only makes multipart/mixed, alternative and related
 * trees); received reports are split with mailparser's `simpleParser`.
 */
import { randomBytes } from "node:crypto";
import MimeNode from "nodemailer/lib/mime-node";
import { simpleParser } from "mailparser";

/** One recipient of a {@link DsnInput}: a per-recipient block of the report (RFC 3464 §2.3). */
export interface DsnRecipient {
  /** Final recipient address (`local@domain`), written as `Final-Recipient: rfc822; <address>` (RFC 3464 §2.3.2). */
  address: string;
  /**
   * RFC 3463 status code, e.g. `5.3.4`. Class 5 or 4 for `failed` (4 when the bridge gave up on a
   * transient error, e.g. `4.4.7` delivery time expired, RFC 3463 §3.5; Postfix reports expired
   * mail the same way), class 4 for `delayed` (RFC 3464 §2.3.4: 2.X.X is success, not for these actions).
   */
  status: string;
  /**
   * One-line diagnostic `<type>; <text>` (RFC 3464 §2.3.6), e.g. `smtp; 554 5.6.0 ...` or
   * `X-Matrix; M_TOO_LARGE ...`. The text may come from remote servers: control characters
   * (CR, LF included) become spaces, and non-ASCII characters are written as `\x{HEX}`
   * (the RFC 6533 §3 EmbeddedUnicodeChar form) because `message/delivery-status` is US-ASCII.
   * The text is cut to {@link MAX_DIAGNOSTIC_CHARS} characters. "" (or only whitespace) omits
   * the Diagnostic-Code field.
   */
  diagnostic: string;
  /** Action (RFC 3464 §2.3.3); default `failed`. */
  action?: "failed" | "delayed";
  /** For `delayed`: when the bridge gives up, written as `Will-Retry-Until` (RFC 3464 §2.3.9). Ignored for `failed`. */
  willRetryUntil?: Date | null;
}

/** Everything {@link composeDsn} needs to build one report. */
export interface DsnInput {
  /** Host name of the bridge's MX, written as `Reporting-MTA: dns; <host>` (RFC 3464 §2.2.2). */
  reportingMta: string;
  /** Author address of the report, e.g. `mailer-daemon@mail.example`; shown as `Mail Delivery System <…>`. */
  fromAddress: string;
  /** The original envelope sender (MAIL FROM); the report's `To`. Must not be the null reverse-path (check {@link mayBounce} first). */
  to: string;
  /** When the bridge accepted the original message (`Arrival-Date`, RFC 3464 §2.2.5). */
  arrivalDate: Date;
  /**
   * The original ENVID (RFC 3461 §4.4), already xtext-decoded, written as
   * `Original-Envelope-Id` (RFC 3461 §6.3 (a), RFC 3464 §2.2.1); null or absent for none.
   */
  originalEnvelopeId?: string | null;
  /** The recipients the report is about; at least one (RFC 3464 §2.1). */
  recipients: DsnRecipient[];
  /** Human-readable explanation, the first (text/plain, UTF-8) part (RFC 6522 §3). LF or CRLF line ends. */
  humanText: string;
  /** The header section of the original message; the first empty line and anything after it (a body) are dropped. */
  originalHeaders: Buffer;
  /** Right-hand side of the report's fresh Message-ID, e.g. `mail.example`. */
  messageIdDomain: string;
  /**
   * Message-ID for the report, without angle brackets (e.g. one the caller minted to key its
   * outbound queue); when absent a random one @{@link messageIdDomain} is made.
   */
  messageId?: string;
  /** Date header of the report; default now. */
  date?: Date;
}

/** Longest diagnostic text (after the `type;`) put into a report, in characters; longer text is cut and ends in `...`. */
export const MAX_DIAGNOSTIC_CHARS = 1000;
/** Longest field value {@link parseDsn} returns, in characters; longer values are cut. */
export const MAX_PARSED_FIELD_CHARS = 2000;

/** A mailbox address: local@domain, no whitespace, controls, brackets or separators (non-ASCII allowed: SMTPUTF8). */
const ADDRESS = /^[^\s<>,;"\\()\x00-\x1f\x7f]+@[^\s<>,;"\\()@\x00-\x1f\x7f]+$/;
/** RFC 5322 §3.6.4 msg-id without brackets (id-left "@" id-right): no whitespace, controls or brackets. */
const MSG_ID = /^[^\s<>@\x00-\x1f\x7f]+@[^\s<>@\x00-\x1f\x7f]+$/;
/** A DNS host name (RFC 1123 §2.1 labels), optionally with a trailing dot. */
const HOSTNAME = /^(?=.{1,253}\.?$)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\.?$/;
/** RFC 3463 §2 status-code: class "." subject "." detail, class 2, 4 or 5, 1-3 digits each. */
const STATUS = /^[245]\.\d{1,3}\.\d{1,3}$/;
/** RFC 3464 §2.3.6 diagnostic-type (an atom; registered `smtp` or an `X-` name). */
const DIAGNOSTIC_TYPE = /^[A-Za-z0-9][A-Za-z0-9-]*$/;
/** Longest address accepted, in octets (well under the 998-octet line limit of RFC 5322 §2.1.1). */
const MAX_ADDRESS_OCTETS = 512;
/** Longest original envelope id written (RFC 3461 §4.4 caps ENVID at 100 characters). */
const MAX_ENVID_CHARS = 100;
/** Fold header-style lines before this many characters where there is a space (RFC 5322 §2.1.1 SHOULD 78). */
const FOLD_AT = 78;
/** A run of non-space characters longer than this is broken by a fold, so no line exceeds 998 octets. */
const MAX_WORD = 900;

/**
 * Build a failure (or delay) DSN for mail the bridge accepted but could not deliver into Matrix.
 *
 * Output: CRLF line ends, all lines at most 998 octets (RFC 5322 §2.1.1), US-ASCII only (the
 * human text is quoted-printable when it needs it) — except a non-ASCII `to` address, which is
 * written as UTF-8 (RFC 6532), so such a report must go out with SMTPUTF8. Header fields:
 * `From: Mail Delivery System <fromAddress>`, `To`, `Subject` (`Undelivered Mail Returned to
 * Sender`, or `Delayed Mail` when every recipient is `delayed`), `Date`, a fresh
 * `Message-ID: <random@messageIdDomain>` (or `<messageId>` when given), `Auto-Submitted: auto-replied` (RFC 3834 §5),
 * `MIME-Version`, and `Content-Type: multipart/report; report-type=delivery-status`
 * (RFC 6522 §3) with three parts:
 *
 * 1. `text/plain; charset=utf-8`: `humanText`.
 * 2. `message/delivery-status` (RFC 3464 §2), 7bit: the per-message fields
 *    (`Original-Envelope-Id` when given, `Reporting-MTA: dns; <host>`, `Arrival-Date`), then
 *    for each recipient, after an empty line: `Final-Recipient: rfc822; <address>` (a non-ASCII
 *    address is written `utf-8; <utf-8-addr-xtext>` per RFC 6533 §3), `Action`, `Status`,
 *    `Diagnostic-Code` (unless empty), `Will-Retry-Until` (delayed only). Long values are
 *    folded at spaces; a diagnostic over {@link MAX_DIAGNOSTIC_CHARS} characters is cut, and a
 *    run of more than 900 non-space characters is broken by a fold (it reads back as a space).
 * 3. The original header section: `text/rfc822-headers` (RFC 6522 §4), 7bit; quoted-printable
 *    when a line is over 998 octets; `message/global-headers` (RFC 6533 §6.3), quoted-printable,
 *    when it holds non-ASCII bytes.
 *
 * Injection safety: every value that reaches a header field or a delivery-status field is
 * reduced to one line (control characters, CR and LF included, become spaces), so a remote
 * diagnostic such as `x\r\nBcc: y` stays inside its own field.
 *
 * The caller sends the result with the null reverse-path `MAIL FROM:<>` (RFC 5321 §4.5.5,
 * RFC 3464 §2) so that a failing report cannot cause another one.
 *
 * @param input the report; see {@link DsnInput}.
 * @returns the whole message, ready for DATA.
 * @throws TypeError when `recipients` is empty, an address (`to`, `fromAddress`, a recipient) is
 *   not `local@domain` or over 512 octets, `reportingMta` or `messageIdDomain` is not a host name,
 *   a status is not an RFC 3463 code or its class does not fit the action (4 or 5 for failed, 4 for
 *   delayed), a non-empty diagnostic has no valid `type;` prefix, `messageId` is not `left@right`,
 *   or a date is invalid.
 */
export async function composeDsn(input: DsnInput): Promise<Buffer> {
  const to = checkAddress(input.to, "to");
  const fromAddress = checkAddress(input.fromAddress, "fromAddress");
  const reportingMta = checkHost(input.reportingMta, "reportingMta");
  const idDomain = checkHost(input.messageIdDomain, "messageIdDomain").replace(/\.$/, "");
  const arrival = checkDate(input.arrivalDate, "arrivalDate");
  const date = checkDate(input.date ?? new Date(), "date");
  if (input.recipients.length === 0) throw new TypeError("composeDsn: no recipients");
  if (input.messageId !== undefined && !MSG_ID.test(input.messageId)) {
    throw new TypeError(`composeDsn: invalid messageId: ${JSON.stringify(input.messageId)}`);
  }
  const messageId = input.messageId ?? `${randomBytes(12).toString("hex")}.${Date.now().toString(36)}@${idDomain}`;

  const perMessage: string[] = [];
  const envid = input.originalEnvelopeId == null ? "" : asciiOnly(oneLine(input.originalEnvelopeId)).slice(0, MAX_ENVID_CHARS);
  if (envid) perMessage.push(foldField("Original-Envelope-Id", envid));
  perMessage.push(foldField("Reporting-MTA", `dns; ${reportingMta}`));
  perMessage.push(foldField("Arrival-Date", rfc5322Date(arrival)));

  const blocks = [perMessage.join("\r\n")];
  for (const [i, r] of input.recipients.entries()) blocks.push(recipientBlock(r, i));
  const allDelayed = input.recipients.every((r) => (r.action ?? "failed") === "delayed");

  const root = new MimeNode("multipart/report; report-type=delivery-status", {
    newline: "win",
    // Nothing here names a file or URL; make sure nothing ever does.
    disableFileAccess: true,
    disableUrlAccess: true,
  });
  root.setHeader("From", { name: "Mail Delivery System", address: fromAddress });
  root.setHeader("To", { name: "", address: to });
  root.setHeader("Subject", allDelayed ? "Delayed Mail" : "Undelivered Mail Returned to Sender");
  root.setHeader("Date", date);
  root.setHeader("Message-ID", `<${messageId}>`);
  root.setHeader("Auto-Submitted", "auto-replied");
  root.setHeader("MIME-Version", "1.0");

  root
    .createChild("text/plain; charset=utf-8")
    .setHeader("Content-Description", "Notification")
    .setContent(input.humanText);
  root
    .createChild("message/delivery-status")
    .setHeader("Content-Description", "Delivery report")
    .setHeader("Content-Transfer-Encoding", "7bit")
    .setContent(blocks.join("\r\n\r\n") + "\r\n");
  appendOriginalHeaders(root, input.originalHeaders);

  return root.build();
}

/** The header fields {@link mayBounce} looks at, as read from the received message. */
export interface BounceHeaders {
  /** Auto-Submitted value (RFC 3834 §5), any case, parameters allowed; null when absent. */
  autoSubmitted: string | null;
  /** Precedence value (non-standard, RFC 3834 §2 mentions it); null or absent when missing. */
  precedence?: string | null;
  /** Content-Type value of the message (parameters allowed); null or absent when missing. */
  contentType?: string | null;
}

/**
 * Whether the bridge may send a DSN about a mail it accepted.
 *
 * False (no DSN) when:
 * - the envelope sender is the null reverse-path (`null`, `""` or `<>`): RFC 5321 §4.5.5 and
 *   §6.2 (a bounce must never be answered by a bounce), RFC 3464 §2;
 * - the sender's local part is `MAILER-DAEMON` or `postmaster` (any case): the addresses
 *   that send bounces, where a report could only loop (RFC 3834 §2 spirit);
 * - `Auto-Submitted` is present with any keyword other than `no` (RFC 3834 §2, §5);
 * - `Precedence` is `bulk`, `list` or `junk` (RFC 3834 §2);
 * - the message is itself a report: `multipart/report` (RFC 6522; DSNs and MDNs), or a bare
 *   `message/delivery-status` / `message/disposition-notification` (global forms included).
 *
 * @param envelopeFrom the MAIL FROM address (with or without angle brackets); null for `<>`.
 * @param headers the relevant header values of the message.
 * @returns true when a DSN may be sent to `envelopeFrom`.
 */
export function mayBounce(envelopeFrom: string | null, headers: BounceHeaders): boolean {
  if (envelopeFrom === null) return false;
  const sender = envelopeFrom.trim().replace(/^<(.*)>$/s, "$1").trim();
  if (sender === "") return false;
  const at = sender.lastIndexOf("@");
  const local = (at >= 0 ? sender.slice(0, at) : sender).toLowerCase();
  if (local === "mailer-daemon" || local === "postmaster") return false;

  const auto = keyword(headers.autoSubmitted);
  if (auto !== null && auto !== "no") return false;
  const precedence = keyword(headers.precedence ?? null);
  if (precedence === "bulk" || precedence === "list" || precedence === "junk") return false;
  const type = keyword(headers.contentType ?? null);
  if (type !== null && /^(?:multipart\/report|message\/(?:global-)?(?:delivery-status|disposition-notification))$/.test(type)) {
    return false;
  }
  return true;
}

/** One recipient block of a received DSN (RFC 3464 §2.3). */
export interface ParsedDsnRecipient {
  /** Final-Recipient, else Original-Recipient, without the address type (`rfc822;`) or angle brackets; `utf-8` type `\x{HEX}` escapes decoded. */
  address: string;
  /** Action (RFC 3464 §2.3.3), lower case: `failed`, `delayed`, `delivered`, `relayed`, `expanded` (or whatever the report says). */
  action: string;
  /** RFC 3463 status code, e.g. `5.1.1` (taken from the Status field, trailing comments dropped). */
  status: string;
  /** Diagnostic-Code as written, type included (e.g. `smtp; 550 5.1.1 ...`), unfolded; null when absent. */
  diagnostic: string | null;
  /** Remote-MTA without its type (`dns;`), a trailing comment or a trailing dot, e.g. `mx.example.org`; null when absent. */
  remoteMta: string | null;
}

/** A received DSN, as {@link parseDsn} reads it. */
export interface ParsedDsn {
  /** Reporting-MTA without its type (`dns;`), a trailing comment or a trailing dot; null when absent. */
  reportingMta: string | null;
  /** Message-ID of the returned original (headers-only or whole message part), without angle brackets; null when absent. */
  originalMessageId: string | null;
  /** Original-Envelope-Id (RFC 3464 §2.2.1); null when absent. */
  originalEnvelopeId: string | null;
  /** The readable recipient blocks, in order; may be empty. */
  recipients: ParsedDsnRecipient[];
}

/**
 * Read a delivery status notification (RFC 3464 in RFC 6522 `multipart/report`).
 *
 * Recognised: a top-level `multipart/report` whose `report-type` is `delivery-status` or
 * `global-delivery-status` (RFC 6533), any case, holding a `message/delivery-status` or
 * `message/global-delivery-status` part (any transfer encoding). The original message may
 * be returned as `text/rfc822-headers`, `message/global-headers`, `message/rfc822` or
 * `message/global`; its Message-ID becomes `originalMessageId`.
 *
 * Lenient about real-world reports: CRLF or LF line ends, folded fields, any case in field
 * names and values, whitespace-only separator lines, blocks not separated by an empty line
 * (a repeated recipient field starts a new block), per-message fields mixed into the first
 * recipient block. Control characters in values become spaces; values are cut to
 * {@link MAX_PARSED_FIELD_CHARS} characters.
 *
 * Never throws on malformed input:
 * - returns null when the input cannot be parsed as MIME at all (mailparser error, e.g. more
 *   than its part limit), is not a delivery-status `multipart/report` (a plain mail, an MDN,
 *   garbage), or has no delivery-status part;
 * - skips a recipient block that has no recipient address (Final-Recipient / Original-Recipient),
 *   no Action, or no RFC 3463 code in its Status field.
 *
 * @param raw the whole received message.
 * @returns the report, or null as described above.
 */
export async function parseDsn(raw: Buffer): Promise<ParsedDsn | null> {
  let mail;
  try {
    mail = await simpleParser(raw, {
      keepDeliveryStatus: true,
      skipHtmlToText: true,
      skipTextToHtml: true,
      skipTextLinks: true,
      skipImageLinks: true,
    });
  } catch {
    // Documented contract: input mailparser cannot read is "not a DSN" (null), not an error.
    return null;
  }

  const contentType = mail.headers.get("content-type");
  if (!isStructured(contentType) || contentType.value.trim().toLowerCase() !== "multipart/report") return null;
  const reportType = (contentType.params["report-type"] ?? "").trim().toLowerCase();
  if (reportType !== "delivery-status" && reportType !== "global-delivery-status") return null;

  const statusPart = mail.attachments.find((a) => /^message\/(?:global-)?delivery-status$/.test(a.contentType.toLowerCase()));
  if (!statusPart) return null;

  const groups = fieldGroups(statusPart.content.toString("utf8"));
  const first = groups[0] ?? [];
  const reportingMta = mtaName(fieldValue(first, "reporting-mta"));
  const originalEnvelopeId = fieldValue(first, "original-envelope-id");

  const recipients: ParsedDsnRecipient[] = [];
  for (const group of groups) {
    for (const block of splitRecipientBlocks(group)) {
      const recipient = readRecipient(block);
      if (recipient) recipients.push(recipient);
    }
  }

  const original = mail.attachments.find((a) =>
    /^(?:text\/rfc822-headers|message\/global-headers|message\/rfc822|message\/global)$/.test(a.contentType.toLowerCase()),
  );
  const originalMessageId = original ? messageIdOf(original.content.toString("utf8")) : null;

  return { reportingMta, originalMessageId, originalEnvelopeId, recipients };
}

// ---------------------------------------------------------------------------------------
// composing

/** The per-recipient block of one {@link DsnRecipient} (RFC 3464 §2.3), CRLF-joined. */
function recipientBlock(r: DsnRecipient, index: number): string {
  const where = `recipients[${index}]`;
  const address = checkAddress(r.address, `${where}.address`);
  const action = r.action ?? "failed";
  if (action !== "failed" && action !== "delayed") throw new TypeError(`composeDsn: ${where}.action must be failed or delayed`);
  const status = r.status.trim();
  if (!STATUS.test(status)) throw new TypeError(`composeDsn: ${where}.status is not an RFC 3463 code: ${JSON.stringify(r.status)}`);
  if (status[0] === "2" || (action === "delayed" && status[0] !== "4")) {
    throw new TypeError(`composeDsn: ${where}.status ${status} does not match action ${action}`);
  }

  const lines = [
    foldField("Final-Recipient", isAscii(address) ? `rfc822; ${address}` : `utf-8; ${utf8AddrXtext(address)}`),
    foldField("Action", action),
    foldField("Status", status),
  ];
  const diagnostic = diagnosticValue(r.diagnostic, where);
  if (diagnostic !== null) lines.push(foldField("Diagnostic-Code", diagnostic));
  if (action === "delayed" && r.willRetryUntil) {
    lines.push(foldField("Will-Retry-Until", rfc5322Date(checkDate(r.willRetryUntil, `${where}.willRetryUntil`))));
  }
  return lines.join("\r\n");
}

/** `type; text` of a diagnostic, one ASCII line, text cut to {@link MAX_DIAGNOSTIC_CHARS}; null for an empty one. */
function diagnosticValue(value: string, where: string): string | null {
  const line = oneLine(value);
  if (line === "") return null;
  const semi = line.indexOf(";");
  const type = semi < 0 ? "" : line.slice(0, semi).trim();
  if (!DIAGNOSTIC_TYPE.test(type)) {
    throw new TypeError(`composeDsn: ${where}.diagnostic needs a "type;" prefix (RFC 3464 §2.3.6), e.g. "smtp; 550 ..."`);
  }
  let text = escapeNonAscii(line.slice(semi + 1).trim());
  if (text.length > MAX_DIAGNOSTIC_CHARS) text = `${text.slice(0, MAX_DIAGNOSTIC_CHARS - 3)}...`;
  return text === "" ? `${type};` : `${type}; ${text}`;
}

/** Adds the original header section as the third part (see {@link composeDsn}). */
function appendOriginalHeaders(root: MimeNode, original: Buffer): void {
  // Drop the empty line that ends a header section (and anything after it, should a body follow).
  const text = original.toString("latin1");
  const end = text.search(/\r?\n\r?\n/);
  const section = (end < 0 ? text : text.slice(0, end)).replace(/\r?\n$/, "");
  const bytes = Buffer.from(section + "\r\n", "latin1");
  const longLine = section.split(/\r?\n/).some((l) => l.length > 998);

  if (!isAscii(section)) {
    root
      .createChild("message/global-headers")
      .setHeader("Content-Description", "Undelivered Message Headers")
      .setHeader("Content-Transfer-Encoding", "quoted-printable")
      .setContent(bytes);
  } else if (longLine) {
    root
      .createChild("text/rfc822-headers")
      .setHeader("Content-Description", "Undelivered Message Headers")
      .setHeader("Content-Transfer-Encoding", "quoted-printable")
      .setContent(bytes);
  } else {
    // MimeNode would pick quoted-printable for any text line over 76 characters; write the
    // part ourselves so that the headers stay readable as 7bit (every line is ASCII, <= 998).
    const part = Buffer.concat([
      Buffer.from(
        "Content-Type: text/rfc822-headers\r\n" +
          "Content-Description: Undelivered Message Headers\r\n" +
          "Content-Transfer-Encoding: 7bit\r\n\r\n",
        "latin1",
      ),
      bytes,
    ]);
    root.createChild("text/rfc822-headers").setRaw(part);
  }
}

/** `Name: value` folded at spaces before {@link FOLD_AT} characters; words over {@link MAX_WORD} are broken. Value must be one ASCII line. */
function foldField(name: string, value: string): string {
  const words: string[] = [];
  for (const word of value.split(" ")) {
    for (let i = 0; i < word.length; i += MAX_WORD) words.push(word.slice(i, i + MAX_WORD));
  }
  const lines: string[] = [];
  let line = `${name}:`;
  let empty = true;
  for (const word of words) {
    if (!empty && line.length + 1 + word.length > FOLD_AT) {
      lines.push(line);
      line = ` ${word}`;
    } else {
      line += ` ${word}`;
    }
    empty = false;
  }
  lines.push(line);
  return lines.join("\r\n");
}

/** A value reduced to one line: C0 controls, DEL, NEL and Unicode line/paragraph separators become spaces; runs of spaces collapse; trimmed. */
function oneLine(value: string): string {
  return value.replace(/[\x00-\x1f\x7f\u0085\u2028\u2029]/g, " ").replace(/ {2,}/g, " ").trim();
}

/** Non-ASCII characters as `\x{HEX}` (RFC 6533 §3 EmbeddedUnicodeChar). */
function escapeNonAscii(value: string): string {
  return value.replace(/[^\x00-\x7f]/gu, (c) => `\\x{${(c.codePointAt(0) ?? 0).toString(16).toUpperCase()}}`);
}

/** Drop non-ASCII characters (for fields whose syntax is plain US-ASCII text). */
function asciiOnly(value: string): string {
  return value.replace(/[^\x20-\x7e]/g, "");
}

/**
 * RFC 6533 §3 utf-8-addr-xtext: QCHAR (%x21-2a / %x2c-3c / %x3e-5b / %x5d-7e) as is, everything
 * else (`+`, `=`, `\`, non-ASCII) as `\x{HEX}`.
 */
function utf8AddrXtext(address: string): string {
  return address.replace(/[^\x21-\x2a\x2c-\x3c\x3e-\x5b\x5d-\x7e]/gu, (c) => `\\x{${(c.codePointAt(0) ?? 0).toString(16).toUpperCase()}}`);
}

function isAscii(value: string): boolean {
  return /^[\x00-\x7f]*$/.test(value);
}

function checkAddress(value: string, field: string): string {
  const address = value.trim();
  if (!ADDRESS.test(address) || Buffer.byteLength(address, "utf8") > MAX_ADDRESS_OCTETS) {
    throw new TypeError(`composeDsn: invalid ${field} address: ${JSON.stringify(value)}`);
  }
  return address;
}

function checkHost(value: string, field: string): string {
  const host = value.trim();
  if (!HOSTNAME.test(host)) throw new TypeError(`composeDsn: ${field} is not a host name: ${JSON.stringify(value)}`);
  return host;
}

function checkDate(value: Date, field: string): Date {
  if (!(value instanceof Date) || Number.isNaN(value.getTime())) throw new TypeError(`composeDsn: invalid ${field}`);
  return value;
}

/** RFC 5322 §3.3 date-time in UTC, e.g. `Tue, 02 Jan 2024 03:04:05 +0000`. */
function rfc5322Date(date: Date): string {
  return date.toUTCString().replace(/GMT$/, "+0000");
}

// ---------------------------------------------------------------------------------------
// parsing

/** One unfolded field: lower-case name and value (controls → spaces, whitespace collapsed, trimmed, cut). */
interface Field {
  name: string;
  value: string;
}

/** Recipient fields that, seen twice in one group, mean a new block started without an empty line. */
const BLOCK_FIELDS = new Set(["original-recipient", "final-recipient", "action", "status"]);

/** The field groups (separated by empty or whitespace-only lines) of a delivery-status body. */
function fieldGroups(body: string): Field[][] {
  const groups: Field[][] = [];
  let current: Field[] = [];
  let pending: { name: string; value: string } | null = null;
  const flush = (): void => {
    if (pending) current.push({ name: pending.name, value: cleanValue(pending.value) });
    pending = null;
  };
  for (const line of body.split(/\r\n|\r|\n/)) {
    if (/^[ \t]*$/.test(line)) {
      flush();
      if (current.length > 0) groups.push(current);
      current = [];
    } else if (/^[ \t]/.test(line)) {
      if (pending) pending.value += ` ${line}`;
    } else {
      flush();
      const colon = line.indexOf(":");
      if (colon > 0) pending = { name: line.slice(0, colon).trim().toLowerCase(), value: line.slice(colon + 1) };
    }
  }
  flush();
  if (current.length > 0) groups.push(current);
  return groups;
}

/**
 * A group split where a recipient field repeats (blocks run together without an empty line).
 * Only a repeat of the same field counts: MTAs differ in the order of Original-Recipient and
 * Final-Recipient (Postfix writes Final-Recipient first, Microsoft Original-Recipient first).
 */
function splitRecipientBlocks(group: Field[]): Field[][] {
  const blocks: Field[][] = [];
  let current: Field[] = [];
  const seen = new Set<string>();
  for (const field of group) {
    if (BLOCK_FIELDS.has(field.name)) {
      if (seen.has(field.name)) {
        blocks.push(current);
        current = [];
        seen.clear();
      }
      seen.add(field.name);
    }
    current.push(field);
  }
  if (current.length > 0) blocks.push(current);
  return blocks;
}

/** The recipient of one block, or null when it lacks an address, an Action or a status code. */
function readRecipient(block: Field[]): ParsedDsnRecipient | null {
  const final = fieldValue(block, "final-recipient");
  const original = fieldValue(block, "original-recipient");
  const address = recipientAddress(final) ?? recipientAddress(original);
  const action = fieldValue(block, "action")?.split(/[\s;(]/)[0]?.toLowerCase() ?? "";
  const status = fieldValue(block, "status")?.match(/\b[245]\.\d{1,3}\.\d{1,3}\b/)?.[0] ?? null;
  if (address === null || action === "" || status === null) return null;
  return {
    address,
    action,
    status,
    diagnostic: fieldValue(block, "diagnostic-code"),
    remoteMta: mtaName(fieldValue(block, "remote-mta")),
  };
}

/** `type; address` → address (angle brackets dropped, `utf-8` escapes decoded); null when empty. */
function recipientAddress(value: string | null): string | null {
  if (value === null) return null;
  const semi = value.indexOf(";");
  const type = semi < 0 ? "rfc822" : value.slice(0, semi).trim().toLowerCase();
  let address = (semi < 0 ? value : value.slice(semi + 1)).trim().replace(/^<(.*)>$/, "$1").trim();
  if (type === "utf-8") address = decodeEmbeddedUnicode(address);
  return address === "" ? null : address;
}

/** RFC 6533 §3 `\x{HEX}` escapes → characters (invalid code points are left as written). */
function decodeEmbeddedUnicode(value: string): string {
  return value.replace(/\\x\{([0-9A-Fa-f]{1,6})\}/g, (whole, hex: string) => {
    const code = Number.parseInt(hex, 16);
    return code <= 0x10ffff ? String.fromCodePoint(code) : whole;
  });
}

/** First value of a field in a group; null when absent or empty. */
function fieldValue(fields: Field[], name: string): string | null {
  const value = fields.find((f) => f.name === name)?.value ?? "";
  return value === "" ? null : value;
}

/**
 * An MTA name field (`mta-name-type ";" mta-name`, RFC 3464 §2.2.2, §2.3.5) → the name:
 * `dns; mx.example.org.` → `mx.example.org`. The type is dropped, and so are a trailing
 * parenthesised comment (Gmail: `(2a00:..., the server for the domain example.com.)`) and a
 * trailing root dot. A value without a type is taken as the name. Null when absent or empty.
 */
function mtaName(value: string | null): string | null {
  if (value === null) return null;
  const semi = value.indexOf(";");
  const name = (semi < 0 ? value : value.slice(semi + 1))
    .replace(/\s*\([^()]*\)\s*$/, "")
    .trim()
    .replace(/\.$/, "");
  return name === "" ? null : name;
}

function cleanValue(value: string): string {
  const clean = value.replace(/[\x00-\x1f\x7f\u0085\u2028\u2029]/g, " ").replace(/\s+/g, " ").trim();
  return clean.length > MAX_PARSED_FIELD_CHARS ? clean.slice(0, MAX_PARSED_FIELD_CHARS) : clean;
}

/** Message-ID (without angle brackets) from the header section at the start of `text`; null when missing. */
function messageIdOf(text: string): string | null {
  const end = text.search(/\r?\n[ \t]*\r?\n/);
  const [fields] = fieldGroups(end < 0 ? text : text.slice(0, end));
  const value = fieldValue(fields ?? [], "message-id");
  if (value === null) return null;
  const id = (value.match(/<([^<>]*)>/)?.[1] ?? value.split(" ")[0] ?? "").replace(/\s+/g, "");
  return id === "" ? null : id;
}

/** mailparser's structured header value (`{ value, params }`). */
function isStructured(value: unknown): value is { value: string; params: Record<string, string> } {
  return (
    typeof value === "object" &&
    value !== null &&
    typeof (value as { value?: unknown }).value === "string" &&
    typeof (value as { params?: unknown }).params === "object" &&
    (value as { params?: unknown }).params !== null
  );
}

/** Lower-case first token of a header value (parameters and comments dropped); null when missing or empty. */
function keyword(value: string | null): string | null {
  if (value === null) return null;
  const word = (value.split(/[;(]/)[0] ?? "").trim().toLowerCase();
  return word === "" ? null : word;
}
