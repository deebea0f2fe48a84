/**
 * Migration 6: outbound batching (`outbound.batch_delay_ms`).
 *
 * Messages from one Matrix user in one portal thread within the batching delay go out as one
 * mail. The mail is a normal queue row held back (`next_attempt_at` in the future) while it is
 * open; these columns let later messages, edits and redactions change it until then:
 *
 * - `outbound_mail.batch_key`: room, sender and thread the mail collects messages for; NULL for
 *   a mail that was never open for batching.
 * - `outbound_mail.batch_state`: the messages in it and what the mail is composed from (JSON),
 *   sealed like `raw` when stored mail is encrypted (src/store/rawCipher.ts); emptied with
 *   `raw` by the retention purge.
 * - `outbound_mail_open_batch`: partial index to find the open mail of a key.
 */

/** SQL of migration 6 (shared dialect; see `db/dialect.ts`). */
export const sql006OutboundBatches = `
ALTER TABLE outbound_mail ADD COLUMN batch_key TEXT;
ALTER TABLE outbound_mail ADD COLUMN batch_state {{BLOB}};
CREATE INDEX outbound_mail_open_batch ON outbound_mail (batch_key, next_attempt_at) WHERE batch_key IS NOT NULL AND state = 'queued' AND attempts = 0;
`;
