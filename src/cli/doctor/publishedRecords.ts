/**
 * `doctor` checks of the DNS records the mail domain publishes (MX, SPF, DKIM, DMARC),
 * compared with what `dns-records` prints (src/mail/outbound/dnsRecords.ts). Every lookup goes
 * through the bridge's one resolver (src/mail/dns.ts, the `dns` config section), never the
 * system's.
 */
import type { DnsResolver, MxRecord } from "../../mail/dns.ts";
import type { DnsRecord } from "../../mail/outbound/dnsRecords.ts";
import { dnsFailure, fail, isNoRecord, normName, ok, warn, type DoctorResult } from "./result.ts";

/** What the record checks compare against: the `dns-records` output for this config. */
export interface ExpectedRecords {
  /** The mail domain (`mail.domain`), normalised. */
  mailDomain: string;
  /** The MX host (`smtp.hostname`), normalised. */
  mxHost: string;
  /** The records `dns-records` prints, in its order (MX, SPF, DKIM, DMARC). */
  records: DnsRecord[];
}

/** How a published record is written in a fix line: `<name> TXT "<value>"`. */
function zoneLine(r: DnsRecord): string {
  return r.type === "MX" ? `${r.name}. MX ${r.value}.` : `${r.name}. TXT "${r.value}"`;
}

function expected(exp: ExpectedRecords, pick: (r: DnsRecord) => boolean, what: string): DnsRecord {
  const r = exp.records.find(pick);
  if (!r) throw new Error(`dns-records gives no ${what} record`);
  return r;
}

/**
 * The TXT records of `name`, each one's character-strings joined (RFC 7208 §3.3, RFC 6376
 * §3.6.2.2); an empty list when the name or the record type does not exist.
 * @throws the resolver's error for anything but NXDOMAIN/NODATA (timeout, SERVFAIL, ...)
 */
export async function txtRecords(resolver: DnsResolver, name: string): Promise<string[]> {
  try {
    const answer = (await resolver.resolve(name, "TXT")) as string[][];
    return answer.map((parts) => parts.join(""));
  } catch (err) {
    if (isNoRecord(err)) return [];
    throw err;
  }
}

/**
 * The addresses (A and AAAA) of a host name; an empty list when it has none.
 * @throws the resolver's error for anything but NXDOMAIN/NODATA
 */
export async function hostAddresses(resolver: DnsResolver, host: string): Promise<string[]> {
  const out: string[] = [];
  for (const type of ["A", "AAAA"] as const) {
    try {
      out.push(...((await resolver.resolve(host, type)) as string[]));
    } catch (err) {
      if (!isNoRecord(err)) throw err;
    }
  }
  return out;
}

/**
 * The MX of the mail domain must name `smtp.hostname` (RFC 5321 §5.1), and that host must have
 * an address (A/AAAA), or no mail reaches the bridge.
 * @returns `ok`, or `fail` with the record to publish; `fail` when a lookup cannot be made
 */
export async function checkMx(resolver: DnsResolver, exp: ExpectedRecords): Promise<DoctorResult> {
  const check = "dns mx";
  const want = expected(exp, (r) => r.type === "MX", "MX");
  let mx: MxRecord[];
  try {
    mx = await resolver.resolveMx(exp.mailDomain);
  } catch (err) {
    if (!isNoRecord(err)) return dnsFailure(check, `MX ${exp.mailDomain}`, err, resolver.servers);
    mx = [];
  }
  if (mx.length === 0) return fail(check, `${exp.mailDomain} has no MX record: no mail reaches the bridge`, `publish ${zoneLine(want)}`);
  const listed = mx.map((r) => `${r.priority} ${normName(r.exchange)}`).join(", ");
  if (!mx.some((r) => normName(r.exchange) === exp.mxHost)) {
    return fail(check, `MX of ${exp.mailDomain} is ${listed}, not ${exp.mxHost} (smtp.hostname)`, `publish ${zoneLine(want)} (and remove the others), or set smtp.hostname to the MX host`);
  }
  let addresses: string[];
  try {
    addresses = await hostAddresses(resolver, exp.mxHost);
  } catch (err) {
    return dnsFailure(check, `A/AAAA ${exp.mxHost}`, err, resolver.servers);
  }
  if (addresses.length === 0) {
    return fail(check, `MX of ${exp.mailDomain} is ${listed}, but ${exp.mxHost} has no A/AAAA record`, `publish an A (and AAAA) record for ${exp.mxHost} with the bridge host's public address`);
  }
  return ok(check, `${exp.mailDomain} MX ${listed}; ${exp.mxHost} is ${addresses.join(", ")}`);
}

/** The mechanisms of an SPF record as compared: lower-case, no `+` qualifier, no trailing dot on names. */
function spfTerms(record: string): string[] {
  return record
    .trim()
    .toLowerCase()
    .split(/\s+/)
    .slice(1)
    .map((t) => t.replace(/^\+/, "").replace(/\.$/, ""));
}

/**
 * The SPF record of the mail domain (RFC 7208): exactly one `v=spf1` TXT record (§4.5: more
 * is a permerror), holding every mechanism `dns-records` gives (the bridge host, the MX, the
 * relay), and ending in `-all` (`~all`, `?all` or none lets others send as the domain: `warn`).
 */
export async function checkSpf(resolver: DnsResolver, exp: ExpectedRecords): Promise<DoctorResult> {
  const check = "dns spf";
  const want = expected(exp, (r) => r.type === "TXT" && r.name === exp.mailDomain, "SPF");
  let txt: string[];
  try {
    txt = await txtRecords(resolver, exp.mailDomain);
  } catch (err) {
    return dnsFailure(check, `TXT ${exp.mailDomain}`, err, resolver.servers);
  }
  const spf = txt.filter((t) => /^v=spf1(\s|$)/i.test(t.trim()));
  if (spf.length === 0) return fail(check, `${exp.mailDomain} has no SPF record: receivers cannot tell the bridge's mail from forgeries`, `publish ${zoneLine(want)}`);
  if (spf.length > 1) {
    return fail(check, `${exp.mailDomain} has ${spf.length} SPF records (RFC 7208 §4.5: a permerror, receivers ignore them all)`, `keep one: ${zoneLine(want)}`);
  }
  const record = spf[0]!.trim();
  const have = new Set(spfTerms(record));
  const missing = spfTerms(want.value).filter((t) => t !== "-all" && !have.has(t));
  if (missing.length > 0) {
    return fail(check, `SPF of ${exp.mailDomain} is "${record}": it lacks ${missing.join(" ")}, so the bridge's mail fails SPF`, `publish ${zoneLine(want)}`);
  }
  if (have.has("-all") || have.has("~all")) return ok(check, `"${record}"`);
  return warn(check, `SPF of ${exp.mailDomain} is "${record}": it does not end in -all, so anyone may send as @${exp.mailDomain}`, `publish ${zoneLine(want)}`);
}

/** The `tag=value` pairs of a DKIM key record or a DMARC record (RFC 6376 §3.2, RFC 7489 §6.4); tags lower-cased. */
export function tagList(record: string): Map<string, string> {
  const tags = new Map<string, string>();
  for (const part of record.split(";")) {
    const eq = part.indexOf("=");
    if (eq < 0) continue;
    tags.set(part.slice(0, eq).trim().toLowerCase(), part.slice(eq + 1).trim());
  }
  return tags;
}

/**
 * The public key of a DKIM key record, base64 without white space (RFC 6376 §3.6.1 `p=`);
 * null when the record has no `p=` tag.
 */
export function dkimPublicKey(record: string): string | null {
  const p = tagList(record).get("p");
  return p === undefined ? null : p.replace(/\s+/g, "");
}

/**
 * The DKIM key record at `<selector>._domainkey.<mail domain>` (RFC 6376 §3.6.1): exactly one,
 * `v=DKIM1` when a version is given, `k=rsa` (the bridge signs rsa-sha256), a non-empty `p=`
 * (empty means revoked, §3.6.1). Whether `p=` is the bridge's key is {@link checkDkimKey}'s job
 * (./dkimKey.ts).
 * @returns the result and the published record (null when there is none usable)
 */
export async function checkDkimRecord(resolver: DnsResolver, exp: ExpectedRecords): Promise<{ result: DoctorResult; published: string | null }> {
  const check = "dns dkim";
  const want = expected(exp, (r) => r.name.includes("._domainkey."), "DKIM");
  const publish = `publish the record \`matrix-email-bridge dns-records\` prints for ${want.name}`;
  let txt: string[];
  try {
    txt = await txtRecords(resolver, want.name);
  } catch (err) {
    return { result: dnsFailure(check, `TXT ${want.name}`, err, resolver.servers), published: null };
  }
  if (txt.length === 0) return { result: fail(check, `${want.name} has no TXT record: receivers cannot verify the bridge's DKIM signatures`, publish), published: null };
  if (txt.length > 1) return { result: fail(check, `${want.name} has ${txt.length} TXT records; verifiers take one at random`, `keep one: ${publish}`), published: null };
  const record = txt[0]!.trim();
  const tags = tagList(record);
  const version = tags.get("v");
  if (version !== undefined && version !== "DKIM1") return { result: fail(check, `${want.name} is "${cut(record)}": v= must be DKIM1`, publish), published: null };
  const k = (tags.get("k") ?? "rsa").toLowerCase();
  if (k !== "rsa") return { result: fail(check, `${want.name} publishes a k=${k} key; the bridge signs with RSA (rsa-sha256)`, publish), published: null };
  const p = dkimPublicKey(record);
  if (!p) return { result: fail(check, `${want.name} has ${p === "" ? "an empty p= (a revoked key)" : "no p= tag"}`, publish), published: null };
  return { result: ok(check, `${want.name} publishes an RSA key (${cut(record)})`), published: record };
}

/**
 * The DMARC record at `_dmarc.<mail domain>` (RFC 7489 §6.1): exactly one `v=DMARC1` record
 * (§6.6.3: several means none) with a `p=` policy; `p=none` is a `warn` (spoofed mail is
 * delivered; `dns-records` publishes quarantine).
 */
export async function checkDmarc(resolver: DnsResolver, exp: ExpectedRecords): Promise<DoctorResult> {
  const check = "dns dmarc";
  const want = expected(exp, (r) => r.name.startsWith("_dmarc."), "DMARC");
  let txt: string[];
  try {
    txt = await txtRecords(resolver, want.name);
  } catch (err) {
    return dnsFailure(check, `TXT ${want.name}`, err, resolver.servers);
  }
  const dmarc = txt.filter((t) => /^v=DMARC1\s*(;|$)/i.test(t.trim()));
  if (dmarc.length === 0) return fail(check, `${want.name} has no DMARC record: receivers apply no policy to forged @${exp.mailDomain} mail`, `publish ${zoneLine(want)}`);
  if (dmarc.length > 1) return fail(check, `${want.name} has ${dmarc.length} DMARC records (RFC 7489 §6.6.3: receivers then apply none)`, `keep one: ${zoneLine(want)}`);
  const record = dmarc[0]!.trim();
  const policy = tagList(record).get("p")?.toLowerCase();
  if (policy !== "none" && policy !== "quarantine" && policy !== "reject") {
    return fail(check, `"${record}" has no valid p= policy`, `publish ${zoneLine(want)}`);
  }
  if (policy === "none") return warn(check, `"${record}": p=none, forged mail claiming @${exp.mailDomain} is delivered`, `publish ${zoneLine(want)} (p=quarantine, later p=reject)`);
  return ok(check, `"${record}"`);
}

/** A record shortened for a report line (DKIM keys are long). */
function cut(text: string, max = 60): string {
  return text.length <= max ? text : `${text.slice(0, max)}…`;
}
