/**
 * Migration 12: the end-to-end-encryption state of the bridge's Matrix devices
 * (`src/matrix/e2ee/`).
 *
 * `crypto_store`: one row per Matrix user the bridge holds a device for (the bot, and each
 * ghost that posted into an encrypted room): the device ID and the snapshot of its crypto
 * machine's store (Olm account, Olm and Megolm sessions, tracked devices, cross-signing keys),
 * sealed with AES-256-GCM by the e2ee module under the key of `encryption.store_key_*` before
 * it reaches the store: the store only ever sees opaque bytes.
 */

/** SQL of migration 12 (shared dialect; see `db/dialect.ts`). */
export const sql012CryptoStore = `
CREATE TABLE crypto_store (
  user_id     TEXT PRIMARY KEY,
  device_id   TEXT NOT NULL,
  state       {{BLOB}} NOT NULL,
  updated_at  BIGINT NOT NULL
);
`;
