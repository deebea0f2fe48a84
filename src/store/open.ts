/**
 * Open the bridge's store on the configured engine and migrate it.
 */
import type { Database } from "./db/Database.ts";
import { migrate } from "./migrate.ts";
import { SqlStore } from "./SqlStore.ts";
import type { RawCipher } from "./rawCipher.ts";
import type { BridgeStore } from "./Store.ts";
import { getLogger } from "../util/logger.ts";

const log = getLogger("store");

/** Where the store lives (the `database` config section). */
export interface OpenStoreOptions {
  /** `postgres://` URL: use PostgreSQL. Null: use the SQLite file. */
  url: string | null;
  /** SQLite file path (its directory is created), used when `url` is null. */
  sqliteFile: string;
  /** PostgreSQL only: longest wait for a connection, and longest statement, in ms (see `openPostgres`). */
  timeouts?: { connectMs: number; queryMs: number };
  /**
   * Encryption at rest of the stored mail (`loadRawCipher` in `rawCipher.ts`, from the
   * `storage` config section). Omitted: mail is stored in plaintext.
   */
  cipher?: RawCipher;
}

/**
 * Connect to PostgreSQL (when `url` is set) or open the SQLite file, then apply pending
 * migrations. The returned store is a {@link SqlStore}.
 * @throws the driver's error if the database cannot be opened
 * @throws Error if the database belongs to Synapse or has a newer schema than this code
 *   (the connection is closed before throwing)
 */
export async function openStore(opts: OpenStoreOptions): Promise<BridgeStore> {
  const db: Database = opts.url
    ? // Each engine's driver is loaded only when it is used (pg costs ~10 MiB of RSS).
      await (await import("./db/postgres.ts")).openPostgres(opts.url, { connectTimeoutMs: opts.timeouts?.connectMs, queryTimeoutMs: opts.timeouts?.queryMs })
    : await (await import("./db/sqlite.ts")).openSqlite(opts.sqliteFile);
  try {
    const result = await migrate(db);
    log.info("store opened", {
      engine: db.engine,
      ...(db.engine === "sqlite" ? { file: opts.sqliteFile } : {}),
      schemaVersion: result.to,
      // Key IDs only, never key bytes; null: stored mail is written in plaintext.
      rawEncryptionKeyId: opts.cipher?.currentKeyId ?? null,
      rawDecryptionKeyIds: opts.cipher?.keyIds ?? [],
    });
  } catch (err) {
    await db.close().catch(() => undefined);
    throw err;
  }
  return new SqlStore(db, { cipher: opts.cipher });
}
