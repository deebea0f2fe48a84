/** The `storage` section of the config: its schema and type. */
import { Type, type Static } from "@sinclair/typebox";
import { Nullable, Section, StringMap } from "../schemaHelpers.ts";

/** `storage` section: the stored copy of mail (`inbound_mail.raw`, `outbound_mail.raw`): retention and encryption at rest (docs/security.md, "Stored mail"). */
export const StorageSection = Section(
  {
    raw_retention_days: Nullable(Type.Number({ minimum: 0, default: 30, description: "Days the raw bytes of posted inbound mail and of sent or finally bounced outbound mail are kept after the mail arrived, then emptied (the row stays, for dedupe and the queue history). Mail not resolved yet is kept until it is. null: keep forever." })),
    purge_interval_ms: Type.Integer({ minimum: 10, default: 3600000, description: "How often the purge runs, in ms (also once at start)." }),
    purge_batch_size: Type.Integer({ minimum: 1, default: 500, description: "Most rows emptied per table per purge batch (a full batch is followed by the next at once)." }),
    encryption_key_id: Nullable(Type.String({ pattern: "^[A-Za-z0-9._-]{1,32}$", default: null, description: "ID of the current encryption key, stored with every blob it encrypts; required with a key. Give a new key a new ID and move the old one to encryption_keys." })),
    encryption_key_file: Nullable(Type.String({ default: null, description: "File holding the current key: base64 of 32 random bytes (openssl rand -base64 32). Set: stored mail is encrypted (AES-256-GCM). null: stored in plaintext." })),
    encryption_key_env: Nullable(Type.String({ pattern: "^[A-Za-z_][A-Za-z0-9_]*$", default: null, description: "Name of an environment variable holding the current key (base64 of 32 bytes), instead of encryption_key_file." })),
    encryption_keys: StringMap(Type.String(), { default: {}, description: "Older keys, key ID -> key file: used only to read mail they encrypted, never to write.", propertyNames: { pattern: "^[A-Za-z0-9._-]{1,32}$" } }),
  },
  { default: {}, description: "The stored copy of mail (inbound_mail.raw, outbound_mail.raw): how long it is kept, and encryption at rest. See docs/security.md." },
);

/** The `storage` section after validation, with every default filled in. */
export type StorageConfig = Static<typeof StorageSection>;
