/**
 * Re-encrypt the stored mail under the current key: after turning encryption on (plaintext
 * rows) or after a key rotation (rows under an older key), so the older key can be retired.
 * No CLI; call {@link reencryptRawMail} with the store's database and the cipher built from the
 * config (`loadRawCipher`). Safe while the bridge runs: each row is swapped only if its bytes
 * are still the ones read (a concurrent purge or rewrite wins).
 */
import type { Database, SqlValue } from "./db/Database.ts";
import { dbBuffer, dbNumber } from "./db/dialect.ts";
import * as Q from "./queries/sql.ts";
import type { RawCipher, RawTable } from "./rawCipher.ts";
import { getLogger } from "../util/logger.ts";

const log = getLogger("store/reencrypt");

/** What {@link reencryptRawMail} rewrote, per table. */
export interface ReencryptResult {
  /** Rows of `inbound_mail` rewritten. */
  inbound: number;
  /** Chunks of large inbound mail (`inbound_raw_chunk`, migration 13) rewritten. */
  inboundChunks: number;
  /** Rows of `outbound_mail` rewritten. */
  outbound: number;
}

const TABLES: { table: RawTable; page: string; swap: string; field: "inbound" | "outbound" }[] = [
  { table: "inbound_mail", page: Q.SQL_INBOUND_RAW_PAGE, swap: Q.SQL_INBOUND_RAW_SWAP, field: "inbound" },
  { table: "outbound_mail", page: Q.SQL_OUTBOUND_RAW_PAGE, swap: Q.SQL_OUTBOUND_RAW_SWAP, field: "outbound" },
];

/**
 * Rewrite every kept `raw` (not purged) of `inbound_mail` and `outbound_mail` that is not under
 * the cipher's current key (plaintext, or an envelope under an older key) under the current key,
 * reading `batchSize` rows at a time by id.
 * @param db the store's (migrated) database, e.g. `SqlStore.db`
 * @param cipher the cipher with the current key and every older key still in use
 * @param opts.batchSize rows read per statement (default 100)
 * @returns how many rows of each table (and chunks of large inbound mail) were rewritten
 * @throws Error when the cipher has no current key (nothing to encrypt under)
 * @throws RangeError when `batchSize` is not an integer >= 1
 * @throws RawDecryptError naming the row and key ID when a row cannot be decrypted (rows
 *   before it are already rewritten; run it again once the key is configured)
 * @throws the driver's error
 */
export async function reencryptRawMail(db: Database, cipher: RawCipher, opts: { batchSize?: number } = {}): Promise<ReencryptResult> {
  if (cipher.currentKeyId === null) throw new Error("cannot re-encrypt stored mail: no current key (storage.encryption_key_file or storage.encryption_key_env)");
  const batchSize = opts.batchSize ?? 100;
  if (!Number.isInteger(batchSize) || batchSize < 1) throw new RangeError(`batchSize must be an integer >= 1, got ${batchSize}`);
  const result: ReencryptResult = { inbound: 0, inboundChunks: 0, outbound: 0 };
  for (const { table, page, swap, field } of TABLES) {
    let after = 0;
    for (;;) {
      const rows = await db.query<Record<string, unknown>>(page, [after, batchSize]);
      for (const r of rows) {
        const id = dbNumber(r.id);
        const stored = dbBuffer(r.raw);
        after = id;
        if (!cipher.needsReencryption(stored, table, id)) continue;
        const sealed = cipher.seal(cipher.open(stored, table, id), table);
        const params: SqlValue[] = [id, stored, sealed];
        result[field] += (await db.execute(swap, params)).changes;
      }
      if (rows.length < batchSize) break;
    }
  }
  // The chunks of large inbound mail, by (row, seq); each bound to its place.
  let after = { id: 0, seq: 0 };
  for (;;) {
    const rows = await db.query<Record<string, unknown>>(Q.SQL_INBOUND_CHUNK_PAGE, [after.id, after.seq, batchSize]);
    for (const r of rows) {
      const id = dbNumber(r.inbound_id);
      const seq = dbNumber(r.seq);
      const stored = dbBuffer(r.data);
      after = { id, seq };
      if (!cipher.needsReencryption(stored, "inbound_raw_chunk", id)) continue;
      const place = `${id}/${seq}`;
      const sealed = cipher.seal(cipher.open(stored, "inbound_raw_chunk", id, place), "inbound_raw_chunk", place);
      result.inboundChunks += (await db.execute(Q.SQL_INBOUND_CHUNK_SWAP, [id, seq, stored, sealed])).changes;
    }
    if (rows.length < batchSize) break;
  }
  log.info("stored mail re-encrypted", { keyId: cipher.currentKeyId, inbound: result.inbound, inboundChunks: result.inboundChunks, outbound: result.outbound });
  return result;
}
