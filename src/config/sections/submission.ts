/** The `submission` section of the config: its schema and type. */
import { Type, type Static } from "@sinclair/typebox";
import { Nullable, Section } from "../schemaHelpers.ts";

/**
 * `submission` section: the SMTP submission port (RFC 6409) where local users' mail clients and
 * scripts send mail as their own address, logging in with an app password (`password new`).
 */
export const SubmissionSection = Section(
  {
    enabled: Type.Boolean({ default: false, description: "Run the submission listener. Needs a TLS certificate: STARTTLS is required before AUTH (RFC 3207)." }),
    bind_address: Type.String({ default: "0.0.0.0", description: "Address to listen on." }),
    port: Type.Integer({ minimum: 0, maximum: 65535, default: 587, description: "Port to listen on (587 is the submission port, RFC 6409; 0 picks a free port)." }),
    tls_cert_file: Nullable(Type.String({ default: null, description: "PEM certificate for STARTTLS on this port (null: smtp.tls_cert_file)." })),
    tls_key_file: Nullable(Type.String({ default: null, description: "PEM private key for STARTTLS on this port (null: smtp.tls_key_file)." })),
    max_auth_failures_per_ip: Type.Integer({ minimum: 1, default: 5, description: "Most failed logins per client address (IPv6: its /64) per minute; the next failure, and every AUTH from there for a minute, get 454 4.7.0." }),
  },
  { default: {}, description: "SMTP submission (RFC 6409) for local users' mail clients, with STARTTLS and app passwords. See docs/user-guide.md and docs/operations.md." },
);

/** The `submission` section after validation, with every default filled in. */
export type SubmissionConfig = Static<typeof SubmissionSection>;
