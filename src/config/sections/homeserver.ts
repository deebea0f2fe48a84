/** The `homeserver` section of the config: its schema and type. */
import { Type, type Static } from "@sinclair/typebox";
import { Section } from "../schemaHelpers.ts";

/** `homeserver` section: the homeserver this bridge is registered with. */
export const HomeserverSection = Section(
  {
    url: Type.String({ pattern: "^https?://", description: "Client-Server API URL of the homeserver." }),
    domain: Type.String({ minLength: 1, description: "Server name: the part after ':' in user IDs." }),
  },
  { description: "The homeserver this bridge is registered with." },
);

/** The `homeserver` section after validation, with every default filled in. */
export type HomeserverConfig = Static<typeof HomeserverSection>;
