/**
 * Sees every SMTP reply the listener writes, smtp-server's own included (greeting, EHLO,
 * 221, 354, its syntax errors), not only the ones our handlers choose.
 *
 * How: smtp-server 3.21 has one write site for replies, `SMTPConnection.send`, which, right
 * after writing a reply to the socket, logs it at debug level through the server's `logger`
 * option as `(entry with tnx "send", "S:", reply text)`. A reply that is not written (the
 * socket already closed, a TLS handshake in flight) is not logged, so this counts what the
 * client was sent. The tap is such a logger: it reads the reply code and drops everything
 * else (the bridge logs through util/logger.ts, not through smtp-server's logger).
 */
import type { SMTPServerOptions } from "smtp-server";
import { errorFields, getLogger } from "../../util/logger.ts";

const log = getLogger("mail/inbound");

/** smtp-server's `logger` option, as an object (a bunyan-style logger). */
export type SmtpServerLogger = Exclude<SMTPServerOptions["logger"], boolean | undefined>;

/**
 * A logger for smtp-server's `logger` option that calls `onReply` with the code of each reply
 * written to a client (a multi-line reply counts once).
 * @param onReply called with the 3-digit reply code (200..599); if it throws, the error is
 *   logged and the SMTP session goes on
 */
export function replyTap(onReply: (code: number) => void): SmtpServerLogger {
  const ignore = (): void => {};
  return {
    trace: ignore,
    info: ignore,
    warn: ignore,
    error: ignore,
    fatal: ignore,
    debug: (entry: unknown, _message?: unknown, reply?: unknown): void => {
      if (typeof entry !== "object" || entry === null || (entry as { tnx?: unknown }).tnx !== "send" || typeof reply !== "string") return;
      const code = Number(reply.slice(0, 3));
      if (!Number.isInteger(code) || code < 200 || code > 599) return;
      try {
        onReply(code);
      } catch (err) {
        log.error("smtp reply observer failed", { code, ...errorFields(err) });
      }
    },
  };
}
