/**
 * The Matrix HTML subset: {@link sanitizeHtml} keeps only the HTML the Matrix Client-Server
 * API lets clients render in `formatted_body` (spec, "m.room.message msgtypes",
 * `org.matrix.custom.html`: the list of permitted tags and attributes). Used for the HTML of
 * received mail (mail → Matrix) and for a Matrix client's HTML (Matrix → mail) alike.
 */
import sanitize from "sanitize-html";

/**
 * Tags the Matrix spec suggests clients permit. `s` is the non-deprecated spelling of
 * `strike` (matrix-org/matrix-spec#1492) and is kept too.
 */
export const MATRIX_ALLOWED_TAGS: readonly string[] = Object.freeze([
  "font", "del", "h1", "h2", "h3", "h4", "h5", "h6", "blockquote", "p", "a", "ul", "ol",
  "sup", "sub", "li", "b", "i", "u", "strong", "em", "strike", "s", "code", "hr", "br",
  "div", "table", "thead", "tbody", "tr", "th", "td", "caption", "pre", "span", "img",
  "details", "summary",
]);

/**
 * Deepest tag nesting kept: "Tags must not be nested more than 100 levels deep" (Client-Server
 * API, "m.room.message msgtypes", HTML). Deeper tags are removed, their text kept.
 */
export const MAX_HTML_NESTING = 100;

/** URL schemes allowed in `a href` by the Matrix spec. */
const LINK_SCHEMES = ["http", "https", "ftp", "mailto", "magnet"];
const LINK_RE = /^(?:https?|ftp):\/\/|^(?:mailto|magnet):/i;
/** Matrix colours are `#RRGGBB` (spec: data-mx-color / data-mx-bg-color). */
const COLOR_RE = /^#[0-9a-fA-F]{6}$/;
/** Only content-repository images may be shown; anything else would leak reads to third parties. */
const MXC_RE = /^mxc:\/\/[^/\s]+\/[^/\s]+$/;

/** An `<img>` left without a source by the sanitizer (its output is well-formed: ` name="value"` attributes). */
const IMG_WITHOUT_SRC = /<img(?![^>]*\ssrc=)[^>]*>/giu;

/** Drop colour attributes that are not `#RRGGBB`. */
function keepColors(tagName: string, attribs: sanitize.Attributes): sanitize.Tag {
  const out: sanitize.Attributes = {};
  for (const name of ["data-mx-bg-color", "data-mx-color", "color"]) {
    const v = attribs[name];
    if (v !== undefined && COLOR_RE.test(v.trim())) out[name] = v.trim();
  }
  return { tagName, attribs: out };
}

const OPTIONS: sanitize.IOptions = {
  allowedTags: [...MATRIX_ALLOWED_TAGS],
  allowedAttributes: {
    font: ["data-mx-bg-color", "data-mx-color", "color"],
    span: ["data-mx-bg-color", "data-mx-color", "color"],
    a: ["href", "target"],
    img: ["width", "height", "alt", "title", "src"],
    ol: ["start"],
    code: ["class"],
  },
  allowedClasses: { code: ["language-*"] },
  allowedSchemes: LINK_SCHEMES,
  allowedSchemesByTag: { img: ["mxc"] },
  allowedSchemesAppliedToAttributes: ["href", "src"],
  allowProtocolRelative: false,
  // Tags whose text is dropped along with the tag: scripts, styles, the document head.
  nonTextTags: ["script", "style", "head", "title", "textarea", "option", "noscript", "template", "xml"],
  disallowedTagsMode: "discard",
  // Keep text of mails that have content after </html> (common in forwarded mail).
  enforceHtmlBoundary: false,
  parseStyleAttributes: false,
  // sanitize-html counts every opened tag, kept or not, so the output is never deeper than this.
  nestingLimit: MAX_HTML_NESTING,
  transformTags: {
    font: keepColors,
    span: keepColors,
    a: (tagName, attribs) => {
      const out: sanitize.Attributes = {};
      const href = attribs.href?.trim();
      if (href !== undefined && LINK_RE.test(href)) out.href = href;
      if (attribs.target !== undefined) out.target = "_blank";
      return { tagName, attribs: out };
    },
    img: (tagName, attribs) => {
      const src = attribs.src?.trim();
      // An image without an mxc:// source would render as a broken image (and a remote one would
      // leak reads): it loses every attribute here and is removed from the output afterwards
      // (see sanitizeHtml). Not sanitize-html's exclusiveFilter: each frame it removes cuts the
      // output built so far, which made a mail with thousands of tracking pixels take quadratic
      // time (13 s for 3 MB of HTML, on the event loop).
      if (src === undefined || !MXC_RE.test(src)) return { tagName, attribs: {} };
      const out: sanitize.Attributes = { src };
      for (const name of ["width", "height"]) {
        const v = attribs[name];
        if (v !== undefined && /^\d{1,5}$/.test(v.trim())) out[name] = v.trim();
      }
      for (const name of ["alt", "title"]) {
        const v = attribs[name];
        if (v !== undefined) out[name] = v;
      }
      return { tagName, attribs: out };
    },
    ol: (tagName, attribs) => {
      const start = attribs.start?.trim();
      const out: sanitize.Attributes = {};
      if (start !== undefined && /^-?\d{1,9}$/.test(start)) out.start = start;
      return { tagName, attribs: out };
    },
  },
};

/**
 * Sanitize mail HTML down to the Matrix `formatted_body` subset.
 *
 * Keeps only the permitted tags (see {@link MATRIX_ALLOWED_TAGS}); other tags are removed
 * and their text kept, except `script`, `style`, `head` (with `title`) and the like, which
 * are removed with their content. Comments are removed. Attributes kept: `a` `href` (only
 * `http`, `https`, `ftp`, `mailto`, `magnet`; relative and other links lose the href) and
 * `target` (forced to `_blank`); `img` `src` (only `mxc://server/id`; an image with any other
 * source is removed entirely), `width`/`height` (digits), `alt`, `title`; `ol` `start`;
 * `code` `class` (only `language-*`); `font`/`span` `data-mx-color`, `data-mx-bg-color`,
 * `color` (only `#RRGGBB`). Tags nested deeper than {@link MAX_HTML_NESTING} are removed, their
 * text kept (the spec's limit).
 *
 * @param html HTML of a mail part (a whole document or a fragment)
 * @returns HTML fragment safe for `formatted_body`; empty string for empty input
 */
export function sanitizeHtml(html: string): string {
  return sanitize(html, OPTIONS).replace(IMG_WITHOUT_SRC, "").trim();
}

/** Invisible format characters (zero-width, bidi controls): never part of how a link reads. */
const FORMAT_CHARS = /\p{Cf}/gu;
/** A label of a domain name, Unicode letters allowed (IDN). */
const LABEL = String.raw`[\p{L}\p{N}](?:[\p{L}\p{N}-]{0,61}[\p{L}\p{N}])?`;
/** Port, path, query, fragment after a host. */
const AFTER_HOST = String.raw`(?::\d{1,5})?(?:[/?#]\S*)?`;
/** A bare email address. */
const EMAIL_LIKE = new RegExp(String.raw`^[^\s@/:]+@(?:${LABEL}\.)+${LABEL}$`, "u");
/** Text that reads as a link target: a URL with a scheme, a domain name, an IP address or an email address. */
const URL_LIKE = [
  /^[a-z][a-z0-9+.-]*:\/\/\S+$/iu,
  /^(?:mailto|magnet):\S+$/iu,
  new RegExp(String.raw`^(?:${LABEL}\.)+(?:\p{L}{2,63}|xn--[a-z0-9-]{1,59})\.?${AFTER_HOST}$`, "iu"),
  new RegExp(String.raw`^\d{1,3}(?:\.\d{1,3}){3}${AFTER_HOST}$`, "u"),
  new RegExp(String.raw`^\[[0-9a-f:.]+\]${AFTER_HOST}$`, "iu"),
  EMAIL_LIKE,
];

/**
 * What a link target comes down to for comparing: the address of a `mailto:` (or a bare email
 * address), otherwise user info, host (IDN as punycode), port, path, query and fragment,
 * without the scheme and trailing slashes, lower case.
 * @returns the key, or null when it cannot be read as a URL
 */
function linkKey(target: string): string | null {
  const s = target.replace(FORMAT_CHARS, "").trim();
  if (/^magnet:/iu.test(s)) return s.toLowerCase();
  const address = /^mailto:/iu.test(s) ? s.slice("mailto:".length) : EMAIL_LIKE.test(s) ? s : null;
  if (address !== null) return `mailto:${address.split("?")[0]!.toLowerCase()}`;
  let url: URL;
  try {
    url = new URL(/^[a-z][a-z0-9+.-]*:\/\//iu.test(s) ? s : `http://${s}`);
  } catch {
    return null; // not a URL: the caller counts that as "differs"
  }
  const user = url.username || url.password ? `${url.username}${url.password ? `:${url.password}` : ""}@` : "";
  return `${user}${url.host}${url.pathname}${url.search}${url.hash}`.replace(/\/+$/u, "").toLowerCase();
}

/**
 * Whether a link is deceptive: its text reads as a link target (a URL, a domain name, an IP or
 * email address) but names another target than its `href`. Text that does not read as a target
 * ("click here") is harmless, and so is text equal to the href but for the scheme, trailing
 * slashes, letter case, IDN spelling and invisible format characters.
 * @param text the link's text, as shown (entities decoded)
 * @param href the link's target
 * @returns true when the real target should be shown next to the text
 */
export function isDeceptiveLink(text: string, href: string): boolean {
  const shown = text.replace(FORMAT_CHARS, "").replace(/\s+/gu, " ").trim();
  if (!URL_LIKE.some((re) => re.test(shown))) return false;
  const a = linkKey(shown);
  const b = linkKey(href);
  return a === null || b === null || a !== b;
}

/** Decode the entities sanitize-html writes (`&amp; &lt; &gt; &quot;`) and numeric ones. */
function decodeEntities(s: string): string {
  return s.replace(/&(?:(amp|lt|gt|quot|apos)|#(\d{1,7})|#x([0-9a-f]{1,6}));/giu, (whole, name: string | undefined, dec: string | undefined, hex: string | undefined) => {
    if (name) return ({ amp: "&", lt: "<", gt: ">", quot: '"', apos: "'" } as Record<string, string>)[name.toLowerCase()] ?? whole;
    const code = dec !== undefined ? Number(dec) : parseInt(hex!, 16);
    return code <= 0x10ffff ? String.fromCodePoint(code) : whole;
  });
}

/** Escape text for HTML (`& < > "`). */
function escapeText(s: string): string {
  return s.replace(/&/gu, "&amp;").replace(/</gu, "&lt;").replace(/>/gu, "&gt;").replace(/"/gu, "&quot;");
}

/**
 * Show the real target of deceptive links (see {@link isDeceptiveLink}) in HTML that
 * {@link sanitizeHtml} produced: ` (https://real.target)` as text right after the link. Other
 * links are left as they are. Relies on sanitized output: every `<` starts a tag, text and
 * attribute values are escaped, `href` is the only attribute that matters.
 * @param html output of {@link sanitizeHtml}
 * @returns the same HTML with the targets shown
 */
export function revealDeceptiveLinks(html: string): string {
  const open: { href: string | null; text: string }[] = [];
  let out = "";
  for (const token of html.split(/(<[^>]*>)/u)) {
    const tag = /^<(\/?)([a-z0-9]+)\b([^>]*)>$/iu.exec(token);
    if (!tag) {
      const text = decodeEntities(token);
      for (const link of open) link.text += text;
      out += token;
      continue;
    }
    out += token;
    if (tag[2]!.toLowerCase() !== "a") continue;
    if (!tag[1]) {
      const href = /\bhref="([^"]*)"/u.exec(tag[3]!);
      open.push({ href: href ? decodeEntities(href[1]!) : null, text: "" });
      continue;
    }
    const link = open.pop();
    if (link?.href && isDeceptiveLink(link.text, link.href)) out += ` (${escapeText(link.href)})`;
  }
  return out;
}

/**
 * The `formatted_body` HTML of a received mail: {@link sanitizeHtml}, then
 * {@link revealDeceptiveLinks}.
 * @param html HTML of a mail part
 * @returns HTML fragment safe for `formatted_body`; empty string for empty input
 */
export function sanitizeMailHtml(html: string): string {
  return revealDeceptiveLinks(sanitizeHtml(html));
}
