/** The `logging` section of the config: its schema and type. */
import { type Static } from "@sinclair/typebox";
import { Section, StringEnum } from "../schemaHelpers.ts";

/** `logging` section: log level and format. */
export const LoggingSection = Section(
  {
    level: StringEnum(["debug", "info", "warn", "error"], { default: "info", description: "Lowest level logged." }),
    format: StringEnum(["pretty", "json"], { default: "pretty", description: "pretty or one JSON object per line." }),
  },
  { default: {}, description: "Logging." },
);

/** The `logging` section after validation, with every default filled in. */
export type LoggingConfig = Static<typeof LoggingSection>;
