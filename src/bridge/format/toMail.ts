/**
 * Matrix → email: a room message's content as mail body parts (text and HTML), with the
 * reply fallback removed, mentions shown as names, and the message replied to quoted.
 */
import { escapeHtml } from "./html.ts";
import { sanitizeHtml } from "./sanitize.ts";
import { htmlToPlain } from "../../mail/inbound/htmlText.ts";

/** The text of a Matrix message as mail body parts. */
export interface MailBody {
  text: string;
  /** HTML part, or null for plain-text messages. */
  html: string | null;
}

/** Content of an `m.room.message` event, as far as the bridge reads it. */
export interface MessageContent {
  msgtype?: string;
  body?: string;
  format?: string;
  formatted_body?: string;
  "m.relates_to"?: { "m.in_reply_to"?: { event_id?: string }; rel_type?: string; event_id?: string; is_falling_back?: boolean };
  /** File messages: the media (`mxc://`), the file's name (when `body` is a caption) and info. */
  url?: string;
  filename?: string;
  info?: { mimetype?: string; size?: number };
  /** An encrypted file's media (Client-Server API, "Sending encrypted attachments"), as received: read by format/encryptedFile.ts `encryptedFileOf`, which checks it. */
  file?: unknown;
  /** An edit's new content (Client-Server API, "Event replacements"). */
  "m.new_content"?: MessageContent;
}

/** `value` when it is a string, else undefined. */
function str(value: unknown): string | undefined {
  return typeof value === "string" ? value : undefined;
}

/**
 * The `content` of an `m.room.message` event as the bridge reads it: each field kept only when
 * it has the type the Client-Server API gives it ("m.room.message" msgtypes, "Rich replies",
 * "Threading", "Event replacements"), so that hostile or broken JSON (an `event_id` that is an
 * object, a `body` that is a number) reads as absent instead of throwing deep in the outbound
 * path. An event's content is whatever the sender's client put there: the homeserver checks
 * none of it.
 * @param raw the event's `content` as received
 * @param depth how many `m.new_content` levels to read (an edit's new content, one level)
 * @returns a new object; unknown fields are dropped
 */
export function messageContentOf(raw: unknown, depth = 1): MessageContent {
  const c = raw !== null && typeof raw === "object" && !Array.isArray(raw) ? (raw as Record<string, unknown>) : {};
  const out: MessageContent = {};
  for (const key of ["msgtype", "body", "format", "formatted_body", "url", "filename"] as const) {
    const v = str(c[key]);
    if (v !== undefined) out[key] = v;
  }
  const info = c.info;
  if (info !== null && typeof info === "object" && !Array.isArray(info)) {
    const i = info as Record<string, unknown>;
    out.info = {};
    const mimetype = str(i.mimetype);
    if (mimetype !== undefined) out.info.mimetype = mimetype;
    if (typeof i.size === "number" && Number.isFinite(i.size)) out.info.size = i.size;
  }
  if (c.file !== undefined) out.file = c.file;
  const rel = c["m.relates_to"];
  if (rel !== null && typeof rel === "object" && !Array.isArray(rel)) {
    const r = rel as Record<string, unknown>;
    const relation: NonNullable<MessageContent["m.relates_to"]> = {};
    const relType = str(r.rel_type);
    const eventId = str(r.event_id);
    if (relType !== undefined) relation.rel_type = relType;
    if (eventId !== undefined) relation.event_id = eventId;
    if (typeof r.is_falling_back === "boolean") relation.is_falling_back = r.is_falling_back;
    const inReplyTo = r["m.in_reply_to"];
    if (inReplyTo !== null && typeof inReplyTo === "object" && !Array.isArray(inReplyTo)) {
      const replyId = str((inReplyTo as Record<string, unknown>).event_id);
      relation["m.in_reply_to"] = replyId !== undefined ? { event_id: replyId } : {};
    }
    out["m.relates_to"] = relation;
  }
  if (depth > 0 && c["m.new_content"] !== undefined) out["m.new_content"] = messageContentOf(c["m.new_content"], depth - 1);
  return out;
}

/**
 * Remove the reply fallback a client put in front of a reply (Client-Server API,
 * "Rich replies": `> <@user> ...` lines in `body`, `<mx-reply>` in `formatted_body`).
 * The mail carries the thread in In-Reply-To/References instead.
 */
export function stripReplyFallback(content: MessageContent): { body: string; formatted: string | null } {
  let body = content.body ?? "";
  if (content["m.relates_to"]?.["m.in_reply_to"] && body.startsWith("> ")) {
    const lines = body.split("\n");
    let i = 0;
    while (i < lines.length && lines[i]!.startsWith(">")) i++;
    if (i < lines.length && lines[i] === "") i++;
    body = lines.slice(i).join("\n");
  }
  let formatted = content.format === "org.matrix.custom.html" && content.formatted_body ? content.formatted_body : null;
  if (formatted) formatted = formatted.replace(/<mx-reply>[\s\S]*?<\/mx-reply>/g, "");
  return { body, formatted };
}


/**
 * Mentions (pills, Client-Server API "User and room mentions"): a link to
 * `https://matrix.to/#/@user:server` (or `#alias`, `!room`) shown as its text, the display name
 * the client put there, without the link: a matrix.to link means nothing to a mail reader.
 * @param html `formatted_body` (before sanitizing)
 * @returns the HTML with mention links replaced by their (escaped-as-given) text
 */
export function unpillHtml(html: string): string {
  return html.replace(/<a\s[^>]*href\s*=\s*["']https:\/\/matrix\.to\/#\/[@#!][^"']*["'][^>]*>([\s\S]*?)<\/a>/gi, "$1");
}

/** The message a mail answers, quoted under the new text the way mail clients do. */
export interface QuotedMessage {
  /** Display name of its author. */
  name: string;
  /** When it was sent. */
  date: Date;
  /** Its plain text (its own reply fallback already removed). */
  text: string;
}

/**
 * Inline Matrix images (`<img src="mxc://…">`, the only images the sanitizer keeps) as their
 * `alt` text in brackets, `[image]` without one: a mail client cannot load an `mxc://` URI (it
 * would show a broken image), and the bridge does not fetch and attach inline images.
 * @param html sanitized HTML (attribute values quoted and escaped by the sanitizer)
 */
function withoutMatrixImages(html: string): string {
  return html.replace(/<img\b[^>]*>/giu, (tag) => {
    const alt = /\salt="([^"]*)"/u.exec(tag)?.[1]?.trim();
    return alt ? `[${alt}]` : "[image]";
  });
}

/**
 * Mail body parts for a Matrix message: HTML from `formatted_body` (mentions shown as names,
 * sanitized again: a Matrix client's HTML is untrusted too), and the text/plain alternative
 * made from that HTML (blocks and line breaks kept, links as `text [url]`, lines not wrapped),
 * so both parts say the same; `body` is the text when there is no HTML (or it has no text).
 * `m.emote` becomes `* Name text`; `m.notice` is sent as text. The Matrix reply fallback is
 * removed; with `quote`, the message replied to follows as a mail quote: `On <date>, <name>
 * wrote:` and `> ` lines (RFC 3676 §4.5 quoting), a `<blockquote>` in the HTML.
 * @param senderName display name of the Matrix sender, used for emotes
 * @param quote the message replied to, or null
 */
export function matrixToMail(content: MessageContent, senderName: string, quote: QuotedMessage | null = null): MailBody {
  const { body, formatted } = stripReplyFallback(content);
  const html = formatted ? withoutMatrixImages(sanitizeHtml(unpillHtml(formatted))) : null;
  const plain = (html !== null ? htmlToPlain(html) : "") || body;
  const base =
    content.msgtype === "m.emote"
      ? { text: `* ${senderName} ${plain}`, html: html !== null ? `* ${escapeHtml(senderName)} ${html}` : null }
      : { text: plain, html };
  if (!quote) return base;
  const attribution = `On ${quote.date.toUTCString()}, ${quote.name} wrote:`;
  const quoted = quote.text.split(/\r?\n/).map((l) => (l ? `> ${l}` : ">")).join("\n");
  const text = `${base.text}\n\n${attribution}\n${quoted}`;
  const htmlQuote = `<p>${escapeHtml(attribution)}</p><blockquote>${escapeHtml(quote.text).replace(/\n/g, "<br>")}</blockquote>`;
  return { text, html: `${base.html ?? escapeHtml(base.text).replace(/\n/g, "<br>")}${htmlQuote}` };
}
