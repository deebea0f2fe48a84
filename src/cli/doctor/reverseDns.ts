/**
 * `doctor` check: reverse DNS of the address outbound mail leaves from. Many receivers refuse
 * mail from an address without forward-confirmed reverse DNS (FCrDNS, RFC 8601 §3's
 * `iprev`): the PTR of the address (RFC 1035 §3.5) names a host whose A/AAAA records give the
 * same address back. Lookups go through the bridge's resolver (src/mail/dns.ts).
 */
import { isIP } from "node:net";
import { reverseName, type DnsResolver } from "../../mail/dns.ts";
import { hostAddresses } from "./publishedRecords.ts";
import { dnsFailure, fail, isNoRecord, normName, ok, warn, type DoctorResult } from "./result.ts";

/** Inputs of {@link checkReverseDns}. */
export interface ReverseDnsInput {
  resolver: DnsResolver;
  /** `outbound.mode`. */
  mode: "direct" | "relay";
  /** `outbound.relay.host` in relay mode. */
  relayHost: string | null;
  /** The EHLO name outbound mail uses (`outbound.helo_name`, else `smtp.hostname`). */
  heloName: string;
  /** The source address outbound connections use, when the config names one; null when unknown. */
  sourceAddress: string | null;
}

const HOW_TO_CHECK = (helo: string) =>
  `find the public address mail leaves from (e.g. \`curl -4 https://ifconfig.co\` on the bridge host), check that \`dig -x <address>\` names ${helo} and \`dig ${helo}\` gives the address back; the PTR is set by whoever owns the address (your hosting provider)`;

/** Whether two IP address texts are the same address (IPv6 forms compared through their reverse names). */
function sameAddress(a: string, b: string): boolean {
  return isIP(a) !== 0 && isIP(b) !== 0 && reverseName(a) === reverseName(b);
}

/**
 * Check FCrDNS of the outbound source address. When the config names no address, the
 * addresses of the EHLO name are taken as the likely ones (in direct mode the bridge host
 * sends): a problem found for them is a `warn`, as the real source address may differ.
 * @returns `ok` (relay mode, or FCrDNS holds and names the EHLO name), `warn`, or `fail`
 *   (a known source address without FCrDNS, or a lookup that could not be made)
 */
export async function checkReverseDns(input: ReverseDnsInput): Promise<DoctorResult> {
  const check = "reverse dns";
  const helo = normName(input.heloName);
  if (input.mode === "relay") {
    return ok(check, `outbound mail leaves through the relay ${input.relayHost ?? "(outbound.relay.host)"}: receivers check the relay's reverse DNS, not this host's`);
  }
  let addresses: string[];
  const known = input.sourceAddress !== null;
  if (known) {
    addresses = [input.sourceAddress!];
  } else {
    try {
      addresses = await hostAddresses(input.resolver, helo);
    } catch (err) {
      return dnsFailure(check, `A/AAAA ${helo}`, err, input.resolver.servers);
    }
    if (addresses.length === 0) return warn(check, `the outbound source address is not known (the config names none, and ${helo} has no A/AAAA record)`, HOW_TO_CHECK(helo));
  }
  const problems: string[] = [];
  const passes: string[] = [];
  for (const ip of addresses) {
    let names: string[];
    try {
      names = await input.resolver.reverse(ip);
    } catch (err) {
      if (!isNoRecord(err)) return dnsFailure(check, `PTR ${reverseName(ip)}`, err, input.resolver.servers);
      problems.push(`${ip} has no PTR record`);
      continue;
    }
    const confirmed: string[] = [];
    for (const name of names) {
      let forward: string[];
      try {
        forward = await hostAddresses(input.resolver, name);
      } catch (err) {
        return dnsFailure(check, `A/AAAA ${name}`, err, input.resolver.servers);
      }
      if (forward.some((a) => sameAddress(a, ip))) confirmed.push(normName(name));
    }
    if (confirmed.length === 0) {
      problems.push(`${ip} PTR ${names.map(normName).join(", ")}, which does not resolve back to ${ip}`);
    } else if (!confirmed.includes(helo)) {
      problems.push(`${ip} PTR ${confirmed.join(", ")} (confirmed), but the EHLO name is ${helo}`);
    } else {
      passes.push(`${ip} PTR ${helo} → ${ip}`);
    }
  }
  const assumption = known ? "" : ` (assuming mail leaves from the address of ${helo}; the config names no source address)`;
  if (problems.length === 0) return ok(check, `${passes.join("; ")}${assumption}`);
  const fix = `have the PTR of ${addresses.join(", ")} set to ${helo} (by whoever owns the address, usually the hosting provider) and ${helo} resolve to it`;
  const found = `${problems.join("; ")}${assumption}`;
  if (!known) return warn(check, found, `${fix}; if mail leaves from another address: ${HOW_TO_CHECK(helo)}`);
  return fail(check, found, fix);
}
