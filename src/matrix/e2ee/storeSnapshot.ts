/**
 * The crypto machines' stores, kept in the bridge's database.
 *
 * `@matrix-org/matrix-sdk-crypto-wasm` persists an OlmMachine in IndexedDB (two databases per
 * store name: `<name>::matrix-sdk-crypto` and `<name>::matrix-sdk-crypto-meta`). Node has no
 * IndexedDB: `fake-indexeddb` provides one in memory. A machine's databases are turned into a
 * {@link StoreSnapshot} (every object store's schema and records, serialised with
 * `node:v8`'s structured clone, which keeps the `Uint8Array`s and `Map`s the store writes),
 * sealed with AES-256-GCM ({@link sealSnapshot}) and saved into the `crypto_store` table
 * (migration 12); at start the snapshot is opened and written back into IndexedDB before the
 * machine is created ({@link restoreSnapshot}), so the machine finds its account, sessions and
 * keys as it left them.
 *
 * Sealed format: `MEBC1` (5 bytes), 12-byte IV, 16-byte GCM tag, ciphertext; the additional
 * authenticated data is the magic and the Matrix user ID, so one user's state cannot be
 * passed off as another's.
 */
import "fake-indexeddb/auto";
import { createCipheriv, createDecipheriv, randomBytes } from "node:crypto";
import { deserialize, serialize } from "node:v8";

/** One object store's index, as IndexedDB describes it. */
interface IndexSchema {
  name: string;
  keyPath: string | string[];
  unique: boolean;
  multiEntry: boolean;
}

/** One object store: its schema and its records in key order. */
interface ObjectStoreSnapshot {
  name: string;
  keyPath: string | string[] | null;
  autoIncrement: boolean;
  indexes: IndexSchema[];
  /** [key, value] pairs; the key is needed only for stores without a key path. */
  records: [unknown, unknown][];
}

/** One IndexedDB database. */
interface DatabaseSnapshot {
  name: string;
  version: number;
  stores: ObjectStoreSnapshot[];
}

/** Every IndexedDB database of one crypto store name. */
export interface StoreSnapshot {
  databases: DatabaseSnapshot[];
}

// The few IndexedDB shapes used here (the project compiles without the DOM library).
interface Req<T> {
  result: T;
  error: unknown;
  onsuccess: (() => void) | null;
  onerror: (() => void) | null;
}
interface OpenReq extends Req<Db> {
  onupgradeneeded: (() => void) | null;
  onblocked: (() => void) | null;
  transaction: Txn | null;
}
interface Index {
  name: string;
  keyPath: string | string[];
  unique: boolean;
  multiEntry: boolean;
}
interface Store {
  name: string;
  keyPath: string | string[] | null;
  autoIncrement: boolean;
  indexNames: ArrayLike<string>;
  index(name: string): Index;
  getAll(): Req<unknown[]>;
  getAllKeys(): Req<unknown[]>;
  put(value: unknown, key?: unknown): Req<unknown>;
  createIndex(name: string, keyPath: string | string[], opts: { unique: boolean; multiEntry: boolean }): Index;
}
interface Txn {
  objectStore(name: string): Store;
  oncomplete: (() => void) | null;
  onerror: (() => void) | null;
  onabort: (() => void) | null;
  error: unknown;
}
interface Db {
  name: string;
  version: number;
  objectStoreNames: ArrayLike<string>;
  transaction(names: string[], mode: "readonly" | "readwrite"): Txn;
  createObjectStore(name: string, opts: { keyPath?: string | string[] | null; autoIncrement: boolean }): Store;
  close(): void;
}
interface Factory {
  open(name: string, version?: number): OpenReq;
  deleteDatabase(name: string): Req<unknown>;
  databases(): Promise<{ name?: string; version?: number }[]>;
}

const idb = (): Factory => (globalThis as unknown as { indexedDB: Factory }).indexedDB;

function done<T>(req: Req<T>): Promise<T> {
  return new Promise((resolve, reject) => {
    req.onsuccess = () => resolve(req.result);
    req.onerror = () => reject(req.error instanceof Error ? req.error : new Error(`IndexedDB request failed: ${String(req.error)}`));
  });
}

function finished(txn: Txn): Promise<void> {
  return new Promise((resolve, reject) => {
    txn.oncomplete = () => resolve();
    const fail = () => reject(txn.error instanceof Error ? txn.error : new Error(`IndexedDB transaction failed: ${String(txn.error)}`));
    txn.onerror = fail;
    txn.onabort = fail;
  });
}

/** Names of the IndexedDB databases that belong to crypto store `storeName`. */
async function databasesOf(storeName: string): Promise<string[]> {
  return (await idb().databases()).map((d) => d.name ?? "").filter((n) => n === storeName || n.startsWith(`${storeName}::`));
}

/**
 * Read every database of crypto store `storeName`, one readonly transaction per database (a
 * consistent view of each).
 * @throws the IndexedDB error when a read fails
 */
export async function takeSnapshot(storeName: string): Promise<StoreSnapshot> {
  const databases: DatabaseSnapshot[] = [];
  for (const name of await databasesOf(storeName)) {
    const db = await done(idb().open(name));
    try {
      const names = Array.from(db.objectStoreNames);
      const stores: ObjectStoreSnapshot[] = [];
      if (names.length > 0) {
        const txn = db.transaction(names, "readonly");
        const end = finished(txn);
        const reads = names.map(async (storeNameInDb) => {
          const store = txn.objectStore(storeNameInDb);
          const [keys, values] = await Promise.all([done(store.getAllKeys()), done(store.getAll())]);
          const indexes = Array.from(store.indexNames).map((n) => {
            const i = store.index(n);
            return { name: i.name, keyPath: i.keyPath, unique: i.unique, multiEntry: i.multiEntry };
          });
          const records = keys.map((k, i): [unknown, unknown] => [k, values[i]]);
          return { name: storeNameInDb, keyPath: store.keyPath, autoIncrement: store.autoIncrement, indexes, records };
        });
        stores.push(...(await Promise.all(reads)));
        await end;
      }
      databases.push({ name, version: db.version, stores });
    } finally {
      db.close();
    }
  }
  return { databases };
}

/**
 * Write a snapshot back into IndexedDB, replacing any database of the same name, with the same
 * versions, object stores, indexes and records. Run before the machine opens the store.
 * @throws the IndexedDB error when a write fails
 */
export async function restoreSnapshot(snapshot: StoreSnapshot): Promise<void> {
  for (const d of snapshot.databases) {
    await done(idb().deleteDatabase(d.name));
    const req = idb().open(d.name, d.version);
    req.onupgradeneeded = () => {
      const db = req.result;
      for (const s of d.stores) {
        const store = db.createObjectStore(s.name, { keyPath: s.keyPath, autoIncrement: s.autoIncrement });
        for (const i of s.indexes) store.createIndex(i.name, i.keyPath, { unique: i.unique, multiEntry: i.multiEntry });
      }
    };
    const db = await done(req);
    try {
      const names = d.stores.map((s) => s.name);
      if (names.length > 0) {
        const txn = db.transaction(names, "readwrite");
        const end = finished(txn);
        for (const s of d.stores) {
          const store = txn.objectStore(s.name);
          for (const [key, value] of s.records) {
            if (s.keyPath === null) store.put(value, key);
            else store.put(value);
          }
        }
        await end;
      }
    } finally {
      db.close();
    }
  }
}

/** Delete every database of crypto store `storeName` (a machine evicted from memory, or reset). */
export async function dropStore(storeName: string): Promise<void> {
  for (const name of await databasesOf(storeName)) await done(idb().deleteDatabase(name));
}

const MAGIC = Buffer.from("MEBC1", "ascii");
const IV_BYTES = 12;
const TAG_BYTES = 16;

/** A sealed snapshot that cannot be opened: wrong key, another user's, or damaged. */
export class SnapshotSealError extends Error {
  override name = "SnapshotSealError";
}

/**
 * Serialise and seal a snapshot for `userId` (AES-256-GCM, see the module comment).
 * @param key the 32-byte store key
 * @returns the bytes to save in `crypto_store.state`
 * @throws Error when the snapshot holds no database (a closed or dropped store)
 */
export function sealSnapshot(snapshot: StoreSnapshot, userId: string, key: Buffer): Buffer {
  // An empty snapshot would overwrite a device's saved state with nothing.
  if (snapshot.databases.length === 0) throw new Error(`the crypto store of ${userId} is empty: nothing to save`);
  const iv = randomBytes(IV_BYTES);
  const cipher = createCipheriv("aes-256-gcm", key, iv);
  cipher.setAAD(Buffer.concat([MAGIC, Buffer.from(userId, "utf8")]));
  const body = Buffer.concat([cipher.update(serialize(snapshot)), cipher.final()]);
  return Buffer.concat([MAGIC, iv, cipher.getAuthTag(), body]);
}

/**
 * Open a snapshot sealed by {@link sealSnapshot} for `userId`.
 * @throws SnapshotSealError when the bytes are not a sealed snapshot, or fail authentication
 *   (another key, another user's row, damaged)
 */
export function openSnapshot(sealed: Buffer, userId: string, key: Buffer): StoreSnapshot {
  if (sealed.length < MAGIC.length + IV_BYTES + TAG_BYTES || !sealed.subarray(0, MAGIC.length).equals(MAGIC)) {
    throw new SnapshotSealError(`the saved crypto state of ${userId} is not a sealed snapshot`);
  }
  const iv = sealed.subarray(MAGIC.length, MAGIC.length + IV_BYTES);
  const tag = sealed.subarray(MAGIC.length + IV_BYTES, MAGIC.length + IV_BYTES + TAG_BYTES);
  const decipher = createDecipheriv("aes-256-gcm", key, iv);
  decipher.setAAD(Buffer.concat([MAGIC, Buffer.from(userId, "utf8")]));
  decipher.setAuthTag(tag);
  let plain: Buffer;
  try {
    plain = Buffer.concat([decipher.update(sealed.subarray(MAGIC.length + IV_BYTES + TAG_BYTES)), decipher.final()]);
  } catch {
    throw new SnapshotSealError(`the saved crypto state of ${userId} cannot be opened with the configured key (encryption.store_key_*), or is damaged`);
  }
  return deserialize(plain) as StoreSnapshot;
}
