/**
 * Builds the RFC 5322 message for one Matrix message: nodemailer's MailComposer makes
 * the MIME tree (UTF-8, encoded words, transfer encodings, folding) and nodemailer's
 * DKIM signer adds the DKIM-Signature (RFC 6376). Only the bridge rules live here:
 * which headers are set, what is sanitised, and which headers are signed.
 */
import type { Readable } from "node:stream";
import MailComposer from "nodemailer/lib/mail-composer";
import DKIM from "nodemailer/lib/dkim";
import type { DkimSigner } from "./dkim.ts";

export type { DkimSigner } from "./dkim.ts";

/** A mailbox: display name (null or "" for none) and address (already normalised by bridge/ids.ts). */
export interface MailAddress {
  name: string | null;
  address: string;
}

/** A file attached to an outgoing mail. */
export interface MailFile {
  /** File name shown to the recipient (RFC 2231 encoded when not ASCII); controls are replaced, bidi controls removed, cut to {@link HEADER_TEXT_MAX} keeping its extension. */
  filename: string;
  /** MIME type, e.g. `image/png`. */
  contentType: string;
  content: Buffer;
}

/** One outgoing human message, as the bridge hands it to {@link composeMail}. */
export interface OutgoingMail {
  /** Author (the Matrix sender's personal address, or the room mailbox). */
  from: MailAddress;
  /** Visible recipients (To:). Envelope recipients are passed separately at delivery. */
  to: MailAddress[];
  /** Reply-To (RFC 5322 §3.6.2), e.g. a room mailbox so that replies go to the room; null for none. */
  replyTo?: MailAddress | null;
  /** Subject; control characters are replaced by spaces, bidi controls removed, cut to {@link HEADER_TEXT_MAX}. */
  subject: string;
  /** text/plain body (line breaks may be LF or CRLF; output uses CRLF). */
  text: string;
  /** text/html body; null for a text-only message. */
  html: string | null;
  /** Message-ID without angle brackets, e.g. `abc.123@mail.example`. */
  messageId: string;
  /** Message-ID (without brackets) this replies to, or null. */
  inReplyTo: string | null;
  /** References chain (without brackets), oldest first. */
  references: string[];
  /** Date header value. */
  date: Date;
  /** Extra header fields (e.g. `X-Mailer`). Must not name a header set by this module. */
  headers?: Record<string, string>;
  /** Files attached after the body (`multipart/mixed`, RFC 2046 §5.1.3); base64 encoded. */
  attachments?: MailFile[];
  /**
   * Lines closing the message, after a `-- ` signature separator (the usual convention, which
   * mail clients fold) in the text part and a rule in the HTML part (line breaks kept); omitted: none.
   */
  footer?: string | null;
  /**
   * `Auto-Submitted` (RFC 3834 §5) for mail the bridge writes by itself (a subscription
   * confirmation: `auto-replied`); omitted for human-written messages.
   */
  autoSubmitted?: "auto-replied" | "auto-generated";
}

/**
 * Header fields covered by the DKIM signature, relaxed/relaxed (RFC 6376 §5.4.1 lists From
 * as required and the others as recommended). Only fields present in the message are signed.
 */
export const DKIM_SIGNED_HEADERS = [
  "From",
  "Sender",
  "Reply-To",
  "To",
  "Cc",
  "Subject",
  "Date",
  "Message-ID",
  "In-Reply-To",
  "References",
  "MIME-Version",
  "Content-Type",
  "Content-Transfer-Encoding",
] as const;

/**
 * List header fields (RFC 2369, RFC 2919, RFC 8058) the caller may set through
 * {@link OutgoingMail.headers}; signed too, so that no one on the way can add or change an
 * unsubscribe address (RFC 8058 §4 requires List-Unsubscribe to be covered).
 */
export const DKIM_SIGNED_LIST_HEADERS = ["List-Id", "List-Post", "List-Unsubscribe", "List-Unsubscribe-Post"] as const;

/** Header fields this module sets itself; {@link OutgoingMail.headers} may not name them. */
const RESERVED_HEADERS = new Set([
  ...DKIM_SIGNED_HEADERS.map((h) => h.toLowerCase()),
  "bcc",
  "dkim-signature",
  "auto-submitted",
]);

/** RFC 5322 §2.2 field name: printable US-ASCII except colon. */
const FIELD_NAME = /^[\x21-\x39\x3b-\x7e]+$/;
/** RFC 5322 §3.6.4 msg-id body (id-left "@" id-right) without brackets, no whitespace or controls. */
const MSG_ID = /^[^\s<>@\x00-\x1f\x7f]+@[^\s<>@\x00-\x1f\x7f]+$/;
/** A mailbox address as the bridge produces it: local@domain with no whitespace, controls or brackets. */
const ADDRESS = /^[^\s<>,;"\x00-\x1f\x7f]+@[^\s<>,;"@\x00-\x1f\x7f]+$/;

/**
 * Compose (and optionally DKIM-sign) a message.
 *
 * Output: CRLF line endings; `multipart/alternative` (text/plain then text/html, RFC 2046
 * §5.1.4: last part is the preferred one) when `html` is given, else a single text/plain
 * part; inside a `multipart/mixed` with the `attachments` after it when there are any; UTF-8 everywhere, non-ASCII headers as RFC 2047 encoded words. `Message-ID`,
 * `In-Reply-To` and `References` (RFC 5322 §3.6.4) carry `<id>` forms. `Auto-Submitted`
 * (RFC 3834) is set only when `autoSubmitted` asks for it (mail the bridge writes itself).
 *
 * Header safety: CR/LF and other control characters (C0, DEL, C1) in the subject, display
 * names, attachment names and extra header values are replaced by spaces before nodemailer
 * encodes them, so no value can start a new header line; bidi controls are removed from them;
 * the subject, display names and attachment names are cut to {@link HEADER_TEXT_MAX} (no line
 * over RFC 5322's 998 characters).
 *
 * @param msg the message.
 * @param dkim signer, or null for an unsigned message. Signature: `a=rsa-sha256`,
 *   `c=relaxed/relaxed`, `h=` the fields of {@link DKIM_SIGNED_HEADERS} and
 *   {@link DKIM_SIGNED_LIST_HEADERS} (RFC 6376 §3.5).
 * @returns the message bytes, starting with the DKIM-Signature field when signed.
 * @throws TypeError for an invalid messageId, address, or extra header name (or one naming a
 *   header set here); Error when DKIM signing fails (e.g. the key does not suit rsa-sha256).
 */
export async function composeMail(msg: OutgoingMail, dkim: DkimSigner | null): Promise<Buffer> {
  if (!MSG_ID.test(msg.messageId)) throw new TypeError("composeMail: invalid messageId");
  const from = toAddress(msg.from, "from");
  const to = msg.to.map((a) => toAddress(a, "to"));
  const replyTo = msg.replyTo ? toAddress(msg.replyTo, "replyTo") : undefined;
  if (to.length === 0) throw new TypeError("composeMail: no To address");

  const headers: Record<string, string> = {};
  for (const [key, value] of Object.entries(msg.headers ?? {})) {
    if (!FIELD_NAME.test(key) || RESERVED_HEADERS.has(key.toLowerCase())) {
      throw new TypeError(`composeMail: header name not allowed: ${JSON.stringify(key)}`);
    }
    headers[key] = cleanText(value);
  }
  if (msg.autoSubmitted) headers["Auto-Submitted"] = msg.autoSubmitted;

  const references = msg.references.filter((id) => MSG_ID.test(id)).map((id) => `<${id}>`);
  const inReplyTo = msg.inReplyTo !== null && MSG_ID.test(msg.inReplyTo) ? `<${msg.inReplyTo}>` : undefined;

  const composer = new MailComposer({
    from,
    to,
    ...(replyTo !== undefined ? { replyTo } : {}),
    subject: headerText(msg.subject, HEADER_TEXT_MAX.subject),
    text: msg.footer ? `${msg.text}\n\n-- \n${msg.footer}` : msg.text,
    ...(msg.html !== null ? { html: msg.footer ? `${msg.html}<hr><p><small>${escapeText(msg.footer).replace(/\n/g, "<br>")}</small></p>` : msg.html } : {}),
    messageId: `<${msg.messageId}>`,
    ...(inReplyTo !== undefined ? { inReplyTo } : {}),
    ...(references.length > 0 ? { references } : {}),
    date: msg.date,
    headers,
    ...(msg.attachments?.length
      ? { attachments: msg.attachments.map((a) => ({ filename: headerText(a.filename, HEADER_TEXT_MAX.filename, true) || "file", contentType: a.contentType, content: a.content, contentTransferEncoding: "base64" as const })) }
      : {}),
    newline: "win",
    // Content comes from Matrix users: never let nodemailer read files or URLs for it.
    disableFileAccess: true,
    disableUrlAccess: true,
  });
  const unsigned = await composer.compile().build();
  return dkim ? signWithDkim(unsigned, dkim) : unsigned;
}

/**
 * DKIM-sign a complete message (RFC 6376): `a=rsa-sha256`, `c=relaxed/relaxed`, the headers of
 * {@link DKIM_SIGNED_HEADERS}, `d=`/`s=` from `dkim`.
 * @param unsigned the message (CRLF line ends)
 * @returns the message with its DKIM-Signature header on top
 * @throws Error when the key cannot sign
 */
export async function signWithDkim(unsigned: Buffer, dkim: DkimSigner): Promise<Buffer> {
  const signer = new DKIM({
    domainName: dkim.domainName,
    keySelector: dkim.keySelector,
    privateKey: dkim.privateKey,
    headerFieldNames: [...DKIM_SIGNED_HEADERS, ...DKIM_SIGNED_LIST_HEADERS].join(":"),
  });
  const signed = await collect(signer.sign(unsigned));
  // nodemailer's signer silently emits the message unsigned when crypto rejects the key.
  if (!signed.subarray(0, 16).toString("latin1").startsWith("DKIM-Signature:")) {
    throw new Error("DKIM signing failed (the key cannot sign rsa-sha256)");
  }
  return signed;
}

/** The value of `List-Unsubscribe-Post` (RFC 8058 §3.1): the one key/value pair a one-click POST carries. */
export const ONE_CLICK_POST = "List-Unsubscribe=One-Click";

/** An http(s) URI that can stand in angle brackets in List-Unsubscribe (RFC 2369 §2): printable ASCII without `<`, `>`, `,` or spaces. */
const LIST_URI = /^https?:\/\/[\x21-\x2b\x2d-\x3b\x3d\x3f-\x7e]+$/;

/**
 * One recipient's copy of a composed message with a one-click unsubscribe link (RFC 8058):
 * `<url>` is appended to the existing `List-Unsubscribe` field (RFC 2369 §3.2; the mailto URI
 * stays first), `List-Unsubscribe-Post: List-Unsubscribe=One-Click` is added after it, the old
 * DKIM-Signature is dropped and the copy is signed anew, so that both fields are covered by the
 * signature (RFC 8058 §4). Everything else (body, other fields, their order) is kept byte for
 * byte.
 * @param raw a message made by {@link composeMail} (CRLF line ends)
 * @param url the https URI that unsubscribes this recipient (RFC 8058 §3.1), naming them
 * @param dkim signer, or null to leave the copy unsigned
 * @returns the copy, or null when `raw` has no `List-Unsubscribe` field (nothing to add to)
 * @throws TypeError for a `url` that cannot stand in the field; Error when DKIM signing fails
 */
export async function withOneClickUnsubscribe(raw: Buffer, url: string, dkim: DkimSigner | null): Promise<Buffer | null> {
  if (!LIST_URI.test(url)) throw new TypeError("withOneClickUnsubscribe: the URL cannot stand in List-Unsubscribe");
  const end = raw.indexOf("\r\n\r\n");
  const headerEnd = end === -1 ? raw.length : end + 2;
  // Header fields, each with its continuation lines (RFC 5322 §2.2.3), CRLF included.
  const fields: string[] = [];
  for (const line of raw.subarray(0, headerEnd).toString("latin1").split(/(?<=\r\n)/)) {
    if (line === "") continue;
    if ((line.startsWith(" ") || line.startsWith("\t")) && fields.length > 0) fields[fields.length - 1] += line;
    else fields.push(line);
  }
  const name = (field: string): string => field.slice(0, Math.max(0, field.indexOf(":"))).trim().toLowerCase();
  let found = false;
  const out: string[] = [];
  for (const field of fields) {
    const n = name(field);
    if (n === "dkim-signature" || n === "list-unsubscribe-post") continue;
    if (n === "list-unsubscribe" && !found) {
      found = true;
      const value = field.slice(field.indexOf(":") + 1).replace(/\r\n(?=[ \t])/g, "").trim();
      out.push(`List-Unsubscribe: ${value},\r\n <${url}>\r\n`, `List-Unsubscribe-Post: ${ONE_CLICK_POST}\r\n`);
      continue;
    }
    out.push(field);
  }
  if (!found) return null;
  const copy = Buffer.concat([Buffer.from(out.join(""), "latin1"), raw.subarray(headerEnd)]);
  return dkim ? signWithDkim(copy, dkim) : copy;
}

/** Escape text for HTML (`& < > "`). */
function escapeText(s: string): string {
  return s.replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;").replace(/"/g, "&quot;");
}

/**
 * Bidi controls (ALM, LRM, RLM, LRE..RLO, LRI..PDI): they can make a subject, name or file name
 * read differently from what it is (`Invoice \u202Efdp.exe` shows as `Invoice exe.pdf`;
 * CVE-2021-42574 "Trojan Source"). Removed from header text.
 */
const BIDI_CONTROLS = /[\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]/gu;

/** Replace CR, LF and other C0 controls (except TAB), DEL and C1 controls by a space; remove bidi controls. */
function cleanText(value: string): string {
  return value.replace(/[\x00-\x08\x0a-\x1f\x7f-\x9f]/g, " ").replace(BIDI_CONTROLS, "");
}

/**
 * Longest subject, display name and attachment name written, in characters (code points).
 * RFC 5322 §2.1.1: a line MUST be at most 998 characters; nodemailer folds at white space and
 * in encoded words, but an ASCII word longer than a line cannot be folded, so header text is cut
 * well below it (with `…`). Matrix sets no limit on a room name or a display name.
 */
export const HEADER_TEXT_MAX = { subject: 250, name: 100, filename: 200 } as const;

/** `value` cut to `max` code points, ending in `…` when cut; a file name keeps its extension. */
function cut(value: string, max: number, keepExtension = false): string {
  const points = [...value];
  if (points.length <= max) return value;
  const ext = keepExtension ? (/\.[\p{L}\p{N}]{1,10}$/u.exec(value)?.[0] ?? "") : "";
  return `${points.slice(0, max - 1 - [...ext].length).join("").trimEnd()}…${ext}`;
}

/** Header text: {@link cleanText}, white space runs made one space, trimmed, cut to `max`. */
function headerText(value: string, max: number, keepExtension = false): string {
  return cut(cleanText(value).replace(/\s+/gu, " ").trim(), max, keepExtension);
}

function toAddress(a: MailAddress, field: string): { name: string; address: string } {
  if (!ADDRESS.test(a.address)) throw new TypeError(`composeMail: invalid ${field} address`);
  return { name: a.name === null ? "" : headerText(a.name, HEADER_TEXT_MAX.name), address: a.address };
}

async function collect(stream: Readable): Promise<Buffer> {
  const chunks: Buffer[] = [];
  for await (const chunk of stream) chunks.push(Buffer.isBuffer(chunk) ? chunk : Buffer.from(chunk as string));
  return Buffer.concat(chunks);
}
