/** The `metrics` section of the config: its schema and type. */
import { Type, type Static } from "@sinclair/typebox";
import { Section } from "../schemaHelpers.ts";

/** `metrics` section: the Prometheus metrics and health listener (docs/operations.md). */
export const MetricsSection = Section(
  {
    enabled: Type.Boolean({ default: false, description: "Serve /metrics and /health." }),
    bind_address: Type.String({ default: "127.0.0.1", description: "Address to listen on. There is no authentication: keep it on loopback or a private network." }),
    port: Type.Integer({ minimum: 0, maximum: 65535, default: 9100, description: "Port to listen on (0 picks a free port)." }),
  },
  { default: {}, description: "Prometheus metrics (GET /metrics) and the health check (GET /health) on an HTTP listener of their own. See docs/operations.md." },
);

/** The `metrics` section after validation, with every default filled in. */
export type MetricsConfig = Static<typeof MetricsSection>;
