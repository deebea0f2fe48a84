/**
 * Migration 13: a large inbound mail is stored in chunks (src/store/SqlStore.ts, `RAW_CHUNK_BYTES`).
 *
 * One BLOB/BYTEA of a whole 36 MB message is copied whole by every layer it crosses (the
 * SQLite worker boundary, SQLite's record, pg's parameter), so storing it cost several times
 * its size in memory. In chunks, a mail is written and read one chunk at a time, and the
 * inbound poster streams its attachments from them (docs/performance.md).
 *
 * - `inbound_mail.raw` holds the first `RAW_CHUNK_BYTES` of the message (all of it when it is
 *   smaller, as before); `inbound_mail.raw_chunks` counts the chunks that follow (0: none).
 * - `inbound_raw_chunk (inbound_id, seq, data)`: chunk `seq` (1..raw_chunks) of the message of
 *   inbound row `inbound_id`, encrypted at rest like `raw` (src/store/rawCipher.ts), with the
 *   row and position in its authenticated data. Deleted with the row, and by the retention purge.
 */

/** SQL of migration 13 (shared dialect; see `db/dialect.ts`). */
export const sql013RawChunks = `
ALTER TABLE inbound_mail ADD COLUMN raw_chunks INTEGER NOT NULL DEFAULT 0;
CREATE TABLE inbound_raw_chunk (
  inbound_id BIGINT NOT NULL,
  seq INTEGER NOT NULL,
  data {{BLOB}} NOT NULL,
  PRIMARY KEY (inbound_id, seq)
);
`;
