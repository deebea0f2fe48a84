/**
 * `send-test-mail`: send one mail over SMTP, as a remote MTA would, to try a bridge.
 */
import nodemailer from "nodemailer";

/** What to send and where. */
export interface TestMail {
  host: string;
  port: number;
  from: string;
  /** MAIL FROM, when it should differ from `from` (e.g. to show a forged From as unverified). */
  envelopeFrom?: string;
  to: string;
  subject: string;
  text: string;
}

/**
 * Send `mail` with nodemailer (no auth, STARTTLS if offered, certificate not checked).
 * @returns the server's final reply, e.g. `250 OK: message queued`
 * @throws Error with the server's reply when the mail is refused
 */
export async function sendTestMail(mail: TestMail): Promise<string> {
  const transport = nodemailer.createTransport({ host: mail.host, port: mail.port, secure: false, tls: { rejectUnauthorized: false } });
  try {
    const info = await transport.sendMail({
      from: mail.from,
      to: mail.to,
      subject: mail.subject,
      text: mail.text,
      ...(mail.envelopeFrom ? { envelope: { from: mail.envelopeFrom, to: [mail.to] } } : {}),
    });
    return info.response;
  } finally {
    transport.close();
  }
}
