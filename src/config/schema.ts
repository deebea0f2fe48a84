/**
 * The one schema of the bridge's YAML config. It is the source of the TypeScript
 * type ({@link BridgeConfig}), of start-up validation (ajv, with defaults filled in, load.ts)
 * and of the comments in `config.sample.yaml` (sample.ts).
 *
 * Each section lives in its own file under `sections/` (a TypeBox schema and its `Static<>`
 * type); this file puts them together. A new section: a new file in `sections/` and one line
 * in {@link ConfigSchema} (plus its type re-export below). Keys are snake_case, as in other
 * Matrix bridges' configs. See schemaHelpers.ts for how defaults shape the types.
 */
import type { Static } from "@sinclair/typebox";
import type { SchemaObject } from "ajv";
import { Section } from "./schemaHelpers.ts";
import { AdminApiSection } from "./sections/adminApi.ts";
import { AppserviceSection } from "./sections/appservice.ts";
import { AuthSection } from "./sections/auth.ts";
import { DatabaseSection } from "./sections/database.ts";
import { DkimSection } from "./sections/dkim.ts";
import { DnsSection } from "./sections/dns.ts";
import { EncryptionSection } from "./sections/encryption.ts";
import { HomeserverSection } from "./sections/homeserver.ts";
import { InboundSection } from "./sections/inbound.ts";
import { LoggingSection } from "./sections/logging.ts";
import { MailSection } from "./sections/mail.ts";
import { MetricsSection } from "./sections/metrics.ts";
import { OutboundSection } from "./sections/outbound.ts";
import { PermissionsSection } from "./sections/permissions.ts";
import { SmtpSection } from "./sections/smtp.ts";
import { SpamSection } from "./sections/spam.ts";
import { StorageSection } from "./sections/storage.ts";
import { SubmissionSection } from "./sections/submission.ts";

export type { AdminApiConfig } from "./sections/adminApi.ts";
export type { AppserviceConfig } from "./sections/appservice.ts";
export type { AuthConfig, UnverifiedAction } from "./sections/auth.ts";
export type { DatabaseConfig } from "./sections/database.ts";
export type { DkimConfig } from "./sections/dkim.ts";
export type { DnsConfig } from "./sections/dns.ts";
export type { EncryptionConfig } from "./sections/encryption.ts";
export type { HomeserverConfig } from "./sections/homeserver.ts";
export type { InboundConfig } from "./sections/inbound.ts";
export type { LoggingConfig } from "./sections/logging.ts";
export type { MailConfig } from "./sections/mail.ts";
export type { MetricsConfig } from "./sections/metrics.ts";
export type { OutboundConfig, RelayConfig } from "./sections/outbound.ts";
export type { PermissionsConfig } from "./sections/permissions.ts";
export type { SmtpConfig } from "./sections/smtp.ts";
export type { SpamConfig } from "./sections/spam.ts";
export type { StorageConfig } from "./sections/storage.ts";
export type { SubmissionConfig } from "./sections/submission.ts";

/**
 * The whole config: one key per section, in the order config.sample.yaml lists them.
 * Sections without a `default` (homeserver, appservice, mail, smtp) must be in the file.
 */
export const ConfigSchema = Section(
  {
    homeserver: HomeserverSection,
    appservice: AppserviceSection,
    mail: MailSection,
    smtp: SmtpSection,
    submission: SubmissionSection,
    outbound: OutboundSection,
    dkim: DkimSection,
    database: DatabaseSection,
    permissions: PermissionsSection,
    spam: SpamSection,
    inbound: InboundSection,
    dns: DnsSection,
    auth: AuthSection,
    storage: StorageSection,
    encryption: EncryptionSection,
    logging: LoggingSection,
    metrics: MetricsSection,
    admin_api: AdminApiSection,
  },
  { description: "matrix-email-bridge configuration." },
);

/** The whole config after validation: every section present, every default filled in (load.ts). */
export type BridgeConfig = Static<typeof ConfigSchema>;

/** {@link ConfigSchema} as the plain JSON schema ajv compiles; `description`s become sample-config comments. */
export const configSchema: SchemaObject = ConfigSchema;
