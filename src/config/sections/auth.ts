/** The `auth` section of the config: its schema and type. */
import { Type, type Static } from "@sinclair/typebox";
import { HOST_PATTERN, Section, StringEnum } from "../schemaHelpers.ts";

/** What to do with a message whose sender could not be authenticated: `mark` or `reject`. */
export type UnverifiedAction = AuthConfig["unverified"];

/** `auth` section: sender authentication of inbound mail (SPF, DKIM, DMARC, ARC). */
export const AuthSection = Section(
  {
    enforce_dmarc_reject: Type.Boolean({ default: true, description: "Refuse (550 5.7.1) a DMARC fail when the From domain publishes p=reject." }),
    unverified: StringEnum(["mark", "reject"], { default: "mark", description: "Mail with no aligned SPF or DKIM pass: mark (posted by the address's unverified ghost, never the verified one) or reject (550 5.7.1)." }),
    trusted_arc_sealers: Type.Array(Type.String({ pattern: HOST_PATTERN }), { default: [], description: "Forwarders (ARC-Seal d= domains) whose passing ARC chain may turn a DMARC fail into a pass, e.g. a mailing list host." }),
    defer_on_dns_error: Type.Boolean({ default: true, description: "A DNS timeout or SERVFAIL during authentication answers 451 4.4.3 (the sender retries) instead of judging the mail unverified." }),
    min_dkim_key_bits: Type.Integer({ minimum: 512, default: 1024, description: "Smallest DKIM RSA key accepted, in bits." }),
  },
  { default: {}, description: "Sender authentication of inbound mail (SPF, DKIM, DMARC, ARC), before the 250. See docs/security.md." },
);

/** The `auth` section after validation, with every default filled in. */
export type AuthConfig = Static<typeof AuthSection>;
