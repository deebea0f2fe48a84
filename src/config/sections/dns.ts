/** The `dns` section of the config: its schema and type. */
import { Type, type Static } from "@sinclair/typebox";
import { Section } from "../schemaHelpers.ts";

/** `dns` section: the one resolver every lookup goes through (see `mail/dns.ts`). */
export const DnsSection = Section(
  {
    nameservers: Type.Array(Type.String(), { default: [], description: "DNS servers, each ip, ip:port or [ipv6]:port; empty: the system's (/etc/resolv.conf)." }),
    timeout_ms: Type.Integer({ minimum: 50, default: 5000, description: "Per-try timeout of a query, in ms." }),
    tries: Type.Integer({ minimum: 1, maximum: 10, default: 2, description: "Tries per query." }),
    cache_entries: Type.Integer({ minimum: 0, default: 5000, description: "Most cached answers (0: no cache)." }),
    cache_ttl_ms: Type.Integer({ minimum: 0, default: 300000, description: "How long answers and NXDOMAIN/NODATA are cached, in ms." }),
  },
  { default: {}, description: "The one DNS resolver every lookup goes through: SPF, DKIM, DMARC, ARC, MX, PTR, DNSBL, MTA-STS." },
);

/** The `dns` section after validation, with every default filled in. */
export type DnsConfig = Static<typeof DnsSection>;
