/**
 * A remote MTA for tests: a real smtp-server on 127.0.0.1 that accepts every
 * recipient (unless told to refuse one) and keeps what it receives.
 */
import { SMTPServer } from "smtp-server";

/** One received mail. */
export interface SinkMail {
  mailFrom: string | null;
  rcptTo: string[];
  /** The message as received, byte for byte. */
  raw: Buffer;
}

/** A running sink. */
export interface SmtpSink {
  port: number;
  mails: SinkMail[];
  /**
   * RCPT TO replies to give instead of 250, by address (lower case): e.g.
   * `{ code: 550, message: "5.1.1 no such user" }` or `{ code: 451, message: "4.3.0 try later" }`.
   */
  refuse: Map<string, { code: number; message: string }>;
  /** Wait (polling every 50 ms) for a mail matching `predicate`; throws after `timeoutMs` listing what came. */
  waitForMail(predicate: (m: SinkMail) => boolean, timeoutMs?: number): Promise<SinkMail>;
  stop(): Promise<void>;
}

/** Start a sink on a free loopback port. */
export async function startSmtpSink(): Promise<SmtpSink> {
  const mails: SinkMail[] = [];
  const refuse = new Map<string, { code: number; message: string }>();
  const server = new SMTPServer({
    authOptional: true,
    disabledCommands: ["AUTH"],
    logger: false,
    onRcptTo(address, _session, callback) {
      const rule = refuse.get(address.address.toLowerCase());
      if (!rule) return callback();
      callback(Object.assign(new Error(rule.message), { responseCode: rule.code }));
    },
    onData(stream, session, callback) {
      const chunks: Buffer[] = [];
      stream.on("data", (c: Buffer) => chunks.push(c));
      stream.on("end", () => {
        const from = session.envelope.mailFrom;
        mails.push({
          mailFrom: from ? from.address : null,
          rcptTo: session.envelope.rcptTo.map((r) => r.address),
          raw: Buffer.concat(chunks),
        });
        callback();
      });
    },
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", () => resolve()));
  const port = (server.server.address() as { port: number }).port;
  return {
    port,
    mails,
    refuse,
    async waitForMail(predicate, timeoutMs = 30_000) {
      const deadline = Date.now() + timeoutMs;
      for (;;) {
        const hit = mails.find(predicate);
        if (hit) return hit;
        if (Date.now() > deadline) {
          throw new Error(`no matching mail within ${timeoutMs} ms; got ${mails.length}: ${mails.map((m) => `${m.mailFrom} -> ${m.rcptTo.join(",")}`).join("; ")}`);
        }
        await new Promise((r) => setTimeout(r, 50));
      }
    },
    stop: () => new Promise<void>((resolve) => server.close(() => resolve())),
  };
}
