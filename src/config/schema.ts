/**
 * The one schema of the bridge's YAML config. It is the source of the TypeScript
 * type ({@link BridgeConfig}), of start-up validation (ajv, with defaults filled in)
 * and of the comments in `config.sample.yaml`.
 *
 * Keys are snake_case, as in other Matrix bridges' configs.
 */
import type { SchemaObject } from "ajv";

/** `homeserver` section: the homeserver this bridge is registered with. */
export interface HomeserverConfig {
  /** Client-Server API base URL, e.g. `http://127.0.0.1:8008`. */
  url: string;
  /** The homeserver's server name: the part after `:` in user IDs. */
  domain: string;
}

/** `appservice` section: how the homeserver reaches the bridge. */
export interface AppserviceConfig {
  /** Address the appservice HTTP listener binds. */
  bind_address: string;
  /** Port of the appservice HTTP listener. */
  port: number;
  /** URL the homeserver pushes transactions to (written into the registration). */
  url: string;
  /** Path of the registration file (relative paths are relative to the config file). */
  registration_file: string;
  /** Localpart of the bridge bot, e.g. `emailbot` for `@emailbot:domain`. */
  bot_localpart: string;
  /** Display name of the bridge bot. */
  bot_displayname: string;
  /** Localpart prefix of ghost users; the registration claims it exclusively. */
  ghost_prefix: string;
}

/** `mail` section: the bridge's mail domain and its mailboxes. */
export interface MailConfig {
  /** The mail domain: mailboxes are `<localpart>@<domain>`, Message-IDs and DKIM `d=` use it. */
  domain: string;
  /** Treat the local part of remote addresses as case-sensitive (RFC 5321 §2.4 allows it; few MTAs do). */
  case_sensitive_localparts: boolean;
}

/** `smtp` section: the embedded inbound SMTP listener (smtp-server). */
export interface SmtpConfig {
  /** Address the SMTP listener binds. */
  bind_address: string;
  /** Port of the SMTP listener (25 in production). */
  port: number;
  /** Host name announced in the greeting and EHLO reply (the MX host name). */
  hostname: string;
  /** Largest message accepted, in bytes (advertised as SIZE, RFC 1870). */
  max_message_bytes: number;
  /** Most concurrent SMTP connections. */
  max_clients: number;
  /** PEM certificate file for STARTTLS; null disables STARTTLS. */
  tls_cert_file: string | null;
  /** PEM private key file for STARTTLS. */
  tls_key_file: string | null;
  /** Refuse MAIL before STARTTLS (530 5.7.0); needs the TLS files. RFC 3207 §4: a public MX must not. */
  require_tls: boolean;
  /** Most concurrent connections per client IPv4 address or IPv6 /64; more get 421 4.7.0. */
  max_connections_per_ip: number;
  /** Most RCPT TO per message, repeated ones included; more get 452 4.5.3 (RFC 5321 §4.5.3.1.8: at least 100). */
  max_recipients: number;
  /** Window of the message rate limits, in ms. */
  rate_window_ms: number;
  /** Most MAIL FROM per client address per window; more get 451 4.7.1. 0: no limit. */
  max_messages_per_ip: number;
  /** Most MAIL FROM per sender domain per window; more get 451 4.7.1. 0: no limit. */
  max_messages_per_sender_domain: number;
  /** Largest header section (of the message or of a MIME part), in bytes; larger gets 552 5.3.4. */
  max_header_bytes: number;
  /** Most MIME parts per message (the message itself included); more get 552 5.6.0. */
  max_mime_parts: number;
  /** Deepest MIME nesting below the message; deeper gets 554 5.6.0. */
  max_mime_depth: number;
  /** Most Received headers (hop count, Postfix hopcount_limit); more get 554 5.4.6. */
  max_received_headers: number;
  /** Longest wait for one complete command line, in ms; past it 421 4.4.2 (RFC 5321 §4.5.3.2.7: at least 5 min). */
  command_timeout_ms: number;
  /** Longest DATA phase (from 354 to the final dot), in ms; past it 421 4.4.2. */
  data_timeout_ms: number;
  /** DNS blocklist zones (RFC 5782) asked for every client at connect; listed gets 554 5.7.1. Empty: off. */
  dnsbl_zones: string[];
}

/** `outbound.relay` subsection: a smarthost. */
export interface RelayConfig {
  host: string;
  port: number;
  /** Implicit TLS (port 465 style); otherwise STARTTLS is used when offered. */
  secure: boolean;
  username: string | null;
  password: string | null;
}

/** `outbound` section: how mail leaves the bridge. */
export interface OutboundConfig {
  /** `direct` delivers to the recipient domain's MX; `relay` hands everything to `relay`. */
  mode: "direct" | "relay";
  /** Smarthost used when `mode` is `relay`. */
  relay: RelayConfig | null;
  /** Static routes, domain → `host:port`, consulted before MX lookup (tests, split delivery). */
  static_routes: Record<string, string>;
  /** Name given in EHLO to remote MTAs; defaults to `smtp.hostname`. */
  helo_name: string | null;
  /** Fail delivery instead of falling back to plaintext when STARTTLS is not offered. */
  require_tls: boolean;
  /** Connection and greeting timeout towards remote MTAs, in ms. */
  timeout_ms: number;
  /** Give up (bounce to the room) after this many hours of temporary failures (RFC 5321 §4.5.4.1: 4-5 days). */
  max_retry_hours: number;
  /** Tell the room once when a mail is still not delivered this many hours after it was sent; 0: never. */
  delay_warning_hours: number;
  /** Most mails delivered at once (one at a time per room). */
  concurrency: number;
  /** Most SMTP connections in use at once per recipient domain, and per destination host (MX or relay). */
  max_connections_per_domain: number;
  /** SMTP transactions one outbound connection carries before it is closed and a new one opened. */
  max_messages_per_connection: number;
  /** An outbound SMTP connection unused for this long is closed with QUIT, in ms (RFC 5321 §4.5.3.2: servers wait at least 5 minutes). */
  pool_idle_ms: number;
  /** Largest Matrix file (m.image, m.file, m.audio, m.video) attached to a mail, in bytes; a larger one is sent as a link to its Matrix event. */
  max_attachment_bytes: number;
  /** Whether `m.notice` messages (what bots send) are mailed. */
  mail_notices: boolean;
  /** Messages from one person in one portal thread within this many ms go out as one mail; 0: every message at once. */
  batch_delay_ms: number;
  /** Most mails one Matrix user may send per hour; over it the bot says so and nothing is sent. 0: no limit. */
  max_mails_per_user_per_hour: number;
  /** Most addresses one Matrix user may mail for the first time per day. 0: no limit. */
  max_new_recipients_per_user_per_day: number;
}

/** `dkim` section: DKIM signing of outbound mail (RFC 6376). */
export interface DkimConfig {
  /** Selector: the key is published at `<selector>._domainkey.<mail.domain>`. */
  selector: string;
  /** PEM RSA private key file (2048 bits), made by `matrix-email-bridge dkim-keygen`. */
  private_key_file: string;
}

/** `database` section. */
export interface DatabaseConfig {
  /** `postgres://` URL: use PostgreSQL. Null: use the embedded SQLite file. */
  url: string | null;
  /** Embedded SQLite file, used when `url` is null. */
  sqlite_file: string;
  /** PostgreSQL: longest wait for a connection, in ms (a hung database answers 451, not a held DATA). */
  connect_timeout_ms: number;
  /** PostgreSQL: longest statement, in ms. */
  query_timeout_ms: number;
}

/** `permissions` section: who may use the bridge. */
export interface PermissionsConfig {
  /**
   * Matrix user ID patterns allowed to bridge (`*` matches any run of characters).
   * Empty list: only users on the bridge's own homeserver.
   */
  allowed_users: string[];
  /** Bridge admins (Matrix user IDs): they get mail to `postmaster@` and `abuse@` by DM when there is no admin room. */
  admins: string[];
  /** A room (ID) that gets mail to `postmaster@` and `abuse@` instead of the admins' DMs; the bot must be in it. */
  admin_room: string | null;
}

/** `spam` section: spam verdicts from rspamd for inbound mail. */
export interface SpamConfig {
  /** URL of rspamd's normal worker (e.g. `http://127.0.0.1:11333`); null: no spam check. */
  rspamd_url: string | null;
  /** How long to wait for rspamd, in ms. */
  timeout_ms: number;
  /** When rspamd cannot be asked: `defer` answers 451 so the sender retries; `accept` lets the mail in unchecked. */
  on_error: "defer" | "accept";
}

/** `inbound` section: posting accepted mail into Matrix (the inbound queue). */
export interface InboundConfig {
  /** Keep retrying a mail the homeserver cannot take now (down, 5xx, rate limited) for this long after it arrived, in hours; then the sender gets a DSN. */
  retry_hours: number;
  /** First retry delay, in ms; doubles per attempt (with jitter) up to `retry_max_ms`. */
  retry_base_ms: number;
  /** Longest retry delay, in ms. */
  retry_max_ms: number;
  /** How many rooms are posted into at once (one mail at a time per room, in arrival order). */
  concurrency: number;
  /** Longest text posted in one event, in bytes; longer text is cut at a marker and attached whole as a .txt file. */
  max_text_bytes: number;
}

/** `dns` section: the one resolver every lookup goes through (see `mail/dns.ts`). */
export interface DnsConfig {
  /** Servers to ask, each `ip`, `ip:port` or `[ipv6]:port`; empty: the system's resolvers. */
  nameservers: string[];
  /** Per-try timeout of a query, in ms. */
  timeout_ms: number;
  /** Tries per query. */
  tries: number;
  /** Most cached answers; 0: no cache. */
  cache_entries: number;
  /** How long answers (and NXDOMAIN/NODATA) are cached, in ms. */
  cache_ttl_ms: number;
}

/** What to do with a message whose sender could not be authenticated. */
export type UnverifiedAction = "mark" | "reject";

/** `auth` section: sender authentication of inbound mail (SPF, DKIM, DMARC, ARC). */
export interface AuthConfig {
  /** Refuse (550 5.7.1) a DMARC fail when the From domain publishes p=reject (RFC 7489 §6.3). */
  enforce_dmarc_reject: boolean;
  /** Mail with no aligned SPF or DKIM pass: `mark` posts it from the unverified ghost, `reject` refuses it (550 5.7.1). */
  unverified: UnverifiedAction;
  /** ARC sealers (`d=` of the newest ARC-Seal) trusted to vouch for the authentication they saw (RFC 8617 §7.2). */
  trusted_arc_sealers: string[];
  /** A DNS lookup timed out or failed during authentication: answer 451 4.4.3 so the sender retries. */
  defer_on_dns_error: boolean;
  /** Smallest DKIM RSA key accepted, in bits (RFC 8301 §3.2: 1024). */
  min_dkim_key_bits: number;
}

/**
 * `storage` section: the stored copy of mail (`inbound_mail.raw`, `outbound_mail.raw`):
 * retention and encryption at rest (docs/security.md, "Stored mail").
 */
export interface StorageConfig {
  /**
   * Days the raw bytes of resolved mail (posted inbound; sent or finally bounced outbound) are
   * kept after it arrived, then emptied (the row stays); null: kept forever. Unresolved mail is
   * kept until it is resolved.
   */
  raw_retention_days: number | null;
  /** How often the purge runs, in ms (once at start, then at this interval). */
  purge_interval_ms: number;
  /** Most rows emptied per table per purge batch. */
  purge_batch_size: number;
  /** ID of the current encryption key, stored with every blob it encrypts; required with a key. */
  encryption_key_id: string | null;
  /** File holding the current key (base64 of 32 bytes); relative to the config file. */
  encryption_key_file: string | null;
  /** Name of the environment variable holding the current key (base64 of 32 bytes); instead of the file. */
  encryption_key_env: string | null;
  /** Older keys, key ID → key file, used only to read what they encrypted. */
  encryption_keys: Record<string, string>;
}

/** `logging` section. */
export interface LoggingConfig {
  level: "debug" | "info" | "warn" | "error";
  format: "pretty" | "json";
}

/** `metrics` section: the Prometheus metrics and health listener (docs/operations.md). */
export interface MetricsConfig {
  /** Serve `GET /metrics` (Prometheus text format) and `GET /health`. */
  enabled: boolean;
  /** Address the metrics listener binds; it has no authentication, keep it private. */
  bind_address: string;
  /** Port of the metrics listener (0 picks a free port). */
  port: number;
}

/** The whole config, after validation and defaults. */
export interface BridgeConfig {
  homeserver: HomeserverConfig;
  appservice: AppserviceConfig;
  mail: MailConfig;
  smtp: SmtpConfig;
  outbound: OutboundConfig;
  dkim: DkimConfig;
  database: DatabaseConfig;
  permissions: PermissionsConfig;
  spam: SpamConfig;
  dns: DnsConfig;
  auth: AuthConfig;
  inbound: InboundConfig;
  storage: StorageConfig;
  logging: LoggingConfig;
  metrics: MetricsConfig;
}

const hostPattern = "^[A-Za-z0-9.-]+$";

/**
 * The JSON schema of {@link BridgeConfig}; `description`s become sample-config comments.
 * (Typed as a plain schema: ajv's JSONSchemaType cannot express required-but-nullable keys;
 * test/unit/config.test.ts checks that the defaults produce a complete BridgeConfig.)
 */
export const configSchema: SchemaObject = {
  type: "object",
  additionalProperties: false,
  required: ["homeserver", "appservice", "mail", "smtp"],
  properties: {
    homeserver: {
      type: "object",
      description: "The homeserver this bridge is registered with.",
      additionalProperties: false,
      required: ["url", "domain"],
      properties: {
        url: { type: "string", pattern: "^https?://", description: "Client-Server API URL of the homeserver." },
        domain: { type: "string", minLength: 1, description: "Server name: the part after ':' in user IDs." },
      },
    },
    appservice: {
      type: "object",
      description: "The appservice HTTP listener the homeserver pushes events to.",
      additionalProperties: false,
      required: ["url"],
      properties: {
        bind_address: { type: "string", default: "127.0.0.1", description: "Address to listen on." },
        port: { type: "integer", minimum: 1, maximum: 65535, default: 8090, description: "Port to listen on." },
        url: { type: "string", pattern: "^https?://", description: "URL the homeserver uses to reach the bridge (goes into the registration)." },
        registration_file: { type: "string", default: "registration.yaml", description: "Registration file, made by generate-registration." },
        bot_localpart: { type: "string", pattern: "^[a-z0-9._=/-]+$", default: "emailbot", description: "Localpart of the bridge bot." },
        bot_displayname: { type: "string", default: "Email bridge", description: "Display name of the bridge bot." },
        ghost_prefix: { type: "string", pattern: "^[a-z0-9._=/-]+$", default: "email_", description: "Localpart prefix of ghost users (claimed exclusively)." },
      },
    },
    mail: {
      type: "object",
      description: "The bridge's mail domain.",
      additionalProperties: false,
      required: ["domain"],
      properties: {
        domain: { type: "string", pattern: hostPattern, description: "Mail domain of mailboxes; the MX record of this domain points at the SMTP listener." },
        case_sensitive_localparts: { type: "boolean", default: false, description: "Keep Bob@x and bob@x as two ghosts (most MTAs treat them as one)." },
      },
    },
    smtp: {
      type: "object",
      description: "The embedded inbound SMTP listener.",
      additionalProperties: false,
      required: ["hostname"],
      properties: {
        bind_address: { type: "string", default: "0.0.0.0", description: "Address to listen on." },
        port: { type: "integer", minimum: 0, maximum: 65535, default: 25, description: "Port to listen on (25 for MX traffic; 0 picks a free port)." },
        hostname: { type: "string", pattern: hostPattern, description: "Host name in the greeting; the MX host name." },
        max_message_bytes: { type: "integer", minimum: 1024, default: 26214400, description: "Largest message accepted, in bytes." },
        max_clients: { type: "integer", minimum: 1, default: 200, description: "Most concurrent SMTP connections." },
        tls_cert_file: { type: "string", nullable: true, default: null, description: "PEM certificate for STARTTLS (null: no STARTTLS)." },
        tls_key_file: { type: "string", nullable: true, default: null, description: "PEM private key for STARTTLS." },
        require_tls: {
          type: "boolean",
          default: false,
          description: "Refuse MAIL before STARTTLS (530 5.7.0); needs tls_cert_file. RFC 3207 says a public MX must not require it, so leave off for the MX.",
        },
        max_connections_per_ip: { type: "integer", minimum: 1, default: 20, description: "Most concurrent connections per client IPv4 address or IPv6 /64 (421 4.7.0 beyond)." },
        max_recipients: { type: "integer", minimum: 1, default: 100, description: "Most RCPT TO per message, repeated ones included (452 4.5.3 beyond). RFC 5321 requires at least 100." },
        rate_window_ms: { type: "integer", minimum: 1000, default: 60000, description: "Time window of the two message rate limits, in ms." },
        max_messages_per_ip: { type: "integer", minimum: 0, default: 120, description: "Most messages (MAIL FROM) per client address per window (451 4.7.1 beyond); 0: no limit." },
        max_messages_per_sender_domain: { type: "integer", minimum: 0, default: 300, description: "Most messages (MAIL FROM) per sender domain per window (451 4.7.1 beyond); 0: no limit." },
        max_header_bytes: { type: "integer", minimum: 1024, default: 65536, description: "Largest header section of a message or MIME part, in bytes (552 5.3.4 beyond)." },
        max_mime_parts: { type: "integer", minimum: 1, default: 500, description: "Most MIME parts per message, the message itself included (552 5.6.0 beyond)." },
        max_mime_depth: { type: "integer", minimum: 1, default: 20, description: "Deepest MIME nesting below the message (554 5.6.0 beyond)." },
        max_received_headers: { type: "integer", minimum: 1, default: 50, description: "Most Received headers, i.e. hops (554 5.4.6 beyond: a mail loop)." },
        command_timeout_ms: { type: "integer", minimum: 1000, default: 300000, description: "Longest wait for one complete command line, in ms (421 4.4.2 beyond). RFC 5321: at least 5 minutes." },
        data_timeout_ms: { type: "integer", minimum: 1000, default: 600000, description: "Longest DATA phase, from 354 to the final dot, in ms (421 4.4.2 beyond)." },
        dnsbl_zones: {
          type: "array",
          items: { type: "string", pattern: hostPattern },
          default: [],
          description: "DNS blocklist zones asked for each client at connect, e.g. zen.spamhaus.org (554 5.7.1 when listed; a DNS failure lets the client in). Empty: off.",
        },
      },
    },
    outbound: {
      type: "object",
      default: {},
      description: "How mail leaves the bridge.",
      additionalProperties: false,
      required: [],
      properties: {
        mode: { type: "string", enum: ["direct", "relay"], default: "direct", description: "direct: to the recipient domain's MX; relay: through a smarthost." },
        relay: {
          type: "object",
          nullable: true,
          default: null,
          description: "Smarthost for mode: relay.",
          additionalProperties: false,
          required: ["host"],
          properties: {
            host: { type: "string", description: "Smarthost host name." },
            port: { type: "integer", minimum: 1, maximum: 65535, default: 587, description: "Smarthost port." },
            secure: { type: "boolean", default: false, description: "Implicit TLS (465); otherwise STARTTLS." },
            username: { type: "string", nullable: true, default: null, description: "SMTP AUTH user." },
            password: { type: "string", nullable: true, default: null, description: "SMTP AUTH password." },
          },
        },
        static_routes: {
          type: "object",
          default: {},
          description: "Domain -> host:port, used before MX lookup.",
          required: [],
          additionalProperties: { type: "string", pattern: "^[^:]+:[0-9]+$" },
        },
        helo_name: { type: "string", nullable: true, default: null, description: "EHLO name towards remote MTAs (default: smtp.hostname)." },
        require_tls: { type: "boolean", default: false, description: "Refuse to deliver without STARTTLS." },
        timeout_ms: { type: "integer", minimum: 100, default: 30000, description: "Connect/greeting timeout, in ms." },
        max_retry_hours: { type: "number", minimum: 0, default: 96, description: "Hours of temporary failures before giving up." },
        max_mails_per_user_per_hour: { type: "integer", minimum: 0, default: 200, description: "Most mails one Matrix user may send per hour (abuse limit; the bot says so in the room). 0: no limit." },
        max_new_recipients_per_user_per_day: { type: "integer", minimum: 0, default: 100, description: "Most addresses one Matrix user may mail for the first time per day. 0: no limit." },
        delay_warning_hours: { type: "number", minimum: 0, default: 4, description: "Tell the room once when a mail is still undelivered after this many hours (0: never)." },
        concurrency: { type: "integer", minimum: 1, maximum: 1000, default: 8, description: "Most mails delivered at once (one at a time per room)." },
        max_connections_per_domain: { type: "integer", minimum: 1, maximum: 100, default: 4, description: "Most SMTP connections in use at once per recipient domain and per MX/relay host; more deliveries wait." },
        max_messages_per_connection: { type: "integer", minimum: 1, maximum: 10000, default: 100, description: "SMTP transactions (one per mail and recipient domain) sent over one connection before it is closed and a new one opened." },
        pool_idle_ms: { type: "integer", minimum: 100, maximum: 300000, default: 30000, description: "Close an outbound SMTP connection after it was unused this long, in ms (at most 5 minutes, RFC 5321 4.5.3.2)." },
        max_attachment_bytes: { type: "integer", minimum: 0, default: 10000000, description: "Largest Matrix file (image, file, audio, video) attached to a mail, in bytes; a larger one is sent as a link to its Matrix event instead." },
        mail_notices: { type: "boolean", default: false, description: "Mail m.notice messages too (what bots send); by default they stay in Matrix." },
        batch_delay_ms: { type: "integer", minimum: 0, maximum: 600000, default: 5000, description: "Messages from one person in one room thread within this many ms (after the last one) go out as one mail; edits and redactions inside it change that mail. 0: every message is mailed at once." },
      },
    },
    dkim: {
      type: "object",
      default: {},
      description: "DKIM signing of outbound mail.",
      additionalProperties: false,
      required: [],
      properties: {
        selector: { type: "string", pattern: "^[A-Za-z0-9-]+$", default: "meb", description: "DKIM selector." },
        private_key_file: { type: "string", default: "dkim.key", description: "PEM RSA private key, made by dkim-keygen." },
      },
    },
    database: {
      type: "object",
      default: {},
      description: "Where the bridge keeps its mappings and queues.",
      additionalProperties: false,
      required: [],
      properties: {
        url: { type: "string", nullable: true, pattern: "^postgres(ql)?://", default: null, description: "postgres:// URL; null for the embedded SQLite file." },
        sqlite_file: { type: "string", default: "data/bridge.sqlite", description: "Embedded SQLite file, used when url is null." },
        connect_timeout_ms: { type: "integer", minimum: 100, default: 5000, description: "PostgreSQL: longest wait for a connection, in ms (a hung database gets 451 at the SMTP side)." },
        query_timeout_ms: { type: "integer", minimum: 100, default: 10000, description: "PostgreSQL: longest statement, in ms." },
      },
    },
    permissions: {
      type: "object",
      default: {},
      description: "Who may use the bridge.",
      additionalProperties: false,
      required: [],
      properties: {
        allowed_users: {
          type: "array",
          items: { type: "string" },
          default: [],
          description: "Matrix user ID patterns ('*' wildcard) allowed to bridge; empty: users of this homeserver.",
        },
        admins: {
          type: "array",
          items: { type: "string", pattern: "^@[^:]+:.+$" },
          default: [],
          description: "Bridge admins (Matrix user IDs): mail to postmaster@ and abuse@ reaches them by DM (RFC 5321 §4.5.1 requires a postmaster).",
        },
        admin_room: { type: "string", nullable: true, pattern: "^!.+:.+$", default: null, description: "Room ID that gets postmaster@ and abuse@ mail instead of the admins' DMs (the bot must be in it)." },
      },
    },
    spam: {
      type: "object",
      default: {},
      description: "Spam verdicts from rspamd for inbound mail: reject -> 550 5.7.1, soft reject/greylist -> 451 4.7.1, add header -> posted with a warning.",
      additionalProperties: false,
      required: [],
      properties: {
        rspamd_url: { type: "string", nullable: true, pattern: "^https?://", default: null, description: "rspamd normal worker URL, e.g. http://127.0.0.1:11333 (null: no spam check)." },
        timeout_ms: { type: "integer", minimum: 100, default: 10000, description: "How long to wait for rspamd, in ms." },
        on_error: { type: "string", enum: ["defer", "accept"], default: "defer", description: "rspamd unreachable: defer (451, the sender retries) or accept unchecked." },
      },
    },
    inbound: {
      type: "object",
      default: {},
      description: "Posting accepted mail into Matrix: a queue that survives restarts and homeserver outages.",
      additionalProperties: false,
      required: [],
      properties: {
        retry_hours: { type: "number", minimum: 0, default: 48, description: "Keep retrying a mail the homeserver cannot take now for this long after it arrived, in hours; then the sender gets a DSN." },
        retry_base_ms: { type: "integer", minimum: 10, default: 5000, description: "First retry delay, in ms (doubles per attempt, with jitter)." },
        retry_max_ms: { type: "integer", minimum: 10, default: 600000, description: "Longest retry delay, in ms." },
        concurrency: { type: "integer", minimum: 1, maximum: 64, default: 4, description: "Rooms posted into at once (one mail at a time per room, in arrival order)." },
        max_text_bytes: { type: "integer", minimum: 1024, maximum: 48000, default: 24000, description: "Longest text in one event, in bytes; longer text is cut at a marker and attached whole as a .txt file." },
      },
    },
    dns: {
      type: "object",
      default: {},
      description: "The one DNS resolver every lookup goes through: SPF, DKIM, DMARC, ARC, MX, PTR, DNSBL, MTA-STS.",
      additionalProperties: false,
      required: [],
      properties: {
        nameservers: {
          type: "array",
          items: { type: "string" },
          default: [],
          description: "DNS servers, each ip, ip:port or [ipv6]:port; empty: the system's (/etc/resolv.conf).",
        },
        timeout_ms: { type: "integer", minimum: 50, default: 5000, description: "Per-try timeout of a query, in ms." },
        tries: { type: "integer", minimum: 1, maximum: 10, default: 2, description: "Tries per query." },
        cache_entries: { type: "integer", minimum: 0, default: 5000, description: "Most cached answers (0: no cache)." },
        cache_ttl_ms: { type: "integer", minimum: 0, default: 300000, description: "How long answers and NXDOMAIN/NODATA are cached, in ms." },
      },
    },
    auth: {
      type: "object",
      default: {},
      description: "Sender authentication of inbound mail (SPF, DKIM, DMARC, ARC), before the 250. See docs/security.md.",
      additionalProperties: false,
      required: [],
      properties: {
        enforce_dmarc_reject: { type: "boolean", default: true, description: "Refuse (550 5.7.1) a DMARC fail when the From domain publishes p=reject." },
        unverified: {
          type: "string",
          enum: ["mark", "reject"],
          default: "mark",
          description: "Mail with no aligned SPF or DKIM pass: mark (posted by the address's unverified ghost, never the verified one) or reject (550 5.7.1).",
        },
        trusted_arc_sealers: {
          type: "array",
          items: { type: "string", pattern: hostPattern },
          default: [],
          description: "Forwarders (ARC-Seal d= domains) whose passing ARC chain may turn a DMARC fail into a pass, e.g. a mailing list host.",
        },
        defer_on_dns_error: { type: "boolean", default: true, description: "A DNS timeout or SERVFAIL during authentication answers 451 4.4.3 (the sender retries) instead of judging the mail unverified." },
        min_dkim_key_bits: { type: "integer", minimum: 512, default: 1024, description: "Smallest DKIM RSA key accepted, in bits." },
      },
    },
    storage: {
      type: "object",
      default: {},
      description: "The stored copy of mail (inbound_mail.raw, outbound_mail.raw): how long it is kept, and encryption at rest. See docs/security.md.",
      additionalProperties: false,
      required: [],
      properties: {
        raw_retention_days: {
          type: "number",
          nullable: true,
          minimum: 0,
          default: 30,
          description: "Days the raw bytes of posted inbound mail and of sent or finally bounced outbound mail are kept after the mail arrived, then emptied (the row stays, for dedupe and the queue history). Mail not resolved yet is kept until it is. null: keep forever.",
        },
        purge_interval_ms: { type: "integer", minimum: 10, default: 3600000, description: "How often the purge runs, in ms (also once at start)." },
        purge_batch_size: { type: "integer", minimum: 1, default: 500, description: "Most rows emptied per table per purge batch (a full batch is followed by the next at once)." },
        encryption_key_id: {
          type: "string",
          nullable: true,
          pattern: "^[A-Za-z0-9._-]{1,32}$",
          default: null,
          description: "ID of the current encryption key, stored with every blob it encrypts; required with a key. Give a new key a new ID and move the old one to encryption_keys.",
        },
        encryption_key_file: {
          type: "string",
          nullable: true,
          default: null,
          description: "File holding the current key: base64 of 32 random bytes (openssl rand -base64 32). Set: stored mail is encrypted (AES-256-GCM). null: stored in plaintext.",
        },
        encryption_key_env: {
          type: "string",
          nullable: true,
          pattern: "^[A-Za-z_][A-Za-z0-9_]*$",
          default: null,
          description: "Name of an environment variable holding the current key (base64 of 32 bytes), instead of encryption_key_file.",
        },
        encryption_keys: {
          type: "object",
          default: {},
          description: "Older keys, key ID -> key file: used only to read mail they encrypted, never to write.",
          required: [],
          propertyNames: { pattern: "^[A-Za-z0-9._-]{1,32}$" },
          additionalProperties: { type: "string" },
        },
      },
    },
    logging: {
      type: "object",
      default: {},
      description: "Logging.",
      additionalProperties: false,
      required: [],
      properties: {
        level: { type: "string", enum: ["debug", "info", "warn", "error"], default: "info", description: "Lowest level logged." },
        format: { type: "string", enum: ["pretty", "json"], default: "pretty", description: "pretty or one JSON object per line." },
      },
    },
    metrics: {
      type: "object",
      default: {},
      description: "Prometheus metrics (GET /metrics) and the health check (GET /health) on an HTTP listener of their own. See docs/operations.md.",
      additionalProperties: false,
      required: [],
      properties: {
        enabled: { type: "boolean", default: false, description: "Serve /metrics and /health." },
        bind_address: { type: "string", default: "127.0.0.1", description: "Address to listen on. There is no authentication: keep it on loopback or a private network." },
        port: { type: "integer", minimum: 0, maximum: 65535, default: 9100, description: "Port to listen on (0 picks a free port)." },
      },
    },
  },
};
