/**
 * Worker thread for the DATA-time parse (./parseThread.ts): mailparser (with html-to-text for
 * HTML-only mail) is synchronous work that grows with the message, seconds for a few MB of HTML,
 * and would otherwise hold up every SMTP session and appservice transaction on the event loop.
 * Here it runs beside the event loop, and the caller can stop it at a deadline.
 */
import { parentPort } from "node:worker_threads";
import { parseMail, type ParsedMailSummary } from "./parse.ts";

/** One message to parse: its skeleton (./limits.ts `MessageInspector.skeleton`) or the whole message. */
export interface ParseRequest {
  id: number;
  message: Uint8Array;
}

/** The answer to a {@link ParseRequest}: the parse, or mailparser's error message. */
export type ParseReply = { id: number; summary: ParsedMailSummary } | { id: number; error: string };

const port = parentPort;
if (port) {
  port.on("message", (req: ParseRequest) => {
    const message = Buffer.from(req.message.buffer, req.message.byteOffset, req.message.byteLength);
    parseMail(message, { attachments: "metadata" }).then(
      (summary) => port.postMessage({ id: req.id, summary } satisfies ParseReply),
      (err: unknown) => port.postMessage({ id: req.id, error: err instanceof Error ? err.message : String(err) } satisfies ParseReply),
    );
  });
}
