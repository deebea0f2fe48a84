/**
 * SMTP replies the inbound listener gives, each with its basic reply code
 * (RFC 5321 §4.2) and its enhanced mail system status code (RFC 3463), and how enhanced codes
 * reach the wire.
 *
 * How (smtp-server 3.21): the listeners run smtp-server with `hideENHANCEDSTATUSCODES: false`,
 * so EHLO advertises ENHANCEDSTATUSCODES (RFC 2034) and smtp-server prefixes the replies it
 * writes itself with an enhanced code from its own table (`ENHANCED_STATUS_CODES` in
 * smtp-connection.js, refined by a context for some replies): `250 2.1.0` to MAIL, `250 2.1.5`
 * to RCPT, `501 5.1.7` / `501 5.1.3` for a malformed sender / recipient, `552 5.3.4` for a
 * `SIZE=` over the limit, `503 5.5.1` for a command out of sequence, `500 5.5.2` for an unknown
 * (or disabled) command, `221 2.0.0`; none on 3xx replies, the greeting and the replies to
 * HELO/EHLO (RFC 2034 §3 (4)).
 *
 * That table alone is not enough. smtp-server writes an error a handler passes back as
 * `<responseCode> <table code for responseCode> <err.message>`: the error cannot choose its
 * enhanced code, so "relaying denied" would go out as `550 5.1.1` and "message too big" as
 * `552 5.2.2`. {@link installEnhancedStatusCodes} therefore hooks `send`, smtp-server's one
 * write site for replies, on each connection, and passes smtp-server's own `context` argument
 * (`false`: no code) so that:
 * - a reply text that starts with an enhanced code of its class goes out as it is: every
 *   {@link SmtpReply} puts its code at the start of its `message`, so the client reads exactly
 *   `550 5.1.1 <bob@example.org>: no such mailbox here`;
 * - an error smtp-server writes with no code at all (its HELO/EHLO syntax errors, its backstop
 *   client limit) gets the table's code for its basic code, e.g. `501 5.5.4`;
 * - where smtp-server takes the context from the client's command name (its 500 and 421
 *   replies), a name that yields no code of the reply's class (`LHLO`, or a command literally
 *   named `DATA_OK`) falls back to the table as well.
 * The greeting and the 250 replies to HELO/EHLO stay bare (the EHLO lines are keywords).
 */

import type { SMTPServer, SMTPServerAddress } from "smtp-server";

/** `d.ddd.ddd` as in RFC 3463 §2: class (2, 4 or 5), subject (0-999), detail (0-999). */
const ENHANCED_STATUS_RE = /^([245])\.(\d{1,3})\.(\d{1,3})$/;

/** A reply text that starts with an enhanced status code (RFC 3463 §2), then a space. */
const LEADING_STATUS_RE = /^([245])\.\d{1,3}\.\d{1,3} /;

/**
 * One SMTP reply to a command, thrown by {@link InboundHandler} implementations (see
 * `SmtpListener.ts`) to refuse a recipient or a message, and passed to smtp-server.
 *
 * `message` is what follows the basic code on the wire: `"<enhancedStatus> <text>"`.
 * smtp-server replaces control characters in it with spaces, so a reply is always
 * one line.
 */
export class SmtpReply extends Error {
  /** Basic reply code, 400-599 (RFC 5321 §4.2.1: 4yz transient, 5yz permanent). */
  readonly responseCode: number;
  /** Enhanced status code `class.subject.detail` (RFC 3463 §2), class agreeing with `responseCode`. */
  readonly enhancedStatus: string;
  /** Human-readable text after the enhanced status, without it. */
  readonly text: string;

  /**
   * @param responseCode basic reply code, an integer 400-599
   * @param enhancedStatus RFC 3463 code whose class digit equals the first digit of `responseCode`
   * @param text reply text, one line (no CR/LF)
   * @throws RangeError when the codes are malformed or their classes disagree (RFC 3463 §2:
   *   "the class ... must match the first digit of the basic reply code"), or the text has a line break
   */
  constructor(responseCode: number, enhancedStatus: string, text: string) {
    if (!Number.isInteger(responseCode) || responseCode < 400 || responseCode > 599) {
      throw new RangeError(`SMTP reply code must be 400-599, got ${responseCode}`);
    }
    const m = ENHANCED_STATUS_RE.exec(enhancedStatus);
    if (!m || m[1] !== String(responseCode)[0]) {
      throw new RangeError(`enhanced status ${JSON.stringify(enhancedStatus)} does not fit reply code ${responseCode}`);
    }
    if (/[\r\n]/.test(text)) throw new RangeError("SMTP reply text must be one line");
    super(`${enhancedStatus} ${text}`);
    this.name = "SmtpReply";
    this.responseCode = responseCode;
    this.enhancedStatus = enhancedStatus;
    this.text = text;
  }

  /** True for 5yz replies: the sender must not retry (RFC 5321 §4.2.1). */
  get permanent(): boolean {
    return this.responseCode >= 500;
  }

  /** The reply line as the client receives it, e.g. `550 5.1.1 <a@b>: no such mailbox here`. */
  get line(): string {
    return `${this.responseCode} ${this.message}`;
  }
}

/** True when `err` is an {@link SmtpReply} (also across module copies, by shape). */
export function isSmtpReply(err: unknown): err is SmtpReply {
  if (err instanceof SmtpReply) return true;
  if (!(err instanceof Error)) return false;
  const e = err as Partial<SmtpReply>;
  return typeof e.responseCode === "number" && typeof e.enhancedStatus === "string" && typeof e.text === "string";
}

/**
 * The reply for anything a handler throws: an {@link SmtpReply} as is, any other
 * error as {@link Rejections.temporaryFailure} (451 4.3.0) so that the sender retries
 * instead of bouncing a message that was never stored.
 */
export function toSmtpReply(err: unknown): SmtpReply {
  return isSmtpReply(err) ? err : Rejections.temporaryFailure();
}

/** `<local@domain>` for reply texts; the address is the one the client sent. */
function bracket(address: string): string {
  return `<${address}>`;
}

/**
 * The catalogue of replies the bridge gives. Each entry makes a new {@link SmtpReply};
 * codes are RFC 5321 §4.2.2 basic codes with RFC 3463 enhanced codes.
 */
export const Rejections = Object.freeze({
  /** `550 5.1.1`: RCPT to a mailbox of our domain that does not exist (RFC 3463 X.1.1 bad destination mailbox). */
  noSuchMailbox: (address: string): SmtpReply => new SmtpReply(550, "5.1.1", `${bracket(address)}: no such mailbox here`),

  /**
   * `550 5.7.1`: RCPT to a domain that is not the bridge's mail domain. The listener never
   * relays (RFC 5321 §3.6.2, §7.1); X.7.1 is "delivery not authorized" (RFC 3463).
   */
  relayDenied: (address: string): SmtpReply => new SmtpReply(550, "5.7.1", `${bracket(address)}: relaying denied`),

  /** `550 5.2.1`: the mailbox exists but does not accept mail (RFC 3463 X.2.1 mailbox disabled). */
  mailboxDisabled: (address: string): SmtpReply => new SmtpReply(550, "5.2.1", `${bracket(address)}: mailbox disabled, not accepting messages`),

  /**
   * `550 5.2.1`: the Matrix room behind the mailbox is gone or the bridge was removed from it,
   * so nothing can be posted there (X.2.1: mailbox exists, not accepting messages).
   */
  portalGone: (address: string): SmtpReply => new SmtpReply(550, "5.2.1", `${bracket(address)}: the Matrix room of this mailbox is no longer bridged`),

  /**
   * `550 5.2.1`: the Matrix room behind the mailbox is end-to-end encrypted and the bridge
   * cannot post into it (X.2.1: mailbox exists, not accepting messages).
   */
  roomEncrypted: (address: string): SmtpReply => new SmtpReply(550, "5.2.1", `${bracket(address)}: the Matrix room of this mailbox is encrypted and cannot receive mail`),

  /**
   * `450 4.2.1`: the room cannot take messages right now (homeserver unreachable, bridge bot
   * not joined yet, rate limited); the sender retries (RFC 5321 §4.2.5, RFC 3463 X.2.1 transient).
   */
  mailboxUnavailable: (address: string): SmtpReply => new SmtpReply(450, "4.2.1", `${bracket(address)}: mailbox temporarily unavailable, try again later`),

  /**
   * `552 5.3.4`: the message is larger than the advertised SIZE (RFC 1870 §6.2 gives 552;
   * RFC 3463 X.3.4 message too big for system).
   * @param maxBytes the limit, in bytes
   */
  messageTooBig: (maxBytes: number): SmtpReply => new SmtpReply(552, "5.3.4", `message exceeds fixed maximum message size of ${maxBytes} bytes`),

  /**
   * `452 4.5.3`: more RCPT TO than the per-message limit. RFC 5321 §4.5.3.1.10 says to answer
   * 452 (transient) so the client sends the rest in another transaction; RFC 3463 X.5.3
   * too many recipients. RFC 5321 §4.5.3.1.8 requires accepting at least 100.
   * @param max the limit, in recipients
   */
  tooManyRecipients: (max: number): SmtpReply => new SmtpReply(452, "4.5.3", `too many recipients, at most ${max} per message`),

  /**
   * `451 4.3.0`: a local error (database, homeserver) while deciding or storing; the sender
   * retries later (RFC 5321 §4.2.2 451, RFC 3463 X.3.0 other mail system status).
   */
  temporaryFailure: (): SmtpReply => new SmtpReply(451, "4.3.0", "temporary local failure, try again later"),

  /** `452 4.3.1`: no room to store the message now (RFC 3463 X.3.1 mail system full). */
  insufficientStorage: (): SmtpReply => new SmtpReply(452, "4.3.1", "insufficient system storage, try again later"),

  /** `553 5.1.7`: the MAIL FROM address is malformed (RFC 3463 X.1.7 bad sender's mailbox address syntax). */
  badSenderSyntax: (address: string): SmtpReply => new SmtpReply(553, "5.1.7", `${bracket(address)}: bad sender address syntax`),

  /** `553 5.1.3`: the RCPT TO address is malformed (RFC 3463 X.1.3 bad destination mailbox address syntax). */
  badRecipientSyntax: (address: string): SmtpReply => new SmtpReply(553, "5.1.3", `${bracket(address)}: bad recipient address syntax`),

  /**
   * `555 5.5.4`: a MAIL FROM or RCPT TO parameter the listener does not know or did not
   * advertise (RFC 5321 §4.1.1.11 and §4.2.2: 555 "parameters not recognized or not implemented";
   * RFC 3463 X.5.4 invalid command arguments). Only the keyword is echoed, made printable and cut
   * to 64 characters, so that the reply stays one short line (RFC 5321 §4.5.3.1.5: 512 octets).
   * @param keyword the parameter's keyword as smtp-server parsed it (upper case, without `=value`)
   */
  parameterNotRecognized: (keyword: string): SmtpReply => {
    const shown = keyword.replace(/[^\x21-\x7e]/g, "?");
    return new SmtpReply(555, "5.5.4", `unsupported parameter ${shown.length > 64 ? `${shown.slice(0, 64)}...` : shown}`);
  },

  /**
   * `553 5.6.7`: a MAIL FROM or RCPT TO address with non-ASCII characters in a transaction whose
   * MAIL did not carry the `SMTPUTF8` parameter. RFC 6531 §3.4: such an address is only allowed
   * when the client asked for SMTPUTF8; §3.5 gives the reply, 553 with X.6.7 "Non-ASCII
   * addresses not permitted for that sender/recipient" (RFC 5248). Postfix answers the same.
   * The address is not echoed: a client that did not ask for SMTPUTF8 gets an ASCII reply.
   */
  utf8AddressWithoutSmtputf8: (): SmtpReply => new SmtpReply(553, "5.6.7", "a non-ASCII address needs the SMTPUTF8 parameter on MAIL FROM"),

  /** `550 5.7.1`: the sender is refused by policy (blocked address or domain; RFC 3463 X.7.1). */
  senderRefused: (address: string): SmtpReply => new SmtpReply(550, "5.7.1", `${bracket(address)}: sender refused`),

  /**
   * `554 5.4.6`: the message has looped (too many Received headers, or it came back from the
   * bridge itself; RFC 5321 §6.3, RFC 3463 X.4.6 routing loop detected).
   * @param maxHops when given, the Received-header limit that was crossed (Postfix's `hopcount_limit`)
   */
  loopDetected: (maxHops?: number): SmtpReply =>
    new SmtpReply(554, "5.4.6", maxHops === undefined ? "routing loop detected" : `routing loop detected: more than ${maxHops} Received headers`),

  /**
   * `552 5.3.4`: the header section (everything before the first empty line; RFC 5322 §2.1)
   * of the message, or of one of its MIME parts, is larger than the limit. X.3.4 message too
   * big for system (RFC 3463); 552 as for an oversized message (RFC 1870 §6.2).
   * @param maxBytes the limit, in bytes
   */
  headerTooBig: (maxBytes: number): SmtpReply =>
    new SmtpReply(552, "5.3.4", `message header section exceeds fixed maximum size of ${maxBytes} bytes`),

  /**
   * `552 5.6.0`: the message has more MIME parts (RFC 2045/2046 entities, the message itself
   * included) than the limit. RFC 3463 X.6.0 other or undefined media error.
   * @param maxParts the limit, in parts
   */
  tooManyMimeParts: (maxParts: number): SmtpReply => new SmtpReply(552, "5.6.0", `message has more than ${maxParts} MIME parts`),

  /**
   * `554 5.6.0`: MIME parts are nested deeper than the limit (multipart and message/rfc822
   * entities inside each other; RFC 2046 §5). RFC 3463 X.6.0 other or undefined media error.
   * @param maxDepth the limit, in nesting levels below the message itself
   */
  mimeTooDeep: (maxDepth: number): SmtpReply => new SmtpReply(554, "5.6.0", `MIME parts nested deeper than ${maxDepth} levels`),

  /**
   * `421 4.7.0`: the listener has no free connection slot; the connection is closed. RFC 5321
   * §3.8/§4.2.3 421 service not available; RFC 3463 X.7.0 other security or policy status.
   */
  tooManyConnections: (): SmtpReply => new SmtpReply(421, "4.7.0", "too many connections, try again later"),

  /**
   * `421 4.7.0`: the client address has as many open connections as allowed; the
   * connection is closed (RFC 5321 §4.2.3 421; RFC 3463 X.7.0).
   * @param client the client address (or IPv6 /64) the limit applies to
   */
  tooManyConnectionsFromClient: (client: string): SmtpReply =>
    new SmtpReply(421, "4.7.0", `too many connections from ${client}, try again later`),

  /**
   * `451 4.7.1`: MAIL FROM over the message rate of the client address (RFC 5321 §4.2.2 451
   * local error, the client retries; RFC 3463 X.7.1 delivery not authorized, message refused).
   * @param client the client address (or IPv6 /64)
   */
  clientRateLimited: (client: string): SmtpReply =>
    new SmtpReply(451, "4.7.1", `too many messages from ${client}, try again later`),

  /**
   * `451 4.7.1`: MAIL FROM over the message rate of the sender's domain (RFC 5321 §4.2.2;
   * RFC 3463 X.7.1).
   * @param domain the MAIL FROM domain, lower case
   */
  senderDomainRateLimited: (domain: string): SmtpReply =>
    new SmtpReply(451, "4.7.1", `too many messages from senders at ${domain}, try again later`),

  /**
   * `421 4.4.2`: the client took too long (a command line, or the whole DATA phase); the
   * connection is closed. RFC 5321 §4.5.3.2 timeouts, §3.8 421 on closing; RFC 3463 X.4.2 bad
   * connection.
   * @param what what timed out, e.g. `command` or `DATA`
   */
  timeout: (what: string): SmtpReply => new SmtpReply(421, "4.4.2", `${what} timeout exceeded, closing connection`),

  /**
   * `554 5.7.1`: the client address is listed on a DNS blocklist (RFC 5782); refused at
   * connect (RFC 5321 §3.1 554 greeting; RFC 3463 X.7.1 delivery not authorized).
   * @param ip the client address
   * @param zone the DNSBL zone that lists it
   */
  dnsblListed: (ip: string, zone: string): SmtpReply => new SmtpReply(554, "5.7.1", `${ip} listed at ${zone}`),

  /**
   * `530 5.7.0`: MAIL before STARTTLS while `smtp.require_tls` is on (RFC 3207 §4: "530 Must
   * issue a STARTTLS command first"; RFC 3463 X.7.0). Note RFC 3207 §4 also says a publicly
   * referenced server MUST NOT require STARTTLS, hence off by default.
   */
  tlsRequired: (): SmtpReply => new SmtpReply(530, "5.7.0", "Must issue a STARTTLS command first"),

  /** `554 5.6.0`: the message cannot be parsed as RFC 5322/MIME (RFC 3463 X.6.0 other media error). */
  malformedMessage: (): SmtpReply => new SmtpReply(554, "5.6.0", "message could not be parsed"),
});

/**
 * smtp-server's answers to sendmail's old debugging commands (`WIZ`, `SHELL`, `KILL`: jokes such
 * as "Please pass, oh mighty wizard"): listed in `disabledCommands`, each gets the
 * unrecognized-command reply, `500 5.5.2`, as any other command the server does not offer
 * (RFC 5321 §4.2.4).
 */
export const SENDMAIL_DEBUG_COMMANDS: readonly string[] = Object.freeze(["WIZ", "SHELL", "KILL"]);

/**
 * The refusal for the first MAIL FROM or RCPT TO parameter (RFC 5321 §4.1.2 `esmtp-param`) that
 * is not one of `supported`, or null when there is none such. RFC 5321 §4.1.1.11: a parameter the
 * server does not recognize gets 555; see {@link Rejections.parameterNotRecognized}.
 * @param args smtp-server's parsed parameters (`SMTPServerAddress.args`: upper-case keywords, false for none)
 * @param supported the upper-case keywords of the extensions the listener advertises (and checks)
 * @returns a new `555 5.5.4` reply, or null
 */
export function unsupportedParameter(args: SMTPServerAddress["args"], supported: ReadonlySet<string>): SmtpReply | null {
  if (!args) return null;
  for (const keyword of Object.keys(args)) {
    if (!supported.has(keyword)) return Rejections.parameterNotRecognized(keyword);
  }
  return null;
}

/**
 * The refusal for a non-ASCII address in a transaction whose MAIL FROM did not carry the
 * `SMTPUTF8` parameter (RFC 6531 §3.4: without it, addresses are RFC 5321's ASCII), or null.
 * See {@link Rejections.utf8AddressWithoutSmtputf8}.
 * @param address the MAIL FROM or RCPT TO address as smtp-server parsed it
 * @param mailFrom the transaction's MAIL FROM (for RCPT: `session.envelope.mailFrom`, set once
 *   MAIL was accepted; false/undefined before)
 * @returns a new `553 5.6.7` reply, or null
 */
export function utf8WithoutSmtputf8(address: string, mailFrom: SMTPServerAddress | false | undefined): SmtpReply | null {
  if (/^[\x00-\x7f]*$/u.test(address)) return null;
  // smtp-server parses the flag as `true` (its typings say string values).
  const asked = Boolean(mailFrom && mailFrom.args && (mailFrom.args as Record<string, unknown>).SMTPUTF8);
  return asked ? null : Rejections.utf8AddressWithoutSmtputf8();
}

/** smtp-server's connection object (typed by its own declarations, see `SMTPServer.connections`). */
type Connection = SMTPServer["connections"] extends Set<infer C> ? C : never;

/** smtp-server's `context` argument of `send`: a key of its code table, or false for no code. */
type ReplyContext = Parameters<Connection["send"]>[2];

/**
 * The `context` to hand smtp-server's `send` so that the reply gets exactly one enhanced code of
 * its class (rules in the module comment). Pure apart from asking `conn` for its table's code.
 */
function replyContext(conn: Connection, code: number, data: Parameters<Connection["send"]>[1], context: ReplyContext): ReplyContext {
  const cls = String(Math.floor(code / 100));
  // RFC 2034 §4: 3xx replies (354, AUTH challenges) have none; smtp-server leaves them bare.
  if (cls !== "2" && cls !== "4" && cls !== "5") return context;
  // The text carries its own code (an SmtpReply): written as it is.
  if (typeof data === "string" && LEADING_STATUS_RE.exec(data)?.[1] === cls) return false;
  // The greeting and the 250 replies to HELO/EHLO (RFC 2034 §3 (4)); an error there gets the table's code.
  if (context === false) return cls === "2" ? false : undefined;
  return conn._getEnhancedStatusCode(code, context).startsWith(`${cls}.`) ? context : undefined;
}

/**
 * Make every reply of `server` carry one enhanced status code of its class (RFC 3463; RFC 2034
 * §3 (4) and §4, the greeting, the replies to HELO/EHLO and 3xx replies excepted): hooks `send`
 * of each connection as smtp-server creates it, before it writes anything, and picks smtp-server's
 * own `context` argument for the reply (see the module comment). Call it once, before `listen`,
 * on a server created with `hideENHANCEDSTATUSCODES: false`; with the codes hidden, only the
 * codes in reply texts (every {@link SmtpReply}'s) reach the wire.
 *
 * smtp-server 3.21 adds a connection to `server.connections` right after creating it, and writes
 * every reply through `SMTPConnection.send` (also its early-talker and client-limit 421s, the
 * refusals of `onConnect`, handler errors). Throws nothing.
 * @param server a smtp-server instance that is not listening yet
 */
export function installEnhancedStatusCodes(server: SMTPServer): void {
  const hook = (conn: Connection): void => {
    const send = conn.send;
    conn.send = (code, data, context) => send.call(conn, code, data, replyContext(conn, code, data, context));
  };
  /** `server.connections`, hooking each connection smtp-server adds. */
  class HookedConnections extends Set<Connection> {
    override add(conn: Connection): this {
      if (!this.has(conn)) hook(conn);
      return super.add(conn);
    }
  }
  server.connections = new HookedConnections(server.connections);
}
