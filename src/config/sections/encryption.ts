/** The `encryption` section of the config: its schema and type. */
import { Type, type Static } from "@sinclair/typebox";
import { Nullable, Section } from "../schemaHelpers.ts";

/** `encryption` section: end-to-end-encrypted rooms (docs/encryption.md). */
export const EncryptionSection = Section(
  {
    enabled: Type.Boolean({ default: true, description: "Read and write end-to-end-encrypted rooms where the homeserver supports it (MSC2409 to-device messages, MSC3202, MSC4190 in the registration and in Synapse's experimental_features). Where it does not, or with false, the bridge stays out of encrypted rooms with a notice." }),
    device_id: Type.String({ pattern: "^[A-Za-z0-9_-]{1,64}$", default: "EMAILBRIDGE", description: "Device ID of the bot's and the ghosts' Matrix devices (one device per user, created through MSC4190)." }),
    store_key_file: Nullable(Type.String({ default: null, description: "File holding the key that seals the devices' crypto state in the bridge's database: base64 of 32 random bytes (openssl rand -base64 32); relative to the config file. null (and no store_key_env): a key derived from the registration's as_token." })),
    store_key_env: Nullable(Type.String({ pattern: "^[A-Za-z_][A-Za-z0-9_]*$", default: null, description: "Name of an environment variable holding that key (base64 of 32 bytes), instead of store_key_file." })),
    ghost_devices_in_memory: Type.Integer({ minimum: 1, default: 100, description: "Ghost crypto machines kept in memory (least recently used first out; an evicted ghost's state stays in the database)." }),
  },
  { default: {}, description: "End-to-end-encrypted rooms: the bot's and the ghosts' devices and their crypto state. Email itself travels in plaintext. See docs/encryption.md." },
);

/** The `encryption` section after validation, with every default filled in. */
export type EncryptionConfig = Static<typeof EncryptionSection>;
