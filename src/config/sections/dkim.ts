/** The `dkim` section of the config: its schema and type. */
import { Type, type Static } from "@sinclair/typebox";
import { Section } from "../schemaHelpers.ts";

/** `dkim` section: DKIM signing of outbound mail (RFC 6376). */
export const DkimSection = Section(
  {
    selector: Type.String({ pattern: "^[A-Za-z0-9-]+$", default: "meb", description: "DKIM selector." }),
    private_key_file: Type.String({ default: "dkim.key", description: "PEM RSA private key, made by dkim-keygen." }),
  },
  { default: {}, description: "DKIM signing of outbound mail." },
);

/** The `dkim` section after validation, with every default filled in. */
export type DkimConfig = Static<typeof DkimSection>;
