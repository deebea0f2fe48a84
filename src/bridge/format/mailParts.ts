/**
 * The parts of a received mail that its Matrix message shows, rather than only posting them as
 * files after it: read from the stored message before the message is sent, one part at a time
 * ({@link prepareParts}).
 * - Inline images (RFC 2392 `cid:` links in the HTML, RFC 2387 `multipart/related`): uploaded as
 *   the ghost and shown where the mail shows them, `<img src="mxc://…">` in `formatted_body`.
 * - Images carried in the HTML itself (`<img src="data:image/png;base64,…">`, RFC 2397): the
 *   same, at most {@link MAX_DATA_IMAGES} of them; one that cannot be shown inline (an encrypted
 *   room, over the upload limit) is posted as a file after the message, as a `cid:` image is.
 * - Forwarded messages (`message/rfc822` and `message/global` parts, RFC 2046 §5.2.1, RFC 6532 §3.5):
 *   a quoted block with their From, Date, Subject and To headers and their text; the part
 *   itself is still posted, as a `.eml` file.
 * - Calendar objects (`text/calendar` parts and `.ics` files, RFC 5545 / RFC 6047): a summary
 *   (mail/inbound/calendar.ts); the part is still posted, as an `.ics` file, once: of parts
 *   carrying the same calendar, the named one.
 */
import { createHash } from "node:crypto";
import { forEachAttachment, parseMail, type MailAddress, type MailAttachment, type MailAttachmentInfo, type MessageSource, type ParsedMailSummary } from "../../mail/inbound/parse.ts";
import { TextDecoder } from "node:util";
import { calendarHtml, calendarText, summarizeCalendar, type CalendarSummary } from "../../mail/inbound/calendar.ts";
import { sanitizeHtml } from "./sanitize.ts";
import { escapeHtml } from "./html.ts";
import { getLogger } from "../../util/logger.ts";

const log = getLogger("bridge/inbound");

/** Text shown in a message after the mail's own text, in `body` and in `formatted_body`. */
export interface ContentBlock {
  /** Plain text, for `body`. */
  text: string;
  /** HTML, for `formatted_body`; sanitized again with the rest of the message. */
  html: string;
}

/** An inline image uploaded before the message. */
export interface InlineImage {
  /** The `mxc://` URL of the upload. */
  url: string;
  /** The type it was uploaded as. */
  mimetype: string;
}

/** What {@link prepareParts} read. */
export interface PreparedParts {
  /** Content-ID → `mxc://` URL of each inline image uploaded, for {@link replaceCids}. */
  cidUrls: Map<string, string>;
  /** The uploaded inline images, by attachment index: not uploaded again when posted as files after all. */
  inline: Map<number, InlineImage>;
  /** Forwarded messages and calendar summaries, in the order of their parts. */
  blocks: ContentBlock[];
  /** Attachments not to post: a calendar part whose bytes an earlier part already had (a text/calendar body and its invite.ics). */
  skip: Set<number>;
  /** File names for parts the mail left unnamed (or named without their type's extension), by attachment index. */
  names: Map<number, string>;
  /** `src` of a `data:` image of the HTML (as written, unquoted) → `mxc://` URL of its upload, for {@link replaceImages}. */
  dataUrls: Map<string, string>;
  /** `data:` images of the HTML that could not be shown inline: posted as files after the message. */
  dataFiles: { filename: string; contentType: string; content: Buffer }[];
  /** `data:` images of the HTML past {@link MAX_DATA_IMAGES}, or not decodable: not shown (the original mail is attached). */
  dataDropped: number;
}

/** Nothing prepared: a mail without parts to show. */
export function noParts(): PreparedParts {
  return { cidUrls: new Map(), inline: new Map(), blocks: [], skip: new Set(), names: new Map(), dataUrls: new Map(), dataFiles: [], dataDropped: 0 };
}

/**
 * Most distinct `data:` images of one mail's HTML that are uploaded (inline, or as files where
 * they cannot be inline); the rest are counted in {@link PreparedParts.dataDropped}. A mail of
 * thousands of tiny embedded images cannot make thousands of uploads or file events.
 */
export const MAX_DATA_IMAGES = 16;

/** A `data:` URL of a raster image in base64 (RFC 2397 §3), the kinds Matrix clients show. */
const DATA_IMAGE_RE = /^data:(image\/(?:png|jpeg|jpg|gif|webp|bmp|avif))(?:;[a-z0-9_.-]+=[^;,]*)*;base64,([a-z0-9+/=\s]*)$/iu;

/** File name extensions for the types of {@link DATA_IMAGE_RE}. */
const DATA_IMAGE_EXT: Readonly<Record<string, string>> = { "image/png": "png", "image/jpeg": "jpg", "image/jpg": "jpg", "image/gif": "gif", "image/webp": "webp", "image/bmp": "bmp", "image/avif": "avif" };

/** An `<img src>` value without its quotes and with `&amp;` read, as the other URL readers take it. */
function srcValue(src: string): string {
  return src.replace(/^["']|["']$/gu, "").replace(/&amp;/giu, "&").trim();
}

/**
 * The `data:` image URLs the HTML shows (`<img src="data:image/…;base64,…">`), distinct, in
 * order, as written (unquoted); other `data:` URLs (SVG, text, not base64) are not images the
 * bridge shows, and the sanitizer drops them.
 */
export function referencedDataImages(html: string): string[] {
  const out = new Set<string>();
  if (!/data:image\//iu.test(html)) return [];
  for (const [tag] of html.matchAll(IMG_TAG_RE)) {
    const src = SRC_ATTR_RE.exec(tag)?.[2];
    if (src !== undefined && /^["']?\s*data:image\//iu.test(src)) out.add(srcValue(src));
  }
  return [...out];
}

/**
 * The image a `data:` URL carries (RFC 2397), or null when it is not a base64 raster image or
 * decodes to nothing.
 * @param url the `src` value ({@link referencedDataImages})
 * @returns its media type (lower case, `image/jpg` read as `image/jpeg`) and decoded bytes
 */
export function dataImageOf(url: string): { contentType: string; content: Buffer } | null {
  const m = DATA_IMAGE_RE.exec(url);
  if (!m) return null;
  const type = m[1]!.toLowerCase();
  const content = Buffer.from(m[2]!.replace(/\s+/gu, ""), "base64");
  if (content.length === 0) return null;
  return { contentType: type === "image/jpg" ? "image/jpeg" : type, content };
}

/** Whether a part is a forwarded message. */
export function isForwarded(info: Pick<MailAttachmentInfo, "contentType">): boolean {
  return info.contentType === "message/rfc822" || info.contentType === "message/global";
}

/** Whether a part is a calendar object: `text/calendar`, `application/ics`, or a file named `*.ics`. */
export function isCalendar(info: Pick<MailAttachmentInfo, "contentType" | "filename">): boolean {
  return info.contentType === "text/calendar" || info.contentType === "application/ics" || /\.ics$/iu.test(info.filename ?? "");
}

/** `src` of `<img>` tags: the attribute value, quoted or not. */
const IMG_TAG_RE = /<img\b[^>]*>/giu;
const SRC_ATTR_RE = /(\ssrc\s*=\s*)("[^"]*"|'[^']*'|[^\s"'>]+)/iu;

/** The Content-ID a `cid:` URL names (RFC 2392 §2: URL-encoded, without brackets), or null for another URL. */
function cidOf(src: string): string | null {
  const value = src.replace(/^["']|["']$/gu, "").replace(/&amp;/giu, "&").trim();
  if (!/^cid:/iu.test(value)) return null;
  const id = value.slice(4).replace(/^<|>$/gu, "");
  try {
    return decodeURIComponent(id);
  } catch (err) {
    if (err instanceof URIError) return id; // a bare `%` that is no escape: the id as written
    throw err;
  }
}

/**
 * The Content-IDs the HTML shows as images: the `cid:` URLs (RFC 2392) of its `<img src>`.
 * @param html the mail's HTML as received
 * @returns the Content-IDs, decoded, without brackets
 */
export function referencedCids(html: string): Set<string> {
  const ids = new Set<string>();
  for (const [tag] of html.matchAll(IMG_TAG_RE)) {
    const src = SRC_ATTR_RE.exec(tag)?.[2];
    const id = src === undefined ? null : cidOf(src);
    if (id !== null) ids.add(id);
  }
  return ids;
}

/** The key two Content-IDs compare by: RFC 2392 ids are compared as written, but clients differ in case; lower case finds both. */
function cidKey(id: string): string {
  return id.toLowerCase();
}

/**
 * Point the images of the HTML at their uploads: `<img src="cid:x">` (RFC 2392) and
 * `<img src="data:image/…">` (RFC 2397) become `<img src="mxc://…">` for each Content-ID in
 * `cidUrls` and each `data:` URL in `dataUrls`; others are left (the sanitizer removes images
 * that are not `mxc://`).
 * @param html the mail's HTML as received
 * @param cidUrls Content-ID → `mxc://` URL ({@link PreparedParts.cidUrls})
 * @param dataUrls `data:` URL → `mxc://` URL ({@link PreparedParts.dataUrls})
 */
export function replaceImages(html: string, cidUrls: ReadonlyMap<string, string>, dataUrls: ReadonlyMap<string, string> = new Map()): string {
  if (cidUrls.size === 0 && dataUrls.size === 0) return html;
  const byKey = new Map([...cidUrls].map(([id, url]) => [cidKey(id), url]));
  return html.replace(IMG_TAG_RE, (tag) =>
    tag.replace(SRC_ATTR_RE, (whole, prefix: string, src: string) => {
      const id = cidOf(src);
      const url = id === null ? dataUrls.get(srcValue(src)) : byKey.get(cidKey(id));
      return url === undefined ? whole : `${prefix}"${url}"`;
    }),
  );
}

/** `Name <address>` or `address`. */
function mailbox(a: MailAddress): string {
  return a.name ? `${a.name} <${a.address}>` : a.address;
}

/**
 * A forwarded message as a quoted block: the line `---------- Forwarded message ----------`,
 * then, each line quoted with `> ` (RFC 3676 §4.5), its From, Date (as written), Subject and To
 * headers, its text, and the names of its own attachments (`📎 name`). In HTML a `<blockquote>`
 * with the headers in bold and its HTML (sanitized) or its text.
 * @param message the forwarded message, parsed
 * @param file the name it is posted under, shown at the end
 */
export function forwardedBlock(message: ParsedMailSummary, file: string): ContentBlock {
  const headers: [string, string][] = [];
  if (message.from) headers.push(["From", mailbox(message.from)]);
  if (message.dateHeader) headers.push(["Date", message.dateHeader]);
  if (message.subject !== null) headers.push(["Subject", message.subject]);
  if (message.to.length > 0) headers.push(["To", message.to.map(mailbox).join(", ")]);
  if (message.cc.length > 0) headers.push(["Cc", message.cc.map(mailbox).join(", ")]);
  const attachments = message.attachments.map((a, i) => `📎 ${a.filename ?? `attachment-${i + 1}`}`);
  const notes = message.losses.length > 0 ? [`⚠️ Parts of the forwarded message could not be decoded (${message.losses.join(", ")}).`] : [];
  const text = message.text.trim();
  const quoted = [...headers.map(([k, v]) => `${k}: ${v}`), "", ...(text ? text.split(/\r?\n/u) : []), ...(attachments.length ? ["", ...attachments] : []), ...notes]
    .map((l) => (l ? `> ${l}` : ">"))
    .join("\n");
  const heading = "---------- Forwarded message ----------";
  const bodyHtml = message.html !== null ? sanitizeHtml(message.html) : `<p>${escapeHtml(text).replace(/\n/gu, "<br>")}</p>`;
  const headerHtml = headers.map(([k, v]) => `<strong>${escapeHtml(k)}:</strong> ${escapeHtml(v)}`).join("<br>");
  const extraHtml = [...attachments, ...notes].map((l) => `<p>${escapeHtml(l)}</p>`).join("");
  return {
    text: `${heading}\n${quoted}\n(the forwarded message is attached as ${file})`,
    html: `<p><em>${escapeHtml(heading)}</em></p><blockquote><p>${headerHtml}</p>${bodyHtml}${extraHtml}</blockquote><p><em>${escapeHtml(`(the forwarded message is attached as ${file})`)}</em></p>`,
  };
}

/** Characters a file name should not have on common systems; the rest is cleaned by the poster. */
const UNSAFE_NAME_RE = /[\\/:*?"<>|]+/gu;

/** The name a forwarded message is posted under: its own name with `.eml`, else its subject, else `forwarded-message.eml`. */
export function forwardedName(info: Pick<MailAttachmentInfo, "filename">, message: Pick<ParsedMailSummary, "subject"> | null): string {
  const own = info.filename?.trim();
  if (own) return /\.eml$/iu.test(own) ? own : `${own}.eml`;
  const subject = message?.subject?.replace(UNSAFE_NAME_RE, " ").replace(/\s+/gu, " ").trim().slice(0, 80).trim();
  return `${subject || "forwarded-message"}.eml`;
}

/**
 * Upload the `data:` images the HTML shows (at most {@link MAX_DATA_IMAGES}), as inline images
 * are: each named `image-N.<ext>`, handed to `opts.upload` with an index past the mail's
 * attachments (`first + N - 1`). One the upload cannot show goes to `parts.dataFiles`; one past
 * the limit, or not decodable, is counted in `parts.dataDropped`.
 * @throws what `opts.upload` throws (a temporary failure: the mail is tried again)
 */
async function prepareDataImages(html: string, first: number, parts: PreparedParts, opts: PreparePartsOptions): Promise<void> {
  const urls = referencedDataImages(html);
  for (const [i, url] of urls.entries()) {
    const image = i < MAX_DATA_IMAGES ? dataImageOf(url) : null;
    if (!image) {
      parts.dataDropped++;
      continue;
    }
    const filename = `image-${i + 1}.${DATA_IMAGE_EXT[image.contentType] ?? "img"}`;
    const att: MailAttachment = { filename, contentType: image.contentType, size: image.content.length, contentId: null, disposition: "inline", charset: null, content: image.content };
    const uploaded = await opts.upload(att, first + i);
    if (uploaded) parts.dataUrls.set(url, uploaded.url);
    else parts.dataFiles.push({ filename, contentType: image.contentType, content: image.content });
  }
  if (parts.dataDropped > 0) log.info("images embedded in the HTML not shown", { ...opts.ctx, shown: urls.length - parts.dataDropped, dropped: parts.dataDropped });
}

/** A calendar part as read: its summary, or why it could not be read. */
export type CalendarRead = { summary: CalendarSummary } | { error: string };

/**
 * Read a calendar part ({@link summarizeCalendar}). A calendar that cannot be read is logged
 * and returned as such (the file is posted all the same).
 * @param content the part's bytes
 * @param charset its charset parameter; UTF-8 when none (RFC 5545 §6)
 * @param ctx log context
 */
export function readCalendar(content: Buffer, charset: string | null, ctx: Record<string, unknown>): CalendarRead {
  let text: string;
  try {
    text = new TextDecoder(charset ?? "utf-8").decode(content);
  } catch (err) {
    if (!(err instanceof RangeError)) throw err;
    log.warn("calendar part in an unknown charset, read as UTF-8", { ...ctx, charset });
    text = new TextDecoder("utf-8").decode(content);
  }
  try {
    return { summary: summarizeCalendar(text) };
  } catch (err) {
    const error = err instanceof Error ? err.message : String(err);
    log.warn("calendar part could not be read; posted as a file only", { ...ctx, error });
    return { error };
  }
}

/**
 * A calendar part as a block: its summary ({@link calendarText}, {@link calendarHtml}) and the
 * name of its file; or a line saying it could not be read.
 * @param read what {@link readCalendar} gave
 * @param file the name it is posted under
 */
export function calendarBlock(read: CalendarRead, file: string): ContentBlock {
  if ("error" in read) {
    const line = `📅 A calendar file is attached as ${file}, but it could not be read (${read.error}).`;
    return { text: line, html: `<p>${escapeHtml(line)}</p>` };
  }
  const note = `(the calendar file is attached as ${file})`;
  return { text: `${calendarText(read.summary)}\n${note}`, html: `${calendarHtml(read.summary)}<p><em>${escapeHtml(note)}</em></p>` };
}

/**
 * What makes two calendar parts the same: their text with line ends and trailing whitespace
 * normalised (a `text/calendar` body part and its `invite.ics` copy differ in no more).
 */
function calendarKey(content: Buffer): string {
  return createHash("sha256").update(content.toString("latin1").replace(/\r\n?/gu, "\n").trimEnd()).digest("hex");
}

/** Options of {@link prepareParts}. */
export interface PreparePartsOptions {
  /** Whether the message shows the mail's HTML: inline images are uploaded only then. */
  showHtml: boolean;
  /**
   * Upload an inline image as the sender's ghost: a `cid:` part (its attachment index), or a
   * `data:` image of the HTML (an index past the attachments, its name `image-N.<ext>`).
   * @returns the `mxc://` URL, or null when it cannot be shown (too big, refused): it is then posted as a file after the message
   * @throws on temporary failures (the mail is tried again)
   */
  upload: (image: MailAttachment, index: number) => Promise<InlineImage | null>;
  /** Log context (inbound row, room). */
  ctx: Record<string, unknown>;
}

/**
 * Read the parts the message shows from the stored message, one at a time
 * ({@link forEachAttachment}): only the part being read is in memory. Inline images referenced
 * by the HTML are uploaded; forwarded messages and calendar objects become blocks. Nothing is read
 * when the mail has no such part.
 * @param raw the stored message, whole or in chunks
 * @param mail its parse (attachments as metadata)
 * @throws what `opts.upload` throws, or Error from mailparser
 */
export async function prepareParts(raw: MessageSource, mail: ParsedMailSummary, opts: PreparePartsOptions): Promise<PreparedParts> {
  const parts = noParts();
  if (opts.showHtml && mail.html !== null) await prepareDataImages(mail.html, mail.attachments.length, parts, opts);
  const cids = opts.showHtml && mail.html !== null ? new Set([...referencedCids(mail.html)].map(cidKey)) : new Set<string>();
  const shown = (info: MailAttachmentInfo): boolean => info.contentId !== null && info.contentType.startsWith("image/") && cids.has(cidKey(info.contentId));
  const wanted = (info: MailAttachmentInfo): boolean => shown(info) || isForwarded(info) || isCalendar(info);
  if (!mail.attachments.some(wanted)) return parts;
  // Blocks in the order of their parts: a calendar's slot is filled once its file is chosen.
  const slots: (ContentBlock | null)[] = [];
  const calendars: { index: number; key: string; filename: string | null; read: CalendarRead; at: number }[] = [];
  await forEachAttachment(
    raw,
    async (att, index) => {
      if (shown(att)) {
        const image = await opts.upload(att, index);
        if (image) {
          parts.inline.set(index, image);
          parts.cidUrls.set(att.contentId!, image.url);
        }
        return;
      }
      if (isForwarded(att)) {
        let message: ParsedMailSummary | null = null;
        let problem: string | null = null;
        try {
          message = await parseMail(att.content, { attachments: "metadata" });
        } catch (err) {
          problem = err instanceof Error ? err.message : String(err);
          log.warn("forwarded message could not be parsed; posted as a file only", { ...opts.ctx, part: index, error: problem });
        }
        const name = forwardedName(att, message);
        parts.names.set(index, name);
        if (message) slots.push(forwardedBlock(message, name));
        else {
          const line = `📨 A forwarded message is attached as ${name}, but it could not be read (${problem}).`;
          slots.push({ text: line, html: `<p>${escapeHtml(line)}</p>` });
        }
        return;
      }
      // A calendar: read now; which of the parts with the same calendar is posted is decided at the end.
      calendars.push({ index, key: calendarKey(att.content), filename: att.filename?.trim() || null, read: readCalendar(att.content, att.charset, { ...opts.ctx, part: index }), at: slots.length });
      slots.push(null);
    },
    { only: wanted },
  );
  // Parts with the same calendar (Google sends a text/calendar body part and an invite.ics file):
  // one summary, one file, the named one if any.
  const groups = new Map<string, typeof calendars>();
  for (const c of calendars) groups.set(c.key, [...(groups.get(c.key) ?? []), c]);
  for (const same of groups.values()) {
    const kept = same.find((c) => c.filename !== null) ?? same[0]!;
    const name = kept.filename === null ? "invite.ics" : /\.ics$/iu.test(kept.filename) ? kept.filename : `${kept.filename}.ics`;
    parts.names.set(kept.index, name);
    for (const c of same) if (c !== kept) parts.skip.add(c.index);
    slots[same[0]!.at] = calendarBlock(kept.read, name);
  }
  parts.blocks.push(...slots.filter((b): b is ContentBlock => b !== null));
  return parts;
}
