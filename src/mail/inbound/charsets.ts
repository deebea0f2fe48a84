/**
 * Header text that legacy mail clients wrote as raw 8-bit bytes in their own charset
 * (Shift_JIS, GB2312, windows-1251, …) instead of RFC 2047 encoded words or RFC 2231
 * parameters. RFC 5322 §2.2 allows only US-ASCII in header fields and RFC 6532 §3.2 adds UTF-8
 * only; mailparser therefore reads 8-bit header bytes as UTF-8, and bytes of another charset
 * come out as U+FFFD (subjects, display names) or one Latin-1 character per byte (file names).
 * The bytes are still there: this module decodes them with the charset the message itself names
 * for its text, the only hint such a message gives.
 *
 * Encoded words (RFC 2047), RFC 2231 parameters and raw UTF-8 need none of this: mailparser
 * (with iconv-lite and encoding-japanese) decodes them, for every charset the corpus tests.
 */
import { isUtf8 } from "node:buffer";
import { TextDecoder } from "node:util";

/** Charset labels that are not legacy charsets: text in them needs no recovery. */
const NOT_LEGACY = new Set(["us-ascii", "ascii", "utf-8", "utf8"]);

/** A character that stands for a byte 0x80–0xFF in a Latin-1 reading. */
const EIGHT_BIT = /[\u0080-\u00ff]/u;
/** A character no Latin-1 reading of bytes gives: the text was decoded already. */
const BEYOND_LATIN1 = /[\u0100-\u{10ffff}]/u;

/** Bytes of the message searched for a charset parameter: the headers and first parts are enough. */
const HINT_SCAN_BYTES = 256 * 1024;

/**
 * A decoder for `label`, or null when the WHATWG Encoding Standard (Node's TextDecoder, with
 * full ICU) has no encoding of that name: then there is nothing to decode with.
 */
function decoderFor(label: string): TextDecoder | null {
  try {
    return new TextDecoder(label, { fatal: true });
  } catch (err) {
    if (err instanceof RangeError) return null; // "The encoding label provided is not supported"
    throw err;
  }
}

/**
 * The charset a message most likely used for raw 8-bit header text: the first `charset`
 * parameter in it (RFC 2045 §5.1, the top-level Content-Type or a body part's) that names a
 * charset other than US-ASCII and UTF-8, and that can be decoded.
 * @param raw the whole message
 * @returns the charset label, lower case; null when the message names none
 */
export function charsetHint(raw: Buffer): string | null {
  const head = raw.subarray(0, Math.min(raw.length, HINT_SCAN_BYTES)).toString("latin1");
  for (const m of head.matchAll(/\bcharset\s*=\s*"?([a-z0-9_.:+-]{1,40})/giu)) {
    const label = m[1]!.toLowerCase();
    if (NOT_LEGACY.has(label)) continue;
    if (decoderFor(label)) return label;
  }
  return null;
}

/**
 * Decode the raw bytes of a header field that mailparser could not read.
 * @param rawValue the header's value as mailparser keeps its raw line: one character per byte
 *   (Latin-1), unfolded
 * @param hint the charset to try ({@link charsetHint}), or null
 * @returns the decoded text, or null when there is nothing to recover: no 8-bit bytes, valid
 *   UTF-8 (mailparser read it right), encoded words mixed in (RFC 2047 text is mailparser's),
 *   no hint, or bytes the hint's charset cannot decode either
 */
export function recoverRawHeader(rawValue: string, hint: string | null): string | null {
  if (hint === null || !EIGHT_BIT.test(rawValue) || BEYOND_LATIN1.test(rawValue) || rawValue.includes("=?")) return null;
  const bytes = Buffer.from(rawValue, "latin1");
  if (isUtf8(bytes)) return null;
  return decodeOrNull(bytes, hint);
}

/**
 * The file name of a part whose Content-Type `name` or Content-Disposition `filename` was
 * written as raw 8-bit bytes: mailparser gives one Latin-1 character per byte. The name is taken
 * for raw bytes only when those exact bytes occur in the message (a name that came from an
 * encoded word or RFC 2231 `%XX` does not occur as such), are not UTF-8, and decode in the
 * charset given.
 * @param name the name as mailparser gave it, or null
 * @param raw the whole message
 * @param hint the part's own charset or the message's ({@link charsetHint}), or null
 * @returns the decoded name, or `name` unchanged
 */
export function recoverRawParameter(name: string | null, raw: Buffer, hint: string | null): string | null {
  if (name === null || hint === null || !EIGHT_BIT.test(name) || BEYOND_LATIN1.test(name)) return name;
  const bytes = Buffer.from(name, "latin1");
  if (isUtf8(bytes) || !raw.includes(bytes)) return name;
  return decodeOrNull(bytes, hint) ?? name;
}

/** `bytes` decoded in `label`, or null when the label is unknown or the bytes are not valid in it. */
function decodeOrNull(bytes: Buffer, label: string): string | null {
  const decoder = decoderFor(label);
  if (!decoder) return null;
  try {
    return decoder.decode(bytes);
  } catch (err) {
    if (err instanceof TypeError) return null; // fatal decoder: "The encoded data was not valid for encoding …"
    throw err;
  }
}
