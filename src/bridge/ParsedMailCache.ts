/**
 * Parse once: the parse the router made at DATA time, kept for the inbound poster.
 *
 * The router parses every mail before its 250 (to route, to check the From, to refuse what
 * cannot be read). The poster needs the same fields a moment later. Instead of parsing the
 * stored message again, the router leaves its {@link ParsedMailSummary} here under the inbound
 * row's id, and the poster takes it. Attachment content is never kept (the summary has only
 * names, types and sizes); the poster reads attachments from the stored message, one at a time
 * (`forEachAttachment`).
 *
 * Memory is bounded: at most `maxBytes` of text and HTML (UTF-16, 2 bytes per code unit) are
 * kept; the oldest entries go first. A row not found here (evicted, a retry, rows from before
 * a restart) is parsed again from the stored message, which gives the same fields.
 */
import type { ParsedMailSummary } from "../mail/inbound/parse.ts";

/** Default bound of {@link ParsedMailCache}, in bytes (approximate, see the module comment). */
export const DEFAULT_PARSED_CACHE_BYTES = 64 * 1024 * 1024;

/** Parsed summaries of committed inbound rows, by row id, bounded in bytes, oldest out first. */
export class ParsedMailCache {
  readonly #maxBytes: number;
  readonly #entries = new Map<number, { mail: ParsedMailSummary; bytes: number }>();
  #bytes = 0;

  /**
   * @param maxBytes bound on the kept text and HTML, in bytes (0 keeps nothing)
   * @throws RangeError when `maxBytes` is negative or not finite
   */
  constructor(maxBytes: number = DEFAULT_PARSED_CACHE_BYTES) {
    if (!Number.isFinite(maxBytes) || maxBytes < 0) throw new RangeError(`parsed mail cache bound must be >= 0 bytes, got ${maxBytes}`);
    this.#maxBytes = maxBytes;
  }

  /** Approximate bytes kept now. */
  get bytes(): number {
    return this.#bytes;
  }

  /**
   * Keep the parse of inbound row `rowId`. A summary larger than the whole bound is not kept.
   * @param rowId the committed row's id
   * @param mail the parse made at DATA time
   */
  put(rowId: number, mail: ParsedMailSummary): void {
    const bytes = 2 * (mail.text.length + (mail.html?.length ?? 0) + (mail.subject?.length ?? 0)) + 512;
    this.take(rowId);
    if (bytes > this.#maxBytes) return;
    this.#entries.set(rowId, { mail, bytes });
    this.#bytes += bytes;
    for (const [id, entry] of this.#entries) {
      if (this.#bytes <= this.#maxBytes) break;
      this.#entries.delete(id);
      this.#bytes -= entry.bytes;
    }
  }

  /**
   * Take (and forget) the parse of row `rowId`.
   * @returns the summary, or null when it is not kept (parse the stored message instead)
   */
  take(rowId: number): ParsedMailSummary | null {
    const entry = this.#entries.get(rowId);
    if (!entry) return null;
    this.#entries.delete(rowId);
    this.#bytes -= entry.bytes;
    return entry.mail;
  }
}
