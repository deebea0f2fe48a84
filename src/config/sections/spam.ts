/** The `spam` section of the config: its schema and type. */
import { Type, type Static } from "@sinclair/typebox";
import { Nullable, Section, StringEnum } from "../schemaHelpers.ts";

/** `spam` section: spam verdicts from rspamd for inbound mail. */
export const SpamSection = Section(
  {
    rspamd_url: Nullable(Type.String({ pattern: "^https?://", default: null, description: "rspamd normal worker URL, e.g. http://127.0.0.1:11333 (null: no spam check)." })),
    timeout_ms: Type.Integer({ minimum: 100, default: 10000, description: "How long to wait for rspamd, in ms." }),
    on_error: StringEnum(["defer", "accept"], { default: "defer", description: "rspamd unreachable: defer (451, the sender retries) or accept unchecked." }),
  },
  { default: {}, description: "Spam verdicts from rspamd for inbound mail: reject -> 550 5.7.1, soft reject/greylist -> 451 4.7.1, add header -> posted with a warning." },
);

/** The `spam` section after validation, with every default filled in. */
export type SpamConfig = Static<typeof SpamSection>;
