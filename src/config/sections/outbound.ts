/** The `outbound` section of the config: its schema and type. */
import { Type, type Static } from "@sinclair/typebox";
import { Nullable, Section, StringEnum, StringMap } from "../schemaHelpers.ts";

/** `outbound.relay` subsection: a smarthost, used when `outbound.mode` is `relay`. */
export const RelaySection = Section(
  {
    host: Type.String({ description: "Smarthost host name." }),
    port: Type.Integer({ minimum: 1, maximum: 65535, default: 587, description: "Smarthost port." }),
    secure: Type.Boolean({ default: false, description: "Implicit TLS (465); otherwise STARTTLS." }),
    username: Nullable(Type.String({ default: null, description: "SMTP AUTH user." })),
    password: Nullable(Type.String({ default: null, description: "SMTP AUTH password." })),
  },
  { description: "Smarthost for mode: relay." },
);

/** `outbound.relay` after defaults. */
export type RelayConfig = Static<typeof RelaySection>;

/** `outbound` section: how mail leaves the bridge. */
export const OutboundSection = Section(
  {
    mode: StringEnum(["direct", "relay"], { default: "direct", description: "direct: to the recipient domain's MX; relay: through a smarthost." }),
    relay: Nullable(RelaySection, { default: null }),
    static_routes: StringMap(Type.String({ pattern: "^[^:]+:[0-9]+$" }), { default: {}, description: "Domain -> host:port, used before MX lookup." }),
    helo_name: Nullable(Type.String({ default: null, description: "EHLO name towards remote MTAs (default: smtp.hostname)." })),
    require_tls: Type.Boolean({ default: false, description: "Refuse to deliver without STARTTLS." }),
    timeout_ms: Type.Integer({ minimum: 100, default: 30000, description: "Connect/greeting timeout, in ms." }),
    max_retry_hours: Type.Number({ minimum: 0, default: 96, description: "Hours of temporary failures before giving up." }),
    max_mails_per_user_per_hour: Type.Integer({ minimum: 0, default: 200, description: "Most mails one Matrix user may send per hour (abuse limit; the bot says so in the room). 0: no limit." }),
    max_new_recipients_per_user_per_day: Type.Integer({ minimum: 0, default: 100, description: "Most addresses one Matrix user may mail for the first time per day. 0: no limit." }),
    delay_warning_hours: Type.Number({ minimum: 0, default: 4, description: "Tell the room once when a mail is still undelivered after this many hours (0: never)." }),
    concurrency: Type.Integer({ minimum: 1, maximum: 1000, default: 8, description: "Most mails delivered at once (one at a time per room)." }),
    max_connections_per_domain: Type.Integer({ minimum: 1, maximum: 100, default: 4, description: "Most SMTP connections in use at once per recipient domain and per MX/relay host; more deliveries wait." }),
    max_messages_per_connection: Type.Integer({ minimum: 1, maximum: 10000, default: 100, description: "SMTP transactions (one per mail and recipient domain) sent over one connection before it is closed and a new one opened." }),
    pool_idle_ms: Type.Integer({ minimum: 100, maximum: 300000, default: 30000, description: "Close an outbound SMTP connection after it was unused this long, in ms (at most 5 minutes, RFC 5321 4.5.3.2)." }),
    max_attachment_bytes: Type.Integer({ minimum: 0, default: 10000000, description: "Largest Matrix file (image, file, audio, video) attached to a mail, in bytes; a larger one is sent as a link instead: to <appservice.public_url>/media/ when public_url is set (not for files of encrypted rooms), else to its Matrix event." }),
    media_link_days: Type.Number({ minimum: 0, maximum: 36500, default: 30, description: "How long the <public_url>/media/ link of a file too large to attach works, in days (an HMAC-signed expiry). 0: links never expire (until the as_token changes)." }),
    mail_notices: Type.Boolean({ default: false, description: "Mail m.notice messages too (what bots send); by default they stay in Matrix." }),
    batch_delay_ms: Type.Integer({ minimum: 0, maximum: 600000, default: 5000, description: "Messages from one person in one room thread within this many ms (after the last one) go out as one mail; edits and redactions inside it change that mail. 0: every message is mailed at once." }),
  },
  { default: {}, description: "How mail leaves the bridge." },
);

/** The `outbound` section after validation, with every default filled in. */
export type OutboundConfig = Static<typeof OutboundSection>;
