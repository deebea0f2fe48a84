/**
 * One delivery attempt of a composed message: recipients are grouped by domain, each
 * domain's routes (routes.ts) are tried in order over pooled SMTP connections (pool.ts), and
 * every recipient gets an outcome (sent / temporary / permanent) following the reply
 * classes of RFC 5321 §4.2.1. Retrying later is the queue's job (OutboundQueue.ts).
 */
import type { OutboundConfig } from "../../config/schema.ts";
import { errorFields, getLogger } from "../../util/logger.ts";
import { poolOptionsFromConfig, SmtpPool, type Destination } from "./pool.ts";
import { DeliveryError, resolveRoute, type AddressResolver, type MxResolver, type ResolveRouteOptions, type Route } from "./routes.ts";

export { DeliveryError } from "./routes.ts";
export type { AddressResolver, MxResolver, Route } from "./routes.ts";

const log = getLogger("mail/outbound");

/** Outcome of one recipient after one delivery attempt. */
export interface RecipientOutcome {
  /** Envelope recipient as given to {@link deliverMail}. */
  address: string;
  /**
   * `sent`: a server accepted it (2yz after DATA); `temporary`: retry later (4yz, network, a DNS
   * failure that may pass); `permanent`: bounce (5yz, or a domain that cannot receive mail:
   * NXDOMAIN, null MX, no MX and no address; see routes.ts).
   */
  status: "sent" | "temporary" | "permanent";
  /** SMTP reply code, when a server answered (or the synthetic code of a routing error). */
  code?: number;
  /** Enhanced status code (RFC 3463), e.g. `5.1.1`, when known. */
  enhancedStatus?: string;
  /** The server's reply text or the error message; shown to users on failure, never contains the message. */
  message: string;
  /** `host:port` that produced this outcome, when a connection was attempted. */
  host?: string;
}

/** Result of {@link deliverMail}: one outcome per envelope recipient, in input order. */
export interface DeliveryResult {
  recipients: RecipientOutcome[];
}

/** Options of {@link deliverMail}. */
export interface DeliverOptions {
  /** Outbound config: mode, relay, static routes, require_tls, timeout_ms (ms). */
  outbound: OutboundConfig;
  /** Name sent in EHLO (RFC 5321 §4.1.1.1), normally `outbound.helo_name ?? smtp.hostname`. */
  heloName: string;
  /** MX lookup (the bridge's `DnsResolver.resolveMx` in production, a fake in tests). */
  resolver: MxResolver;
  /**
   * A/AAAA lookup for domains without MX records (see routes.ts `ResolveRouteOptions`): lets a
   * domain with no MX, A or AAAA records fail at once (550 5.1.2) instead of being retried.
   */
  addressResolver?: AddressResolver;
  /** Port used for MX hosts (default 25); for tests that point MX records at loopback servers. */
  mxPort?: number;
  /** Order of equal-priority MX hosts (default random); see routes.ts. */
  shuffle?: ResolveRouteOptions["shuffle"];
  /**
   * Connections to reuse (the bridge's one pool, closed on shutdown). Without it the call uses
   * a pool of its own, built from `outbound` and closed before it returns: one connection per
   * transaction, as without pooling.
   */
  pool?: SmtpPool;
}

/**
 * Inactivity timeout once connected, in ms. RFC 5321 §4.5.3.2 suggests 5 minutes for
 * most replies (10 for the final one after DATA); one value covers them.
 */
const SOCKET_TIMEOUT_MS = 5 * 60_000;

/**
 * Deliver `raw` to every recipient of `envelope`.
 *
 * Domains are delivered in parallel, one SMTP transaction (RCPT TO per recipient) per route
 * attempt, over a pooled connection (`opts.pool`, pool.ts: at most
 * `outbound.max_connections_per_domain` per recipient domain and per destination host; a
 * connection the server dropped or closed with 421, RFC 5321 §3.8, is replaced, not reused).
 * Per domain, routes are tried in order. A route that cannot take the message at all (connection
 * refused/timed out, TLS failure, any 4yz reply, a 5yz reply to the greeting, EHLO, STARTTLS
 * or AUTH) passes all still-pending recipients on to the next route; recipients refused
 * with 4yz at RCPT are also passed on (another MX may accept them). A 5yz reply to MAIL
 * FROM, RCPT TO or DATA is final for the recipients it concerns (no next route), as is a
 * message larger than the SIZE the server announced (552 5.3.4, RFC 1870). The last
 * route's outcome stands.
 *
 * TLS: STARTTLS is used whenever offered. For MX and static routes certificates are not
 * verified (opportunistic TLS, RFC 7435 §1.3: unauthenticated encryption beats plaintext,
 * and MX host certificates rarely match). `outbound.require_tls` makes a missing STARTTLS
 * fail the route (temporary). The relay's certificate is verified, since credentials go to it.
 *
 * @param raw the complete signed message (bytes sent unchanged, dot-stuffing aside).
 * @param envelope MAIL FROM address and RCPT TO addresses (normalised; duplicates are sent once).
 * @param opts see {@link DeliverOptions}.
 * @returns outcomes for all recipients; never rejects for delivery failures (they become outcomes).
 */
export async function deliverMail(raw: Buffer, envelope: { from: string; to: string[] }, opts: DeliverOptions): Promise<DeliveryResult> {
  const unique = [...new Set(envelope.to)];
  const byDomain = new Map<string, string[]>();
  const outcomes = new Map<string, RecipientOutcome>();
  for (const address of unique) {
    const at = address.lastIndexOf("@");
    if (at <= 0 || at === address.length - 1) {
      outcomes.set(address, { address, status: "permanent", code: 553, enhancedStatus: "5.1.3", message: "invalid recipient address" });
      continue;
    }
    const domain = address.slice(at + 1).toLowerCase();
    const list = byDomain.get(domain) ?? [];
    list.push(address);
    byDomain.set(domain, list);
  }

  const pool = opts.pool ?? new SmtpPool(poolOptionsFromConfig(opts.outbound));
  try {
    await Promise.all(
      [...byDomain].map(async ([domain, recipients]) => {
        for (const o of await deliverDomain(raw, envelope.from, domain, recipients, opts, pool)) outcomes.set(o.address, o);
      }),
    );
  } finally {
    if (pool !== opts.pool) pool.close();
  }

  return { recipients: unique.map((address) => outcomes.get(address) ?? { address, status: "temporary", message: "not attempted" }) };
}

/** Deliver to the recipients of one domain; returns one outcome per recipient. */
async function deliverDomain(raw: Buffer, from: string, domain: string, recipients: string[], opts: DeliverOptions, pool: SmtpPool): Promise<RecipientOutcome[]> {
  let routes: Route[];
  try {
    routes = await resolveRoute(domain, opts.outbound, opts.resolver, {
      timeoutMs: opts.outbound.timeout_ms,
      ...(opts.mxPort !== undefined ? { mxPort: opts.mxPort } : {}),
      ...(opts.shuffle !== undefined ? { shuffle: opts.shuffle } : {}),
      ...(opts.addressResolver !== undefined ? { addressResolver: opts.addressResolver } : {}),
    });
  } catch (err) {
    const e = err instanceof DeliveryError ? err : new DeliveryError(err instanceof Error ? err.message : String(err), { temporary: true, cause: err });
    log.debug("routing failed", { domain, ...errorFields(err) });
    return recipients.map((address) => ({
      address,
      status: e.temporary ? "temporary" : "permanent",
      ...(e.responseCode !== undefined ? { code: e.responseCode } : {}),
      ...(e.enhancedStatus !== undefined ? { enhancedStatus: e.enhancedStatus } : {}),
      message: e.message,
    }));
  }

  const done: RecipientOutcome[] = [];
  let pending = recipients;
  let lastTemporary: RecipientOutcome[] = [];
  for (const route of routes) {
    const results = await attempt(raw, from, domain, pending, route, opts, pool);
    lastTemporary = [];
    for (const r of results) (r.status === "temporary" ? lastTemporary : done).push(r);
    pending = lastTemporary.map((r) => r.address);
    if (pending.length === 0) break;
    log.debug("route deferred recipients, trying next", { domain, host: `${route.host}:${route.port}`, kind: route.kind, deferred: pending.length });
  }
  return [...done, ...lastTemporary];
}

/** Connection settings for `route`: opportunistic TLS to MX and static hosts, verified TLS and AUTH to the relay. */
function destinationFor(route: Route, opts: DeliverOptions): Destination {
  const { outbound } = opts;
  const relay = route.kind === "relay" ? outbound.relay : null;
  return {
    host: route.host,
    port: route.port,
    kind: route.kind,
    secure: relay?.secure ?? false,
    requireTls: outbound.require_tls,
    // RFC 7435 opportunistic TLS towards MX/static hosts: encrypt without authenticating the
    // peer, and go on in plaintext if the server refuses its own advertised STARTTLS.
    opportunisticTls: relay === null && !outbound.require_tls,
    verifyCertificate: relay !== null,
    auth: relay?.username ? { user: relay.username, pass: relay.password ?? "" } : null,
    heloName: opts.heloName,
    connectTimeoutMs: outbound.timeout_ms,
    socketTimeoutMs: SOCKET_TIMEOUT_MS,
  };
}

/** One SMTP transaction with one route, for the recipients `to` (all at `domain`). */
async function attempt(raw: Buffer, from: string, domain: string, to: string[], route: Route, opts: DeliverOptions, pool: SmtpPool): Promise<RecipientOutcome[]> {
  const hostLabel = `${route.host}:${route.port}`;
  try {
    const info = await pool.send(destinationFor(route, opts), domain, { envelope: { from, to }, raw });
    const accepted = new Set(info.accepted.map(String));
    const rejectedErrors = info.rejectedErrors ?? [];
    return to.map((address) => {
      if (accepted.has(address)) return { address, status: "sent", ...replyFields(info.response), host: hostLabel };
      const rcptErr = rejectedErrors.find((e) => (e as { recipient?: unknown }).recipient === address);
      return fromError(address, rcptErr ?? new Error("recipient not accepted"), hostLabel);
    });
  } catch (err) {
    const perRecipient = (err as { rejectedErrors?: unknown[] }).rejectedErrors;
    if (Array.isArray(perRecipient) && perRecipient.length > 0) {
      return to.map((address) => fromError(address, perRecipient.find((e) => (e as { recipient?: unknown }).recipient === address) ?? err, hostLabel));
    }
    log.debug("SMTP transaction failed", { host: hostLabel, kind: route.kind, ...errorFields(err) });
    return to.map((address) => fromError(address, err, hostLabel));
  }
}

/**
 * Classify an error for one recipient (RFC 5321 §4.2.1): a 5yz reply to MAIL FROM, RCPT TO or
 * DATA is permanent (except 503, bad sequence, which is our session's fault). Everything else
 * is temporary: 4yz, network and DNS errors, and 5yz replies to the greeting, EHLO, STARTTLS
 * (e.g. `require_tls` against a server without it) or AUTH towards the relay, which say
 * nothing about the message or recipient.
 */
function fromError(address: string, err: unknown, host: string): RecipientOutcome {
  const e = err as { responseCode?: unknown; response?: unknown; message?: unknown; code?: unknown; command?: unknown };
  const code = typeof e.responseCode === "number" ? e.responseCode : undefined;
  const response = typeof e.response === "string" && e.response.length > 0 ? e.response : undefined;
  const messageStage =
    typeof e.command === "string" ? /^(MAIL FROM|RCPT TO|DATA)\b/i.test(e.command) : e.code === "EENVELOPE" || e.code === "EMESSAGE";
  // nodemailer refuses on its own (EMESSAGE at MAIL FROM, no reply) when the message exceeds
  // the SIZE the server announced; the server would answer 552 5.3.4 (RFC 1870 §6.1, RFC 3463).
  if (code === undefined && e.code === "EMESSAGE" && e.command === "MAIL FROM") {
    return { address, status: "permanent", code: 552, enhancedStatus: "5.3.4", message: errorMessage(e), host };
  }
  const permanent = code !== undefined && code >= 500 && code < 600 && code !== 503 && messageStage;
  const base = response !== undefined ? replyFields(response) : { message: errorMessage(e) };
  return {
    address,
    status: permanent ? "permanent" : "temporary",
    ...base,
    ...(code !== undefined ? { code } : {}),
    host,
  };
}

/** Split an SMTP reply (`550 5.1.1 No such user`) into code, enhanced status and text. */
function replyFields(reply: string): { code?: number; enhancedStatus?: string; message: string } {
  const text = reply.replace(/\s+/g, " ").trim();
  const m = /^([2-5]\d\d)[ -](?:([245]\.\d{1,3}\.\d{1,3}) )?/.exec(text);
  if (!m?.[1]) return { message: text };
  return { code: Number(m[1]), ...(m[2] ? { enhancedStatus: m[2] } : {}), message: text };
}

function errorMessage(e: { message?: unknown; code?: unknown }): string {
  const msg = typeof e.message === "string" ? e.message : "delivery failed";
  return typeof e.code === "string" && !msg.includes(e.code) ? `${msg} (${e.code})` : msg;
}
