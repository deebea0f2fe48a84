/**
 * The bridge's embedded inbound SMTP listener (the MX of the mail domains), built on
 * smtp-server. It accepts mail only for the bridge's own mail domains, asks an
 * {@link InboundHandler} about every distinct recipient, and answers 250 to DATA only once
 * the handler has durably stored the message (RFC 5321 §6.1: after 250 the message is ours).
 *
 * It enforces the limits a mature MTA does (all under `smtp.*`, defaults in `limits.ts`,
 * overview in docs/security.md "SMTP listener"): connections in total and per client,
 * message rates per client and per sender domain, recipients per message, header section
 * size, MIME part count and depth, Received-header hop count, command and DATA timeouts,
 * DNS blocklists, and optionally STARTTLS before MAIL.
 *
 * Replies are {@link SmtpReply} values from `rejections.ts`. Every reply, smtp-server's own
 * included, carries an RFC 3463 enhanced status code, and EHLO advertises ENHANCEDSTATUSCODES
 * (RFC 2034); see `rejections.ts` for how with smtp-server 3.21.
 */
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
import type { DnsResolver } from "../dns.ts";
import { errorFields, getLogger } from "../../util/logger.ts";
import type { Logger } from "../../util/logger.ts";
import { noteLargeWork } from "../../util/reclaim.ts";
import { CertificateFiles, refreshServerCertificate } from "./certificates.ts";
import { checkDnsbl } from "./dnsbl.ts";
import { ConnectionLimiter, LIMIT_DEFAULTS, MessageInspector, RateLimiter, clientKey } from "./limits.ts";
import type { MessageLimits, SmtpLimitKey } from "./limits.ts";
import { Rejections, SENDMAIL_DEBUG_COMMANDS, SmtpReply, installEnhancedStatusCodes, isSmtpReply, toSmtpReply, unsupportedParameter, utf8WithoutSmtputf8 } from "./rejections.ts";
import { replyTap } from "./replyTap.ts";
import { listenSmtp } from "../listen.ts";

/**
 * The SMTP envelope of one mail transaction (RFC 5321 §2.3.1), as seen by the handler.
 * @typeParam R what {@link InboundHandler.checkRecipient} resolves a recipient to
 */
export interface InboundEnvelope<R = unknown> {
  /** MAIL FROM reverse-path; null for the null reverse-path `<>` (bounces, RFC 5321 §4.5.5). */
  mailFrom: string | null;
  /**
   * Accepted RCPT TO forward-paths, each once, in RCPT order; domain lower-cased
   * (`local@maildomain`), local part as sent (`postmaster` lower-cased). During
   * {@link InboundHandler.checkRecipient}: the ones accepted before the address being checked.
   */
  rcptTo: string[];
  /**
   * The accepted recipients with what {@link InboundHandler.checkRecipient} resolved them to:
   * normalized address (as in {@link rcptTo}) → resolved value, in RCPT order. Each distinct
   * address was resolved once per transaction. During `checkRecipient`: the ones before.
   */
  recipients: ReadonlyMap<string, R>;
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
  /**
   * At DATA: the message without the contents of its binary parts ({@link MessageInspector.skeleton}),
   * for a parse that needs no attachment's bytes; null or absent when it could not be made.
   */
  skeleton?: Buffer | null;
  /**
   * At DATA: bytes of memory in front of the message, free for a trace header (see
   * {@link withTrace}); 0 or absent when there are none.
   */
  traceHeadroom?: number;
}

/**
 * Bytes the listener keeps free in front of each received message, so that the copy stored with
 * its `Received:` header on top is the same memory rather than a second copy of the message
 * (which can be `max_message_bytes` large). A trace header is 150–400 bytes.
 */
export const TRACE_HEADROOM_BYTES = 1024;

/**
 * Bytes of DATA after which the listener writes the message into one buffer of
 * `max_message_bytes` as it arrives, instead of keeping the chunks and joining them at the end
 * (which holds a large message twice). The buffer is allocated uninitialised: pages the message
 * never reaches are never touched, so they cost address space, not memory.
 */
export const LARGE_MESSAGE_BYTES = 1024 * 1024;

/**
 * `trace` followed by `raw`: written into the free memory in front of `raw` when it has room
 * (`headroom`, from {@link InboundEnvelope.traceHeadroom}; nothing is copied and `raw` is
 * unchanged), else a new buffer.
 * @param headroom bytes in front of `raw` that belong to it and are unused; 0 when unknown
 * @returns a buffer of `trace.length + raw.length` bytes
 */
export function withTrace(trace: Buffer, raw: Buffer, headroom: number): Buffer {
  if (trace.length > headroom || trace.length > raw.byteOffset) return Buffer.concat([trace, raw]);
  const out = Buffer.from(raw.buffer, raw.byteOffset - trace.length, trace.length + raw.length);
  trace.copy(out, 0);
  return out;
}

/**
 * What the bridge does with inbound mail; implemented outside this module.
 * @typeParam R what a recipient resolves to (the bridge: its mailbox), carried to `deliver`
 */
export interface InboundHandler<R = unknown> {
  /**
   * Decide one RCPT TO: resolve to accept, with what the address resolves to; reject by
   * throwing SmtpReply (any other error gives 451 4.3.0). Called at most once per distinct
   * address per transaction: a repeated RCPT gets the first answer again. Only the bridge's
   * own mailboxes are ever accepted (never an open relay). The listener never refuses
   * `postmaster` itself (RFC 5321 §4.5.1), this decides.
   */
  checkRecipient(address: string, envelope: InboundEnvelope<R>): Promise<R>;
  /**
   * Commit the message. Resolve ONLY after it is durably stored; throwing SmtpReply gives that
   * reply, any other error gives 451 4.3.0.
   *
   * `raw` is lent for the call: once the returned promise settles, the listener frees the memory
   * of a message over {@link LARGE_MESSAGE_BYTES} (its buffer is detached, ECMA-262 §25.1.6.7, and
   * reads as empty). A handler that uses the bytes later keeps a copy.
   */
  deliver(raw: Buffer, envelope: InboundEnvelope<R>): Promise<void>;
}

/**
 * The listener's config: the `smtp` section, with every limit optional (missing ones take
 * {@link LIMIT_DEFAULTS}; the loaded config always has them all). `parse_timeout_ms` is not the
 * listener's (the router's parse uses it: mail/inbound/parseThread.ts).
 */
export type SmtpListenerConfig = Omit<SmtpConfig, SmtpLimitKey | "parse_timeout_ms"> & Partial<Pick<SmtpConfig, SmtpLimitKey>>;

/** Options of {@link SmtpListener}. */
export interface SmtpListenerOptions<R = unknown> {
  /** The `smtp` config section: bind address, port, hostname, TLS files and the limits. */
  config: SmtpListenerConfig;
  /** The bridge's mail domain (`mail.domain`); RCPT TO for any other domain gets 550 5.7.1 unless {@link isLocalDomain} says it is ours. */
  mailDomain: string;
  /**
   * Whether mail for another domain (lower-case, IDNs as A-labels) is ours too (the bridge's
   * further mail domains). Asked at RCPT TO, within `recipientTimeoutMs`; throwing gives
   * 451 4.3.0. Omitted: only `mailDomain` is ours.
   */
  isLocalDomain?: (domain: string) => Promise<boolean>;
  /** Decides recipients and stores messages. */
  handler: InboundHandler<R>;
  /**
   * The bridge's one DNS resolver: DNSBL lookups (`smtp.dnsbl_zones`) and the client's PTR
   * lookup go through it. Without it the PTR lookup uses the system resolver and
   * `dnsbl_zones` must be empty.
   */
  dns?: Pick<DnsResolver, "resolve" | "callbackApi">;
  /** Resolve the client's PTR name (bounded by smtp-server to 1500 ms). Default true. */
  reverseLookup?: boolean;
  /**
   * Longest wait for {@link InboundHandler.checkRecipient}, in ms; past it the RCPT gets
   * 451 4.3.0. Default 30000 (RFC 5321 §4.5.3.2.3 has the client wait 5 minutes).
   */
  recipientTimeoutMs?: number;
  /** How long {@link SmtpListener.close} waits for open sessions and running deliveries, in ms. Default 10000. */
  closeTimeoutMs?: number;
  /** Called with the code of every reply written to a client, smtp-server's own included (metrics; see replyTap.ts). */
  onReply?: (code: number) => void;
}

/** Default per-message recipient limit (RFC 5321 §4.5.3.1.8). */
export const DEFAULT_MAX_RECIPIENTS = LIMIT_DEFAULTS.max_recipients;

/**
 * MAIL FROM parameters the listener takes: those of the extensions its EHLO advertises, each
 * checked by smtp-server (SIZE, RFC 1870; BODY=7BIT/8BITMIME, RFC 6152; SMTPUTF8, RFC 6531).
 * Any other gets 555 5.5.4 (RFC 5321 §4.1.1.11): DSN, REQUIRETLS and AUTH are not offered.
 */
const MAIL_PARAMETERS: ReadonlySet<string> = new Set(["SIZE", "BODY", "SMTPUTF8"]);

/** RCPT TO parameters the listener takes: none (DSN's NOTIFY and ORCPT are not offered); others get 555 5.5.4. */
const RCPT_PARAMETERS: ReadonlySet<string> = new Set();

/** Text of the 250 reply to DATA, after the message was stored. */
const DATA_OK_TEXT = "2.0.0 OK: message accepted for delivery";

/** smtp-server's connection object (typed by its own declarations, see `SMTPServer.connections`). */
type Connection = SMTPServer["connections"] extends Set<infer C> ? C : never;

/** A handler's answer for one recipient, kept for the rest of the transaction. */
type Decision<R> = { ok: true; value: R } | { ok: false; reply: SmtpReply };

/** Per-transaction state: from MAIL FROM to the end of DATA, RSET or a new EHLO. */
interface Transaction<R> {
  /** RCPT TO commands so far, repeated and refused ones included. */
  rcptCommands: number;
  /** Each distinct normalized address's decision (pending or final). */
  decisions: Map<string, Promise<Decision<R>>>;
  /** Accepted recipients in RCPT order. */
  accepted: Map<string, R>;
}

/** Per-session state of an admitted connection (past onConnect). */
interface SessionState {
  readonly id: string;
  /** {@link clientKey} of the remote address: what the per-client limits count. */
  readonly client: string;
  readonly log: Logger;
  conn: Connection | null;
  commandTimer: NodeJS.Timeout | null;
  dataTimer: NodeJS.Timeout | null;
  dataIdleTimer: NodeJS.Timeout | null;
  /** Between the DATA command and the end of the message stream. */
  inData: boolean;
  timedOut: boolean;
  closed: boolean;
}

/** The listener's limits, all resolved. */
type Limits = Pick<SmtpConfig, SmtpLimitKey>;

/**
 * The inbound SMTP server. Create, {@link listen}, and {@link close} on shutdown.
 *
 * Behaviour (codes are `basic enhanced`):
 * - every reply has an enhanced code (RFC 2034 §3: not the greeting, the replies to HELO/EHLO,
 *   and 3xx); smtp-server's own come from its table, e.g. `250 2.1.0` / `250 2.1.5` for MAIL /
 *   RCPT, `501 5.1.7` / `501 5.1.3` for a malformed sender / recipient, `503 5.5.1` out of
 *   sequence, `500 5.5.2` unknown command (AUTH, BDAT, STARTTLS without a certificate);
 * - no AUTH (never offered), STARTTLS only when `tls_cert_file`/`tls_key_file` are set; the
 *   files are re-read when they change (checked before each STARTTLS);
 * - MAIL FROM parameters other than SIZE, BODY and SMTPUTF8, and any RCPT TO parameter →
 *   555 5.5.4 (RFC 5321 §4.1.1.11); `SIZE=` over `max_message_bytes` → 552 5.3.4 (RFC 1870);
 * - a non-ASCII MAIL FROM or RCPT TO address in a transaction without `SMTPUTF8` → 553 5.6.7
 *   (RFC 6531 §3.4, §3.5);
 * - `require_tls`: MAIL before STARTTLS gets 530 5.7.0;
 * - at connect: over `max_clients` open sessions, or `max_connections_per_ip` from the
 *   client's address (IPv6: its /64) → 421 4.7.0 and close; listed on a `dnsbl_zones` zone →
 *   554 5.7.1 and close (a DNS failure lets the client in);
 * - MAIL FROM: over `max_messages_per_ip` or `max_messages_per_sender_domain` per
 *   `rate_window_ms` → 451 4.7.1;
 * - RCPT TO: a domain that is not ours (`mailDomain`, or one `isLocalDomain` accepts) →
 *   550 5.7.1 before the handler is asked; every RCPT counts
 *   against `max_recipients`, repeated ones too (beyond → 452 4.5.3, never for postmaster);
 *   each distinct address is resolved by the handler once, a repeat gets the same answer;
 *   the bare `postmaster` (RFC 5321 §4.5.1) is read as `postmaster@<mailDomain>`;
 * - DATA: SIZE is advertised as `max_message_bytes` (RFC 1870), larger → 552 5.3.4; header
 *   section over `max_header_bytes` → 552 5.3.4; more than `max_received_headers` → 554 5.4.6;
 *   more than `max_mime_parts` → 552 5.6.0; nesting beyond `max_mime_depth` → 554 5.6.0. The
 *   stream is always read to its end; `deliver` is called only for a message within all
 *   limits, and the 250 is sent only when it resolves;
 * - timeouts: a command line not complete `command_timeout_ms` after the server became ready
 *   for it (bytes trickling in do not extend it), DATA not complete `data_timeout_ms` after
 *   354, or no DATA bytes for `command_timeout_ms` → 421 4.4.2 and close;
 * - smtp-server keeps its 100 ms early-talker check before the greeting.
 */
export class SmtpListener<R = unknown> {
  readonly #config: SmtpListenerConfig;
  readonly #limits: Limits;
  readonly #mailDomain: string;
  readonly #handler: InboundHandler<R>;
  readonly #isLocalDomain: ((domain: string) => Promise<boolean>) | null;
  readonly #dns: Pick<DnsResolver, "resolve" | "callbackApi"> | null;
  readonly #reverseLookup: boolean;
  readonly #closeTimeoutMs: number;
  readonly #recipientTimeoutMs: number;
  readonly #onReply: ((code: number) => void) | null;
  readonly #messageLimits: MessageLimits;
  readonly #connections: ConnectionLimiter;
  readonly #clientRate: RateLimiter;
  readonly #domainRate: RateLimiter;
  readonly #certificates: CertificateFiles | null;
  readonly #log: Logger = getLogger("mail/inbound");
  readonly #sessionLogs = new WeakMap<SMTPServerSession, Logger>();
  readonly #sessions = new Map<string, SessionState>();
  readonly #transactions = new WeakMap<object, Transaction<R>>();
  readonly #deliveries = new Set<Promise<unknown>>();
  #server: SMTPServer | null = null;
  #starting = false;

  /**
   * @param opts see {@link SmtpListenerOptions}
   * @throws Error when `mailDomain` is not a valid domain name, when only one of the two TLS
   *   files is configured, when `require_tls` is on without them, when `dnsbl_zones` is set
   *   without `dns`, or when a limit is not a positive integer (rate limits: not negative)
   */
  constructor(opts: SmtpListenerOptions<R>) {
    const domain = domainToASCII(opts.mailDomain.trim().replace(/\.$/, "").toLowerCase());
    if (!domain) throw new Error(`invalid mail domain ${JSON.stringify(opts.mailDomain)}`);
    const config = opts.config;
    if ((config.tls_cert_file === null) !== (config.tls_key_file === null)) {
      throw new Error("smtp.tls_cert_file and smtp.tls_key_file must be set together");
    }
    const limits: Limits = { ...LIMIT_DEFAULTS };
    for (const key of Object.keys(LIMIT_DEFAULTS) as SmtpLimitKey[]) {
      if (config[key] !== undefined) (limits as Record<string, unknown>)[key] = config[key];
    }
    if (limits.require_tls && config.tls_cert_file === null) throw new Error("smtp.require_tls needs smtp.tls_cert_file and smtp.tls_key_file");
    if (limits.dnsbl_zones.length > 0 && !opts.dns) throw new Error("smtp.dnsbl_zones needs the DNS resolver (SmtpListenerOptions.dns)");
    for (const key of ["max_recipients", "command_timeout_ms", "data_timeout_ms"] as const) {
      if (!Number.isInteger(limits[key]) || limits[key] < 1) throw new Error(`smtp.${key} must be a positive integer`);
    }
    this.#config = config;
    this.#limits = limits;
    this.#mailDomain = domain;
    this.#handler = opts.handler;
    this.#isLocalDomain = opts.isLocalDomain ?? null;
    this.#dns = opts.dns ?? null;
    this.#reverseLookup = opts.reverseLookup ?? true;
    this.#closeTimeoutMs = opts.closeTimeoutMs ?? 10_000;
    this.#recipientTimeoutMs = opts.recipientTimeoutMs ?? 30_000;
    this.#onReply = opts.onReply ?? null;
    this.#messageLimits = {
      maxHeaderBytes: limits.max_header_bytes,
      maxReceivedHeaders: limits.max_received_headers,
      maxMimeParts: limits.max_mime_parts,
      maxMimeDepth: limits.max_mime_depth,
    };
    // Throws RangeError for a bad limit now rather than at the first message.
    new MessageInspector(this.#messageLimits).abort();
    this.#connections = new ConnectionLimiter(config.max_clients, limits.max_connections_per_ip);
    this.#clientRate = new RateLimiter({ limit: limits.max_messages_per_ip, windowMs: limits.rate_window_ms });
    this.#domainRate = new RateLimiter({ limit: limits.max_messages_per_sender_domain, windowMs: limits.rate_window_ms });
    this.#certificates = config.tls_cert_file !== null && config.tls_key_file !== null ? new CertificateFiles(config.tls_cert_file, config.tls_key_file) : null;
  }

  /**
   * Start listening on `config.bind_address`:`config.port`.
   *
   * @returns the bound port (the real one when `config.port` is 0)
   * @throws Error when already listening, when a TLS file cannot be read or the key does not
   *   match the certificate, or when the socket cannot be bound (EADDRINUSE, EACCES below 1024)
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
    const limits = this.#limits;
    const tls = this.#certificates !== null;
    const tlsOptions: Pick<SMTPServerOptions, "key" | "cert"> = this.#certificates ? await this.#certificates.load() : {};

    const server = new SMTPServer({
      ...tlsOptions,
      name: config.hostname,
      banner: "matrix-email-bridge",
      size: config.max_message_bytes,
      authOptional: true,
      // AUTH is never offered. Without a certificate smtp-server would offer STARTTLS with
      // its built-in test key. sendmail's debugging commands get 500 5.5.2.
      disabledCommands: [...(tls ? ["AUTH"] : ["AUTH", "STARTTLS"]), ...SENDMAIL_DEBUG_COMMANDS],
      // Advertise ENHANCEDSTATUSCODES and let smtp-server code its own replies; ours carry
      // theirs in the text (installEnhancedStatusCodes below, see rejections.ts).
      hideENHANCEDSTATUSCODES: false,
      hideDSN: true,
      hideREQUIRETLS: true,
      // The connection limits are ours (onConnect, with an enhanced code). smtp-server's own
      // check counts sockets that have not reached onConnect yet too; it stays as a backstop
      // well above ours, for floods of sockets before the greeting.
      maxClients: config.max_clients * 2 + 100,
      disableReverseLookup: !this.#reverseLookup,
      ...(this.#dns ? { resolver: this.#dns.callbackApi } : {}),
      // Our command and DATA timers (421 4.4.2) fire first; smtp-server's idle timeout stays
      // as a backstop, and bounds the time before the greeting.
      socketTimeout: limits.command_timeout_ms + 30_000,
      closeTimeout: this.#closeTimeoutMs,
      // With `onReply`, a logger that only reads reply codes (replyTap.ts); otherwise none.
      logger: this.#onReply ? replyTap(this.#onReply) : false,
      onConnect: (session, cb) => this.#onConnect(session, cb),
      onClose: (session) => this.#onClose(session),
      onMailFrom: (address, session, cb) => this.#onMailFrom(address, session, cb),
      onRcptTo: (address, session, cb) => this.#onRcptTo(address, session, cb),
      onData: (stream, session, cb) => this.#onData(stream, session, cb),
    });
    installEnhancedStatusCodes(server);
    server.on("error", (err: Error) => this.#log.warn("smtp server error", errorFields(err)));

    const port = await listenSmtp(server, config.bind_address, config.port);
    this.#server = server;
    this.#log.info("smtp listener started", {
      address: config.bind_address,
      port,
      starttls: tls,
      requireTls: limits.require_tls,
      maxMessageBytes: config.max_message_bytes,
      maxClients: config.max_clients,
      maxConnectionsPerIp: limits.max_connections_per_ip,
      dnsblZones: limits.dnsbl_zones,
    });
    return { port };
  }

  /** Whether the listener is bound and accepting connections (`/health`). */
  get listening(): boolean {
    return this.#server?.server.listening ?? false;
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

  // ---- connection: limits, DNSBL, timers ----

  #onConnect(session: SMTPServerSession, cb: (err?: Error | null) => void): void {
    const log = this.#sessionLog(session);
    const client = clientKey(session.remoteAddress);
    const refusal = this.#connections.tryAcquire(client);
    if (refusal) {
      const reply = refusal === "total" ? Rejections.tooManyConnections() : Rejections.tooManyConnectionsFromClient(client);
      log.info("smtp connection refused", {
        client,
        reply: reply.line,
        open: this.#connections.total,
        openFromClient: this.#connections.count(client),
      });
      return cb(reply);
    }
    const state: SessionState = {
      id: session.id,
      client,
      log,
      conn: null,
      commandTimer: null,
      dataTimer: null,
      dataIdleTimer: null,
      inData: false,
      timedOut: false,
      closed: false,
    };
    this.#sessions.set(session.id, state);
    const admit = (): void => {
      this.#admit(session, state);
      log.debug("smtp session opened", {
        clientHostname: typeof session.clientHostname === "string" ? session.clientHostname : null,
      });
      cb();
    };
    const zones = this.#limits.dnsbl_zones;
    if (zones.length === 0 || !this.#dns) return admit();
    const started = Date.now();
    checkDnsbl(this.#dns, session.remoteAddress, zones)
      .then((result) => {
        for (const f of result.failures) {
          log.warn("smtp dnsbl lookup failed, client let in", { zone: f.zone, ip: session.remoteAddress, ...errorFields(f.error) });
        }
        for (const u of result.unexpected) {
          log.warn("smtp dnsbl answer is no listing, client let in", { zone: u.zone, ip: session.remoteAddress, answers: u.answers });
        }
        // The client may have gone while we were asking.
        if (state.closed) return cb();
        if (result.listing) {
          this.#dropSession(state);
          const reply = Rejections.dnsblListed(session.remoteAddress, result.listing.zone);
          log.info("smtp connection refused", { client, reply: reply.line, answers: result.listing.answers, ms: Date.now() - started });
          return cb(reply);
        }
        admit();
      })
      .catch((err: unknown) => log.error("smtp connect handling failed", errorFields(err)));
  }

  /** Hook the admitted session's connection: command timer and certificate refresh on STARTTLS. */
  #admit(session: SMTPServerSession, state: SessionState): void {
    const server = this.#server;
    let conn: Connection | null = null;
    if (server) {
      for (const c of server.connections) {
        if (c.session === session) {
          conn = c;
          break;
        }
      }
    }
    if (!conn) {
      // Not expected with smtp-server 3.21; without the hook only the idle backstop applies.
      state.log.warn("smtp connection object not found, command timeout not enforced", {});
      return;
    }
    state.conn = conn;
    // smtp-server's parser calls `_onCommand(line, done)` for each command line and waits
    // for `done` before the next one; the gap between `done` and the next call is the time
    // the client takes to send a command. (Declared in smtp-server's own typings.)
    const original = conn._onCommand;
    const target = conn;
    conn._onCommand = (command: Buffer, callback?: () => void): void => {
      this.#clearTimer(state, "commandTimer");
      const done = (): void => {
        if (!state.inData) this.#armCommandTimer(state);
        if (callback) callback();
      };
      if (this.#certificates && !target.secure && /^STARTTLS\s*$/i.test(command.toString("latin1"))) {
        void this.#refreshCertificate(state.log).then(() => original.call(target, command, done));
        return;
      }
      original.call(target, command, done);
    };
    // The greeting follows right after onConnect's callback.
    this.#armCommandTimer(state);
  }

  #onClose(session: SMTPServerSession): void {
    const state = this.#sessions.get(session.id);
    if (state) this.#dropSession(state);
    // `transaction` is the number of the transaction in progress (1-based); unset if the
    // session never got to the greeting (early talker, too many clients).
    const transactions = typeof session.transaction === "number" ? session.transaction - 1 : 0;
    this.#sessionLog(session).debug("smtp session closed", { transactions });
  }

  /** Forget an admitted session: free its connection slot, stop its timers. Idempotent. */
  #dropSession(state: SessionState): void {
    state.closed = true;
    this.#clearTimer(state, "commandTimer");
    this.#clearTimer(state, "dataTimer");
    this.#clearTimer(state, "dataIdleTimer");
    if (this.#sessions.get(state.id) === state) {
      this.#sessions.delete(state.id);
      this.#connections.release(state.client);
    }
  }

  #clearTimer(state: SessionState, which: "commandTimer" | "dataTimer" | "dataIdleTimer"): void {
    const t = state[which];
    if (t) clearTimeout(t);
    state[which] = null;
  }

  #setTimer(state: SessionState, which: "commandTimer" | "dataTimer" | "dataIdleTimer", ms: number, what: string): void {
    this.#clearTimer(state, which);
    if (state.closed || state.timedOut) return;
    const t = setTimeout(() => this.#onTimeout(state, what, ms), ms);
    t.unref();
    state[which] = t;
  }

  #armCommandTimer(state: SessionState): void {
    this.#setTimer(state, "commandTimer", this.#limits.command_timeout_ms, "command");
  }

  /** A timer ran out: 421 4.4.2, and smtp-server closes the connection after a 421. */
  #onTimeout(state: SessionState, what: string, ms: number): void {
    if (state.closed || state.timedOut) return;
    state.timedOut = true;
    const reply = Rejections.timeout(what);
    state.log.info("smtp session timed out", { phase: what, limitMs: ms, reply: reply.line });
    this.#clearTimer(state, "commandTimer");
    this.#clearTimer(state, "dataTimer");
    this.#clearTimer(state, "dataIdleTimer");
    state.conn?.send(reply.responseCode, reply.message);
  }

  /** Before a STARTTLS handshake: pick up a renewed certificate. Never rejects. */
  async #refreshCertificate(log: Logger): Promise<void> {
    if (this.#certificates && this.#server) await refreshServerCertificate(this.#certificates, this.#server, log, "smtp");
  }

  // ---- transaction ----

  #transaction(session: SMTPServerSession): Transaction<R> {
    // smtp-server replaces `session.envelope` with a new object on RSET, HELO/EHLO, STARTTLS
    // and after DATA: the transaction state goes with it.
    const key = session.envelope as object;
    let tx = this.#transactions.get(key);
    if (!tx) {
      tx = { rcptCommands: 0, decisions: new Map(), accepted: new Map() };
      this.#transactions.set(key, tx);
    }
    return tx;
  }

  /**
   * Normalize a RCPT TO address: domain lower-cased (and IDNA ASCII), local part kept, except
   * `postmaster`, which is case-insensitive (RFC 5321 §4.5.1) and lower-cased.
   * Returns null when it has no domain (other than the bare `postmaster`).
   */
  #normalizeRecipient(address: string): { address: string; domain: string; ours: boolean; postmaster: boolean } | null {
    const at = address.lastIndexOf("@");
    if (at < 0) {
      // RFC 5321 §4.5.1: "postmaster" without a domain must be accepted.
      return address.toLowerCase() === "postmaster" ? { address: `postmaster@${this.#mailDomain}`, domain: this.#mailDomain, ours: true, postmaster: true } : null;
    }
    const localRaw = address.slice(0, at);
    const domainRaw = address.slice(at + 1).toLowerCase();
    if (!localRaw || !domainRaw) return null;
    const domain = domainRaw.startsWith("[") ? domainRaw : domainToASCII(domainRaw.replace(/\.$/, "")) || domainRaw;
    const ours = domain === this.#mailDomain;
    // On any domain: one that is not ours is refused all the same, after the limit check.
    const postmaster = localRaw.toLowerCase() === "postmaster";
    const local = postmaster ? "postmaster" : localRaw;
    return { address: `${local}@${domain}`, domain, ours, postmaster };
  }

  #envelope(session: SMTPServerSession, tx: Transaction<R>): InboundEnvelope<R> {
    const from = session.envelope.mailFrom;
    // clientHostname and hostNameAppearsAs are `false` at runtime until known.
    const str = (v: unknown): string => (typeof v === "string" ? v : "");
    return {
      mailFrom: from && from.address ? from.address : null,
      rcptTo: [...tx.accepted.keys()],
      recipients: new Map(tx.accepted),
      remoteAddress: session.remoteAddress,
      clientHostname: str(session.clientHostname),
      heloName: str(session.hostNameAppearsAs),
      sessionId: session.id,
      secure: session.secure,
    };
  }

  #onMailFrom(address: SMTPServerAddress, session: SMTPServerSession, cb: (err?: Error | null) => void): void {
    const log = this.#sessionLog(session);
    const a = address.address;
    const reject = (reply: SmtpReply, ctx: Record<string, unknown> = {}): void => {
      log.info("smtp sender rejected", { mailFrom: a || "<>", reply: reply.line, ...ctx });
      cb(reply);
    };
    if (this.#limits.require_tls && !session.secure) return reject(Rejections.tlsRequired());
    const badParameter = unsupportedParameter(address.args, MAIL_PARAMETERS);
    if (badParameter) return reject(badParameter);
    const nonAscii = utf8WithoutSmtputf8(a, address);
    if (nonAscii) return reject(nonAscii);
    let domain: string | null = null;
    if (a !== "") {
      const at = a.lastIndexOf("@");
      if (at <= 0 || at === a.length - 1) return reject(Rejections.badSenderSyntax(a));
      const raw = a.slice(at + 1).toLowerCase().replace(/\.$/, "");
      domain = raw.startsWith("[") ? raw : domainToASCII(raw) || raw;
    }
    const client = clientKey(session.remoteAddress);
    if (!this.#clientRate.hit(client)) {
      return reject(Rejections.clientRateLimited(client), { limit: this.#limits.max_messages_per_ip, windowMs: this.#limits.rate_window_ms });
    }
    // The null sender (bounces) has no domain to count.
    if (domain !== null && !this.#domainRate.hit(domain)) {
      return reject(Rejections.senderDomainRateLimited(domain), {
        limit: this.#limits.max_messages_per_sender_domain,
        windowMs: this.#limits.rate_window_ms,
      });
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
    // A parameter we do not offer: refused like smtp-server's own syntax errors, before the
    // RCPT counts (it causes no work).
    const badParameter = unsupportedParameter(address.args, RCPT_PARAMETERS);
    if (badParameter) return reject(badParameter);
    const nonAscii = utf8WithoutSmtputf8(address.address, session.envelope.mailFrom);
    if (nonAscii) return reject(nonAscii);
    const tx = this.#transaction(session);
    tx.rcptCommands++;
    const n = this.#normalizeRecipient(address.address);
    // Every RCPT counts, repeats and refusals too: that bounds the work one transaction
    // can cause. postmaster is never refused here (RFC 5321 §4.5.1).
    const max = this.#limits.max_recipients;
    if (tx.rcptCommands > max && !n?.postmaster) return reject(Rejections.tooManyRecipients(max), { rcptCommands: tx.rcptCommands });
    if (!n) return reject(Rejections.badRecipientSyntax(address.address));
    if (!n.ours && (!this.#isLocalDomain || n.domain.startsWith("["))) return reject(Rejections.relayDenied(address.address));
    const known = tx.decisions.get(n.address);
    const decision = known ?? this.#decide(n.address, n.ours ? null : n.domain, this.#envelope(session, tx), log);
    if (!known) tx.decisions.set(n.address, decision);
    decision
      .then((d) => {
        if (!d.ok) return reject(d.reply, known ? { repeated: true } : {});
        if (!tx.accepted.has(n.address)) tx.accepted.set(n.address, d.value);
        log.debug("smtp recipient accepted", { rcpt: n.address, repeated: Boolean(known) });
        cb();
      })
      .catch((err: unknown) => log.error("smtp reply failed", errorFields(err)));
  }

  /**
   * Ask the handler about one recipient, bounded by `recipientTimeoutMs`. Never rejects.
   * @param otherDomain the address's domain when it is not `mailDomain`: asked of `isLocalDomain` first
   */
  async #decide(address: string, otherDomain: string | null, envelope: InboundEnvelope<R>, log: Logger): Promise<Decision<R>> {
    let timer: NodeJS.Timeout | undefined;
    const timeout = new Promise<never>((_, fail) => {
      timer = setTimeout(() => fail(new Error(`recipient check timed out after ${this.#recipientTimeoutMs} ms`)), this.#recipientTimeoutMs);
    });
    try {
      if (otherDomain !== null && !(await Promise.race([this.#isLocalDomain!(otherDomain), timeout]))) return { ok: false, reply: Rejections.relayDenied(address) };
      const value = await Promise.race([this.#handler.checkRecipient(address, envelope), timeout]);
      return { ok: true, value };
    } catch (err) {
      if (!isSmtpReply(err)) log.warn("smtp recipient check failed", { rcpt: address, ...errorFields(err) });
      return { ok: false, reply: toSmtpReply(err) };
    } finally {
      clearTimeout(timer);
    }
  }

  #onData(
    stream: SMTPServerDataStream,
    session: SMTPServerSession,
    cb: (err?: Error | null, message?: string | SMTPServerDataResult[]) => void,
  ): void {
    const log = this.#sessionLog(session);
    const state = this.#sessions.get(session.id) ?? null;
    const tx = this.#transaction(session);
    const max = this.#config.max_message_bytes;
    const limits = this.#limits;
    const inspector = new MessageInspector(this.#messageLimits);
    const chunks: Buffer[] = [];
    /** Past LARGE_MESSAGE_BYTES: the message, written in place after TRACE_HEADROOM_BYTES. */
    let large: Buffer | null = null;
    let kept = 0;
    let truncated = false;
    let failed = false;
    if (state) {
      state.inData = true;
      this.#setTimer(state, "dataTimer", limits.data_timeout_ms, "DATA");
      this.#setTimer(state, "dataIdleTimer", limits.command_timeout_ms, "DATA idle");
    }
    /** Reply to DATA; the client owes us the next command from then on. */
    const finish = (reply: SmtpReply | null): void => {
      if (state) {
        state.inData = false;
        this.#clearTimer(state, "dataTimer");
        this.#clearTimer(state, "dataIdleTimer");
      }
      if (reply) cb(reply);
      else cb(null, DATA_OK_TEXT);
      if (state) this.#armCommandTimer(state);
    };
    stream.on("data", (chunk: Buffer) => {
      if (state) this.#setTimer(state, "dataIdleTimer", limits.command_timeout_ms, "DATA idle");
      // Past a limit the message is refused anyway: keep reading, stop buffering.
      if (truncated || inspector.violation) return;
      if (kept + chunk.length > max) {
        truncated = true;
        chunks.length = 0;
        large = null;
        inspector.abort();
        return;
      }
      // A large message is copied into its buffer first and the inspector reads the copy: the
      // MIME splitter queues what it has not read yet, and queued views of smtp-server's chunks
      // would keep every one of them (the whole message a second time) until DATA ends.
      let data = chunk;
      if (large) {
        const at = TRACE_HEADROOM_BYTES + kept;
        chunk.copy(large, at);
        data = large.subarray(at, at + chunk.length);
      }
      inspector.write(data);
      if (inspector.violation) {
        chunks.length = 0;
        large = null;
        return;
      }
      kept += chunk.length;
      if (large) {
        // Each read of a large message leaves garbage behind (util/reclaim.ts).
        noteLargeWork(chunk.length);
        return;
      }
      chunks.push(chunk);
      if (kept > LARGE_MESSAGE_BYTES) {
        large = Buffer.allocUnsafe(TRACE_HEADROOM_BYTES + max);
        let at = TRACE_HEADROOM_BYTES;
        for (const c of chunks) at += c.copy(large, at);
        chunks.length = 0;
      }
    });
    stream.once("error", (err: Error) => {
      failed = true;
      inspector.abort();
      if (state?.timedOut) log.debug("smtp data stream ended by timeout", errorFields(err));
      else log.warn("smtp data stream failed", errorFields(err));
      finish(Rejections.temporaryFailure());
    });
    stream.once("end", () => {
      // The client has sent everything; from here on it waits for us.
      if (state) {
        this.#clearTimer(state, "dataTimer");
        this.#clearTimer(state, "dataIdleTimer");
      }
      if (failed) return;
      if (state?.timedOut) {
        // The 421 went out already; the message is not used.
        inspector.abort();
        return finish(Rejections.timeout("DATA"));
      }
      if (stream.sizeExceeded || truncated) {
        inspector.abort();
        const reply = Rejections.messageTooBig(max);
        log.info("smtp message rejected", { bytes: stream.byteLength, maxBytes: max, reply: reply.line });
        return finish(reply);
      }
      const delivery = inspector
        .finish()
        .then(async (violation) => {
          if (inspector.splitterError) {
            log.warn("smtp mime structure not counted", { bytes: kept, ...errorFields(inspector.splitterError) });
          }
          if (violation) {
            log.info("smtp message rejected", { bytes: stream.byteLength, ...inspector.stats, reply: violation.line });
            return finish(violation);
          }
          // One buffer with room for the trace header in front (see TRACE_HEADROOM_BYTES); a
          // large message is in one already (LARGE_MESSAGE_BYTES).
          let buffer = large;
          const ownBuffer = buffer !== null;
          large = null;
          if (!buffer) {
            buffer = Buffer.allocUnsafe(TRACE_HEADROOM_BYTES + kept);
            let at = TRACE_HEADROOM_BYTES;
            for (const chunk of chunks) at += chunk.copy(buffer, at);
            chunks.length = 0;
          }
          const raw = buffer.subarray(TRACE_HEADROOM_BYTES, TRACE_HEADROOM_BYTES + kept);
          const reply = await this.#deliver(raw, { ...this.#envelope(session, tx), skeleton: inspector.skeleton, traceHeadroom: TRACE_HEADROOM_BYTES }, log);
          // The handler is done with a large message (InboundHandler.deliver): its memory is
          // returned now rather than at the next garbage collection, which can come after the
          // poster has read the mail back and decoded its attachments, so the two add up. Only
          // a large message's buffer is its own; a small one's may share Node's buffer pool.
          if (ownBuffer) (buffer.buffer as ArrayBuffer).transfer(0);
          finish(reply);
        })
        .catch((err: unknown) => log.error("smtp reply failed", errorFields(err)));
      this.#deliveries.add(delivery);
      void delivery.finally(() => this.#deliveries.delete(delivery));
    });
  }

  /** Run the handler's deliver; resolves to the error reply, or null on success. Never rejects. */
  async #deliver(raw: Buffer, envelope: InboundEnvelope<R>, log: Logger): Promise<SmtpReply | null> {
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
