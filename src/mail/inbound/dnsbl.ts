/**
 * DNS blocklist (DNSBL) checks of SMTP clients, RFC 5782, through the bridge's one resolver
 * (`src/mail/dns.ts`).
 *
 * For client 192.0.2.99 and zone `bl.example` the query is the A record of
 * `99.2.0.192.bl.example` (RFC 5782 §2.1); for IPv6, the 32 nibbles in reverse order
 * (RFC 5782 §2.4). An A answer in 127.0.0.0/24 is a listing (RFC 5782 §2.1 uses 127.0.0.2 and
 * up for the reasons a list gives). NXDOMAIN/NODATA means not listed. Other answers (for
 * example Spamhaus's 127.255.255.x "your resolver is blocked" codes) are no listing and are
 * reported as such. Lookup failures (timeout, SERVFAIL) are reported and never block: a
 * DNSBL outage must not stop inbound mail ("fail open").
 */
import type { DnsResolver } from "../dns.ts";
import { isNegativeDnsAnswer, reverseName } from "../dns.ts";

/** What {@link checkDnsbl} needs of the resolver. */
export type DnsblResolver = Pick<DnsResolver, "resolve">;

/** A DNSBL answer that lists the client. */
export interface DnsblListing {
  /** The zone that lists the client, as configured. */
  zone: string;
  /** The A records it answered, e.g. `["127.0.0.2"]`. */
  answers: string[];
}

/** Outcome of {@link checkDnsbl}: whether a zone lists the client, and what went wrong on the way. */
export interface DnsblResult {
  /** The first zone (in configured order) that lists the client; null when none does. */
  listing: DnsblListing | null;
  /** Zones that could not be asked (timeout, SERVFAIL, ...): treated as not listing. */
  failures: { zone: string; error: unknown }[];
  /** Zones that answered something other than a 127.0.0.x listing: treated as not listing. */
  unexpected: DnsblListing[];
}

/** RFC 5782 §2.1: listings are loopback addresses; 127.0.0.0/24 is the range lists use for them. */
const LISTING_RE = /^127\.0\.0\.\d{1,3}$/;

/**
 * The name to query for `ip` in `zone` (RFC 5782 §2.1 for IPv4, §2.4 for IPv6).
 * IPv4-mapped IPv6 addresses are asked as their IPv4 address.
 * @param ip client address
 * @param zone DNSBL zone, e.g. `zen.spamhaus.org` (a trailing dot is ignored)
 * @returns e.g. `99.2.0.192.zen.spamhaus.org`
 * @throws RangeError when `ip` is not an IP address
 */
export function dnsblQueryName(ip: string, zone: string): string {
  const reverse = reverseName(ip).replace(/\.(?:in-addr|ip6)\.arpa$/, "");
  return `${reverse}.${zone.replace(/\.$/, "")}`;
}

/**
 * Ask every zone about `ip`, all at once.
 * @param resolver the bridge's resolver (its timeouts and tries bound each lookup)
 * @param ip client address
 * @param zones DNSBL zones, in order of preference for the reply text
 * @returns the listing (if any) and the zones that failed or answered oddly. Never rejects;
 *   an `ip` that is not an IP address is reported as a failure of every zone.
 */
export async function checkDnsbl(resolver: DnsblResolver, ip: string, zones: readonly string[]): Promise<DnsblResult> {
  const outcomes = await Promise.all(
    zones.map(async (zone) => {
      try {
        const answers = (await resolver.resolve(dnsblQueryName(ip, zone), "A")).map(String);
        return { zone, answers };
      } catch (error) {
        if (isNegativeDnsAnswer(error)) return { zone, answers: [] as string[] };
        return { zone, error };
      }
    }),
  );
  const result: DnsblResult = { listing: null, failures: [], unexpected: [] };
  for (const o of outcomes) {
    if ("error" in o) {
      result.failures.push({ zone: o.zone, error: o.error });
    } else if (o.answers.length > 0) {
      if (o.answers.some((a) => LISTING_RE.test(a))) result.listing ??= { zone: o.zone, answers: o.answers };
      else result.unexpected.push({ zone: o.zone, answers: o.answers });
    }
  }
  return result;
}
