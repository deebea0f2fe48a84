/**
 * The `outbound` config section for tests that build the delivery side without loading a
 * config file: direct delivery, a 3 s timeout, no per-user limits, no batching.
 */
import type { OutboundConfig } from "../../src/config/schema.ts";

/** An {@link OutboundConfig} for tests, with any field replaced by `over`. */
export function outboundConfig(over: Partial<OutboundConfig> = {}): OutboundConfig {
  return {
    mode: "direct",
    relay: null,
    static_routes: {},
    helo_name: null,
    require_tls: false,
    timeout_ms: 3000,
    max_retry_hours: 96,
    delay_warning_hours: 4,
    concurrency: 8,
    max_mails_per_user_per_hour: 0,
    max_new_recipients_per_user_per_day: 0,
    max_connections_per_domain: 4,
    max_messages_per_connection: 100,
    pool_idle_ms: 30000,
    max_attachment_bytes: 10_000_000,
    media_link_days: 30,
    mail_notices: false,
    batch_delay_ms: 0,
    ...over,
  };
}
