/**
 * Outbound SMTP connections, kept open and reused across deliveries.
 *
 * One nodemailer pooled transport (`pool: true`) per destination: everything that makes two
 * connections interchangeable (host, port, route kind, TLS policy, relay credentials, EHLO name,
 * timeouts). A connection is reused for up to `maxMessagesPerConnection` transactions, with RSET
 * after a refused envelope (RFC 5321 §4.1.1.5), and closed with QUIT once it has been idle for
 * `idleMs`; a destination with nothing in flight is dropped from the map shortly after that.
 *
 * Broken connections do not poison later deliveries: a connection the server closed (or timed
 * out, RFC 5321 §4.5.3.2) is dropped from its pool; a 421 reply (the server is closing the
 * channel, RFC 5321 §3.8) closes it as well. When a reused connection turns out to be dead
 * before a byte of the message went out, nodemailer requeues the message once on a fresh
 * connection ({@link MAX_REQUEUES}; see {@link freshEnvelopePerAttempt} for the nodemailer bug
 * this needs worked around); any other failure is handed to the caller unchanged, so
 * deliver.ts classifies replies and per-recipient refusals exactly as without pooling.
 *
 * Two limits bound connections in use: per destination (`maxConnectionsPerDomain` connections
 * per pooled transport; further messages wait in its queue) and per recipient domain (at most
 * `maxConnectionsPerDomain` transactions for one domain at once, whichever MX they go to).
 * The global limit is the outbound queue's (`outbound.concurrency`, OutboundQueue.ts).
 */
import nodemailer from "nodemailer";
import type { Mail, PluginFunction, SMTPPoolOptions, SMTPPoolSentMessageInfo } from "nodemailer";
import type { OutboundConfig } from "../../config/schema.ts";
import { getLogger } from "../../util/logger.ts";

const log = getLogger("mail/outbound/pool");

/**
 * How many times a message goes out again on a fresh connection when the connection it was
 * given closed before any of it was sent (typically a pooled connection the server dropped
 * while idle, or a 421 at MAIL FROM on a reused connection). One retry is enough to replace a
 * stale connection; a server that keeps closing fresh connections fails the attempt (an
 * `ECONNECTION` error, a temporary outcome).
 */
const MAX_REQUEUES = 1;

/** Everything that identifies where a connection goes and how it talks; the pool key. */
export interface Destination {
  /** Host name or IP address. */
  host: string;
  /** TCP port. */
  port: number;
  /** Route kind (routes.ts): `static`, `relay` or `mx`; connections of different kinds are not shared. */
  kind: "static" | "relay" | "mx";
  /** Implicit TLS from the first byte (port 465 style); otherwise STARTTLS when offered (RFC 3207). */
  secure: boolean;
  /** Fail (temporarily) when the server offers no STARTTLS, instead of going on in plaintext. */
  requireTls: boolean;
  /**
   * Go on in plaintext when the server fails its own advertised STARTTLS (opportunistic TLS,
   * RFC 7435); false makes that a failure.
   */
  opportunisticTls: boolean;
  /** Verify the server certificate (relay: credentials go to it); false for opportunistic TLS to MX hosts. */
  verifyCertificate: boolean;
  /** SMTP AUTH credentials (relay), or null. */
  auth: { user: string; pass: string } | null;
  /** Name sent in EHLO (RFC 5321 §4.1.1.1). */
  heloName: string;
  /** Limit for the TCP connect and for the server's greeting, in ms. */
  connectTimeoutMs: number;
  /** Inactivity limit once connected, in ms (RFC 5321 §4.5.3.2 suggests minutes per reply). */
  socketTimeoutMs: number;
}

/** Settings of {@link SmtpPool}. */
export interface SmtpPoolOptions {
  /**
   * Most connections in use at once per destination, and most transactions in flight at once
   * per recipient domain (config `outbound.max_connections_per_domain`). Integer >= 1.
   */
  maxConnectionsPerDomain: number;
  /** Transactions one connection carries before it is closed and replaced (config `outbound.max_messages_per_connection`). Integer >= 1. */
  maxMessagesPerConnection: number;
  /** A connection unused for this many ms is closed with QUIT (config `outbound.pool_idle_ms`). Integer >= 1. */
  idleMs: number;
}

/**
 * The pool settings of the `outbound` config section: `max_connections_per_domain`,
 * `max_messages_per_connection`, `pool_idle_ms` (ms).
 */
export function poolOptionsFromConfig(outbound: Pick<OutboundConfig, "max_connections_per_domain" | "max_messages_per_connection" | "pool_idle_ms">): SmtpPoolOptions {
  return {
    maxConnectionsPerDomain: outbound.max_connections_per_domain,
    maxMessagesPerConnection: outbound.max_messages_per_connection,
    idleMs: outbound.pool_idle_ms,
  };
}

/** One message to send: the SMTP envelope and the complete message bytes. */
export interface PoolMessage {
  /** MAIL FROM address, RCPT TO addresses (one transaction carries all of them). */
  envelope: { from: string; to: string[] };
  /** The message, sent unchanged (dot-stuffing aside); its length in bytes goes out as MAIL FROM SIZE= (RFC 1870). */
  raw: Buffer;
}

/** Counters for tests and diagnostics. */
export interface SmtpPoolStats {
  /** Destinations with a pooled transport in the map. */
  destinations: number;
  /** Transactions handed to a transport and not finished yet. */
  inFlight: number;
  /** Transactions waiting for their recipient domain's limit. */
  waitingForDomain: number;
}

interface PoolEntry {
  key: string;
  transport: Mail<SMTPPoolSentMessageInfo, SMTPPoolOptions>;
  label: string;
  inFlight: number;
  evictTimer: NodeJS.Timeout | null;
}

/** A counting semaphore per key (recipient domain). */
class KeyedLimit {
  readonly #limit: number;
  readonly #slots = new Map<string, { active: number; waiting: (() => void)[] }>();

  constructor(limit: number) {
    this.#limit = limit;
  }

  /** Waits for a free slot for `key`; resolves with the function that frees it (call it once). */
  async acquire(key: string): Promise<() => void> {
    let slot = this.#slots.get(key);
    if (!slot) {
      slot = { active: 0, waiting: [] };
      this.#slots.set(key, slot);
    }
    if (slot.active >= this.#limit) {
      const s = slot;
      await new Promise<void>((resolve) => s.waiting.push(resolve));
    } else {
      slot.active++;
    }
    const s = slot;
    let released = false;
    return () => {
      if (released) return;
      released = true;
      const next = s.waiting.shift();
      // The slot passes straight to the next waiter; `active` stays the same.
      if (next) return next();
      s.active--;
      if (s.active === 0) this.#slots.delete(key);
    };
  }

  /** Callers waiting for a slot, over all keys. */
  get waiting(): number {
    let n = 0;
    for (const s of this.#slots.values()) n += s.waiting.length;
    return n;
  }
}

/**
 * Pooled outbound SMTP connections, one nodemailer pooled transport per {@link Destination}.
 * Create one per bridge, share it between deliveries, {@link SmtpPool.close} it on shutdown.
 */
export class SmtpPool {
  readonly #opts: SmtpPoolOptions;
  readonly #entries = new Map<string, PoolEntry>();
  readonly #domains: KeyedLimit;
  #closed = false;

  /**
   * @param opts limits and idle time, see {@link SmtpPoolOptions}.
   * @throws RangeError when a setting is not an integer >= 1.
   */
  constructor(opts: SmtpPoolOptions) {
    for (const [name, value] of Object.entries(opts)) {
      if (!Number.isInteger(value) || (value as number) < 1) throw new RangeError(`SMTP pool ${name} must be an integer >= 1, got ${String(value)}`);
    }
    this.#opts = { ...opts };
    this.#domains = new KeyedLimit(opts.maxConnectionsPerDomain);
  }

  /**
   * Run one SMTP transaction (MAIL FROM, RCPT TO for every recipient, DATA) to `dest` over a
   * pooled connection, opening one when none is free and the destination's limit allows;
   * otherwise wait for one. Waits first for a slot of `domain`'s limit.
   *
   * @param dest where and how to connect; equal destinations share connections.
   * @param domain recipient domain the transaction is for (lower case), for the per-domain limit.
   * @param message envelope and raw bytes.
   * @returns nodemailer's result: `accepted`, `rejected`, `rejectedErrors` (per recipient), `response` (the reply to DATA).
   * @throws nodemailer's error unchanged (`code`, `command`, `responseCode`, `response`, and
   *   `rejectedErrors` when every recipient was refused), for the caller to classify; an Error
   *   with code `ECONNECTION` when the pool was closed before the transaction started.
   */
  async send(dest: Destination, domain: string, message: PoolMessage): Promise<SMTPPoolSentMessageInfo> {
    this.#assertOpen();
    const release = await this.#domains.acquire(domain);
    try {
      this.#assertOpen();
      const entry = this.#entry(dest);
      entry.inFlight++;
      if (entry.evictTimer) {
        clearTimeout(entry.evictTimer);
        entry.evictTimer = null;
      }
      try {
        // size: announced as MAIL FROM SIZE= (RFC 1870) so an oversized message is refused up front.
        return await entry.transport.sendMail({ envelope: { ...message.envelope, size: message.raw.length }, raw: message.raw });
      } finally {
        entry.inFlight--;
        if (entry.inFlight === 0) this.#scheduleEviction(entry);
      }
    } finally {
      release();
    }
  }

  /** Current counters (see {@link SmtpPoolStats}). */
  stats(): SmtpPoolStats {
    let inFlight = 0;
    for (const e of this.#entries.values()) inFlight += e.inFlight;
    return { destinations: this.#entries.size, inFlight, waitingForDomain: this.#domains.waiting };
  }

  /**
   * Close every connection and refuse further sends. Idle connections close at once (without
   * QUIT: nodemailer's pool closes the socket); one in the middle of a transaction finishes it
   * first. Call it after the outbound queue stopped, so nothing is in flight. Idempotent.
   */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    for (const entry of this.#entries.values()) {
      if (entry.evictTimer) clearTimeout(entry.evictTimer);
      entry.transport.close();
    }
    log.debug("SMTP pool closed", { destinations: this.#entries.size });
    this.#entries.clear();
  }

  #assertOpen(): void {
    if (this.#closed) throw Object.assign(new Error("outbound SMTP pool is closed"), { code: "ECONNECTION" });
  }

  /** The destination's entry, created on first use. */
  #entry(dest: Destination): PoolEntry {
    const key = destinationKey(dest);
    const existing = this.#entries.get(key);
    if (existing) return existing;
    const options: SMTPPoolOptions & { pool: true } = {
      pool: true,
      maxConnections: this.#opts.maxConnectionsPerDomain,
      maxMessages: this.#opts.maxMessagesPerConnection,
      maxRequeues: MAX_REQUEUES,
      idleTimeout: this.#opts.idleMs,
      host: dest.host,
      port: dest.port,
      secure: dest.secure,
      name: dest.heloName,
      ignoreTLS: false,
      requireTLS: dest.requireTls,
      opportunisticTLS: dest.opportunisticTls,
      tls: { rejectUnauthorized: dest.verifyCertificate },
      connectionTimeout: dest.connectTimeoutMs,
      greetingTimeout: dest.connectTimeoutMs,
      socketTimeout: dest.socketTimeoutMs,
      logger: false,
      debug: false,
      ...(dest.auth ? { auth: { user: dest.auth.user, pass: dest.auth.pass } } : {}),
    };
    const entry: PoolEntry = { key, transport: nodemailer.createTransport(options), label: `${dest.host}:${dest.port}`, inFlight: 0, evictTimer: null };
    entry.transport.use("stream", freshEnvelopePerAttempt);
    // The pool reports connection failures through the callbacks of the messages concerned;
    // an 'error' event would otherwise crash the process, so it is logged here.
    entry.transport.on("error", (err: Error) => log.warn("SMTP pool error", { host: entry.label, kind: dest.kind, message: err.message }));
    this.#entries.set(key, entry);
    log.debug("SMTP pool: new destination", { host: entry.label, kind: dest.kind });
    return entry;
  }

  /**
   * Drop a destination once it had nothing in flight for a while. Its connections close
   * themselves (QUIT) after `idleMs`; the entry goes a little later, so it normally holds no
   * connection by then and the map does not grow with every MX host ever contacted.
   */
  #scheduleEviction(entry: PoolEntry): void {
    if (entry.evictTimer) clearTimeout(entry.evictTimer);
    const delay = this.#opts.idleMs + Math.min(this.#opts.idleMs, 1000);
    entry.evictTimer = setTimeout(() => {
      entry.evictTimer = null;
      if (entry.inFlight > 0 || this.#closed) return;
      if (this.#entries.get(entry.key) === entry) this.#entries.delete(entry.key);
      entry.transport.close();
      log.debug("SMTP pool: idle destination dropped", { host: entry.label });
    }, delay);
    entry.evictTimer.unref();
  }
}

/**
 * nodemailer plugin (step `stream`, once per message) working around a requeue bug of the
 * pooled transport (nodemailer 10.6): a message with an explicit envelope gets the same
 * envelope object from `getEnvelope()` on every attempt, and SMTPConnection keeps its
 * per-transaction state on that object (`mailError`, ...). A message requeued after a 421 on a
 * reused connection then fails on the fresh connection with the stale error. Handing out a
 * copy per call gives each attempt a clean envelope. Covered by test/integration/deliver.test.ts
 * ("a 421 on a reused connection").
 */
const freshEnvelopePerAttempt: PluginFunction<SMTPPoolSentMessageInfo> = (mail, done) => {
  const node = mail.message;
  const envelope = node.getEnvelope();
  node.getEnvelope = () => ({ ...envelope, to: [...envelope.to] });
  done();
};

/** The map key of a destination: every field, so only truly interchangeable connections are shared. */
function destinationKey(d: Destination): string {
  return JSON.stringify([
    d.host.toLowerCase(),
    d.port,
    d.kind,
    d.secure,
    d.requireTls,
    d.opportunisticTls,
    d.verifyCertificate,
    d.auth?.user ?? null,
    d.auth?.pass ?? null,
    d.heloName,
    d.connectTimeoutMs,
    d.socketTimeoutMs,
  ]);
}
