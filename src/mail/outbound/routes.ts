/**
 * Where mail for a recipient domain goes: a static route, the relay, or the domain's
 * MX hosts (RFC 5321 §5.1), with implicit MX and null MX (RFC 7505) handled.
 */
import { isIP } from "node:net";
import type { OutboundConfig } from "../../config/schema.ts";

/** MX lookup, the shape of `dns.promises.resolveMx`. Rejects with an Error carrying a DNS `code` (e.g. `ENODATA`). */
export type MxResolver = (domain: string) => Promise<{ exchange: string; priority: number }[]>;

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
  /** Give up on the MX lookup after this many ms with a temporary error (default: no limit). */
  timeoutMs?: number;
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

/** DNS error codes that mean "no MX records" rather than "lookup failed" (node:dns codes). */
const NO_MX_CODES = new Set(["ENODATA", "ENOTFOUND"]);

/**
 * The ordered routes for `domain`:
 * 1. a static route (`outbound.static_routes[domain]`, exact and case-insensitive match) is the
 *    only route when present;
 * 2. in `relay` mode, the relay (`outbound.relay`) is the only route;
 * 3. else the MX records sorted by ascending priority (equal priorities shuffled), duplicates
 *    dropped, port 25 (RFC 5321 §5.1);
 *    - no MX records (empty answer, `ENODATA`, `ENOTFOUND`): implicit MX, the domain itself
 *      (RFC 5321 §5.1), whose A/AAAA lookup the SMTP client then does;
 *    - an address literal domain (`[192.0.2.1]`, RFC 5321 §4.1.3) routes to that address.
 *
 * @param domain recipient domain (normalised: lower case, A-labels).
 * @param cfg routing part of the outbound config.
 * @param resolver MX lookup (inject a fake in tests; never live DNS there).
 * @param opts shuffle, MX port and lookup timeout (ms).
 * @returns at least one route.
 * @throws DeliveryError permanent `556 5.1.10` for a null MX (RFC 7505 §3: a single MX with
 *   exchange "" or "."); temporary `451 4.4.3` for any other DNS failure or timeout, and for
 *   relay mode without `outbound.relay`; Error for a malformed static route value.
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
    const code = (err as { code?: unknown }).code;
    if (typeof code === "string" && NO_MX_CODES.has(code)) return [{ host: d, port, kind: "mx" }];
    throw new DeliveryError(`MX lookup for ${d} failed${typeof code === "string" ? ` (${code})` : ""}`, {
      temporary: true,
      responseCode: 451,
      enhancedStatus: "4.4.3",
      cause: err,
    });
  }

  if (records.length === 0) return [{ host: d, port, kind: "mx" }];
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
