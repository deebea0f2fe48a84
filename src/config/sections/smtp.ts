/** The `smtp` section of the config: its schema and type. */
import { Type, type Static } from "@sinclair/typebox";
import { HOST_PATTERN, Nullable, Section } from "../schemaHelpers.ts";

/** `smtp` section: the embedded inbound SMTP listener (smtp-server). */
export const SmtpSection = Section(
  {
    bind_address: Type.String({ default: "0.0.0.0", description: "Address to listen on." }),
    port: Type.Integer({ minimum: 0, maximum: 65535, default: 25, description: "Port to listen on (25 for MX traffic; 0 picks a free port)." }),
    hostname: Type.String({ pattern: HOST_PATTERN, description: "Host name in the greeting; the MX host name." }),
    max_message_bytes: Type.Integer({ minimum: 1024, default: 26214400, description: "Largest message accepted, in bytes." }),
    max_clients: Type.Integer({ minimum: 1, default: 200, description: "Most concurrent SMTP connections." }),
    tls_cert_file: Nullable(Type.String({ default: null, description: "PEM certificate for STARTTLS (null: no STARTTLS)." })),
    tls_key_file: Nullable(Type.String({ default: null, description: "PEM private key for STARTTLS." })),
    require_tls: Type.Boolean({ default: false, description: "Refuse MAIL before STARTTLS (530 5.7.0); needs tls_cert_file. RFC 3207 says a public MX must not require it, so leave off for the MX." }),
    max_connections_per_ip: Type.Integer({ minimum: 1, default: 20, description: "Most concurrent connections per client IPv4 address or IPv6 /64 (421 4.7.0 beyond)." }),
    max_recipients: Type.Integer({ minimum: 1, default: 100, description: "Most RCPT TO per message, repeated ones included (452 4.5.3 beyond). RFC 5321 requires at least 100." }),
    rate_window_ms: Type.Integer({ minimum: 1000, default: 60000, description: "Time window of the two message rate limits, in ms." }),
    max_messages_per_ip: Type.Integer({ minimum: 0, default: 120, description: "Most messages (MAIL FROM) per client address per window (451 4.7.1 beyond); 0: no limit." }),
    max_messages_per_sender_domain: Type.Integer({ minimum: 0, default: 300, description: "Most messages (MAIL FROM) per sender domain per window (451 4.7.1 beyond); 0: no limit." }),
    max_header_bytes: Type.Integer({ minimum: 1024, default: 65536, description: "Largest header section of a message or MIME part, in bytes (552 5.3.4 beyond)." }),
    max_mime_parts: Type.Integer({ minimum: 1, default: 500, description: "Most MIME parts per message, the message itself included (552 5.6.0 beyond)." }),
    max_mime_depth: Type.Integer({ minimum: 1, default: 20, description: "Deepest MIME nesting below the message (554 5.6.0 beyond)." }),
    max_received_headers: Type.Integer({ minimum: 1, default: 50, description: "Most Received headers, i.e. hops (554 5.4.6 beyond: a mail loop)." }),
    command_timeout_ms: Type.Integer({ minimum: 1000, default: 300000, description: "Longest wait for one complete command line, in ms (421 4.4.2 beyond). RFC 5321: at least 5 minutes." }),
    data_timeout_ms: Type.Integer({ minimum: 1000, default: 600000, description: "Longest DATA phase, from 354 to the final dot, in ms (421 4.4.2 beyond)." }),
    parse_timeout_ms: Type.Integer({ minimum: 100, default: 30000, description: "Longest parse of a received message, in ms, in the parser's worker thread (554 5.6.0 beyond: a message built to take that long)." }),
    dnsbl_zones: Type.Array(Type.String({ pattern: HOST_PATTERN }), { default: [], description: "DNS blocklist zones asked for each client at connect, e.g. zen.spamhaus.org (554 5.7.1 when listed; a DNS failure lets the client in). Empty: off." }),
  },
  { description: "The embedded inbound SMTP listener." },
);

/** The `smtp` section after validation, with every default filled in. */
export type SmtpConfig = Static<typeof SmtpSection>;
