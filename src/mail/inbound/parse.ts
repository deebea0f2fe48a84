/**
 * Parsing received mail (RFC 5322 + MIME) into the fields the bridge posts to Matrix.
 */
import type { Readable } from "node:stream";
import { MailParser } from "mailparser";
import addressparser from "nodemailer/lib/addressparser";
import type { AddressObject, AttachmentStream, EmailAddress, MessageText, ParsedMail as MailparserMail } from "mailparser";
import { htmlToPlain } from "./htmlText.ts";
import { charsetHint, recoverRawHeader, recoverRawParameter } from "./charsets.ts";
import { noteLargeWork } from "../../util/reclaim.ts";
export { stripQuotedReply } from "./replyFold.ts";

/** One mailbox of an address header. */
export interface MailAddress {
  /** The address (`local@domain`) as written in the header, IDN domains decoded to Unicode. */
  address: string;
  /** Display name, RFC 2047 encoded words decoded; null when the header gave none. */
  name: string | null;
}

/** One attachment (a non-body MIME part), without its content. */
export interface MailAttachmentInfo {
  /** File name from Content-Disposition/Content-Type (RFC 2183/2231, encoded words decoded); null if none. */
  filename: string | null;
  /** MIME type, lower case, e.g. `image/png`. */
  contentType: string;
  /** Decoded size in bytes; 0 when the message was parsed from its skeleton (see {@link parseMail}). */
  size: number;
  /**
   * Content-ID (RFC 2392) without angle brackets, what a `cid:` URL in the HTML names; null
   * when the part has none.
   */
  contentId: string | null;
  /** Content-Disposition type (RFC 2183), lower case: `inline` or `attachment`; null when the part has none. */
  disposition: "inline" | "attachment" | null;
  /** The `charset` parameter of the part's Content-Type, lower case; null when it has none. */
  charset: string | null;
}

/** One attachment (a non-body MIME part), decoded. */
export interface MailAttachment extends MailAttachmentInfo {
  /** Decoded content. */
  content: Buffer;
}

/**
 * An attachment handed over while it is decoded ({@link forEachAttachment}'s `stream`): its
 * decoded size in bytes, known from an earlier pass ({@link attachmentSizes}), and the stream of
 * its content, paused until the reader resumes it. Read at most once.
 */
export interface StreamedAttachment extends MailAttachmentInfo {
  content: { readonly bytes: number; readonly stream: Readable };
}

/** The fields of a received message the bridge uses, with attachments as {@link MailAttachmentInfo} (no content). */
export type ParsedMailSummary = Omit<ParsedMail, "attachments"> & { attachments: MailAttachmentInfo[] };

/** The fields of a received message the bridge uses. */
export interface ParsedMail {
  /** Message-ID (RFC 5322 §3.6.4) without angle brackets; null when missing or empty. */
  messageId: string | null;
  /** First message id of In-Reply-To, without angle brackets; null when missing. */
  inReplyTo: string | null;
  /** Message ids of References without angle brackets, oldest first, duplicates removed; [] when missing. */
  references: string[];
  /** First mailbox of From; null when missing or unparseable. */
  from: MailAddress | null;
  /** First mailbox of Reply-To; null when missing. */
  replyTo: MailAddress | null;
  /** Mailboxes of To (groups flattened). */
  to: MailAddress[];
  /** Mailboxes of Cc (groups flattened). */
  cc: MailAddress[];
  /**
   * Subject with encoded words decoded, control characters removed as from `text` (a removal is
   * named in `losses`); null when the header is missing.
   */
  subject: string | null;
  /** Date header; null when missing or unparseable. */
  date: Date | null;
  /** The Date header as written (unfolded, trimmed), for showing it; null when missing. */
  dateHeader: string | null;
  /**
   * Plain body: the text/plain parts, or the HTML converted to text when there are none; "" when
   * no body. Line ends are LF (a bare CR and NEL too); C0 controls but TAB and LF, DEL and C1
   * controls are removed (named in `losses`).
   */
  text: string;
  /** HTML body as the mail has it (untrusted: the bridge sanitizes it before posting); null when the mail has no HTML. */
  html: string | null;
  /** Auto-Submitted keyword (RFC 3834 §5), lower case, parameters dropped, e.g. `auto-replied`; null when missing. */
  autoSubmitted: string | null;
  /**
   * Precedence keyword (`bulk`, `list`, `junk`, …; RFC 3834 §2 names it as the mark of mail not
   * to answer), lower case, parameters dropped; null when missing.
   */
  precedence: string | null;
  /** Attachments, including inline images (`cid:` parts). */
  attachments: MailAttachment[];
  /**
   * What could not be decoded, one phrase each ("undecodable characters", "control
   * characters", "undecodable characters in the header fields", "control characters in the
   * subject"): the text is posted, but the original should go with it. Empty for a clean mail.
   */
  losses: string[];
  /**
   * Why the mail cannot be read at all (a multipart with no boundary, or whose boundary never
   * occurs): null when it can. Such a mail is refused at DATA (554 5.6.0), never posted empty.
   */
  unreadable: string | null;
}

/**
 * Line ends other than LF: CRLF, a bare CR and NEL (U+0085 NEXT LINE). RFC 5322 §2.3 allows CR
 * in a body only before LF, but a bare CR still arrives (old Mac text, base64 or
 * quoted-printable `=0D`); mail clients show it as a line end (HTML, which webmail renders text
 * in, reads a bare CR as LF: HTML Living Standard §13.2.3.5 "Preprocessing the input stream").
 * Unicode §5.8 counts NEL as a line end too. They become LF.
 */
const LINE_END_RE = /\r\n?|\u0085/gu;

/**
 * C0 controls other than TAB and LF, DEL, and C1 controls (U+0080–U+009F): never part of readable
 * text. Applied after {@link LINE_END_RE}, so no CR or NEL is left for it to take.
 */
// eslint-disable-next-line no-control-regex
const CONTROL_RE = /[\u0000-\u0008\u000b-\u001f\u007f-\u009f]/gu;

/**
 * Text as the bridge posts it: line ends made LF ({@link LINE_END_RE}), controls removed
 * ({@link CONTROL_RE}).
 * @param text decoded text (a body, or a header's text)
 * @returns the cleaned text, and whether a control character was removed (line ends made LF do
 *   not count: nothing of them is lost)
 */
function cleanText(text: string): { text: string; stripped: boolean } {
  const lines = text.replace(LINE_END_RE, "\n");
  const stripped = lines.search(CONTROL_RE) >= 0;
  return { text: stripped ? lines.replace(CONTROL_RE, "") : lines, stripped };
}

/** Why the top-level MIME structure cannot be read, or null (RFC 2046 §5.1.1: a multipart needs a boundary that occurs). */
function unreadableStructure(mail: MailparserMail, raw: Buffer): string | null {
  const ct = mail.headers.get("content-type") as { value?: unknown; params?: Record<string, unknown> } | undefined;
  const type = typeof ct?.value === "string" ? ct.value.toLowerCase() : "";
  if (!type.startsWith("multipart/")) return null;
  const boundary = ct?.params?.boundary;
  if (typeof boundary !== "string" || boundary === "") return `a ${type} message without a boundary`;
  if (!raw.includes(`--${boundary}`)) return `a ${type} message whose boundary never occurs`;
  return null;
}

/** Message ids in a header value, without brackets: `<a@b> <c@d>`, `<a@b><c@d>`, or a bare `a@b`. */
export function extractMessageIds(value: string): string[] {
  const ids: string[] = [];
  const bracketed = value.match(/<[^<>]*>/g);
  if (bracketed) {
    for (const b of bracketed) {
      const id = b.slice(1, -1).replace(/\s+/g, "");
      if (id) ids.push(id);
    }
    return ids;
  }
  for (const token of value.split(/\s+/)) {
    const id = token.replace(/^[<(]+|[>)]+$/g, "");
    if (id) ids.push(id);
  }
  return ids;
}

function headerString(mail: MailparserMail, key: string): string | null {
  const v = mail.headers.get(key);
  if (v === undefined || v === null) return null;
  if (typeof v === "string") return v;
  if (Array.isArray(v) && v.every((x) => typeof x === "string")) return (v as string[]).join(" ");
  return null;
}

function flatten(list: EmailAddress[], out: MailAddress[]): MailAddress[] {
  for (const a of list) {
    if (a.group) flatten(a.group, out);
    else if (a.address) out.push({ address: a.address.trim(), name: a.name.trim() || null });
  }
  return out;
}

function addresses(field: AddressObject | AddressObject[] | undefined): MailAddress[] {
  if (!field) return [];
  const out: MailAddress[] = [];
  for (const obj of Array.isArray(field) ? field : [field]) flatten(obj.value, out);
  return out;
}

/** The keyword of a header like Auto-Submitted or Precedence: lower case, parameters and comments dropped; null when missing or empty. */
function keyword(value: string | null): string | null {
  if (value === null) return null;
  return (value.split(";")[0] ?? "").replace(/\([^()]*\)/gu, "").trim().toLowerCase() || null;
}

/** The raw, unfolded value of the first `name` header, or null. */
function rawHeader(mail: MailparserMail, name: string): string | null {
  const line = mail.headerLines.find((h) => h.key === name)?.line;
  if (line === undefined) return null;
  const colon = line.indexOf(":");
  return line.slice(colon + 1).replace(/\r?\n[ \t]+/g, " ").trim();
}

/**
 * A message to read: whole in memory, or a large stored mail read one chunk at a time (the
 * store's `StoredRaw`: `head` is its first chunk, `chunks()` yields `head` and the rest in order,
 * `maxBytes` bounds the whole message's size).
 */
export type MessageSource = Buffer | { readonly head: Buffer; readonly maxBytes: number; chunks(): AsyncIterable<Buffer> };

/** What one run of mailparser over a message gives (the fields `simpleParser` would set). */
interface MailparserRun {
  mail: MailparserMail;
  attachments: MailAttachmentInfo[];
}

/** Bytes of the message handed to mailparser per write. */
const FEED_SLICE_BYTES = 64 * 1024;

/**
 * Options of mailparser: the bridge converts HTML itself, keeps `cid:` links and needs no
 * attachment checksums. `ignoreEmbedded`: a `message/rfc822` part (a forwarded message) is
 * always an attachment, its bytes the forwarded message, whatever its disposition; the bridge
 * shows it as a quoted block itself (bridge/format/mailParts.ts) rather than mixing its text into the body.
 */
const PARSER_OPTIONS = { skipHtmlToText: true, skipTextToHtml: true, skipTextLinks: true, skipImageLinks: true, keepCidLinks: true, checksumAlgo: false, ignoreEmbedded: true } as const;

/**
 * Run mailparser's streaming parser over `raw`, handing each attachment's decoded content to
 * `onAttachment` as a stream, one attachment at a time: the next is decoded only after the
 * promise of the previous one settled, so at most one attachment is being read at a time.
 * This is `simpleParser` (mailparser's simple-parser.js, with `keepCidLinks`) without its
 * buffering of every attachment.
 * @throws Error from mailparser (structural limits) or from `onAttachment`
 */
function runMailparser(source: MessageSource, onAttachment: (info: MailAttachmentInfo, content: Readable, index: number) => Promise<void>): Promise<MailparserRun> {
  const whole = Buffer.isBuffer(source);
  const head = whole ? source : source.head;
  /** The bytes a part's raw 8-bit file name is looked up in: the message, or (chunked) its first chunk and the chunk being read. */
  let near = head;
  let hint: string | null | undefined;
  const messageCharset = (): string | null => (hint === undefined ? (hint = charsetHint(head)) : hint);
  return new Promise((resolve, reject) => {
    const mail = { attachments: [] } as unknown as MailparserMail & Record<string, unknown>;
    const attachments: MailAttachmentInfo[] = [];
    const parser = new MailParser(PARSER_OPTIONS);
    let settled = false;
    /** A chunked read waiting for the parser to take a chunk: woken when the parse fails. */
    let waiting: (() => void) | null = null;
    const fail = (err: unknown): void => {
      if (settled) return;
      settled = true;
      waiting?.();
      parser.destroy();
      reject(err instanceof Error ? err : new Error(String(err)));
    };
    parser.on("error", fail);
    parser.on("headers", (headers) => {
      mail.headers = headers;
      mail.headerLines = (parser as unknown as { headerLines: MailparserMail["headerLines"] }).headerLines;
    });
    let reading = false;
    const reader = (): void => {
      reading = true;
      const read = parser.read() as (AttachmentStream & { type: "attachment" }) | MessageText | null;
      if (read === null) {
        reading = false;
        return;
      }
      if (read.type === "text") {
        for (const key of ["text", "html"] as const) if (read[key] !== undefined) mail[key] = read[key];
        reader();
        return;
      }
      const data = read as AttachmentStream & { content: Readable };
      const info = attachmentInfo(data, near, messageCharset);
      const index = attachments.length;
      attachments.push(info);
      let size = 0;
      data.content.on("data", (chunk: Buffer) => (size += chunk.length));
      onAttachment(info, data.content, index).then(
        () => {
          // Whatever the consumer left unread is drained: the size counts the whole part.
          data.content.resume();
          const done = (): void => {
            info.size = size;
            (data.release as () => void)();
            reader();
          };
          if (data.content.readableEnded) done();
          else data.content.once("end", done);
        },
        fail,
      );
    };
    parser.on("readable", () => {
      if (!reading) reader();
    });
    parser.on("end", () => {
      if (settled) return;
      settled = true;
      for (const key of ["subject", "references", "date", "to", "from", "cc", "bcc", "message-id", "in-reply-to", "reply-to"]) {
        if (mail.headers?.has(key)) mail[key.replace(/-([a-z])/g, (_m, c: string) => c.toUpperCase())] = mail.headers.get(key);
      }
      resolve({ mail, attachments });
    });
    // Fed in slices, minding backpressure: one big write would make every stage below
    // (MIME splitting, transfer decoding) buffer the whole message at once.
    const feedChunk = (raw: Buffer, done: () => void): void => {
      let offset = 0;
      const feed = (): void => {
        while (offset < raw.length && !settled) {
          const slice = raw.subarray(offset, Math.min(offset + FEED_SLICE_BYTES, raw.length));
          offset += slice.length;
          if (!parser.write(slice)) {
            parser.once("drain", feed);
            return;
          }
        }
        // Also when settled (failed): a chunked read waiting on it then stops.
        done();
      };
      feed();
    };
    if (whole) {
      feedChunk(source, () => {
        if (!settled) parser.end();
      });
      return;
    }
    // A chunked message: the next chunk is read once the parser took the one before.
    void (async () => {
      for await (const chunk of source.chunks()) {
        if (settled) return;
        // Each stored chunk parsed leaves garbage behind (util/reclaim.ts).
        if (chunk !== head) noteLargeWork(chunk.length);
        near = chunk === head ? head : Buffer.concat([head.subarray(0, 64 * 1024), chunk]);
        await new Promise<void>((next) => {
          waiting = next;
          feedChunk(chunk, next);
        });
      }
      if (!settled) parser.end();
    })().catch(fail);
  });
}

/**
 * The bridge's fields of one attachment of mailparser: Content-ID without brackets (RFC 2392),
 * disposition (RFC 2183; an unknown one counts as `attachment`, RFC 2183 §2.8), charset, and
 * the file name, recovered when a legacy client wrote it as raw 8-bit bytes (mail/inbound/charsets.ts).
 * @param messageCharset the message's charset hint, computed on first use
 */
function attachmentInfo(data: AttachmentStream, raw: Buffer, messageCharset: () => string | null): MailAttachmentInfo {
  const ct = data.headers.get("content-type") as { params?: Record<string, unknown> } | undefined;
  const charsetParam = ct?.params?.charset;
  const charset = typeof charsetParam === "string" && charsetParam.trim() ? charsetParam.trim().toLowerCase() : null;
  const dispositionRaw = typeof data.contentDisposition === "string" ? data.contentDisposition.trim().toLowerCase() : "";
  const disposition = dispositionRaw === "" ? null : dispositionRaw === "inline" ? "inline" : "attachment";
  let filename = data.filename ?? null;
  if (filename !== null && /[\u0080-\u00ff]/u.test(filename)) filename = recoverRawParameter(filename, raw, charset ?? messageCharset());
  const contentId = typeof data.cid === "string" && data.cid !== "" ? data.cid : null;
  return { filename, contentType: data.contentType.toLowerCase(), size: 0, contentId, disposition, charset };
}

/**
 * Size from which {@link collect} writes an attachment in place rather than joining its
 * chunks: 1 MiB. Below it a join costs little; above it, its second copy is the attachment's
 * size again.
 */
const IN_PLACE_MIN_BYTES = 1024 * 1024;

/**
 * Read an attachment stream into one Buffer.
 *
 * Given a `capacity` (an upper bound of the decoded size: the message's size, as no part decodes
 * larger than its transfer encoding, RFC 2045 §6.2, §6.7, §6.8), content past
 * {@link IN_PLACE_MIN_BYTES} is written in place into one uninitialised buffer of that capacity,
 * whose pages the content never reaches are never touched and cost no memory: collecting the
 * chunks and joining them would hold the attachment twice. Content past the capacity (never,
 * for a true upper bound) is collected and joined, so nothing is lost.
 * @param capacity upper bound of the content's size, in bytes; 0: unknown (chunks are joined)
 * @returns the content (a view of the buffer it was written into)
 * @throws what the stream emits as its error
 */
function collect(content: Readable, capacity = 0): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    let chunks: Buffer[] = [];
    let size = 0;
    /** Past IN_PLACE_MIN_BYTES: the content so far, written in place from its start. */
    let inPlace: Buffer | null = null;
    content.on("data", (chunk: Buffer) => {
      if (inPlace && size + chunk.length <= inPlace.length) {
        size += chunk.copy(inPlace, size);
        return;
      }
      if (inPlace) {
        chunks = [inPlace.subarray(0, size)];
        inPlace = null;
        capacity = 0;
      }
      chunks.push(chunk);
      size += chunk.length;
      if (size > IN_PLACE_MIN_BYTES && capacity >= size) {
        inPlace = Buffer.allocUnsafe(capacity);
        let at = 0;
        for (const c of chunks) at += c.copy(inPlace, at);
        chunks = [];
      }
    });
    content.once("end", () => resolve(inPlace ? inPlace.subarray(0, size) : Buffer.concat(chunks, size)));
    content.once("error", reject);
  });
}

/**
 * Parse a received message with mailparser.
 *
 * Headers are read leniently: a Message-ID with or without angle brackets, folded
 * References with one or several ids per line, missing headers (→ null / []). The HTML
 * body is returned as the mail has it (the bridge sanitizes it before posting); `cid:` links
 * are left as they are. A forwarded message (`message/rfc822`, RFC 2046 §5.2.1) is an
 * attachment whose content is the forwarded message, never mixed into the text.
 *
 * Text is decoded to UTF-8 from its charset: bodies by their `charset` parameter, headers from
 * RFC 2047 encoded words, file names from RFC 2231 parameters (mailparser with iconv-lite and
 * encoding-japanese). Header text a legacy client wrote as raw 8-bit bytes (Subject, the From
 * display name, file names) is decoded in the charset the message names for its text
 * (mail/inbound/charsets.ts). What still does not decode is U+FFFD and is named in `losses`.
 * Bodies and the subject lose control characters, named in `losses` too; their line ends become LF.
 *
 * With `{ attachments: "metadata" }` the attachments are decoded only to be counted (name,
 * type, size): nothing of their content is kept. That is the parse made at DATA time
 * ({@link ParsedMailSummary}); {@link forEachAttachment} reads the content later, one
 * attachment at a time.
 *
 * With `skeleton` (the message without its binary parts' contents, from the SMTP listener's
 * MessageInspector), mailparser reads the skeleton instead of the message: the same fields, and
 * the attachments listed with size 0. `raw` still serves the checks on the whole message.
 *
 * @param raw the whole message as received in DATA (headers and body, CRLF line ends)
 * @returns the parsed fields
 * @throws Error from mailparser when the message exceeds its structural limits (more than
 *   1000 MIME parts, a part header over 1 MiB)
 */
export async function parseMail(raw: Buffer): Promise<ParsedMail>;
export async function parseMail(raw: Buffer, opts: { attachments: "metadata"; skeleton?: Buffer | null }): Promise<ParsedMailSummary>;
export async function parseMail(raw: Buffer, opts?: { attachments: "metadata"; skeleton?: Buffer | null }): Promise<ParsedMail | ParsedMailSummary> {
  const contents: Buffer[] = [];
  const { mail, attachments } = await runMailparser(opts?.skeleton ?? raw, async (_info, content, index) => {
    if (!opts) contents[index] = await collect(content);
  });
  const summary = summarize(mail, attachments, raw);
  if (opts) return summary;
  return { ...summary, attachments: attachments.map((a, i) => ({ ...a, content: contents[i] ?? Buffer.alloc(0) })) };
}

/** Which attachments {@link forEachAttachment} hands over (from their name, type and Content-ID). */
export interface AttachmentChoice {
  only?: (info: MailAttachmentInfo, index: number) => boolean;
}

/**
 * Hand each attachment of `raw`, decoded, to `fn`, in order, one at a time: only the
 * attachment being handled is in memory (plus `raw` itself when it is a Buffer; one chunk of
 * it at a time when it is read in chunks). Indexes match `parseMail(raw).attachments`.
 * @param raw the message, whole or in chunks ({@link MessageSource})
 * @param fn called with the attachment and its index; the next attachment is read once it settles
 * @param opts.only which attachments to hand over (from their name, type and Content-ID; `size`
 *   is not known yet); the others are decoded and dropped, never collected. Default: all.
 * @param opts.stream for an attachment handed over, its decoded size when it is to be handed over
 *   as a stream ({@link StreamedAttachment}: never held whole; what `fn` leaves unread is
 *   drained), or null to collect it; the size must come from {@link attachmentSizes} of the same
 *   message. Default: all collected.
 * @throws Error from mailparser, or what `fn` throws (no further attachment is read)
 */
export async function forEachAttachment(raw: MessageSource, fn: (attachment: MailAttachment, index: number) => Promise<void>, opts?: AttachmentChoice): Promise<void>;
export async function forEachAttachment(
  raw: MessageSource,
  fn: (attachment: MailAttachment | StreamedAttachment, index: number) => Promise<void>,
  opts: AttachmentChoice & { stream: (info: MailAttachmentInfo, index: number) => number | null },
): Promise<void>;
export async function forEachAttachment(
  raw: MessageSource,
  handler: ((attachment: MailAttachment, index: number) => Promise<void>) | ((attachment: MailAttachment | StreamedAttachment, index: number) => Promise<void>),
  opts: AttachmentChoice & { stream?: (info: MailAttachmentInfo, index: number) => number | null } = {},
): Promise<void> {
  // A StreamedAttachment is handed over only with `stream`, whose overload takes a handler of both.
  const fn = handler as (attachment: MailAttachment | StreamedAttachment, index: number) => Promise<void>;
  await runMailparser(raw, async (info, content, index) => {
    if (opts.only && !opts.only(info, index)) return;
    const bytes = opts.stream?.(info, index) ?? null;
    if (bytes !== null) {
      // Paused now, in the tick the part began: nothing flows until the reader resumes it.
      content.pause();
      await fn({ ...info, size: bytes, content: { bytes, stream: content } }, index);
      return;
    }
    const data = await collect(content, Buffer.isBuffer(raw) ? raw.length : raw.maxBytes);
    await fn({ ...info, size: data.length, content: data }, index);
  });
}

/**
 * The decoded size of each attachment of `raw`, in bytes, indexes as in
 * `parseMail(raw).attachments`: one pass of mailparser that keeps nothing of the contents.
 * @throws Error from mailparser
 */
export async function attachmentSizes(raw: MessageSource): Promise<number[]> {
  return (await runMailparser(raw, async () => undefined)).attachments.map((a) => a.size);
}

/** The bridge's fields of a mailparser result. */
function summarize(mail: MailparserMail, attachments: MailAttachmentInfo[], raw: Buffer): ParsedMailSummary {
  const messageIdRaw = headerString(mail, "message-id");
  const inReplyToRaw = headerString(mail, "in-reply-to");
  const referencesRaw = headerString(mail, "references");
  const references: string[] = [];
  for (const id of referencesRaw ? extractMessageIds(referencesRaw) : []) {
    if (!references.includes(id)) references.push(id);
  }

  const dateRaw = rawHeader(mail, "date");
  const date = dateRaw ? new Date(dateRaw) : null;

  const autoSubmitted = keyword(headerString(mail, "auto-submitted"));
  const precedence = keyword(headerString(mail, "precedence"));

  const htmlRaw = typeof mail.html === "string" && mail.html.trim() ? mail.html : null;
  const decoded = mail.text !== undefined && mail.text.trim() ? mail.text : htmlRaw ? htmlToPlain(htmlRaw) : (mail.text ?? "");
  const losses: string[] = [];
  // U+FFFD is what the decoders put where bytes did not decode (bad base64, unknown charset).
  if (decoded.includes("\uFFFD") || htmlRaw?.includes("\uFFFD")) losses.push("undecodable characters");
  const body = cleanText(decoded);
  if (body.stripped) losses.push("control characters");
  const text = body.text;

  // Raw 8-bit header text in a legacy charset (see mail/inbound/charsets.ts).
  let subject = mail.subject ?? null;
  let from = addresses(mail.from)[0] ?? null;
  const hint = subject?.includes("\uFFFD") || from?.name?.includes("\uFFFD") ? charsetHint(raw) : null;
  if (hint !== null && subject?.includes("\uFFFD")) subject = recoverRawHeader(rawHeader(mail, "subject") ?? "", hint) ?? subject;
  if (hint !== null && from?.name?.includes("\uFFFD")) {
    const recovered = recoverRawHeader(rawHeader(mail, "from") ?? "", hint);
    const mailbox = recovered === null ? null : flatten(addressparser(recovered) as EmailAddress[], [])[0];
    if (mailbox && mailbox.address === from.address) from = mailbox;
  }
  const headerText = [subject ?? "", from?.name ?? "", ...attachments.map((a) => a.filename ?? "")];
  if (headerText.some((t) => t.includes("\uFFFD"))) losses.push("undecodable characters in the header fields");
  // The subject loses controls as the body does (a NUL or an ESC, raw or from an encoded word).
  // Display names and file names are cleaned where they are shown (bridge/Ghost.ts, bridge/InboundPoster.ts).
  if (subject !== null) {
    const cleaned = cleanText(subject);
    if (cleaned.stripped) losses.push("control characters in the subject");
    subject = cleaned.text;
  }

  return {
    messageId: messageIdRaw ? (extractMessageIds(messageIdRaw)[0] ?? null) : null,
    inReplyTo: inReplyToRaw ? (extractMessageIds(inReplyToRaw)[0] ?? null) : null,
    references,
    from,
    replyTo: addresses(mail.replyTo)[0] ?? null,
    to: addresses(mail.to),
    cc: addresses(mail.cc),
    subject,
    date: date && !Number.isNaN(date.getTime()) ? date : null,
    dateHeader: dateRaw || null,
    text,
    html: htmlRaw === null ? null : cleanText(htmlRaw).text,
    autoSubmitted,
    precedence,
    losses,
    unreadable: unreadableStructure(mail, raw),
    attachments,
  };
}
