/** The `mail` section of the config: its schema and type. */
import { Type, type Static } from "@sinclair/typebox";
import { HOST_PATTERN, Section } from "../schemaHelpers.ts";

/** `mail` section: the bridge's mail domain and its mailboxes. */
export const MailSection = Section(
  {
    domain: Type.String({ pattern: HOST_PATTERN, description: "Mail domain of mailboxes; the MX record of this domain points at the SMTP listener." }),
    case_sensitive_localparts: Type.Boolean({ default: false, description: "Keep Bob@x and bob@x as two ghosts (most MTAs treat them as one)." }),
  },
  { description: "The bridge's mail domain." },
);

/** The `mail` section after validation, with every default filled in. */
export type MailConfig = Static<typeof MailSection>;
