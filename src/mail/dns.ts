/**
 * The bridge's one DNS resolver. Every lookup the bridge makes goes through it: SPF, DKIM,
 * DMARC and ARC (mailauth), MX for outbound delivery, PTR of SMTP clients, DNSBL, MTA-STS.
 *
 * It sits on node:dns's c-ares `Resolver`, so the servers it asks are exactly the ones the
 * config names (`dns.nameservers`, `host:port`), or the system's when that list is empty.
 * Every query has a per-try timeout and a bounded number of tries; answers and
 * "no such name / no such record" are kept in a small LRU cache for `cacheTtlMs`.
 * Temporary failures (timeout, SERVFAIL, refused) are never cached.
 *
 * Errors are node:dns errors: an `Error` with `code` (`ENOTFOUND`, `ENODATA`, `ETIMEOUT`,
 * `ESERVFAIL`, ...). {@link isTemporaryDnsError} tells the retryable ones apart.
 */
import { Resolver } from "node:dns/promises";
import { isIP } from "node:net";

/** Record types the bridge looks up (RFC 1035 §3.2.2, RFC 3596). */
export type DnsRrType = "A" | "AAAA" | "MX" | "TXT" | "PTR" | "CNAME" | "NS";

/** An MX record as node:dns returns it (RFC 1035 §3.3.9). */
export interface MxRecord {
  exchange: string;
  priority: number;
}

/**
 * A mailauth-compatible lookup function: the shape of `dns.promises.resolve(name, rrtype)`.
 * TXT answers are arrays of character-string arrays; MX answers are {@link MxRecord}s;
 * A/AAAA/PTR/CNAME/NS answers are strings.
 */
export type DnsLookup = (name: string, rrtype: string) => Promise<unknown[]>;

/** Options of {@link DnsResolver}; the `dns` config section. */
export interface DnsResolverOptions {
  /**
   * Servers to ask, each `ip`, `ip:port` or `[ipv6]:port` (node:dns `setServers` syntax).
   * Empty: the system's resolvers (`/etc/resolv.conf`).
   */
  nameservers: readonly string[];
  /** Per-try timeout, in ms. */
  timeoutMs: number;
  /** Tries per query (c-ares retries over the servers in turn). */
  tries: number;
  /** Most cached answers; 0 turns the cache off. */
  cacheEntries: number;
  /** How long an answer (or NXDOMAIN/NODATA) is kept, in ms. */
  cacheTtlMs: number;
}

/** node:dns codes that mean "the name or the record does not exist": a definite answer. */
const NEGATIVE_CODES = new Set(["ENOTFOUND", "ENODATA"]);

/**
 * node:dns codes that mean "no answer now": a timeout, SERVFAIL, refusal or a network
 * failure. The caller should answer 4xx and let the sender retry (RFC 7208 §2.6.6
 * temperror, RFC 7489 §6.6.3). EBADRESP (a malformed reply) and EOF (a TCP connection closed
 * mid-reply) count too: c-ares fails every query in flight on a connection with EBADRESP when
 * one reply on it cannot be parsed, so an unrelated lookup can get it (see
 * test/integration/dns.test.ts).
 */
const TEMPORARY_CODES = new Set([
  "ETIMEOUT",
  "ESERVFAIL",
  "ECONNREFUSED",
  "EREFUSED",
  "ECANCELLED",
  "EDESTRUCTION",
  "ENETUNREACH",
  "EAI_AGAIN",
  "EBADRESP",
  "EOF",
]);

/**
 * Whether `err` is a DNS failure that may succeed later (timeout, SERVFAIL, refused, network,
 * malformed reply). NXDOMAIN and NODATA are definite answers and return false.
 */
export function isTemporaryDnsError(err: unknown): boolean {
  const code = (err as { code?: unknown } | null)?.code;
  return typeof code === "string" && TEMPORARY_CODES.has(code);
}

/** Whether `err` says the name or record does not exist (NXDOMAIN, NODATA). */
export function isNegativeDnsAnswer(err: unknown): boolean {
  const code = (err as { code?: unknown } | null)?.code;
  return typeof code === "string" && NEGATIVE_CODES.has(code);
}

interface CacheEntry {
  expires: number;
  answer?: unknown[];
  /** A negative answer, kept as its code and message. */
  negative?: { code: string; message: string };
}

/**
 * Check a `dns.nameservers` entry.
 * @returns null when usable, else what is wrong (for a config error)
 */
export function nameserverProblem(entry: string): string | null {
  const m = /^\[([0-9a-fA-F:.]+)\]:(\d{1,5})$/.exec(entry) ?? /^([0-9.]+)(?::(\d{1,5}))?$/.exec(entry);
  if (m) {
    if (!isIP(m[1]!)) return `${JSON.stringify(entry)} is not an IP address (host names cannot name a DNS server)`;
    if (m[2] !== undefined && (Number(m[2]) < 1 || Number(m[2]) > 65535)) return `port of ${JSON.stringify(entry)} must be 1-65535`;
    return null;
  }
  if (isIP(entry) === 6) return null;
  return `${JSON.stringify(entry)} must be ip, ip:port or [ipv6]:port`;
}

/**
 * The error of a cached negative answer, as node:dns throws it (`code`, `hostname`), without a
 * stack trace: it would name only the cache, and capturing one costs more than the rest of a
 * cache hit. mailauth's DMARC lookup (RFC 7489 §6.6.3) meets several such answers per mail.
 */
function cachedNegative(negative: { code: string; message: string }, hostname: string): Error {
  const limit = Error.stackTraceLimit;
  Error.stackTraceLimit = 0;
  try {
    return Object.assign(new Error(negative.message), { code: negative.code, hostname });
  } finally {
    Error.stackTraceLimit = limit;
  }
}

/**
 * A copy of a cached or shared answer for a caller, who may change it (sort MX records, join TXT
 * strings): each record copied one level deep, which is all node:dns's shapes of
 * {@link DnsRrType} have (strings; `string[]` for TXT; a flat object for MX). 20 to 50 times
 * cheaper than `structuredClone` (0.05 against 1-2 µs), and cache hits are most of a mail's lookups.
 */
function copyAnswer(answer: unknown[]): unknown[] {
  return answer.map((r) => (Array.isArray(r) ? [...(r as unknown[])] : r !== null && typeof r === "object" ? { ...r } : r));
}

/**
 * The resolver. Create one per bridge and pass it (or its {@link lookup}) wherever a
 * lookup is made.
 */
export class DnsResolver {
  readonly #resolver: Resolver;
  readonly #cache = new Map<string, CacheEntry>();
  readonly #inflight = new Map<string, Promise<unknown[]>>();
  readonly #opts: DnsResolverOptions;
  readonly #now: () => number;

  /**
   * @param opts see {@link DnsResolverOptions}
   * @param now clock in epoch ms (tests)
   * @throws Error when a nameserver entry is malformed (see {@link nameserverProblem})
   */
  constructor(opts: DnsResolverOptions, now: () => number = Date.now) {
    this.#opts = opts;
    this.#now = now;
    // c-ares doubles the timeout on each retry unless maxTimeout (Node 22.19, 24.5) caps it:
    // without it `tries: 3` waited 1 + 2 + 4 = 7 × timeoutMs instead of 3 ×.
    this.#resolver = new Resolver({ timeout: opts.timeoutMs, tries: opts.tries, maxTimeout: opts.timeoutMs });
    if (opts.nameservers.length > 0) {
      for (const ns of opts.nameservers) {
        const problem = nameserverProblem(ns);
        if (problem) throw new Error(`dns.nameservers: ${problem}`);
      }
      this.#resolver.setServers([...opts.nameservers]);
    }
  }

  /** The servers in use (`ip:port` strings, as node:dns reports them). */
  get servers(): string[] {
    return this.#resolver.getServers();
  }

  /**
   * The mailauth-compatible lookup, bound to this resolver: pass it as mailauth's `resolver`.
   */
  readonly lookup: DnsLookup = (name, rrtype) => this.resolve(name, rrtype as DnsRrType);

  /**
   * Look up `rrtype` records of `name`, from the cache when fresh.
   * @param name a domain name (case-insensitive; a trailing dot is ignored)
   * @returns the records, in node:dns's shapes (see {@link DnsLookup})
   * @throws Error with `code` ENOTFOUND/ENODATA (definite; cached) or a temporary code such
   *   as ETIMEOUT/ESERVFAIL (not cached; see {@link isTemporaryDnsError})
   */
  async resolve(name: string, rrtype: DnsRrType): Promise<unknown[]> {
    const key = `${rrtype} ${name.toLowerCase().replace(/\.$/, "")}`;
    const cached = this.#cache.get(key);
    if (cached) {
      if (cached.expires > this.#now()) {
        // LRU: a hit moves the entry to the back.
        this.#cache.delete(key);
        this.#cache.set(key, cached);
        if (cached.negative) throw cachedNegative(cached.negative, name);
        return copyAnswer(cached.answer!);
      }
      this.#cache.delete(key);
    }
    let query = this.#inflight.get(key);
    if (!query) {
      query = this.#query(key, name, rrtype).finally(() => this.#inflight.delete(key));
      this.#inflight.set(key, query);
    }
    // Each caller gets its own copy: the answer is cached and shared with concurrent callers.
    return copyAnswer(await query);
  }

  async #query(key: string, name: string, rrtype: DnsRrType): Promise<unknown[]> {
    try {
      const answer = (await this.#resolver.resolve(name, rrtype)) as unknown[];
      this.#remember(key, { expires: this.#now() + this.#opts.cacheTtlMs, answer });
      return answer;
    } catch (err) {
      if (isNegativeDnsAnswer(err)) {
        const e = err as Error & { code: string };
        this.#remember(key, { expires: this.#now() + this.#opts.cacheTtlMs, negative: { code: e.code, message: e.message } });
      }
      throw err;
    }
  }

  #remember(key: string, entry: CacheEntry): void {
    if (this.#opts.cacheEntries <= 0) return;
    this.#cache.delete(key);
    this.#cache.set(key, entry);
    while (this.#cache.size > this.#opts.cacheEntries) {
      const oldest = this.#cache.keys().next().value;
      if (oldest === undefined) break;
      this.#cache.delete(oldest);
    }
  }

  /**
   * MX records of a domain (RFC 5321 §5.1).
   * @throws as {@link resolve}
   */
  async resolveMx(domain: string): Promise<MxRecord[]> {
    return (await this.resolve(domain, "MX")) as MxRecord[];
  }

  /**
   * PTR names of an IP address (the reverse zone, RFC 1035 §3.5, RFC 3596 §2.5).
   * @param ip an IPv4 or IPv6 address
   * @throws RangeError for something that is not an IP address; otherwise as {@link resolve}
   */
  async reverse(ip: string): Promise<string[]> {
    return (await this.resolve(reverseName(ip), "PTR")) as string[];
  }

  /**
   * The callback form of {@link reverse} that smtp-server's `resolver` option takes
   * (`resolver.reverse(ip, cb)`), so the listener's client name lookup uses this resolver too.
   */
  readonly callbackApi = {
    reverse: (ip: string, cb: (err: Error | null, hostnames?: string[]) => void): void => {
      this.reverse(ip).then(
        (names) => cb(null, names),
        (err: unknown) => cb(err as Error),
      );
    },
  };
}

/**
 * The reverse-zone name of an IP address: `4.3.2.1.in-addr.arpa` for 1.2.3.4 (RFC 1035 §3.5),
 * nibbles under `ip6.arpa` for IPv6 (RFC 3596 §2.5). IPv4-mapped IPv6 addresses (::ffff:0:0/96,
 * dotted or hex form) use the IPv4 form. IPv6 text may end in a dotted quad (RFC 4291 §2.2,
 * e.g. the NAT64 `64:ff9b::192.0.2.33`) and carry a zone index (`fe80::1%eth0`, dropped).
 * @throws RangeError when `ip` is not an IP address
 */
export function reverseName(ip: string): string {
  if (isIP(ip) === 4) return `${ip.split(".").reverse().join(".")}.in-addr.arpa`;
  const addr = ip.replace(/%.*$/, "");
  if (isIP(addr) !== 6) throw new RangeError(`not an IP address: ${JSON.stringify(ip)}`);
  // A trailing dotted quad is the last two 16-bit groups.
  const text = addr.replace(/(\d+)\.(\d+)\.(\d+)\.(\d+)$/, (_, a: string, b: string, c: string, d: string) =>
    `${((Number(a) << 8) | Number(b)).toString(16)}:${((Number(c) << 8) | Number(d)).toString(16)}`,
  );
  const [head = "", tail = ""] = text.split("::");
  const groups = (s: string) => (s ? s.split(":") : []);
  const h = groups(head);
  const t = groups(tail);
  const full = [...h, ...Array<string>(text.includes("::") ? 8 - h.length - t.length : 0).fill("0"), ...t].map((g) => g.toLowerCase().padStart(4, "0"));
  if (full.slice(0, 5).every((g) => g === "0000") && full[5] === "ffff") {
    const v4 = [full[6]!, full[7]!].flatMap((g) => [parseInt(g.slice(0, 2), 16), parseInt(g.slice(2), 16)]);
    return `${v4.reverse().join(".")}.in-addr.arpa`;
  }
  const nibbles = full.join("").split("").reverse();
  return `${nibbles.join(".")}.ip6.arpa`;
}
