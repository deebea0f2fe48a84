/** The `database` section of the config: its schema and type. */
import { Type, type Static } from "@sinclair/typebox";
import { Nullable, Section } from "../schemaHelpers.ts";

/** `database` section: where the bridge keeps its mappings and queues (SQLite or PostgreSQL). */
export const DatabaseSection = Section(
  {
    url: Nullable(Type.String({ pattern: "^postgres(ql)?://", default: null, description: "postgres:// URL; null for the embedded SQLite file." })),
    sqlite_file: Type.String({ default: "data/bridge.sqlite", description: "Embedded SQLite file, used when url is null." }),
    connect_timeout_ms: Type.Integer({ minimum: 100, default: 5000, description: "PostgreSQL: longest wait for a connection, in ms (a hung database gets 451 at the SMTP side)." }),
    query_timeout_ms: Type.Integer({ minimum: 100, default: 10000, description: "PostgreSQL: longest statement, in ms." }),
  },
  { default: {}, description: "Where the bridge keeps its mappings and queues." },
);

/** The `database` section after validation, with every default filled in. */
export type DatabaseConfig = Static<typeof DatabaseSection>;
