/** The `inbound` section of the config: its schema and type. */
import { Type, type Static } from "@sinclair/typebox";
import { Section } from "../schemaHelpers.ts";

/** `inbound` section: posting accepted mail into Matrix (the inbound queue). */
export const InboundSection = Section(
  {
    retry_hours: Type.Number({ minimum: 0, default: 48, description: "Keep retrying a mail the homeserver cannot take now for this long after it arrived, in hours; then the sender gets a DSN." }),
    retry_base_ms: Type.Integer({ minimum: 10, default: 5000, description: "First retry delay, in ms (doubles per attempt, with jitter)." }),
    retry_max_ms: Type.Integer({ minimum: 10, default: 600000, description: "Longest retry delay, in ms." }),
    concurrency: Type.Integer({ minimum: 1, maximum: 64, default: 4, description: "Rooms posted into at once (one mail at a time per room, in arrival order)." }),
    max_text_bytes: Type.Integer({ minimum: 1024, maximum: 48000, default: 24000, description: "Longest text in one event, in bytes; longer text is cut at a marker and attached whole as a .txt file." }),
  },
  { default: {}, description: "Posting accepted mail into Matrix: a queue that survives restarts and homeserver outages." },
);

/** The `inbound` section after validation, with every default filled in. */
export type InboundConfig = Static<typeof InboundSection>;
