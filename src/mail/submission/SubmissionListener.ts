/**
 * The submission port (RFC 6409): a second smtp-server where local users' mail clients and
 * scripts send mail as their own address, logging in with an app password.
 *
 * Rules (codes are `basic enhanced`):
 * - STARTTLS first (RFC 3207 §4): every command but EHLO, HELO, STARTTLS, NOOP, RSET and QUIT
 *   before it gets `530 5.7.0 Must issue a STARTTLS command first` (smtp-server itself would
 *   answer AUTH with a non-standard 538); EHLO offers AUTH only after STARTTLS;
 * - AUTH PLAIN and LOGIN (RFC 4954, RFC 4616), only over TLS; bad credentials
 *   `535 5.7.8 Authentication credentials invalid`; more than `maxAuthFailuresPerIp` failures
 *   from a client address (IPv6: its /64) within a minute: `454 4.7.0` for every AUTH from it
 *   for a minute (RFC 4954 §6 "temporary authentication failure");
 * - MAIL without AUTH: `530 5.7.0 Authentication required` (RFC 4954 §6); MAIL FROM other than
 *   the authenticated user's own address, and a From header field that is not exactly that
 *   address: `553 5.7.1` (RFC 6409 §6.1 lets an MSA refuse what the user may not send as);
 * - RCPT: the handler decides (a mailbox of the bridge's domain that does not exist: 550 5.1.1);
 *   at most `maxRecipients` (452 4.5.3 beyond);
 * - DATA: the size and structure limits of the MX listener (552 5.3.4, 552/554 5.6.0, 554 5.4.6);
 *   250 only once the handler resolved, i.e. the mail is committed (RFC 5321 §6.1);
 * - MAIL FROM parameters other than SIZE, BODY, SMTPUTF8 and AUTH (RFC 4954 §5), and any RCPT TO
 *   parameter: `555 5.5.4` (RFC 5321 §4.1.1.11);
 * - every reply carries an enhanced status code and EHLO advertises ENHANCEDSTATUSCODES
 *   (RFC 2034), smtp-server's own replies included, as on the MX listener (inbound/rejections.ts).
 *
 * Knows nothing of Matrix: the bridge passes a {@link SubmissionHandler}.
 */
import { SMTPServer } from "smtp-server";
import type { SMTPServerAddress, SMTPServerAuthentication, SMTPServerAuthenticationResponse, SMTPServerDataStream, SMTPServerSession } from "smtp-server";
import { errorFields, getLogger } from "../../util/logger.ts";
import type { Logger } from "../../util/logger.ts";
import { readAuthor } from "../inbound/auth.ts";
import { CertificateFiles, refreshServerCertificate } from "../inbound/certificates.ts";
import { MessageInspector, RateLimiter, clientKey } from "../inbound/limits.ts";
import type { MessageLimits } from "../inbound/limits.ts";
import { Rejections, SENDMAIL_DEBUG_COMMANDS, SmtpReply, installEnhancedStatusCodes, isSmtpReply, toSmtpReply, unsupportedParameter, utf8WithoutSmtputf8 } from "../inbound/rejections.ts";
import { listenSmtp } from "../listen.ts";

/** A local user logged in on the submission port. */
export interface SubmissionUser {
  /** Their Matrix user ID, e.g. `@alice:example.org`. */
  userId: string;
  /** Their personal mail address, e.g. `alice@mail.example.org`: the only one they may send as. */
  address: string;
}

/** One submitted mail's envelope, as the handler sees it. */
export interface SubmissionEnvelope {
  user: SubmissionUser;
  /** MAIL FROM: always `user.address` (anything else was refused). */
  mailFrom: string;
  /** Accepted RCPT TO addresses, each once, in RCPT order (domain lower-cased). */
  rcptTo: string[];
  remoteAddress: string;
  /** smtp-server session id, also the `session` field of log lines. */
  sessionId: string;
}

/** What the bridge does with submitted mail. */
export interface SubmissionHandler {
  /**
   * Check a login (RFC 4954 authorization identity is not supported: the login is the user).
   * @param login what the client gave as user name (a mail address or a Matrix user ID)
   * @returns the user, or null for wrong credentials
   * @throws for a failure to check (the client gets 454 4.7.0 and may retry)
   */
  authenticate(login: string, password: string): Promise<SubmissionUser | null>;
  /**
   * Decide one RCPT TO; resolve to accept, throw SmtpReply to refuse (any other error: 451 4.3.0).
   * @param address the recipient, domain lower-cased
   */
  checkRecipient(address: string, envelope: SubmissionEnvelope): Promise<void>;
  /** Commit the mail; resolve ONLY once it is durably stored (SmtpReply: that reply; other errors: 451 4.3.0). */
  deliver(raw: Buffer, envelope: SubmissionEnvelope): Promise<void>;
}

/** The listener's settings: the `submission` section with smtp's TLS files and limits resolved. */
export interface SubmissionListenerConfig {
  bind_address: string;
  /** 0 picks a free port. */
  port: number;
  /** Host name in the greeting (`smtp.hostname`). */
  hostname: string;
  tls_cert_file: string;
  tls_key_file: string;
  /** Failed logins per client address per minute before AUTH is refused for a minute. */
  max_auth_failures_per_ip: number;
  /** The MX listener's limits (`smtp.*`). */
  max_message_bytes: number;
  max_clients: number;
  max_recipients: number;
  max_header_bytes: number;
  max_mime_parts: number;
  max_mime_depth: number;
  max_received_headers: number;
}

/** Options of {@link SubmissionListener}. */
export interface SubmissionListenerOptions {
  config: SubmissionListenerConfig;
  handler: SubmissionHandler;
  /** How long {@link SubmissionListener.close} waits for open sessions, in ms. Default 10000. */
  closeTimeoutMs?: number;
  /** Clock, epoch ms (tests). */
  now?: () => number;
}

/** How long a client that failed AUTH too often is refused, in ms; also the window failures are counted in. */
const AUTH_LOCKOUT_MS = 60_000;

/** MAIL FROM parameters of the advertised extensions: SIZE (RFC 1870), BODY (RFC 6152), SMTPUTF8 (RFC 6531), AUTH (RFC 4954 §5). */
const MAIL_PARAMETERS: ReadonlySet<string> = new Set(["SIZE", "BODY", "SMTPUTF8", "AUTH"]);

/** RCPT TO parameters taken: none (DSN is not offered). */
const RCPT_PARAMETERS: ReadonlySet<string> = new Set();

/** Commands allowed before STARTTLS (RFC 3207 §4: the server may refuse all others with 530). */
const BEFORE_TLS = new Set(["EHLO", "HELO", "LHLO", "STARTTLS", "NOOP", "RSET", "QUIT"]);

/** smtp-server's connection object (typed by its own declarations). */
type Connection = SMTPServer["connections"] extends Set<infer C> ? C : never;

/** Replies of the submission port that the MX listener does not give. */
export const SubmissionReplies = {
  /** `530 5.7.0` (RFC 3207 §4): a command other than EHLO/STARTTLS/NOOP/RSET/QUIT before STARTTLS. */
  starttlsFirst: (): SmtpReply => new SmtpReply(530, "5.7.0", "Must issue a STARTTLS command first"),
  /** `530 5.7.0` (RFC 4954 §6): MAIL before a successful AUTH. */
  authRequired: (): SmtpReply => new SmtpReply(530, "5.7.0", "Authentication required"),
  /** `535 5.7.8` (RFC 4954 §6): wrong login or password. */
  badCredentials: (): SmtpReply => new SmtpReply(535, "5.7.8", "Authentication credentials invalid"),
  /** `454 4.7.0` (RFC 4954 §6): too many failed logins from the client, or the check failed. */
  authTemporary: (why: string): SmtpReply => new SmtpReply(454, "4.7.0", `Temporary authentication failure: ${why}`),
  /** `553 5.7.1` (RFC 6409 §6.1): an envelope sender or From the user may not send as. */
  notYourAddress: (what: string, own: string): SmtpReply => new SmtpReply(553, "5.7.1", `${what} is not your address; you may send as <${own}> only`),
} as const;

/**
 * The submission server. Create, {@link listen}, and {@link close} on shutdown.
 * See the module comment for its replies.
 */
export class SubmissionListener {
  readonly #config: SubmissionListenerConfig;
  readonly #handler: SubmissionHandler;
  readonly #closeTimeoutMs: number;
  readonly #now: () => number;
  readonly #certificates: CertificateFiles;
  readonly #messageLimits: MessageLimits;
  readonly #authFailures: RateLimiter;
  /** Client key → epoch ms until which its AUTH is refused. */
  readonly #lockouts = new Map<string, number>();
  /** Accepted recipients per transaction (smtp-server replaces `session.envelope` per transaction). */
  readonly #recipients = new WeakMap<object, Set<string>>();
  readonly #deliveries = new Set<Promise<unknown>>();
  readonly #log: Logger = getLogger("mail/submission");
  #server: SMTPServer | null = null;

  /**
   * @param opts see {@link SubmissionListenerOptions}
   * @throws RangeError when a limit is not a positive integer
   */
  constructor(opts: SubmissionListenerOptions) {
    const config = opts.config;
    this.#config = config;
    this.#handler = opts.handler;
    this.#closeTimeoutMs = opts.closeTimeoutMs ?? 10_000;
    this.#now = opts.now ?? Date.now;
    this.#certificates = new CertificateFiles(config.tls_cert_file, config.tls_key_file);
    this.#messageLimits = {
      maxHeaderBytes: config.max_header_bytes,
      maxReceivedHeaders: config.max_received_headers,
      maxMimeParts: config.max_mime_parts,
      maxMimeDepth: config.max_mime_depth,
    };
    new MessageInspector(this.#messageLimits).abort();
    this.#authFailures = new RateLimiter({ limit: config.max_auth_failures_per_ip, windowMs: AUTH_LOCKOUT_MS, now: this.#now });
  }

  /**
   * Start listening on `config.bind_address`:`config.port`.
   * @returns the bound port (the real one when `config.port` is 0)
   * @throws Error when already listening, when a TLS file cannot be read or does not match, or
   *   when the socket cannot be bound
   */
  async listen(): Promise<{ port: number }> {
    if (this.#server) throw new Error("submission listener is already listening");
    const config = this.#config;
    const { cert, key } = await this.#certificates.load();
    const server = new SMTPServer({
      cert,
      key,
      name: config.hostname,
      banner: "matrix-email-bridge submission",
      size: config.max_message_bytes,
      authMethods: ["PLAIN", "LOGIN"],
      // Our own checks give the RFC 4954 / RFC 3207 codes (530 5.7.0, not smtp-server's texts).
      authOptional: true,
      allowInsecureAuth: false,
      disabledCommands: [...SENDMAIL_DEBUG_COMMANDS],
      // Enhanced status codes on every reply, ours and smtp-server's (installEnhancedStatusCodes below).
      hideENHANCEDSTATUSCODES: false,
      hideDSN: true,
      hideREQUIRETLS: true,
      maxClients: config.max_clients,
      // Submission clients are users, not MTAs: no PTR lookup.
      disableReverseLookup: true,
      closeTimeout: this.#closeTimeoutMs,
      logger: false,
      onConnect: (session, cb) => {
        // RFC 4954 §4: no AUTH offered in the clear; STARTTLS brings it (onSecure).
        session.disabledCommands = ["AUTH", ...SENDMAIL_DEBUG_COMMANDS];
        this.#hookConnection(session);
        cb();
      },
      onSecure: (_socket, session, cb) => {
        // A session's list replaces the server's: sendmail's debugging commands stay off.
        session.disabledCommands = [...SENDMAIL_DEBUG_COMMANDS];
        cb();
      },
      onAuth: (auth, session, cb) => this.#onAuth(auth, session, cb),
      onMailFrom: (address, session, cb) => cb(this.#checkMailFrom(address, session)),
      onRcptTo: (address, session, cb) => {
        const badParameter = unsupportedParameter(address.args, RCPT_PARAMETERS) ?? utf8WithoutSmtputf8(address.address, session.envelope.mailFrom);
        if (badParameter) return cb(badParameter);
        this.#onRcptTo(address.address, session).then(
          () => cb(),
          (err: unknown) => cb(toSmtpReply(err)),
        );
      },
      onData: (stream, session, cb) => this.#onData(stream, session, cb),
    });
    installEnhancedStatusCodes(server);
    server.on("error", (err: Error) => this.#log.warn("submission server error", errorFields(err)));
    const port = await listenSmtp(server, config.bind_address, config.port);
    this.#server = server;
    this.#log.info("submission listener started", { address: config.bind_address, port, maxMessageBytes: config.max_message_bytes });
    return { port };
  }

  /** Whether the listener is bound (`/health`). */
  get listening(): boolean {
    return this.#server?.server.listening ?? false;
  }

  /** Stop accepting connections; wait (at most `closeTimeoutMs`) for open sessions and running deliveries. No-op when not listening. */
  async close(): Promise<void> {
    const server = this.#server;
    if (!server) return;
    this.#server = null;
    await new Promise<void>((resolve) => server.close(() => resolve()));
    let timer: NodeJS.Timeout | undefined;
    await Promise.race([
      Promise.allSettled([...this.#deliveries]),
      new Promise<void>((resolve) => {
        timer = setTimeout(resolve, this.#closeTimeoutMs);
      }),
    ]);
    clearTimeout(timer);
    this.#log.info("submission listener stopped", { pendingDeliveries: this.#deliveries.size });
  }

  #sessionLog(session: SMTPServerSession): Logger {
    return this.#log.child({ session: session.id, remote: session.remoteAddress });
  }

  /**
   * RFC 3207 §4: before STARTTLS, only EHLO/HELO/STARTTLS/NOOP/RSET/QUIT; the rest get
   * 530 5.7.0. Done on the command line, before smtp-server reads an AUTH exchange, so no
   * password is ever asked for in the clear.
   */
  #hookConnection(session: SMTPServerSession): void {
    let conn: Connection | null = null;
    for (const c of this.#server?.connections ?? []) {
      if (c.session === session) {
        conn = c;
        break;
      }
    }
    if (!conn) {
      // Not expected with smtp-server 3.21; the checks in onAuth/onMailFrom still refuse.
      this.#sessionLog(session).warn("submission connection object not found, STARTTLS enforced by the handlers only", {});
      return;
    }
    const target = conn;
    const original = conn._onCommand;
    conn._onCommand = (command: Buffer, callback?: () => void): void => {
      const verb = /^\s*([A-Za-z]+)/.exec(command.toString("latin1"))?.[1]?.toUpperCase() ?? "";
      // A renewed certificate is picked up before each handshake (mail/inbound/certificates.ts).
      if (!target.secure && verb === "STARTTLS" && this.#server) {
        void refreshServerCertificate(this.#certificates, this.#server, this.#sessionLog(session), "submission").then(() => original.call(target, command, callback));
        return;
      }
      if (!target.secure && verb !== "" && !BEFORE_TLS.has(verb)) {
        const reply = SubmissionReplies.starttlsFirst();
        this.#sessionLog(session).info("submission command before STARTTLS refused", { command: verb, reply: reply.line });
        target.send(reply.responseCode, reply.message);
        setImmediate(() => callback?.());
        return;
      }
      original.call(target, command, callback);
    };
  }

  #onAuth(auth: SMTPServerAuthentication, session: SMTPServerSession, cb: (err: Error | null | undefined, response?: SMTPServerAuthenticationResponse) => void): void {
    const log = this.#sessionLog(session);
    if (!session.secure) return cb(SubmissionReplies.starttlsFirst());
    const client = clientKey(session.remoteAddress);
    const login = auth.username ?? "";
    const lockedUntil = this.#lockouts.get(client) ?? 0;
    if (lockedUntil > this.#now()) {
      const reply = SubmissionReplies.authTemporary("too many failed logins from your address, try again later");
      log.info("submission login refused: client locked out", { client, login, reply: reply.line });
      return cb(reply);
    }
    this.#handler.authenticate(login, auth.password ?? "").then(
      (user) => {
        if (user) {
          log.info("submission login", { login, user: user.userId, method: auth.method });
          return cb(null, { user });
        }
        let reply = SubmissionReplies.badCredentials();
        if (!this.#authFailures.hit(client)) {
          this.#lockouts.set(client, this.#now() + AUTH_LOCKOUT_MS);
          reply = SubmissionReplies.authTemporary("too many failed logins from your address, try again later");
        }
        log.info("submission login failed", { client, login, method: auth.method, reply: reply.line });
        cb(reply);
      },
      (err: unknown) => {
        const reply = SubmissionReplies.authTemporary("the credentials could not be checked, try again later");
        log.warn("submission login could not be checked", { login, reply: reply.line, ...errorFields(err) });
        cb(reply);
      },
    );
  }

  /** The logged-in user of a session, or null. */
  #user(session: SMTPServerSession): SubmissionUser | null {
    const u = session.user as unknown;
    return typeof u === "object" && u !== null && "userId" in u && "address" in u ? (u as SubmissionUser) : null;
  }

  /** MAIL FROM: TLS, a login, the user's own address, and only parameters we offer. @returns the refusal, or null */
  #checkMailFrom(from: SMTPServerAddress, session: SMTPServerSession): SmtpReply | null {
    const log = this.#sessionLog(session);
    const user = this.#user(session);
    const address = from.address;
    let reply: SmtpReply | null = null;
    if (!session.secure) reply = SubmissionReplies.starttlsFirst();
    else if (!user) reply = SubmissionReplies.authRequired();
    else if (!sameAddress(address, user.address)) reply = SubmissionReplies.notYourAddress(`<${address}>`, user.address);
    else reply = unsupportedParameter(from.args, MAIL_PARAMETERS) ?? utf8WithoutSmtputf8(address, from);
    if (reply) log.info("submission sender refused", { mailFrom: address || "<>", user: user?.userId, reply: reply.line });
    return reply;
  }

  #envelope(session: SMTPServerSession, user: SubmissionUser): SubmissionEnvelope {
    return {
      user,
      mailFrom: user.address,
      rcptTo: [...(this.#recipients.get(session.envelope) ?? [])],
      remoteAddress: session.remoteAddress,
      sessionId: session.id,
    };
  }

  async #onRcptTo(address: string, session: SMTPServerSession): Promise<void> {
    const log = this.#sessionLog(session);
    const user = this.#user(session);
    if (!user) throw SubmissionReplies.authRequired();
    let accepted = this.#recipients.get(session.envelope);
    if (!accepted) {
      accepted = new Set();
      this.#recipients.set(session.envelope, accepted);
    }
    const at = address.lastIndexOf("@");
    if (at <= 0 || at === address.length - 1) throw Rejections.badRecipientSyntax(address);
    const normalized = `${address.slice(0, at)}@${address.slice(at + 1).toLowerCase().replace(/\.$/, "")}`;
    if (accepted.has(normalized)) return;
    if (accepted.size >= this.#config.max_recipients) throw Rejections.tooManyRecipients(this.#config.max_recipients);
    try {
      await this.#handler.checkRecipient(normalized, this.#envelope(session, user));
    } catch (err) {
      const reply = toSmtpReply(err);
      if (isSmtpReply(err)) log.info("submission recipient refused", { rcpt: normalized, reply: reply.line });
      else log.warn("submission recipient check failed", { rcpt: normalized, reply: reply.line, ...errorFields(err) });
      throw reply;
    }
    accepted.add(normalized);
  }

  #onData(stream: SMTPServerDataStream, session: SMTPServerSession, cb: (err?: Error | null, message?: string) => void): void {
    const log = this.#sessionLog(session);
    const user = this.#user(session);
    const max = this.#config.max_message_bytes;
    const inspector = new MessageInspector(this.#messageLimits);
    const chunks: Buffer[] = [];
    let kept = 0;
    let truncated = false;
    let failed = false;
    stream.on("data", (chunk: Buffer) => {
      if (truncated || inspector.violation) return;
      if (kept + chunk.length > max) {
        truncated = true;
        chunks.length = 0;
        inspector.abort();
        return;
      }
      inspector.write(chunk);
      chunks.push(chunk);
      kept += chunk.length;
    });
    stream.once("error", (err: Error) => {
      failed = true;
      inspector.abort();
      log.warn("submission data stream failed", errorFields(err));
      cb(Rejections.temporaryFailure());
    });
    stream.once("end", () => {
      if (failed) return; // answered 451 already
      if (!user) return cb(SubmissionReplies.authRequired());
      if (stream.sizeExceeded || truncated) {
        inspector.abort();
        return cb(Rejections.messageTooBig(max));
      }
      const delivery = inspector
        .finish()
        .then(async (violation) => {
          if (violation) {
            log.info("submission message refused", { bytes: kept, ...inspector.stats, reply: violation.line });
            return cb(violation);
          }
          const raw = Buffer.concat(chunks, kept);
          chunks.length = 0;
          const reply = await this.#deliver(raw, this.#envelope(session, user), log);
          if (reply) cb(reply);
          else cb(null, "2.0.0 OK: message accepted");
        })
        .catch((err: unknown) => log.error("submission reply failed", errorFields(err)));
      this.#deliveries.add(delivery);
      void delivery.finally(() => this.#deliveries.delete(delivery));
    });
  }

  /** Check the From header, then run the handler. @returns the refusal, or null once committed. Never rejects. */
  async #deliver(raw: Buffer, envelope: SubmissionEnvelope, log: Logger): Promise<SmtpReply | null> {
    const { user } = envelope;
    let author: string;
    try {
      author = readAuthor(raw, []).address;
    } catch (err) {
      if (!isSmtpReply(err)) throw err;
      const reply = new SmtpReply(553, "5.7.1", err.text);
      log.info("submission message refused", { user: user.userId, reply: reply.line });
      return reply;
    }
    if (!sameAddress(author, user.address)) {
      const reply = SubmissionReplies.notYourAddress(`the From address <${author}>`, user.address);
      log.info("submission message refused", { user: user.userId, reply: reply.line });
      return reply;
    }
    const started = this.#now();
    try {
      await this.#handler.deliver(raw, envelope);
    } catch (err) {
      const reply = toSmtpReply(err);
      if (isSmtpReply(err)) log.info("submission message refused", { user: user.userId, rcpt: envelope.rcptTo, reply: reply.line });
      else log.warn("submission message could not be stored", { user: user.userId, rcpt: envelope.rcptTo, reply: reply.line, ...errorFields(err) });
      return reply;
    }
    log.info("submission message accepted", { user: user.userId, bytes: raw.length, rcpt: envelope.rcptTo, ms: this.#now() - started });
    return null;
  }
}

/** Whether two addresses are the same mailbox: domains compared case-insensitively, local parts too (the bridge's own addresses are lower-case). */
function sameAddress(a: string, b: string): boolean {
  return a.trim().toLowerCase().replace(/\.$/, "") === b.trim().toLowerCase();
}
