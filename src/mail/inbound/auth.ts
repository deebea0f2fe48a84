/**
 * Sender authentication of inbound mail, before the 250: who may the bridge say a message is
 * from?
 *
 * 1. {@link readAuthor}: the one From mailbox, read strictly from the raw header section.
 *    Anything a lenient parser could read differently (two From fields, a folded or
 *    continued `From`, two addresses, a group, no usable domain) is refused: the address
 *    picks the ghost, so every parser must agree on it.
 * 2. {@link authenticateMessage}: mailauth's SPF (envelope sender and HELO), every DKIM
 *    signature, ARC chain validation and DMARC (alignment with the From domain, p=, sp=/np=,
 *    pct), every lookup through the bridge's one resolver (`mail/dns.ts`).
 * 3. {@link authDecision}: the configured policy turns the verdict into accept (verified or
 *    unverified) or an SMTP reply.
 *
 * "Verified" means an SPF or DKIM pass aligned with the From domain (RFC 7489 §3.1, relaxed
 * unless the domain's DMARC record asks for strict), whether or not the domain publishes DMARC,
 * or a DMARC fail vouched for by a trusted ARC sealer (RFC 8617 §7.2).
 */
import { createHash } from "node:crypto";
import { domainToASCII, domainToUnicode } from "node:url";
import type { AuthenticateResult } from "mailauth";
import addressparser from "nodemailer/lib/addressparser";
import { isTemporaryDnsError, type DnsLookup } from "../dns.ts";
import { SmtpReply } from "./rejections.ts";

/** SPF results (RFC 7208 §2.6). */
export type SpfResult = "pass" | "fail" | "softfail" | "neutral" | "none" | "temperror" | "permerror";
/** The best DKIM result over all signatures (RFC 8601 §2.7.1): pass if any passed. */
export type DkimResult = "pass" | "fail" | "policy" | "neutral" | "none" | "temperror" | "permerror";
/** DMARC results (RFC 7489 §11.2). */
export type DmarcResult = "pass" | "fail" | "none" | "temperror" | "permerror";
/** ARC chain validation results (RFC 8617 §4.4). */
export type ArcResult = "pass" | "fail" | "none";
/** DMARC policies (RFC 7489 §6.3 `p=`). */
export type DmarcPolicy = "none" | "quarantine" | "reject";

/** The author of a message: its single From mailbox (RFC 5322 §3.6.2). */
export interface Author {
  /** The addr-spec as written, domain lower-cased and in A-labels, e.g. `Bob@example.org`. */
  address: string;
  /** The From domain (RFC 7489 "Author Domain"), lower-case A-labels. */
  domain: string;
}

/**
 * The verdict on one message, stored with it (a column) and shown on the posted event.
 * The five result fields are what `docs/formats.md` documents as the event's auth field.
 */
export interface AuthVerdict {
  spf: SpfResult;
  dkim: DkimResult;
  dmarc: DmarcResult;
  arc: ArcResult;
  /** An SPF or DKIM pass aligned with the From domain, or a trusted ARC chain vouching for one. */
  verified: boolean;
  /** How it was verified: the aligned identifier, or null when unverified. */
  alignedBy: "dkim" | "spf" | "arc" | null;
  /** The effective DMARC policy of the From domain after sp=/np=, t= and pct (null: no record). */
  policy: DmarcPolicy | null;
  /** Domains whose DKIM signature passed (d=). */
  dkimDomains: string[];
  /** The domain SPF checked (MAIL FROM domain, or the HELO name for a null sender). */
  spfDomain: string | null;
  /** `d=` of the newest ARC-Seal when the chain passed, else null. */
  arcSealer: string | null;
  /** A lookup failed temporarily (timeout, SERVFAIL) while judging this message. */
  dnsTemporaryError: boolean;
}

/** Policy knobs: the `auth` config section. */
export interface AuthPolicy {
  /** Refuse a DMARC fail under p=reject (550 5.7.1). */
  enforceDmarcReject: boolean;
  /** Unverified mail: `mark` accepts it as unverified, `reject` refuses it (550 5.7.1). */
  unverified: "mark" | "reject";
  /** Answer 451 4.4.3 when a lookup failed temporarily and the mail is not verified otherwise. */
  deferOnDnsError: boolean;
}

/** What the SMTP side needs to authenticate one message. */
export interface AuthInput {
  /** The message as received (headers and body). */
  raw: Buffer;
  /** MAIL FROM, or null for the null reverse-path. */
  mailFrom: string | null;
  /** Client IP address (IPv4-mapped IPv6 is unwrapped). */
  remoteAddress: string;
  /** The HELO/EHLO name the client gave. */
  heloName: string;
}

/** Options of {@link authenticateMessage}. */
export interface AuthOptions {
  /** The bridge's DNS lookup (mailauth resolver shape). */
  lookup: DnsLookup;
  /** This MTA's host name, the authserv-id (RFC 8601 §2.5). */
  hostname: string;
  /** Smallest accepted DKIM RSA key, in bits (RFC 8301 §3.2). */
  minKeyBits: number;
  /** ARC sealers (lower-case domains) whose passing chain may vouch for a DMARC pass. */
  trustedArcSealers: readonly string[];
}

/** `550 5.7.1`: why the From header cannot name a sender (RFC 7489 §6.6.1; RFC 3463 X.7.1). */
function badAuthor(text: string): SmtpReply {
  return new SmtpReply(550, "5.7.1", text);
}

/** The header section of a message: everything before the first empty line. */
function headerSection(raw: Buffer): string {
  const crlf = raw.indexOf("\r\n\r\n");
  const lf = raw.indexOf("\n\n");
  const end = crlf >= 0 && (lf < 0 || crlf < lf) ? crlf : lf;
  return raw.subarray(0, end >= 0 ? end : raw.length).toString("utf8");
}

/** Why {@link canonicalDomain} refused a domain. */
type DomainProblem = "unusable" | "not canonical";

/**
 * The A-label form of a From domain, if the domain is written in a canonical form: the one
 * every reader turns into the same DNS name.
 *
 * The domain as written, lower-cased and NFC-normalised (a trailing root dot dropped), must be
 * its own A-label form (ASCII names, A-labels: `example.org`, `xn--bcher-kva.example`) or the
 * U-label form of that (`bücher.example`). Anything else is a spelling that only UTS-46
 * mapping (UTS #46 §4, what node:url `domainToASCII` does) turns into a name: fullwidth
 * letters or dots (`ｖｉｃｔｉｍ.test`, `victim．test`), compatibility characters (`ﬁ`,
 * mathematical letters), ignored ones (soft hyphen). DMARC (mailauth, `toALabel`) converts a
 * U-label with NFC, lower-casing and Punycode only (RFC 5891 §4.4, RFC 3492), splitting at `.`
 * only, so it would judge another name than the one the ghost is named after: such a name must
 * never pass (RFC 7489 §6.6.1: the Author Domain must be unambiguous). For a canonical spelling
 * both conversions give the same A-labels.
 * @param written the domain as written after the `@`
 * @returns the lower-case A-label form, or the problem: `unusable` when it is no domain name
 *   (no dot, characters a host name may not have, IDNA errors), `not canonical` as above
 */
function canonicalDomain(written: string): { domain: string } | { problem: DomainProblem } {
  const lowered = written.toLowerCase().normalize("NFC").replace(/\.$/, "");
  const domain = domainToASCII(lowered);
  if (!domain || !/^[a-z0-9-]+(\.[a-z0-9-]+)+$/.test(domain)) return { problem: "unusable" };
  if (lowered !== domain && lowered !== domainToUnicode(domain)) return { problem: "not canonical" };
  return { domain };
}

/**
 * Read the author (the From mailbox) strictly from the raw header section.
 *
 * Refused with `550 5.7.1`, because parsers would disagree about the author (RFC 7489 §6.6.1
 * says such messages should be rejected; RFC 5322 §3.6 allows exactly one From field):
 * no From field; two or more From fields; a From field name followed by white space or a line
 * break before its colon (`From :`, `From\r\n :`); a continuation line that starts like a
 * From field (` From: ...`); a From with no address, two or more addresses, or a group; an
 * address whose domain is not a usable domain name; a domain not written in a canonical form
 * (fullwidth letters or dots and other spellings only UTS-46 mapping reads as a name: DMARC
 * would judge another domain, see {@link canonicalDomain}); an address on one of `ownDomains`.
 * Before that, a header section with a bare CR (a CR not followed by LF) gets `554 5.6.0`:
 * header lines end in CRLF (RFC 5322 §2.2, RFC 5321 §2.3.8), and readers differ on where a
 * bare CR ends a line.
 *
 * @param raw the message as received
 * @param ownDomains the bridge's own domains (mail domain, MX host name), lower-case
 * @returns the author
 * @throws SmtpReply 550 5.7.1 naming the problem, or 554 5.6.0 for a bare CR
 */
export function readAuthor(raw: Buffer, ownDomains: readonly string[]): Author {
  const fields: string[][] = [];
  let current: string[] | null = null;
  const header = headerSection(raw);
  if (/\r(?!\n)/.test(header)) throw new SmtpReply(554, "5.6.0", "the header section has a bare CR: header lines must end in CRLF (RFC 5322 §2.2)");
  for (const line of header.split(/\r?\n/)) {
    if (/^[ \t]/.test(line)) {
      if (/^[ \t]+from[ \t]*:/i.test(line)) throw badAuthor("a header continuation line looks like a From field");
      current?.push(line);
      continue;
    }
    current = null;
    const colon = line.indexOf(":");
    const name = colon >= 0 ? line.slice(0, colon) : line;
    if (name.trim().toLowerCase() !== "from") continue;
    if (colon < 0 || name.toLowerCase() !== "from") {
      throw badAuthor("the From header field is malformed (white space or a line break before its colon)");
    }
    current = [line.slice(colon + 1)];
    fields.push(current);
  }
  if (fields.length === 0) throw badAuthor("the message has no From header field");
  if (fields.length > 1) throw badAuthor("the message has more than one From header field");
  const parsed = addressparser(fields[0]!.join(""));
  if (parsed.length !== 1 || parsed[0]?.group !== undefined) {
    throw badAuthor(parsed.length === 0 ? "the From header field has no address" : "the From header field must name exactly one mailbox");
  }
  const address = (parsed[0]?.address ?? "").trim();
  const at = address.lastIndexOf("@");
  if (at <= 0 || at === address.length - 1) throw badAuthor("the From address has no usable domain");
  const canonical = canonicalDomain(address.slice(at + 1));
  if ("problem" in canonical) {
    throw badAuthor(
      canonical.problem === "unusable"
        ? "the From address has no usable domain"
        : "the From address's domain is not written in a canonical form (write it in ASCII, A-labels or proper U-labels, without fullwidth or compatibility characters)",
    );
  }
  const { domain } = canonical;
  if (ownDomains.includes(domain)) throw badAuthor(`mail from ${domain}, this bridge's own domain, is not accepted from outside`);
  return { address: `${address.slice(0, at)}@${domain}`, domain };
}

/** The best result over several DKIM signatures (pass beats fail beats none). */
function bestDkim(results: readonly string[]): DkimResult {
  const order: DkimResult[] = ["pass", "fail", "policy", "permerror", "temperror", "neutral", "none"];
  for (const r of order) if (results.includes(r)) return r;
  return "none";
}

/** Map mailauth's result words to ours (it also says `temperr`, `skipped`, `declined`). */
function norm<T extends string>(result: string | undefined, allowed: readonly T[], fallback: T): T {
  const r = result === "temperr" ? "temperror" : result;
  return (allowed as readonly string[]).includes(r ?? "") ? (r as T) : fallback;
}

/** Step a DMARC policy down one level, as for messages outside `pct` (RFC 7489 §6.6.4). */
function weaker(p: DmarcPolicy): DmarcPolicy {
  return p === "reject" ? "quarantine" : "none";
}

/**
 * The effective policy after `pct` (RFC 7489 §6.3, §6.6.4): a message outside the sampled
 * percentage gets the next weaker policy. The sample is a hash of the message, so the same
 * message always gets the same answer (a retry cannot win a different draw).
 */
function applyPct(policy: DmarcPolicy, record: string | undefined, raw: Buffer): DmarcPolicy {
  const m = record ? /(?:^|;)\s*pct\s*=\s*(\d{1,3})\s*(?:;|$)/i.exec(record) : null;
  if (!m) return policy;
  const pct = Math.min(100, Number(m[1]));
  if (pct >= 100) return policy;
  const draw = createHash("sha256").update(raw).digest().readUInt16BE(0) % 100;
  return draw < pct ? policy : weaker(policy);
}

/** mailauth's functions, once loaded (see {@link loadMailauth}). */
let mailauth: Promise<{ authenticate: typeof import("mailauth").authenticate; getAlignment: typeof import("mailauth/lib/tools.js").getAlignment }> | null = null;

/**
 * mailauth, loaded on the first inbound mail, not at start: with the dependencies no other
 * package loads (tldts, joi, undici and the BIMI certificate code it requires even with BIMI
 * off) it is ~7 MiB of an idle bridge's RSS. The promise is kept: a dynamic `import()` resolves
 * its specifier again on every call, which cost about 1 % of the ingest CPU.
 * @throws Error when the package cannot be loaded (the promise is then forgotten, so the next
 *   mail tries again)
 */
function loadMailauth(): NonNullable<typeof mailauth> {
  mailauth ??= Promise.all([import("mailauth"), import("mailauth/lib/tools.js")]).then(
    ([lib, tools]) => ({ authenticate: lib.authenticate, getAlignment: tools.getAlignment }),
    (err: unknown) => {
      mailauth = null;
      throw err;
    },
  );
  return mailauth;
}

/**
 * Authenticate one message: SPF, DKIM, ARC and DMARC through `opts.lookup`.
 * @param input the message and its envelope
 * @param author the From mailbox read by {@link readAuthor}
 * @returns the verdict (never throws for DNS failures: they are recorded in `dnsTemporaryError`)
 * @throws SmtpReply 550 5.7.1 when mailauth reads a different author than {@link readAuthor}
 *   (a header trick, or a From domain whose spelling is not canonical: see
 *   {@link canonicalDomain}); Error only for a programming error inside mailauth
 */
export async function authenticateMessage(input: AuthInput, author: Author, opts: AuthOptions): Promise<AuthVerdict> {
  let dnsTemporaryError = false;
  const lookup: DnsLookup = async (name, rrtype) => {
    try {
      return await opts.lookup(name, rrtype);
    } catch (err) {
      if (isTemporaryDnsError(err)) dnsTemporaryError = true;
      throw err;
    }
  };
  const ip = input.remoteAddress.replace(/^::ffff:(?=\d+\.\d+\.\d+\.\d+$)/i, "");
  const { authenticate, getAlignment } = await loadMailauth();
  const result: AuthenticateResult = await authenticate(input.raw, {
    ip,
    helo: input.heloName || undefined,
    sender: input.mailFrom ?? "",
    mta: opts.hostname,
    resolver: lookup as unknown as NonNullable<Parameters<typeof authenticate>[1]>["resolver"],
    minBitLength: opts.minKeyBits,
    disableBimi: true,
  });

  // Every parser must name the same author: mailauth's view of From is the one DMARC judged.
  const headerFrom = result.dkim.headerFrom ?? [];
  if (result.dkim.fromFields > 1 || headerFrom.length !== 1 || headerFrom[0]!.toLowerCase() !== author.address.toLowerCase()) {
    const seen = headerFrom.length === 1 ? headerFrom[0]!.toLowerCase() : "";
    const at = seen.lastIndexOf("@");
    // mailauth keeps IDN domains in Unicode; compare in A-labels, by the same canonical rule
    // as readAuthor, so the domain DMARC judged is exactly the author's.
    const canonical = at > 0 ? canonicalDomain(seen.slice(at + 1)) : null;
    const same = canonical !== null && "domain" in canonical && `${seen.slice(0, at)}@${canonical.domain}` === author.address.toLowerCase();
    if (!same || result.dkim.fromFields > 1) throw badAuthor("the From header field is ambiguous");
  }

  const spfResult = result.spf ? norm(result.spf.status.result, ["pass", "fail", "softfail", "neutral", "none", "temperror", "permerror"] as const, "none") : "none";
  const spfDomain = result.spf ? result.spf.domain || null : null;
  const dkimRows = result.dkim.results ?? [];
  const dkimDomains = dkimRows.filter((r) => r.status.result === "pass" && r.signingDomain).map((r) => r.signingDomain!.toLowerCase());
  const dkim = bestDkim(dkimRows.map((r) => norm(r.status.result, ["pass", "fail", "policy", "neutral", "none", "temperror", "permerror"] as const, "permerror")));
  const arcStatus = result.arc ? norm(result.arc.status.result, ["pass", "fail", "none"] as const, "fail") : "none";
  const dm = result.dmarc;
  let dmarc: DmarcResult = dm ? norm(dm.status.result, ["pass", "fail", "none", "temperror", "permerror"] as const, "permerror") : "none";
  const policy: DmarcPolicy | null =
    dm && dm.policy && ["none", "quarantine", "reject"].includes(dm.policy) && dmarc !== "none"
      ? applyPct(dm.policy as DmarcPolicy, dm.rr, input.raw)
      : null;

  // Alignment: the DMARC record's adkim/aspf when there is one, relaxed otherwise.
  let alignedBy: AuthVerdict["alignedBy"] = null;
  if (dmarc === "pass") {
    alignedBy = dm && dm.alignment?.dkim?.result ? "dkim" : "spf";
  } else if (dmarc === "none" || dmarc === "permerror") {
    if (getAlignment(author.domain, dkimDomains, false)) alignedBy = "dkim";
    else if (spfResult === "pass" && spfDomain && getAlignment(author.domain, [spfDomain], false)) alignedBy = "spf";
  }

  // A trusted forwarder's passing ARC chain vouches for what it saw (RFC 8617 §7.2): the
  // newest ARC-Authentication-Results must show DMARC passing for this From domain.
  let arcSealer: string | null = null;
  let arcVouches = false;
  if (arcStatus === "pass" && result.arc) {
    const chain = (result.arc as { chain?: { "arc-seal"?: { parsed?: { d?: { value?: unknown } } } }[] }).chain;
    const d = chain?.[chain.length - 1]?.["arc-seal"]?.parsed?.d?.value;
    arcSealer = typeof d === "string" ? d.toLowerCase().replace(/\.$/, "") : null;
    arcVouches = arcSaysDmarcPass(result.arc.authenticationResults, author.domain);
  }
  if (alignedBy === null && arcSealer !== null && arcVouches && opts.trustedArcSealers.includes(arcSealer)) {
    alignedBy = "arc";
    if (dmarc === "fail") dmarc = "pass";
  }

  return {
    spf: spfResult,
    dkim,
    dmarc,
    arc: arcStatus,
    verified: alignedBy !== null,
    alignedBy,
    policy,
    dkimDomains,
    spfDomain,
    arcSealer,
    dnsTemporaryError: dnsTemporaryError || dmarc === "temperror",
  };
}

/**
 * Whether parsed ARC-Authentication-Results (mailauth's shape) record `dmarc=pass` for
 * `fromDomain` (`header.from`).
 */
function arcSaysDmarcPass(aar: Record<string, unknown> | undefined, fromDomain: string): boolean {
  const entry = aar?.dmarc as { result?: { value?: unknown }; "header.from"?: { value?: unknown }; header?: { from?: { value?: unknown } } } | undefined;
  if (!entry) return false;
  const result = String(entry.result?.value ?? entry.result ?? "").toLowerCase();
  const from = String(entry["header.from"]?.value ?? entry.header?.from?.value ?? "").toLowerCase();
  return result === "pass" && (from === "" || from === fromDomain);
}

/** What to do with a message, from its verdict and the policy. */
export type AuthDecision = { accept: true; verified: boolean } | { accept: false; reply: SmtpReply };

/**
 * Apply the policy to a verdict.
 *
 * - DMARC fail with the effective policy `reject` (after sp=/np=, t=y and pct), when
 *   `enforceDmarcReject`: `550 5.7.1` naming DMARC (RFC 7489 §6.6.2, §7.3 "reject" at SMTP
 *   time). `quarantine` is treated as unverified.
 * - not verified and a lookup failed temporarily, when `deferOnDnsError`: `451 4.4.3` (RFC 3463
 *   X.4.3 directory server failure; RFC 7208 §2.6.6 temperror: "try again later").
 * - not verified and `unverified: reject`: `550 5.7.1`.
 * - otherwise accepted, `verified` as judged.
 */
export function authDecision(verdict: AuthVerdict, author: Author, policy: AuthPolicy): AuthDecision {
  if (verdict.verified) return { accept: true, verified: true };
  if (verdict.dnsTemporaryError && policy.deferOnDnsError) {
    return { accept: false, reply: new SmtpReply(451, "4.4.3", "sender authentication needs DNS lookups that failed, try again later") };
  }
  if (verdict.dmarc === "fail" && verdict.policy === "reject" && policy.enforceDmarcReject) {
    return { accept: false, reply: new SmtpReply(550, "5.7.1", `DMARC policy of ${author.domain} rejects this message: it is not authenticated by SPF or DKIM aligned with the From domain`) };
  }
  if (policy.unverified === "reject") {
    return { accept: false, reply: new SmtpReply(550, "5.7.1", `the sender ${author.address} could not be authenticated (no SPF or DKIM pass aligned with ${author.domain})`) };
  }
  return { accept: true, verified: false };
}
