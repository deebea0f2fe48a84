/**
 * Worker thread running email-reply-parser (mail/inbound/replyFold.ts): its patterns backtrack
 * badly on some texts (tens of seconds for a hostile 50 kB body), so it runs here, where the
 * caller can stop it at a deadline, not on the bridge's event loop.
 */
import { parentPort } from "node:worker_threads";
import EmailReplyParser from "email-reply-parser";

/** One text to split. */
export interface ReplyParserRequest {
  id: number;
  text: string;
}

/** One fragment of the text, as email-reply-parser classified it. */
export interface ReplyParserFragment {
  /** The fragment's text (lines trimmed, line ends LF: whitespace differs from the input, nothing else). */
  content: string;
  /** Quoted, signature or empty: what the parser would not show. */
  hidden: boolean;
  quoted: boolean;
  signature: boolean;
}

/** The answer to a {@link ReplyParserRequest}. */
export type ReplyParserReply = { id: number; fragments: ReplyParserFragment[] } | { id: number; error: string };

const port = parentPort;
if (port) {
  const parser = new EmailReplyParser();
  port.on("message", (req: ReplyParserRequest) => {
    let reply: ReplyParserReply;
    try {
      const fragments = parser
        .read(req.text)
        .getFragments()
        .map((f) => ({ content: f.getContent(), hidden: f.isHidden(), quoted: f.isQuoted(), signature: f.isSignature() }));
      reply = { id: req.id, fragments };
    } catch (err) {
      reply = { id: req.id, error: err instanceof Error ? err.message : String(err) };
    }
    port.postMessage(reply);
  });
}
