/**
 * Plain text of HTML mail, for mails that have no `text/plain` part.
 */
import { htmlToText } from "html-to-text";

/** Link schemes shown in plain text: the ones the Matrix HTML subset keeps (bridge/format/sanitize.ts). */
const LINK_RE = /^(?:https?|ftp):\/\/|^(?:mailto|magnet):/i;

/**
 * The link target shown in plain text: only the schemes the Matrix HTML subset keeps.
 * html-to-text has already removed a `mailto:` prefix, leaving a bare address.
 */
function plainLinkTarget(href: string): string {
  const h = href.trim();
  if (LINK_RE.test(h)) return h;
  if (/^[^\s:/]+@[^\s:/]+$/.test(h)) return h;
  return "";
}

/**
 * Plain text of an HTML mail, for the `body` of a Matrix message when the mail has no
 * `text/plain` part. Links become `text [url]` (only for http(s), ftp, mailto and magnet; other links become their text), images are dropped, lines are not wrapped,
 * `<head>`/`<style>`/`<script>` content is ignored.
 *
 * @param html HTML of a mail part
 * @returns plain text, trimmed; empty string when the HTML has no text
 */
export function htmlToPlain(html: string): string {
  return htmlToText(html, {
    wordwrap: false,
    selectors: [
      { selector: "img", format: "skip" },
      { selector: "a", options: { hideLinkHrefIfSameAsText: true, pathRewrite: plainLinkTarget } },
      { selector: "h1", options: { uppercase: false } },
      { selector: "h2", options: { uppercase: false } },
      { selector: "h3", options: { uppercase: false } },
      { selector: "h4", options: { uppercase: false } },
      { selector: "h5", options: { uppercase: false } },
      { selector: "h6", options: { uppercase: false } },
      { selector: "table", format: "dataTable", options: { uppercaseHeaderCells: false } },
    ],
  }).trim();
}
