/**
 * Conversions between Matrix message content and mail bodies.
 */
import { sanitizeHtml } from "./sanitize.ts";
import type { AuthFields } from "../store/Store.ts";

/**
 * The content field, under the project's own namespace, that carries a posted mail's
 * sender-authentication verdict: `{spf, dkim, dmarc, arc, verified}` (docs/formats.md).
 * `io.github.matrix-email-bridge` is the reverse-DNS name of the project's home; the Matrix
 * spec reserves `m.` and `org.matrix.` for itself (Client-Server API, "Namespacing").
 */
export const AUTH_FIELD = "io.github.matrix-email-bridge.auth";

/** The verdict object put under {@link AUTH_FIELD}; rows from before authentication count as unverified. */
export function authContent(auth: AuthFields | null): AuthFields {
  return auth ?? { spf: "none", dkim: "none", dmarc: "none", arc: "none", verified: false };
}

/** The warning line above a mail whose sender did not authenticate. */
export function unverifiedWarning(address: string, auth: AuthFields | null): string {
  const a = authContent(auth);
  return `⚠️ Unverified sender: this mail claims to be from ${address}, but that could not be confirmed (SPF ${a.spf}, DKIM ${a.dkim}, DMARC ${a.dmarc}).`;
}

/**
 * Cut text to at most `maxBytes` bytes of UTF-8, never inside a character, at the last line
 * break when one is near the end (within the last fifth).
 * @returns the (possibly) shorter text and whether it was cut
 */
export function cutText(text: string, maxBytes: number): { text: string; cut: boolean } {
  if (Buffer.byteLength(text) <= maxBytes) return { text, cut: false };
  let s = Buffer.from(text, "utf8").subarray(0, maxBytes).toString("utf8");
  // A character split by the cut decodes as U+FFFD at the very end: drop it.
  if (s.endsWith("\uFFFD")) s = s.slice(0, -1);
  const nl = s.lastIndexOf("\n");
  if (nl > s.length * 0.8) s = s.slice(0, nl);
  return { text: s.trimEnd(), cut: true };
}

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
  "m.relates_to"?: { "m.in_reply_to"?: { event_id?: string }; rel_type?: string; event_id?: string };
  /** File messages: the media (`mxc://`), the file's name (when `body` is a caption) and info. */
  url?: string;
  filename?: string;
  info?: { mimetype?: string; size?: number };
  /** An edit's new content (Client-Server API, "Event replacements"). */
  "m.new_content"?: MessageContent;
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

/** Escape text for HTML (`& < > "`). */
export function escapeHtml(s: string): string {
  return s.replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;").replace(/"/g, "&quot;");
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
 * Mail body parts for a Matrix message: text from `body`, HTML from `formatted_body`
 * (mentions shown as names, sanitized again: a Matrix client's HTML is untrusted too).
 * `m.emote` becomes `* Name text`; `m.notice` is sent as text. The Matrix reply fallback is
 * removed; with `quote`, the message replied to follows as a mail quote: `On <date>, <name>
 * wrote:` and `> ` lines (RFC 3676 §4.5 quoting), a `<blockquote>` in the HTML.
 * @param senderName display name of the Matrix sender, used for emotes
 * @param quote the message replied to, or null
 */
export function matrixToMail(content: MessageContent, senderName: string, quote: QuotedMessage | null = null): MailBody {
  const { body, formatted } = stripReplyFallback(content);
  const html = formatted ? sanitizeHtml(unpillHtml(formatted)) : null;
  const base =
    content.msgtype === "m.emote"
      ? { text: `* ${senderName} ${body}`, html: html !== null ? `* ${escapeHtml(senderName)} ${html}` : null }
      : { text: body, html };
  if (!quote) return base;
  const attribution = `On ${quote.date.toUTCString()}, ${quote.name} wrote:`;
  const quoted = quote.text.split(/\r?\n/).map((l) => (l ? `> ${l}` : ">")).join("\n");
  const text = `${base.text}\n\n${attribution}\n${quoted}`;
  const htmlQuote = `<p>${escapeHtml(attribution)}</p><blockquote>${escapeHtml(quote.text).replace(/\n/g, "<br>")}</blockquote>`;
  return { text, html: `${base.html ?? escapeHtml(base.text).replace(/\n/g, "<br>")}${htmlQuote}` };
}

/** A parsed mail, as far as posting it into Matrix needs. */
export interface InboundText {
  subject: string | null;
  text: string;
  /** Sanitized HTML, or null. */
  html: string | null;
}

/**
 * The `m.room.message` content for a received mail. The subject is shown (bold line
 * above the body) when the mail starts a conversation, not on replies.
 * @param showSubject whether to show the subject
 */
export function mailToMatrix(mail: InboundText, showSubject: boolean): Record<string, unknown> {
  const subject = showSubject && mail.subject ? mail.subject.trim() : "";
  const text = mail.text.trim();
  const body = subject ? `${subject}\n\n${text}` : text;
  const content: Record<string, unknown> = { msgtype: "m.text", body };
  const htmlBody = mail.html ?? escapeHtml(text).replace(/\n/g, "<br>");
  content.format = "org.matrix.custom.html";
  content.formatted_body = subject ? `<p><strong>${escapeHtml(subject)}</strong></p>${htmlBody}` : htmlBody;
  return content;
}
