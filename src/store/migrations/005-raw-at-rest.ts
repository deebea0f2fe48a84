/**
 * Migration 5: retention of the stored mail (`inbound_mail.raw`, `outbound_mail.raw`).
 *
 * The raw bytes of resolved mail (inbound: posted; outbound: sent, or bounced with every
 * failure reported) are kept for `storage.raw_retention_days`, then emptied by the purge job
 * (src/store/retention.ts). The row stays, so the dedupe of inbound replays and the outbound
 * queue's history keep working.
 *
 * - `inbound_mail.raw_purged_at`, `outbound_mail.raw_purged_at`: epoch ms when `raw` was
 *   emptied; NULL while the bytes are kept.
 * - `inbound_mail_raw_kept`, `outbound_mail_raw_kept`: partial indexes over the rows whose bytes
 *   are still kept, by arrival (`received_at`, `created_at`), for the purge job's scan.
 *
 * Encryption at rest (src/store/rawCipher.ts) needs no schema change: an encrypted `raw` is a
 * self-describing envelope in the same BLOB/BYTEA column.
 */

/** SQL of migration 5 (shared dialect; see `db/dialect.ts`). */
export const sql005RawAtRest = `
ALTER TABLE inbound_mail ADD COLUMN raw_purged_at BIGINT;
ALTER TABLE outbound_mail ADD COLUMN raw_purged_at BIGINT;
CREATE INDEX inbound_mail_raw_kept ON inbound_mail (received_at) WHERE raw_purged_at IS NULL;
CREATE INDEX outbound_mail_raw_kept ON outbound_mail (created_at) WHERE raw_purged_at IS NULL;
`;
