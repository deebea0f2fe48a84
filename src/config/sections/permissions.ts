/** The `permissions` section of the config: its schema and type. */
import { Type, type Static } from "@sinclair/typebox";
import { Nullable, Section } from "../schemaHelpers.ts";

/** `permissions` section: who may use the bridge. */
export const PermissionsSection = Section(
  {
    allowed_users: Type.Array(Type.String(), { default: [], description: "Matrix user ID patterns ('*' wildcard) allowed to bridge; empty: users of this homeserver." }),
    admins: Type.Array(Type.String({ pattern: "^@[^:]+:.+$" }), { default: [], description: "Bridge admins (Matrix user IDs): mail to postmaster@ and abuse@ reaches them by DM (RFC 5321 §4.5.1 requires a postmaster)." }),
    admin_room: Nullable(Type.String({ pattern: "^!.+:.+$", default: null, description: "Room ID that gets postmaster@ and abuse@ mail instead of the admins' DMs (the bot must be in it)." })),
  },
  { default: {}, description: "Who may use the bridge." },
);

/** The `permissions` section after validation, with every default filled in. */
export type PermissionsConfig = Static<typeof PermissionsSection>;
