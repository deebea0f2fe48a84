/**
 * Where mail for a recipient domain goes: a static route, the relay, or the domain's
 * MX hosts (RFC 5321 §5.1), with implicit MX, null MX (RFC 7505) and domains that do not
 * exist handled: the last two are permanent failures, not days of retries.
 */
import { isIP } from "node:net";
import type { OutboundConfig } from "../../config/schema.ts";
import { isNegativeDnsAnswer, isTemporaryDnsError } from "../dns.ts";

/**
 * MX lookup, the shape of `DnsResolver.resolveMx` (mail/dns.ts) and `dns.promises.resolveMx`.
 * Rejects with an Error carrying a node:dns `code`: `ENOTFOUND` (NXDOMAIN), `ENODATA` (no MX
 * records), or a temporary one (`ETIMEOUT`, `ESERVFAIL`, ...).
 */
export type MxResolver = (domain: string) => Promise<{ exchange: string; priority: number }[]>;

/**
 * A/AAAA lookup, the shape of `DnsResolver.resolve(name, rrtype)` (mail/dns.ts) and
 * `dns.promises.resolve`: resolves with the addresses, rejects like {@link MxResolver}.
 */
export type AddressResolver = (host: string, rrtype: "A" | "AAAA") => Promise<unknown[]>;

/** One place to try, in order. */
export interface Route {
  /** Host name or IP address. */
  host: string;
  /** TCP port. */
  port: number;
  /** Where the route came from: `static` (outbound.static_routes), `relay` (smarthost) or `mx` (DNS, incl. implicit MX). */
  kind: "static" | "relay" | "mx";
}

/** The part of {@link OutboundConfig} routing needs. */
export type RouteConfig = Pick<OutboundConfig, "mode" | "relay" | "static_routes">;

/** Options of {@link resolveRoute}. */
export interface ResolveRouteOptions {
  /**
   * Reorders MX records that share a priority; RFC 5321 §5.1 asks senders to pick randomly
   * among equal preferences. Default: Fisher-Yates shuffle. Tests pass `(r) => r` for a stable order.
   */
  shuffle?: <T>(items: T[]) => T[];
  /** Port for MX hosts (default 25, RFC 5321 §4.5.4; tests point it at a loopback port). */
  mxPort?: number;
  /** Give up on each DNS lookup after this many ms with a temporary error (default: no limit). */
  timeoutMs?: number;
  /**
   * A/AAAA lookup used for the implicit MX (a domain without MX records): when the domain has
   * neither A nor AAAA records it cannot receive mail (RFC 5321 §5.1), a permanent failure.
   * Without it the implicit MX route is returned unchecked and the SMTP client's own lookup
   * decides (a failure there is temporary).
   */
  addressResolver?: AddressResolver;
}

/**
 * A delivery failure with SMTP semantics: `temporary` (4xx, retry later) or permanent (5xx, bounce).
 * Thrown by {@link resolveRoute} and used by deliver.ts for per-recipient outcomes.
 */
export class DeliveryError extends Error {
  /** True for a transient failure (RFC 5321 §4.2.1 4yz / network / DNS). */
  readonly temporary: boolean;
  /** SMTP reply code (e.g. 451, 556), if known. */
  readonly responseCode?: number;
  /** Enhanced status code (RFC 3463), e.g. `5.1.10`, if known. */
  readonly enhancedStatus?: string;

  /**
   * @param message human-readable reason (safe to show in the room).
   * @param opts `temporary`, optional SMTP `responseCode`, `enhancedStatus` and `cause`.
   */
  constructor(message: string, opts: { temporary: boolean; responseCode?: number; enhancedStatus?: string; cause?: unknown }) {
    super(message, opts.cause !== undefined ? { cause: opts.cause } : undefined);
    this.name = "DeliveryError";
    this.temporary = opts.temporary;
    if (opts.responseCode !== undefined) this.responseCode = opts.responseCode;
    if (opts.enhancedStatus !== undefined) this.enhancedStatus = opts.enhancedStatus;
  }
}

/**
 * The ordered routes for `domain`:
 * 1. a static route (`outbound.static_routes[domain]`, exact and case-insensitive match) is the
 *    only route when present;
 * 2. in `relay` mode, the relay (`outbound.relay`) is the only route;
 * 3. else the MX records sorted by ascending priority (equal priorities shuffled), duplicates
 *    dropped, port 25 (RFC 5321 §5.1);
 *    - the domain does not exist (NXDOMAIN, `ENOTFOUND`): permanent failure;
 *    - no MX records (empty answer, `ENODATA`): implicit MX, the domain itself (RFC 5321 §5.1);
 *      with `opts.addressResolver` its A and AAAA records are checked first, and a domain with
 *      neither cannot receive mail (permanent failure);
 *    - an address literal domain (`[192.0.2.1]`, RFC 5321 §4.1.3) routes to that address.
 *
 * @param domain recipient domain (normalised: lower case, A-labels).
 * @param cfg routing part of the outbound config.
 * @param resolver MX lookup (inject a fake in tests; never live DNS there).
 * @param opts shuffle, MX port, lookup timeout (ms) and the A/AAAA lookup.
 * @returns at least one route.
 * @throws DeliveryError, permanent: `556 5.1.10` for a null MX (RFC 7505 §3: a single MX with
 *   exchange "" or "."); `550 5.1.2` ("bad destination system address", RFC 3463 §3.2) for a
 *   domain that does not exist (NXDOMAIN) or has no MX and no A/AAAA records.
 *   Temporary `451 4.4.3` for a DNS failure that may pass (timeout, SERVFAIL, refused, any
 *   unknown error; see `isTemporaryDnsError` in mail/dns.ts), and `451 4.3.5` for relay mode
 *   without `outbound.relay`. Error for a malformed static route value.
 */
export async function resolveRoute(domain: string, cfg: RouteConfig, resolver: MxResolver, opts: ResolveRouteOptions = {}): Promise<Route[]> {
  const d = domain.trim().toLowerCase().replace(/\.$/, "");

  const staticKey = Object.keys(cfg.static_routes).find((k) => k.toLowerCase().replace(/\.$/, "") === d);
  if (staticKey !== undefined) return [{ ...parseHostPort(cfg.static_routes[staticKey] ?? ""), kind: "static" }];

  if (cfg.mode === "relay") {
    if (!cfg.relay) {
      throw new DeliveryError("outbound.mode is relay but outbound.relay is not configured", { temporary: true, responseCode: 451, enhancedStatus: "4.3.5" });
    }
    return [{ host: cfg.relay.host, port: cfg.relay.port, kind: "relay" }];
  }

  const port = opts.mxPort ?? 25;
  const literal = /^\[(?:ipv6:)?([^\]]+)\]$/i.exec(d);
  if (literal?.[1] !== undefined && isIP(literal[1]) !== 0) return [{ host: literal[1], port, kind: "mx" }];

  let records: { exchange: string; priority: number }[];
  try {
    records = await withTimeout(resolver(d), opts.timeoutMs);
  } catch (err) {
    if (isNxdomain(err)) throw noSuchDomain(d, err);
    if (isNegativeDnsAnswer(err)) records = []; // NODATA: the name exists, without MX records
    else throw dnsFailure(`MX lookup for ${d}`, err);
  }

  if (records.length === 0) return [await implicitMx(d, port, opts)];
  const isNull = (r: { exchange: string }) => r.exchange === "" || r.exchange === ".";
  if (records.every(isNull)) {
    throw new DeliveryError(`${d} does not accept mail (null MX)`, { temporary: false, responseCode: 556, enhancedStatus: "5.1.10" });
  }

  const shuffle = opts.shuffle ?? fisherYates;
  const byPriority = new Map<number, string[]>();
  for (const r of records) {
    if (isNull(r)) continue; // RFC 7505 §3: a null MX must stand alone; ignore it next to real ones
    const host = r.exchange.toLowerCase().replace(/\.$/, "");
    const group = byPriority.get(r.priority) ?? [];
    group.push(host);
    byPriority.set(r.priority, group);
  }
  const seen = new Set<string>();
  const routes: Route[] = [];
  for (const priority of [...byPriority.keys()].sort((a, b) => a - b)) {
    for (const host of shuffle(byPriority.get(priority) ?? [])) {
      if (seen.has(host)) continue;
      seen.add(host);
      routes.push({ host, port, kind: "mx" });
    }
  }
  return routes;
}

/** NXDOMAIN: node:dns says `ENOTFOUND` for "no such name" (NODATA is `ENODATA`). */
function isNxdomain(err: unknown): boolean {
  return isNegativeDnsAnswer(err) && (err as { code?: unknown }).code === "ENOTFOUND";
}

/** The permanent failure for a domain that cannot receive mail (RFC 3463 §3.2, X.1.2). */
function noSuchDomain(domain: string, cause: unknown, why = "does not exist (NXDOMAIN)"): DeliveryError {
  return new DeliveryError(`${domain} ${why}`, { temporary: false, responseCode: 550, enhancedStatus: "5.1.2", cause });
}

/** The temporary failure for a DNS lookup that failed (RFC 3463 §3.5, X.4.3 directory server failure). */
function dnsFailure(what: string, err: unknown): DeliveryError {
  const code = (err as { code?: unknown } | null)?.code;
  const detail = typeof code === "string" ? ` (${code})` : "";
  // Unknown errors count as temporary too: only a definite negative answer is final.
  return new DeliveryError(`${what} failed${isTemporaryDnsError(err) ? "" : ", treated as temporary"}${detail}`, {
    temporary: true,
    responseCode: 451,
    enhancedStatus: "4.4.3",
    cause: err,
  });
}

/**
 * The implicit MX of a domain without MX records (RFC 5321 §5.1): the domain itself, if it has
 * an A or AAAA record. Checked only with `opts.addressResolver`.
 * @throws DeliveryError permanent 550 5.1.2 when both lookups answer "no such name/record";
 *   temporary 451 4.4.3 when neither found an address and one of them failed temporarily.
 */
async function implicitMx(d: string, port: number, opts: ResolveRouteOptions): Promise<Route> {
  const route: Route = { host: d, port, kind: "mx" };
  const lookup = opts.addressResolver;
  if (!lookup) return route;
  const answers = await Promise.allSettled([withTimeout(lookup(d, "A"), opts.timeoutMs), withTimeout(lookup(d, "AAAA"), opts.timeoutMs)]);
  if (answers.some((a) => a.status === "fulfilled" && a.value.length > 0)) return route;
  const failure = answers.find((a): a is PromiseRejectedResult => a.status === "rejected" && !isNegativeDnsAnswer(a.reason));
  if (failure) throw dnsFailure(`address lookup for ${d} (no MX records)`, failure.reason);
  const nx = answers.find((a): a is PromiseRejectedResult => a.status === "rejected" && isNxdomain(a.reason));
  throw noSuchDomain(d, nx?.reason, nx ? "does not exist (NXDOMAIN)" : "has no MX, A or AAAA records");
}

/** Parse `host:port` (the static route syntax). */
function parseHostPort(value: string): { host: string; port: number } {
  const i = value.lastIndexOf(":");
  const host = value.slice(0, i);
  const port = Number(value.slice(i + 1));
  if (i <= 0 || !Number.isInteger(port) || port < 1 || port > 65535) {
    throw new Error(`invalid static route ${JSON.stringify(value)} (expected host:port)`);
  }
  return { host, port };
}

function fisherYates<T>(items: T[]): T[] {
  const out = [...items];
  for (let i = out.length - 1; i > 0; i--) {
    const j = Math.floor(Math.random() * (i + 1));
    const a = out[i] as T;
    out[i] = out[j] as T;
    out[j] = a;
  }
  return out;
}

function withTimeout<T>(p: Promise<T>, ms: number | undefined): Promise<T> {
  if (ms === undefined) return p;
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(Object.assign(new Error("DNS lookup timed out"), { code: "ETIMEOUT" })), ms);
  });
  return Promise.race([p, timeout]).finally(() => clearTimeout(timer));
}
