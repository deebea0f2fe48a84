/**
 * The appservice registration file (Application Service API › Registration).
 */
import { randomBytes } from "node:crypto";
import { existsSync, readFileSync, writeFileSync } from "node:fs";
import { parse, stringify } from "yaml";
import type { BridgeConfig } from "../config/schema.ts";

/** The registration document Synapse reads from `app_service_config_files`. */
export interface Registration {
  id: string;
  url: string;
  as_token: string;
  hs_token: string;
  sender_localpart: string;
  rate_limited: boolean;
  namespaces: {
    users: { exclusive: boolean; regex: string }[];
    aliases: { exclusive: boolean; regex: string }[];
    rooms: { exclusive: boolean; regex: string }[];
  };
  protocols: string[];
  /** Push ephemeral events and to-device messages (MSC2409; Synapse also needs `msc2409_to_device_messages_enabled`). */
  receive_ephemeral?: boolean;
  /** The unstable name of `receive_ephemeral`, which Synapse still reads. */
  "de.sorunome.msc2409.push_ephemeral"?: boolean;
  /** One-time-key counts, fallback keys and device lists in transactions (MSC3202; Synapse also needs `msc3202_transaction_extensions`). */
  "org.matrix.msc3202"?: boolean;
  /** Appservice device management without login or user-interactive auth (MSC4190). */
  "io.element.msc4190"?: boolean;
}

function escapeRegex(s: string): string {
  return s.replace(/[.*+?^${}()|[\]\\/]/g, "\\$&");
}

/**
 * Build a registration with fresh tokens (256 random bits each): an exclusive user
 * namespace for the ghost prefix and the bridge bot, no rate limits, the bridge URL; with
 * `encryption.enabled`, the keys end-to-end encryption needs (MSC2409 `receive_ephemeral`,
 * MSC3202, MSC4190; docs/encryption.md).
 * @param existing a previous registration whose id and tokens are kept (re-generation)
 */
export function buildRegistration(config: BridgeConfig, existing?: Registration): Registration {
  const domain = escapeRegex(config.homeserver.domain);
  return {
    id: existing?.id ?? "email-bridge",
    url: config.appservice.url,
    as_token: existing?.as_token ?? randomBytes(32).toString("hex"),
    hs_token: existing?.hs_token ?? randomBytes(32).toString("hex"),
    sender_localpart: config.appservice.bot_localpart,
    rate_limited: false,
    namespaces: {
      users: [
        { exclusive: true, regex: `@${escapeRegex(config.appservice.ghost_prefix)}.+:${domain}` },
        { exclusive: true, regex: `@${escapeRegex(config.appservice.bot_localpart)}:${domain}` },
      ],
      aliases: [],
      rooms: [],
    },
    protocols: ["email"],
    // End-to-end-encrypted rooms (docs/encryption.md): what the bridge's devices need of the homeserver.
    ...(config.encryption.enabled
      ? { receive_ephemeral: true, "de.sorunome.msc2409.push_ephemeral": true, "org.matrix.msc3202": true, "io.element.msc4190": true }
      : {}),
  };
}

/**
 * Read a registration file and check the fields a client of the homeserver needs.
 * @param file path of the registration YAML
 * @returns the registration
 * @throws Error naming the file when it cannot be read, is not a YAML mapping, or lacks a
 *   string `id`, `url`, `as_token` or `hs_token`
 */
export function readRegistration(file: string): Registration {
  const doc = parse(readFileSync(file, "utf8")) as unknown;
  if (!doc || typeof doc !== "object" || Array.isArray(doc)) throw new Error(`registration file ${file} is not a YAML mapping`);
  for (const key of ["id", "url", "as_token", "hs_token"]) {
    const value = (doc as Record<string, unknown>)[key];
    if (typeof value !== "string" || !value) throw new Error(`registration file ${file} has no ${key}`);
  }
  return doc as Registration;
}

/**
 * Write the registration file named in `appservice.registration_file`.
 * Existing tokens are kept unless `rotate` (a token change must be given to Synapse too).
 * @returns the file path
 */
export function writeRegistration(config: BridgeConfig, rotate = false): string {
  const file = config.appservice.registration_file;
  const existing = !rotate && existsSync(file) ? (parse(readFileSync(file, "utf8")) as Registration) : undefined;
  writeFileSync(file, stringify(buildRegistration(config, existing)), { mode: 0o600 });
  return file;
}
