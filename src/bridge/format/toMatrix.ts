/**
 * Email → Matrix: a received mail's text as `m.room.message` content, the authentication
 * verdict field, and the limits of one event (text cut at a marker).
 */
import { escapeHtml } from "./html.ts";
import { cleanDisplayName } from "../Ghost.ts";
import type { AuthFields } from "../../store/Store.ts";

/**
 * The content field, under the project's own namespace, that carries a posted mail's
 * sender-authentication verdict: `{spf, dkim, dmarc, arc, verified}` (docs/formats.md).
 * `io.github.matrix-email-bridge` is the reverse-DNS name of the project's home; the Matrix
 * spec reserves `m.` and `org.matrix.` for itself (Client-Server API, "Namespacing").
 */
export const AUTH_FIELD = "io.github.matrix-email-bridge.auth";

/**
 * The content field, in the same namespace as {@link AUTH_FIELD}, that says which of the
 * bridge's addresses a posted mail came to when it is not the target's own address (a
 * subaddress, an alias, a catch-all, another mail domain): `{address, tag}` (docs/formats.md).
 */
export const RECIPIENT_FIELD = "io.github.matrix-email-bridge.recipient";

/**
 * The line above a mail that came to one of the bridge's other addresses, e.g.
 * `📨 To bob+shopping@mail.example (tag: shopping)`.
 * @param address the recipient address; @param tag its RFC 5233 `+tag`, or null
 */
export function recipientLine(address: string, tag: string | null): string {
  return tag ? `📨 To ${address} (tag: ${tag})` : `📨 To ${address}`;
}

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

/**
 * Longest subject shown in Matrix, in characters (code points). A subject has no length limit
 * in RFC 5322 (folded, it can fill the whole header section); shown whole in the message, the
 * contact request or the invite preview it could make the event larger than a homeserver takes
 * (65,536 bytes, Client-Server API "Size limits"). The mail attached as `.eml` keeps it whole:
 * a posted mail whose subject is cut brings its original along as `message.eml`, with a line
 * saying so ({@link cutSubjectWarning}; bridge/InboundPoster.ts).
 */
export const MAX_SHOWN_SUBJECT_CHARS = 500;

/**
 * ZWNJ and ZWJ (U+200C, U+200D): invisible, but part of how words of Persian and Indic scripts
 * and emoji sequences (`👩‍💻`) are written. The name cleaner ({@link cleanDisplayName}) makes them
 * spaces; a subject keeps them. The split keeps each one as a piece of its own (capturing group).
 */
const JOINERS = /([\u200c\u200d])/u;

/** A subject as {@link showSubject} shows it, and whether anything of it is not shown. */
export interface ShownSubject {
  /** The text shown: cleaned, one line, at most `max` characters (code points), `…` at its end when cut. */
  text: string;
  /** Whether the cleaned subject was longer than `max` characters and was cut. */
  cut: boolean;
  /** Length of the cleaned subject before any cut, in characters (code points). */
  length: number;
}

/**
 * A subject (or another header text) as shown in Matrix: cleaned as display names are
 * ({@link cleanDisplayName}: controls, bidi controls U+202A–U+202E and U+2066–U+2069, LRM, RLM,
 * ALM, zero-width and other invisible format characters become spaces; NFC), but keeping ZWNJ
 * and ZWJ ({@link JOINERS}); runs of whitespace (folding) made one space, trimmed; cut to `max`
 * characters with `…` when longer.
 * @param subject the header's text, encoded words decoded
 * @param max most characters (code points) kept, the `…` included
 * @returns the shown text, whether it was cut, and the cleaned subject's length
 */
export function showSubject(subject: string, max = MAX_SHOWN_SUBJECT_CHARS): ShownSubject {
  const pieces = subject.split(JOINERS).map((piece, i) => (i % 2 === 1 ? piece : (cleanDisplayName(piece, Infinity) ?? "")));
  const one = pieces.join("").replace(/^[\s\u200c\u200d]+|[\s\u200c\u200d]+$/gu, "");
  const chars = [...one];
  if (chars.length <= max) return { text: one, cut: false, length: chars.length };
  return { text: `${chars.slice(0, max - 1).join("").trimEnd()}…`, cut: true, length: chars.length };
}

/**
 * The text of {@link showSubject}: a subject (or another header text) as shown in Matrix.
 * @param max most characters (code points) kept, the `…` included
 */
export function shownSubject(subject: string, max = MAX_SHOWN_SUBJECT_CHARS): string {
  return showSubject(subject, max).text;
}

/**
 * The warning line above a mail whose subject was cut ({@link MAX_SHOWN_SUBJECT_CHARS}): the
 * whole subject is in the original, posted as `message.eml`.
 * @param length the subject's length, in characters (code points)
 */
export function cutSubjectWarning(length: number): string {
  return `✂️ The subject is too long to show here (${length} characters); the original is attached as message.eml.`;
}

/**
 * The warning line above a mail whose HTML carried images (`data:` URLs, RFC 2397) that are not
 * shown: past the most shown (mailParts `MAX_DATA_IMAGES`), or not decodable. The original is
 * posted as `message.eml`.
 * @param count how many are not shown
 */
export function droppedImagesWarning(count: number): string {
  return `🖼️ ${count === 1 ? "1 image" : `${count} images`} embedded in this mail ${count === 1 ? "is" : "are"} not shown here; the original is attached as message.eml.`;
}

/**
 * The text of a mail's message event when the mail has nothing to show in it (no subject shown,
 * no text, no warning line) but the event must still be posted: it is a reply (the event carries
 * the reply relation), an automatic mail (the event is the `m.notice`), or a mail with no file
 * either. A mail whose files can carry it posts no message event (bridge/InboundPoster.ts).
 */
export const NO_TEXT = "(no text)";

/** A parsed mail, as far as posting it into Matrix needs. */
export interface InboundText {
  subject: string | null;
  text: string;
  /** Sanitized HTML, or null. */
  html: string | null;
}

/**
 * The `m.room.message` content for a received mail. The subject is shown (bold line
 * above the body, at most {@link MAX_SHOWN_SUBJECT_CHARS} characters) when the mail starts a
 * conversation, not on replies.
 * @param showSubject whether to show the subject
 */
export function mailToMatrix(mail: InboundText, showSubject: boolean): Record<string, unknown> {
  const subject = showSubject && mail.subject ? shownSubject(mail.subject) : "";
  const text = mail.text.trim();
  const body = subject ? `${subject}\n\n${text}` : text;
  const content: Record<string, unknown> = { msgtype: "m.text", body };
  const htmlBody = mail.html ?? escapeHtml(text).replace(/\n/g, "<br>");
  content.format = "org.matrix.custom.html";
  content.formatted_body = subject ? `<p><strong>${escapeHtml(subject)}</strong></p>${htmlBody}` : htmlBody;
  return content;
}
