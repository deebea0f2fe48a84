/** The `admin_api` section of the config: its schema and type. */
import { Type, type Static } from "@sinclair/typebox";
import { Nullable, Section } from "../schemaHelpers.ts";

/** `admin_api` section: the token-protected admin HTTP API (docs/admin-api.md). */
export const AdminApiSection = Section(
  {
    enabled: Type.Boolean({ default: false, description: "Serve the admin API (and let the `admin` command reach it)." }),
    bind_address: Type.String({ default: "127.0.0.1", description: "Address to listen on. The API is plain HTTP: keep it on loopback, or put a TLS proxy in front." }),
    port: Type.Integer({ minimum: 0, maximum: 65535, default: 9110, description: "Port to listen on (0 picks a free port)." }),
    token_file: Nullable(Type.String({ default: null, description: "File holding the bearer token (at least 32 characters, e.g. `openssl rand -hex 32`; surrounding whitespace ignored); relative to the config file. One of token_file and token_env is required when enabled." })),
    token_env: Nullable(Type.String({ pattern: "^[A-Za-z_][A-Za-z0-9_]*$", default: null, description: "Name of an environment variable holding the bearer token, instead of token_file." })),
  },
  { default: {}, description: "The admin HTTP API: mail domains, mailboxes, aliases, the message log, the queues and mail injection, for operators (Authorization: Bearer <token>). See docs/admin-api.md." },
);

/** The `admin_api` section after validation, with every default filled in. */
export type AdminApiConfig = Static<typeof AdminApiSection>;
