/**
 * Folding the quoted history and the signature off the end of a received reply, so that only
 * its new text is posted: {@link foldReply}.
 *
 * The shapes come from email-reply-parser (crisp-oss, the JavaScript port of GitHub's
 * EmailReplyParser): attribution lines in English, French, Spanish, German, Italian, Portuguese,
 * Dutch, Polish, Scandinavian languages, Chinese, Korean and Japanese; Outlook's
 * `From:`/`Von:`/`De :` header blocks and "Original Message" separators; signature delimiters
 * (`-- `, RFC 3676 §4.3) and "Sent from my iPhone"-style lines. Its patterns backtrack badly on
 * some texts, so it runs in a worker thread with a deadline (replyParserWorker.ts).
 * {@link stripQuotedReply} (this module's own patterns, synchronous) covers what it misses: an
 * attribution wrapped over several lines, a trailing `>` block under any attribution, Outlook
 * separators in more languages ("Mensaje original", "Messaggio originale").
 */
import { getLogger } from "../../util/logger.ts";
import { WorkerRpc } from "../../util/workerRpc.ts";
import type { ReplyParserFragment, ReplyParserReply, ReplyParserRequest } from "./replyParserWorker.ts";

const log = getLogger("mail/reply-fold");

const WORKER_URL = new URL(import.meta.url.endsWith(".ts") ? "./replyParserWorker.ts" : "./replyParserWorker.js", import.meta.url);

/** How long email-reply-parser may take over one text before it is stopped, in ms. */
export const REPLY_PARSER_TIMEOUT_MS = 2000;

/** The verb of an attribution line ("wrote" and common translations). */
const VERB_RE = /\b(?:wrote|schrieb|a écrit|escribió|ha scritto|schreef|napisał|escreveu|skrev|kirjoitti)/i;
/** An attribution that ends with its verb: "On ..., Alice <a@b> wrote:". */
const VERB_END_RE = new RegExp(`${VERB_RE.source}\\s*:\\s*$`, "i");
/** How a wrapped attribution starts ("On Tue, ...", "Am ...", "Le ..."). */
const OPENER_RE = /^\s*(?:On|Am|Le|El|Il|Op|Em|W dniu|Den|Dne|På)\s/i;
const QUOTED_RE = /^[ \t]*>/;
const BLANK_RE = /^[ \t]*$/;
/** Outlook's separator above the quoted message, in the languages of its plain-text replies. */
const ORIGINAL_RE = /^\s*-{3,}\s*(?:Original Message|Ursprüngliche Nachricht|Message d'origine|Mensaje original|Messaggio originale|Oorspronkelijk bericht)\s*-{3,}\s*$/i;
/** The first header line of Outlook's quoted message block (From in English, German, French/Spanish/Portuguese, Italian, Dutch). */
const FROM_HEADER_RE = /^\s*(?:From|Von|De|Da|Van)\s?:\s*\S/i;
/** Outlook's rule above the header block of its HTML replies' text part (32 underscores). */
const RULE_RE = /^\s*_{10,}\s*$/;

/** The line index where the trailing quote starts by this module's own patterns; `lines.length` when there is none. */
function ownCut(lines: readonly string[]): number {
  // Outlook: "-----Original Message-----" (or a translation), or its underscore rule, then headers.
  const original = lines.findIndex((l, k) => (ORIGINAL_RE.test(l) || RULE_RE.test(l)) && lines.slice(k + 1, k + 4).some((h) => FROM_HEADER_RE.test(h)));
  if (original >= 0) return original;
  // Trailing block of quoted and blank lines, with at least one quoted line.
  let i = lines.length;
  let sawQuote = false;
  while (i > 0) {
    const l = lines[i - 1] ?? "";
    if (QUOTED_RE.test(l)) sawQuote = true;
    else if (!BLANK_RE.test(l)) break;
    i--;
  }
  if (!sawQuote) return lines.length;
  let cut = i;
  // Attribution just above, after optional blank lines, possibly wrapped (Gmail wraps long ones).
  let j = cut;
  while (j > 0 && BLANK_RE.test(lines[j - 1] ?? "")) j--;
  const last = (lines[j - 1] ?? "").trimEnd();
  if (j > 0 && last.endsWith(":")) {
    let found = false;
    // "On <date>, <name> wrote:" / "Am <date> schrieb <name>:", wrapped over up to 3 lines.
    for (let k = j - 1; k >= Math.max(0, j - 3); k--) {
      const l = lines[k] ?? "";
      if (BLANK_RE.test(l)) break;
      if (OPENER_RE.test(l) && VERB_RE.test(lines.slice(k, j).join(" "))) {
        cut = k;
        found = true;
        break;
      }
    }
    // "Alice <a@b> wrote:" without an opener.
    if (!found && VERB_END_RE.test(last)) cut = j - 1;
  }
  return cut;
}

/** The text cut at line `cut`, trailing blank lines removed; null when nothing but blank lines would go, or nothing would stay. */
function cutAt(lines: readonly string[], eol: string, cut: number): string | null {
  if (lines.slice(cut).every((l) => BLANK_RE.test(l))) return null;
  const kept = lines.slice(0, cut);
  while (kept.length > 0 && BLANK_RE.test(kept[kept.length - 1] ?? "")) kept.pop();
  if (kept.length === 0) return null;
  return kept.join(eol);
}

/**
 * Remove the quoted previous message at the end of a reply, so that only the new text is
 * posted to Matrix. This module's own patterns only, synchronous; {@link foldReply} adds
 * email-reply-parser's and signatures.
 *
 * Removes, at the end of the text: a block of `>`-quoted lines (blank lines in and after it
 * included), together with the attribution line just above it ("On Mon, 1 Jan 2024, Alice
 * <a@example.org> wrote:", possibly wrapped over up to three lines, common translations too),
 * and an Outlook-style `-----Original Message-----` line (or a translation, or Outlook's
 * underscore rule) followed by a `From:` (`Von:`, `De :`, …) header line, with everything after
 * it. Quotes in the middle of the text (interleaved replies) are kept.
 *
 * @param text plain text body (LF or CRLF line ends)
 * @returns the text without the trailing quote, trailing blank lines removed; `text` itself,
 *   unchanged, when no trailing quote is found or when removing it would leave nothing
 */
export function stripQuotedReply(text: string): string {
  const eol = text.includes("\r\n") ? "\r\n" : "\n";
  const lines = text.split(/\r?\n/);
  return cutAt(lines, eol, ownCut(lines)) ?? text;
}

/** A reply with its quoted history and signature folded away. */
export interface FoldedReply {
  /** The new text: `text` without what was folded, trailing blank lines removed, line ends as given; `text` itself when nothing was. */
  text: string;
  /** Whether anything but blank lines was folded away. */
  folded: boolean;
}

/** Characters that are not whitespace (JavaScript `\s`, the class email-reply-parser trims). */
function visibleLength(s: string): number {
  return s.replace(/\s+/gu, "").length;
}

/**
 * The line where email-reply-parser's trailing hidden fragments (quote, signature) start.
 * The parser changes only whitespace (it trims lines, joins a wrapped attribution), so the
 * hidden tail has as many non-whitespace characters as the lines it came from: counted from the
 * end, they give the line.
 * @returns the line index; null when nothing is hidden at the end, or when the count does not
 *   end on a line start (then the fragments are not trusted)
 */
function parserCut(lines: readonly string[], fragments: readonly ReplyParserFragment[]): number | null {
  let k = fragments.length;
  while (k > 0 && fragments[k - 1]!.hidden) k--;
  const hidden = visibleLength(fragments.slice(k).map((f) => f.content).join(""));
  if (hidden === 0) return null;
  let seen = 0;
  for (let i = lines.length - 1; i >= 0; i--) {
    seen += visibleLength(lines[i]!);
    if (seen === hidden) return i;
    if (seen > hidden) break;
  }
  log.warn("email-reply-parser's fragments do not line up with the text; its result is not used", { hiddenChars: hidden });
  return null;
}

/** The worker thread running email-reply-parser (util/workerRpc.ts), started on first use. */
let thread: WorkerRpc<Omit<ReplyParserRequest, "id">, ReplyParserFragment[]> | null = null;

/**
 * email-reply-parser's fragments of `text`, from the worker thread (a new one when the last
 * was stopped or died).
 * @throws Error when it fails or takes longer than `timeoutMs` (the thread is then stopped)
 */
function parseFragments(text: string, timeoutMs: number): Promise<ReplyParserFragment[]> {
  if (!thread?.alive) {
    thread = new WorkerRpc({
      name: "reply parser",
      url: WORKER_URL,
      decode: (reply) => {
        const r = reply as unknown as ReplyParserReply;
        return "error" in r ? { ok: false, error: new Error(`email-reply-parser failed: ${r.error}`) } : { ok: true, value: r.fragments };
      },
    });
  }
  return thread.request({ text }, timeoutMs);
}

/**
 * Fold the quoted history and the signature off the end of a reply: what
 * {@link stripQuotedReply} removes, and what email-reply-parser finds hidden at the end (a
 * quote under an attribution it knows, Outlook's header block, a signature after `-- ` or a
 * "Sent from my …" line), whichever starts earlier. Quotes and signatures in the middle of the
 * text (interleaved replies) are kept. When email-reply-parser fails or passes `timeoutMs`, the
 * fold is {@link stripQuotedReply}'s alone (logged).
 *
 * @param text plain text body (LF or CRLF line ends)
 * @param opts.timeoutMs deadline for email-reply-parser (default {@link REPLY_PARSER_TIMEOUT_MS})
 * @returns the new text, and whether anything was folded; `text` itself, `folded: false`, when
 *   nothing is found or folding would leave nothing
 */
export async function foldReply(text: string, opts: { timeoutMs?: number } = {}): Promise<FoldedReply> {
  const eol = text.includes("\r\n") ? "\r\n" : "\n";
  const lines = text.split(/\r?\n/);
  let cut = ownCut(lines);
  if (text.trim() !== "") {
    try {
      const byParser = parserCut(lines, await parseFragments(text, opts.timeoutMs ?? REPLY_PARSER_TIMEOUT_MS));
      if (byParser !== null) cut = Math.min(cut, byParser);
    } catch (err) {
      log.warn("email-reply-parser could not split the reply; only the built-in quote patterns are used", { error: err instanceof Error ? err.message : String(err), chars: text.length });
    }
  }
  const kept = cutAt(lines, eol, cut);
  return kept === null ? { text, folded: false } : { text: kept, folded: true };
}
