/**
 * The DNS records a bridge operator publishes for the mail domain: MX (inbound),
 * SPF, DKIM and DMARC (outbound authentication). Used by the `dns-records` command
 * and the setup docs.
 */
import { isIP } from "node:net";

/** One DNS record to publish. `name` and host names inside `value` are fully qualified, without trailing dot. */
export interface DnsRecord {
  type: "MX" | "TXT";
  /** Owner name, e.g. `meb._domainkey.mail.example`. */
  name: string;
  /** Record data: for MX `<preference> <host>`, for TXT the unquoted text. */
  value: string;
  /** One-line explanation for the operator (rendered as a zone-file comment). */
  note: string;
}

/** Inputs of {@link dnsRecords}. */
export interface DnsRecordsOptions {
  /** The bridge's mail domain (`mail.domain`). */
  mailDomain: string;
  /** Host name of the SMTP listener (`smtp.hostname`); it also sends outbound mail in direct mode. */
  mxHost: string;
  /** DKIM selector (`dkim.selector`). */
  selector: string;
  /** The DKIM key record, from dkim.ts `dkimTxtRecord`: `v=DKIM1; k=rsa; p=...`. */
  dkimPublicTxt: string;
  /** Smarthost that sends for the bridge in relay mode (`outbound.relay.host`), if any. */
  relayHost?: string | null;
}

/**
 * The records for a bridge deployment, in this order:
 * 1. MX `<mailDomain>` → `10 <mxHost>` (RFC 5321 §5.1).
 * 2. SPF TXT at `<mailDomain>`: `v=spf1 a:<mxHost> mx [a:<relayHost>] -all` (RFC 7208 §5;
 *    an IP-literal relay becomes `ip4:`/`ip6:`).
 * 3. DKIM TXT at `<selector>._domainkey.<mailDomain>` (RFC 6376 §3.6.2.1).
 * 4. DMARC TXT at `_dmarc.<mailDomain>`: `v=DMARC1; p=quarantine; adkim=s; aspf=r` (RFC 7489 §6.3).
 *
 * @param opts see {@link DnsRecordsOptions}; names are lower-cased and a trailing dot is dropped.
 * @returns the records; nothing is looked up.
 */
export function dnsRecords(opts: DnsRecordsOptions): DnsRecord[] {
  const domain = normName(opts.mailDomain);
  const mx = normName(opts.mxHost);
  const relay = opts.relayHost ? normName(opts.relayHost) : null;

  const spfTerms = ["v=spf1", `a:${mx}`, "mx"];
  if (relay) {
    const family = isIP(relay);
    spfTerms.push(family === 4 ? `ip4:${relay}` : family === 6 ? `ip6:${relay}` : `a:${relay}`);
  }
  spfTerms.push("-all");

  return [
    {
      type: "MX",
      name: domain,
      value: `10 ${mx}`,
      note: `Inbound mail for @${domain} goes to the bridge's SMTP listener on ${mx} port 25 (${mx} needs an A/AAAA record).`,
    },
    {
      type: "TXT",
      name: domain,
      value: spfTerms.join(" "),
      note:
        "SPF: only the bridge host" +
        (relay ? " and the relay" : "") +
        " may send mail for this domain; -all fails everything else (DMARC decides what happens to it)." +
        (relay ? " If the relay provider publishes an SPF include:, use that instead of a:." : ""),
    },
    {
      type: "TXT",
      name: `${normName(opts.selector)}._domainkey.${domain}`,
      value: opts.dkimPublicTxt,
      note: "DKIM public key; outbound mail is signed with d=" + domain + " and this selector.",
    },
    {
      type: "TXT",
      name: `_dmarc.${domain}`,
      value: "v=DMARC1; p=quarantine; adkim=s; aspf=r",
      note:
        "DMARC: p=quarantine sends unauthenticated mail claiming this domain to spam (move to p=reject once you trust the setup); " +
        "adkim=s because the bridge signs with exactly d=" + domain + "; aspf=r tolerates envelope senders on subdomains. " +
        "Add rua=mailto:<you> to receive aggregate reports.",
    },
  ];
}

/**
 * Render records as zone-file lines (RFC 1035 §5.1), each preceded by a `;` comment with its note.
 * Names get a trailing dot; TXT data longer than 255 bytes is split into several quoted
 * strings on one line, which resolvers concatenate without separator (RFC 7208 §3.3,
 * RFC 6376 §3.6.2.2). `"` and `\` are escaped.
 *
 * @param records as from {@link dnsRecords}.
 * @param ttl TTL in seconds written on each record (default 3600).
 * @returns the zone text, one record per line, ending with a newline.
 */
export function formatZone(records: DnsRecord[], ttl = 3600): string {
  const lines: string[] = [];
  for (const r of records) {
    lines.push(`; ${r.note}`);
    let data: string;
    if (r.type === "MX") {
      const [pref, host] = r.value.split(/\s+/, 2);
      data = `${pref ?? "10"} ${fqdn(host ?? "")}`;
    } else {
      data = splitTxt(r.value)
        .map((s) => `"${s.replace(/[\\"]/g, (c) => "\\" + c)}"`)
        .join(" ");
    }
    lines.push(`${fqdn(r.name)}\t${ttl}\tIN\t${r.type}\t${data}`);
  }
  return lines.join("\n") + "\n";
}

/** Split TXT data into character-strings of at most 255 bytes (RFC 1035 §3.3.14). */
export function splitTxt(value: string, max = 255): string[] {
  const bytes = Buffer.from(value, "utf8");
  if (bytes.length <= max) return [value];
  const parts: string[] = [];
  for (let i = 0; i < bytes.length; i += max) parts.push(bytes.subarray(i, i + max).toString("utf8"));
  return parts;
}

function normName(name: string): string {
  return name.trim().toLowerCase().replace(/\.$/, "");
}

function fqdn(name: string): string {
  return name.endsWith(".") ? name : `${name}.`;
}
