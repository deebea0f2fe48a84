/** The `appservice` section of the config: its schema and type. */
import { Type, type Static } from "@sinclair/typebox";
import { Nullable, Section } from "../schemaHelpers.ts";

/** `appservice` section: how the homeserver reaches the bridge. */
export const AppserviceSection = Section(
  {
    bind_address: Type.String({ default: "127.0.0.1", description: "Address to listen on." }),
    port: Type.Integer({ minimum: 1, maximum: 65535, default: 8090, description: "Port to listen on." }),
    url: Type.String({ pattern: "^https?://", description: "URL the homeserver uses to reach the bridge (goes into the registration)." }),
    public_url: Nullable(
      Type.String({
        default: null,
        description:
          "Public https:// base URL under which a reverse proxy forwards <public_url>/unsubscribe/ and <public_url>/media/ to this listener's /unsubscribe/ and /media/; set, mail gets a one-click unsubscribe link (RFC 8058) besides the mailto one, and a file too large to attach (outbound.max_attachment_bytes) is linked as <public_url>/media/<token>/<name>, served by the bridge. http:// only for a loopback host (tests). null: mailto only; large files link to their Matrix event.",
      }),
    ),
    registration_file: Type.String({ default: "registration.yaml", description: "Registration file, made by generate-registration." }),
    bot_localpart: Type.String({ pattern: "^[a-z0-9._=/-]+$", default: "emailbot", description: "Localpart of the bridge bot." }),
    bot_displayname: Type.String({ default: "Email bridge", description: "Display name of the bridge bot." }),
    ghost_prefix: Type.String({ pattern: "^[a-z0-9._=/-]+$", default: "email_", description: "Localpart prefix of ghost users (claimed exclusively)." }),
  },
  { description: "The appservice HTTP listener the homeserver pushes events to." },
);

/** The `appservice` section after validation, with every default filled in. */
export type AppserviceConfig = Static<typeof AppserviceSection>;
