/**
 * Mail injection (`POST /admin/v1/inject`, like E-MailRelay's JSON submission): an operator
 * hands the bridge a mail as JSON, `{from, to: [..], subject, text, html?, headers?}`; it is
 * composed into an RFC 5322 message by nodemailer's MailComposer and committed as inbound mail
 * through the same router the SMTP listener uses (InboundRouter.deliver with an
 * {@link Injection}), so it is routed, deduplicated, queued and posted like received mail.
 *
 * How it is marked: nothing authenticates the author of an injected mail, so it is never shown
 * as a verified sender. Its verdict is `none` for SPF, DKIM, DMARC and ARC, it is posted by
 * the sender's unverified ghost with the usual "unverified sender" warning, and the stored
 * message carries a trace header `Received: from admin-api ([client ip]) by <smtp.hostname>
 * with HTTP id <id>` (RFC 5321 §4.4) saying where it came from. docs/admin-api.md explains it.
 */
import { randomUUID } from "node:crypto";
import { domainToASCII } from "node:url";
import MailComposer from "nodemailer/lib/mail-composer";
import type { InboundEnvelope } from "../mail/inbound/SmtpListener.ts";
import { SmtpReply } from "../mail/inbound/rejections.ts";
import type { Injection, InboundRouter, Mailbox } from "../bridge/InboundRouter.ts";
import { mintMessageId } from "../bridge/ids.ts";
import { AdminHttpError, objectBody, stringField } from "./http.ts";
import { errorFields, getLogger } from "../util/logger.ts";

const log = getLogger("admin/inject");

/** Most recipients one injected mail may have. */
export const MAX_INJECT_RECIPIENTS = 50;

/**
 * Header fields an injection may not set: the composer writes them (From, To, Subject, Date,
 * Message-ID, MIME structure), or they would claim a transport or an authentication that did
 * not happen (Received, Return-Path, DKIM/ARC signatures, Authentication-Results).
 */
const RESERVED_HEADERS = new Set([
  "from", "sender", "to", "cc", "bcc", "subject", "date", "message-id", "mime-version", "content-type", "content-transfer-encoding",
  "content-disposition", "received", "return-path", "dkim-signature", "arc-seal", "arc-message-signature", "arc-authentication-results",
  "authentication-results", "received-spf",
]);

/** An injection request after validation. */
export interface InjectRequest {
  /** The From mailbox: `bob@example.org` or `"Bob" <bob@example.org>`. */
  from: string;
  /** Recipient addresses on the bridge's mail domains. */
  to: string[];
  subject: string;
  text: string;
  html: string | null;
  /** Extra header fields (e.g. In-Reply-To, References, Reply-To), name → value. */
  headers: Record<string, string>;
}

/** What an injection committed. */
export interface InjectResult {
  /** The minted Message-ID, without angle brackets. */
  messageId: string;
  /** Inbound queue rows (one per target portal); `duplicate` rows were committed before. */
  inbound: { id: number; roomId: string | null; dmLocalUserId: string | null; duplicate: boolean }[];
}

/** What {@link injectMail} needs of the bridge. */
export interface InjectDeps {
  router: Pick<InboundRouter, "checkRecipient" | "deliver">;
  /** The primary mail domain (`mail.domain`), lower-case. */
  mailDomain: string;
  /** Whether a domain is one of the bridge's mail domains (the SMTP listener's relay check). */
  isLocalDomain(domain: string): Promise<boolean>;
  /** This host's name for the trace header (`smtp.hostname`). */
  hostname: string;
}

/**
 * Check an injection request body.
 * @returns the request, defaults filled in (`html` null, `headers` empty)
 * @throws AdminHttpError 400 naming the field that is missing or wrong
 */
export function parseInjectRequest(body: unknown): InjectRequest {
  const o = objectBody(body);
  for (const key of Object.keys(o)) {
    if (!["from", "to", "subject", "text", "html", "headers"].includes(key)) throw new AdminHttpError(400, "M_BAD_JSON", `unknown field "${key}" (from, to, subject, text, html, headers)`);
  }
  const from = stringField(o, "from");
  const to = o.to;
  if (to === undefined) throw new AdminHttpError(400, "M_MISSING_PARAM", 'the request body needs "to"');
  if (!Array.isArray(to) || to.length === 0 || !to.every((t) => typeof t === "string")) throw new AdminHttpError(400, "M_BAD_JSON", '"to" must be a non-empty list of addresses');
  if (to.length > MAX_INJECT_RECIPIENTS) throw new AdminHttpError(400, "M_INVALID_PARAM", `"to" has ${to.length} addresses; at most ${MAX_INJECT_RECIPIENTS}`);
  const subject = stringField(o, "subject");
  const text = stringField(o, "text");
  const html = stringField(o, "html", true) ?? null;
  const headers: Record<string, string> = {};
  if (o.headers !== undefined && o.headers !== null) {
    if (typeof o.headers !== "object" || Array.isArray(o.headers)) throw new AdminHttpError(400, "M_BAD_JSON", '"headers" must be an object of header name → value');
    for (const [name, value] of Object.entries(o.headers as Record<string, unknown>)) {
      // RFC 5322 §2.2: a field name is printable US-ASCII except colon.
      if (!/^[\x21-\x39\x3b-\x7e]+$/.test(name)) throw new AdminHttpError(400, "M_INVALID_PARAM", `header name ${JSON.stringify(name)} is not a valid field name`);
      if (RESERVED_HEADERS.has(name.toLowerCase())) throw new AdminHttpError(400, "M_INVALID_PARAM", `header ${name} cannot be set by an injection (it is written by the bridge, or claims a check that did not happen)`);
      if (typeof value !== "string") throw new AdminHttpError(400, "M_BAD_JSON", `header ${name} must be a string`);
      if (/[\r\n]/.test(value)) throw new AdminHttpError(400, "M_INVALID_PARAM", `header ${name} must be one line`);
      headers[name] = value;
    }
  }
  if (/[\r\n]/.test(from) || /[\r\n]/.test(subject)) throw new AdminHttpError(400, "M_INVALID_PARAM", '"from" and "subject" must be one line');
  return { from, to: to as string[], subject, text, html, headers };
}

/**
 * Compose the message: MailComposer with a minted Message-ID on the primary mail domain.
 * @returns the RFC 5322 bytes (CRLF line ends) and the Message-ID without brackets
 */
export async function composeInjected(req: InjectRequest, mailDomain: string, now = new Date()): Promise<{ raw: Buffer; messageId: string }> {
  const messageId = mintMessageId(mailDomain, now.getTime());
  const composer = new MailComposer({
    from: req.from,
    to: req.to,
    subject: req.subject,
    text: req.text,
    ...(req.html !== null ? { html: req.html } : {}),
    headers: req.headers,
    messageId: `<${messageId}>`,
    date: now,
    newline: "win",
    // Operator input: never let nodemailer read files or URLs for it.
    disableFileAccess: true,
    disableUrlAccess: true,
  });
  return { raw: await composer.compile().build(), messageId };
}

/**
 * Inject a mail: check each recipient as RCPT TO would (one of our domains, an existing
 * mailbox), compose it, and commit it through the router. The poster posts it within seconds.
 * @param clientAddress the HTTP client's IP, for the trace header
 * @returns the Message-ID and the committed inbound rows
 * @throws AdminHttpError 400 for a request that is not a valid injection; 422 M_MAIL_REFUSED
 *   with the SMTP reply when the bridge refuses the mail as it would over SMTP (no such mailbox,
 *   the From address cannot be bridged, a room mailbox's posting policy, a blocked sender);
 *   503 M_UNKNOWN for a temporary refusal (a 4xx reply, or the store or homeserver cannot be
 *   asked: where SMTP would answer 451 4.3.0; logged)
 */
export async function injectMail(deps: InjectDeps, body: unknown, clientAddress: string): Promise<InjectResult> {
  const req = parseInjectRequest(body);
  const id = `admin-${randomUUID()}`;
  const { raw, messageId } = await composeInjected(req, deps.mailDomain);
  const author = /<([^<>]+)>\s*$/.exec(req.from)?.[1] ?? req.from.trim();
  const recipients = new Map<string, Mailbox>();
  const envelope: InboundEnvelope<Mailbox> = {
    mailFrom: author,
    rcptTo: [],
    recipients,
    remoteAddress: clientAddress,
    clientHostname: `[${clientAddress}]`,
    heloName: "admin-api",
    sessionId: id,
    secure: false,
  };
  const inbound: InjectResult["inbound"] = [];
  const injection: Injection = {
    received: `Received: from admin-api ([${clientAddress.replace(/[^\x21-\x7e]/g, "")}])\r\n\tby ${deps.hostname} with HTTP id ${id};\r\n\t${now()}\r\n`,
    onRow: (row, duplicate) => inbound.push({ id: row.id, roomId: row.roomId, dmLocalUserId: row.dmLocalUserId, duplicate }),
  };
  try {
    for (const address of req.to) {
      const rcpt = recipientAddress(address);
      if (recipients.has(rcpt)) continue;
      const domain = rcpt.slice(rcpt.lastIndexOf("@") + 1);
      if (domain !== deps.mailDomain && !(await deps.isLocalDomain(domain))) {
        throw new AdminHttpError(400, "M_INVALID_PARAM", `${address} is not on a mail domain of this bridge; an injected mail goes to the bridge's own mailboxes only`);
      }
      recipients.set(rcpt, await deps.router.checkRecipient(rcpt, envelope));
      envelope.rcptTo.push(rcpt);
    }
    await deps.router.deliver(raw, envelope, injection);
  } catch (err) {
    if (err instanceof SmtpReply) {
      if (err.responseCode >= 500) throw new AdminHttpError(422, "M_MAIL_REFUSED", `the bridge refuses this mail: ${err.responseCode} ${err.message}`);
      throw new AdminHttpError(503, "M_UNKNOWN", `the mail cannot be taken now, try again later: ${err.responseCode} ${err.message}`);
    }
    if (err instanceof AdminHttpError) throw err;
    // What the SMTP listener answers 451 4.3.0 for: the store or the homeserver cannot be asked.
    log.warn("injected mail not taken", { session: id, ...errorFields(err) });
    throw new AdminHttpError(503, "M_UNKNOWN", "the mail cannot be taken now (the store or the homeserver does not answer; the bridge's log has the details), try again later");
  }
  return { messageId, inbound };
}

/**
 * A recipient as the SMTP listener hands it to the router: trimmed, angle brackets removed,
 * the domain lower-cased and as A-labels, the local part as given.
 * @throws AdminHttpError 400 M_INVALID_PARAM when it is no address
 */
function recipientAddress(input: string): string {
  const s = input.trim().replace(/^<(.*)>$/, "$1");
  const at = s.lastIndexOf("@");
  const local = s.slice(0, at);
  const domain = at > 0 ? domainToASCII(s.slice(at + 1).toLowerCase()) : "";
  if (at <= 0 || !domain || /[\s<>(),;:"\\[\]]/.test(local)) throw new AdminHttpError(400, "M_INVALID_PARAM", `${JSON.stringify(input)} is not an email address`);
  return `${local}@${domain}`;
}

/** The current time as the date of a trace header (RFC 5322 §3.3). */
function now(): string {
  return new Date().toUTCString().replace("GMT", "+0000");
}
