/**
 * The bridge's embedded inbound SMTP listener (the MX of the mail domain), built on
 * smtp-server. It accepts mail only for the bridge's own mail domain, asks an
 * {@link InboundHandler} about every recipient, and answers 250 to DATA only once the
 * handler has durably stored the message (RFC 5321 §6.1: after 250 the message is ours).
 *
 * Replies are {@link SmtpReply} values from `rejections.ts`; see there for how enhanced
 * status codes (RFC 3463) reach the wire with smtp-server 3.21.
 */
import { readFile } from "node:fs/promises";
import type { AddressInfo } from "node:net";
import { domainToASCII } from "node:url";
import { SMTPServer } from "smtp-server";
import type {
  SMTPServerAddress,
  SMTPServerDataResult,
  SMTPServerDataStream,
  SMTPServerOptions,
  SMTPServerSession,
} from "smtp-server";
import type { SmtpConfig } from "../../config/schema.ts";
import { errorFields, getLogger } from "../../util/logger.ts";
import type { Logger } from "../../util/logger.ts";
import { Rejections, SmtpReply, isSmtpReply, toSmtpReply } from "./rejections.ts";

/** The SMTP envelope of one mail transaction (RFC 5321 §2.3.1), as seen by the handler. */
export interface InboundEnvelope {
  /** MAIL FROM reverse-path; null for the null reverse-path `<>` (bounces, RFC 5321 §4.5.5). */
  mailFrom: string | null;
  /**
   * Accepted RCPT TO forward-paths, domain lower-cased (`local@maildomain`). During
   * {@link InboundHandler.checkRecipient}: the ones accepted before the address being checked.
   */
  rcptTo: string[];
  /** IP address of the sending client. */
  remoteAddress: string;
  /** Reverse-DNS name of the client, or `[ip]` when there is none (or reverse lookup is off). */
  clientHostname: string;
  /** Name the client gave in HELO/EHLO. */
  heloName: string;
  /** smtp-server session id, also the `session` field of log lines. */
  sessionId: string;
  /** True when the session runs over TLS (after STARTTLS). */
  secure: boolean;
}

/** What the bridge does with inbound mail; implemented outside this module. */
export interface InboundHandler {
  /** Decide one RCPT TO. Resolve to accept; reject by throwing SmtpReply. Only the bridge's own mailboxes are ever accepted (never an open relay). */
  checkRecipient(address: string, envelope: InboundEnvelope): Promise<void>;
  /** Commit the message. Resolve ONLY after it is durably stored; throwing SmtpReply gives that reply, any other error gives 451 4.3.0. */
  deliver(raw: Buffer, envelope: InboundEnvelope): Promise<void>;
}

/** Options of {@link SmtpListener}. */
export interface SmtpListenerOptions {
  /** The `smtp` config section: bind address, port, hostname, size and client limits, TLS files. */
  config: SmtpConfig;
  /** The bridge's mail domain (`mail.domain`); RCPT TO for any other domain gets 550 5.7.1. */
  mailDomain: string;
  /** Decides recipients and stores messages. */
  handler: InboundHandler;
  /**
   * Most recipients per message; more get 452 4.5.3. Default 100, the minimum RFC 5321
   * §4.5.3.1.8 requires a server to accept.
   */
  maxRecipients?: number;
  /** Resolve the client's PTR name (bounded by smtp-server to 1500 ms). Default true. */
  reverseLookup?: boolean;
  /** Idle time after which a client that owes us a command is disconnected, in ms. Default 300000 (RFC 5321 §4.5.3.2.7: at least 5 minutes). */
  socketTimeoutMs?: number;
  /**
   * Longest wait for {@link InboundHandler.checkRecipient}, in ms; past it the RCPT gets
   * 451 4.3.0. Default 30000 (RFC 5321 §4.5.3.2.3 has the client wait 5 minutes).
   */
  recipientTimeoutMs?: number;
  /** How long {@link SmtpListener.close} waits for open sessions and running deliveries, in ms. Default 10000. */
  closeTimeoutMs?: number;
}

/** Default per-message recipient limit (RFC 5321 §4.5.3.1.8). */
export const DEFAULT_MAX_RECIPIENTS = 100;

/** Text of the 250 reply to DATA, after the message was stored. */
const DATA_OK_TEXT = "2.0.0 OK: message accepted for delivery";

/**
 * The inbound SMTP server. Create, {@link listen}, and {@link close} on shutdown.
 *
 * Behaviour:
 * - no AUTH (disabled), STARTTLS only when `tls_cert_file`/`tls_key_file` are set;
 * - SIZE advertised as `max_message_bytes` (RFC 1870), larger messages get 552 5.3.4;
 * - at most `max_clients` concurrent sessions (more get 421 from smtp-server);
 * - RCPT TO for another domain gets 550 5.7.1 before the handler is asked; the bare
 *   `postmaster` recipient (RFC 5321 §4.5.1) is read as `postmaster@<mailDomain>`;
 * - at most {@link SmtpListenerOptions.maxRecipients} recipients per message (452 4.5.3);
 * - DATA is buffered whole and handed to {@link InboundHandler.deliver}; the 250 reply is
 *   sent only when that resolves. smtp-server keeps its 100 ms early-talker check before
 *   the greeting.
 */
export class SmtpListener {
  readonly #config: SmtpConfig;
  readonly #mailDomain: string;
  readonly #handler: InboundHandler;
  readonly #maxRecipients: number;
  readonly #reverseLookup: boolean;
  readonly #socketTimeoutMs: number;
  readonly #closeTimeoutMs: number;
  readonly #recipientTimeoutMs: number;
  readonly #log: Logger = getLogger("mail/inbound");
  readonly #sessionLogs = new WeakMap<SMTPServerSession, Logger>();
  readonly #deliveries = new Set<Promise<unknown>>();
  #server: SMTPServer | null = null;
  #starting = false;

  /**
   * @param opts see {@link SmtpListenerOptions}
   * @throws Error when `mailDomain` is not a valid domain name, when only one of the two TLS
   *   files is configured, or when `maxRecipients` is not a positive integer
   */
  constructor(opts: SmtpListenerOptions) {
    const domain = domainToASCII(opts.mailDomain.trim().replace(/\.$/, "").toLowerCase());
    if (!domain) throw new Error(`invalid mail domain ${JSON.stringify(opts.mailDomain)}`);
    if ((opts.config.tls_cert_file === null) !== (opts.config.tls_key_file === null)) {
      throw new Error("smtp.tls_cert_file and smtp.tls_key_file must be set together");
    }
    const maxRecipients = opts.maxRecipients ?? DEFAULT_MAX_RECIPIENTS;
    if (!Number.isInteger(maxRecipients) || maxRecipients < 1) throw new Error("maxRecipients must be a positive integer");
    this.#config = opts.config;
    this.#mailDomain = domain;
    this.#handler = opts.handler;
    this.#maxRecipients = maxRecipients;
    this.#reverseLookup = opts.reverseLookup ?? true;
    this.#socketTimeoutMs = opts.socketTimeoutMs ?? 300_000;
    this.#closeTimeoutMs = opts.closeTimeoutMs ?? 10_000;
    this.#recipientTimeoutMs = opts.recipientTimeoutMs ?? 30_000;
  }

  /**
   * Start listening on `config.bind_address`:`config.port`.
   *
   * @returns the bound port (the real one when `config.port` is 0)
   * @throws Error when already listening, when a TLS file cannot be read, or when the
   *   socket cannot be bound (EADDRINUSE, EACCES for ports below 1024)
   */
  async listen(): Promise<{ port: number }> {
    if (this.#server || this.#starting) throw new Error("SMTP listener is already listening");
    this.#starting = true;
    try {
      return await this.#start();
    } finally {
      this.#starting = false;
    }
  }

  async #start(): Promise<{ port: number }> {
    const config = this.#config;
    const tls = config.tls_cert_file !== null && config.tls_key_file !== null;
    const tlsOptions: Pick<SMTPServerOptions, "key" | "cert"> = tls
      ? { cert: await readFile(config.tls_cert_file as string), key: await readFile(config.tls_key_file as string) }
      : {};

    const server = new SMTPServer({
      ...tlsOptions,
      name: config.hostname,
      banner: "matrix-email-bridge",
      size: config.max_message_bytes,
      authOptional: true,
      // Without a certificate smtp-server would offer STARTTLS with its built-in test key.
      disabledCommands: tls ? ["AUTH"] : ["AUTH", "STARTTLS"],
      // We write enhanced status codes ourselves, see rejections.ts.
      hideENHANCEDSTATUSCODES: true,
      hideDSN: true,
      hideREQUIRETLS: true,
      maxClients: config.max_clients,
      disableReverseLookup: !this.#reverseLookup,
      socketTimeout: this.#socketTimeoutMs,
      closeTimeout: this.#closeTimeoutMs,
      logger: false,
      onConnect: (session, cb) => this.#onConnect(session, cb),
      onClose: (session) => this.#onClose(session),
      onMailFrom: (address, session, cb) => this.#onMailFrom(address, session, cb),
      onRcptTo: (address, session, cb) => this.#onRcptTo(address, session, cb),
      onData: (stream, session, cb) => this.#onData(stream, session, cb),
    });
    server.on("error", (err: Error) => this.#log.warn("smtp server error", errorFields(err)));

    await new Promise<void>((resolve, reject) => {
      const onError = (err: Error): void => reject(err);
      server.server.once("error", onError);
      server.listen(config.port, config.bind_address, () => {
        server.server.off("error", onError);
        resolve();
      });
    });
    this.#server = server;
    const port = (server.server.address() as AddressInfo).port;
    this.#log.info("smtp listener started", {
      address: config.bind_address,
      port,
      starttls: tls,
      maxMessageBytes: config.max_message_bytes,
    });
    return { port };
  }

  /**
   * Stop accepting connections and wait for open sessions to end, at most
   * `closeTimeoutMs`; sessions still open then get `421` and are closed. Also waits (same
   * bound) for deliveries already handed to the handler. No-op when not listening.
   */
  async close(): Promise<void> {
    const server = this.#server;
    if (!server) return;
    this.#server = null;
    const started = Date.now();
    await new Promise<void>((resolve) => server.close(() => resolve()));
    if (this.#deliveries.size > 0) {
      const left = Math.max(0, this.#closeTimeoutMs - (Date.now() - started));
      let timer: NodeJS.Timeout | undefined;
      await Promise.race([
        Promise.allSettled([...this.#deliveries]),
        new Promise<void>((resolve) => {
          timer = setTimeout(resolve, left);
        }),
      ]);
      clearTimeout(timer);
    }
    this.#log.info("smtp listener stopped", { pendingDeliveries: this.#deliveries.size });
  }

  #sessionLog(session: SMTPServerSession): Logger {
    let log = this.#sessionLogs.get(session);
    if (!log) {
      log = this.#log.child({ session: session.id, remote: session.remoteAddress });
      this.#sessionLogs.set(session, log);
    }
    return log;
  }

  /**
   * Normalize a RCPT TO address: domain lower-cased (and IDNA ASCII), local part kept.
   * Returns null when it has no domain (other than the bare `postmaster`).
   */
  #normalizeRecipient(address: string): { address: string; ours: boolean } | null {
    const at = address.lastIndexOf("@");
    if (at < 0) {
      // RFC 5321 §4.5.1: "postmaster" without a domain must be accepted.
      return address.toLowerCase() === "postmaster" ? { address: `postmaster@${this.#mailDomain}`, ours: true } : null;
    }
    const local = address.slice(0, at);
    const domainRaw = address.slice(at + 1).toLowerCase();
    if (!local || !domainRaw) return null;
    const domain = domainRaw.startsWith("[") ? domainRaw : domainToASCII(domainRaw.replace(/\.$/, "")) || domainRaw;
    return { address: `${local}@${domain}`, ours: domain === this.#mailDomain };
  }

  #envelope(session: SMTPServerSession): InboundEnvelope {
    const rcptTo: string[] = [];
    for (const r of session.envelope.rcptTo) {
      const n = this.#normalizeRecipient(r.address);
      if (n && !rcptTo.includes(n.address)) rcptTo.push(n.address);
    }
    const from = session.envelope.mailFrom;
    // clientHostname and hostNameAppearsAs are `false` at runtime until known.
    const str = (v: unknown): string => (typeof v === "string" ? v : "");
    return {
      mailFrom: from && from.address ? from.address : null,
      rcptTo,
      remoteAddress: session.remoteAddress,
      clientHostname: str(session.clientHostname),
      heloName: str(session.hostNameAppearsAs),
      sessionId: session.id,
      secure: session.secure,
    };
  }

  #onConnect(session: SMTPServerSession, cb: (err?: Error | null) => void): void {
    this.#sessionLog(session).debug("smtp session opened", {
      clientHostname: typeof session.clientHostname === "string" ? session.clientHostname : null,
    });
    cb();
  }

  #onClose(session: SMTPServerSession): void {
    // `transaction` is the number of the transaction in progress (1-based); unset if the
    // session never got to the greeting (early talker, too many clients).
    const transactions = typeof session.transaction === "number" ? session.transaction - 1 : 0;
    this.#sessionLog(session).debug("smtp session closed", { transactions });
  }

  #onMailFrom(address: SMTPServerAddress, session: SMTPServerSession, cb: (err?: Error | null) => void): void {
    const log = this.#sessionLog(session);
    const a = address.address;
    if (a !== "") {
      const at = a.lastIndexOf("@");
      if (at <= 0 || at === a.length - 1) {
        const reply = Rejections.badSenderSyntax(a);
        log.info("smtp sender rejected", { mailFrom: a, reply: reply.line });
        return cb(reply);
      }
    }
    log.debug("smtp sender", { mailFrom: a || "<>", heloName: session.hostNameAppearsAs || null, secure: session.secure });
    cb();
  }

  #onRcptTo(address: SMTPServerAddress, session: SMTPServerSession, cb: (err?: Error | null) => void): void {
    const log = this.#sessionLog(session);
    const reject = (reply: SmtpReply, ctx: Record<string, unknown> = {}): void => {
      log.info("smtp recipient rejected", { rcpt: address.address, reply: reply.line, ...ctx });
      cb(reply);
    };
    const n = this.#normalizeRecipient(address.address);
    if (!n) return reject(Rejections.badRecipientSyntax(address.address));
    if (!n.ours) return reject(Rejections.relayDenied(address.address));
    const envelope = this.#envelope(session);
    if (!envelope.rcptTo.includes(n.address) && envelope.rcptTo.length >= this.#maxRecipients) {
      return reject(Rejections.tooManyRecipients(this.#maxRecipients));
    }
    let timer: NodeJS.Timeout | undefined;
    const timeout = new Promise<never>((_, fail) => {
      timer = setTimeout(() => fail(new Error(`recipient check timed out after ${this.#recipientTimeoutMs} ms`)), this.#recipientTimeoutMs);
    });
    Promise.race([this.#handler.checkRecipient(n.address, envelope), timeout])
      .then(
        () => {
          log.debug("smtp recipient accepted", { rcpt: n.address });
          cb();
        },
        (err: unknown) => {
          if (!isSmtpReply(err)) log.warn("smtp recipient check failed", { rcpt: n.address, ...errorFields(err) });
          reject(toSmtpReply(err));
        },
      )
      .catch((err: unknown) => log.error("smtp reply failed", errorFields(err)))
      .finally(() => clearTimeout(timer));
  }

  #onData(
    stream: SMTPServerDataStream,
    session: SMTPServerSession,
    cb: (err?: Error | null, message?: string | SMTPServerDataResult[]) => void,
  ): void {
    const log = this.#sessionLog(session);
    const max = this.#config.max_message_bytes;
    const chunks: Buffer[] = [];
    let kept = 0;
    let truncated = false;
    let failed = false;
    stream.on("data", (chunk: Buffer) => {
      // Past the limit the message is refused anyway: keep reading, stop buffering.
      if (kept + chunk.length <= max) {
        chunks.push(chunk);
        kept += chunk.length;
      } else {
        truncated = true;
      }
    });
    stream.once("error", (err: Error) => {
      failed = true;
      log.warn("smtp data stream failed", errorFields(err));
      cb(Rejections.temporaryFailure());
    });
    stream.once("end", () => {
      if (failed) return;
      if (stream.sizeExceeded || truncated) {
        const reply = Rejections.messageTooBig(max);
        log.info("smtp message rejected", { bytes: stream.byteLength, maxBytes: max, reply: reply.line });
        return cb(reply);
      }
      const raw = Buffer.concat(chunks, kept);
      const envelope = this.#envelope(session);
      const delivery = this.#deliver(raw, envelope, log)
        .then((reply) => {
          if (reply) cb(reply);
          else cb(null, DATA_OK_TEXT);
        })
        .catch((err: unknown) => log.error("smtp reply failed", errorFields(err)));
      this.#deliveries.add(delivery);
      void delivery.finally(() => this.#deliveries.delete(delivery));
    });
  }

  /** Run the handler's deliver; resolves to the error reply, or null on success. Never rejects. */
  async #deliver(raw: Buffer, envelope: InboundEnvelope, log: Logger): Promise<SmtpReply | null> {
    const started = Date.now();
    try {
      await this.#handler.deliver(raw, envelope);
    } catch (err) {
      const reply = toSmtpReply(err);
      if (isSmtpReply(err)) log.info("smtp message rejected", { bytes: raw.length, rcpt: envelope.rcptTo, reply: reply.line });
      else log.warn("smtp message delivery failed", { bytes: raw.length, rcpt: envelope.rcptTo, reply: reply.line, ...errorFields(err) });
      return reply;
    }
    log.info("smtp message accepted", {
      bytes: raw.length,
      mailFrom: envelope.mailFrom ?? "<>",
      rcpt: envelope.rcptTo,
      ms: Date.now() - started,
    });
    return null;
  }
}
