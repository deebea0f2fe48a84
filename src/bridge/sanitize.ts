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

/** URL schemes allowed in `a href` by the Matrix spec. */
const LINK_SCHEMES = ["http", "https", "ftp", "mailto", "magnet"];
const LINK_RE = /^(?:https?|ftp):\/\/|^(?:mailto|magnet):/i;
/** Matrix colours are `#RRGGBB` (spec: data-mx-color / data-mx-bg-color). */
const COLOR_RE = /^#[0-9a-fA-F]{6}$/;
/** Only content-repository images may be shown; anything else would leak reads to third parties. */
const MXC_RE = /^mxc:\/\/[^/\s]+\/[^/\s]+$/;

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
  // An image without an mxc:// source would render as a broken image: remove it whole.
  exclusiveFilter: (frame) => frame.tag === "img" && !MXC_RE.test(frame.attribs.src ?? ""),
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
      // A non-mxc image is removed by exclusiveFilter below; keep src for it to see.
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
 * `color` (only `#RRGGBB`).
 *
 * @param html HTML of a mail part (a whole document or a fragment)
 * @returns HTML fragment safe for `formatted_body`; empty string for empty input
 */
export function sanitizeHtml(html: string): string {
  return sanitize(html, OPTIONS).trim();
}
