/**
 * Encryption at rest of the stored mail (`inbound_mail.raw`, `outbound_mail.raw`).
 *
 * The bridge has to read mail to post it, so what it can protect is the stored copy: a
 * database dump, a backup or a stolen disk should not hold readable mail. With a key
 * configured (`storage.encryption_key_file` or `storage.encryption_key_env`), the store
 * encrypts every `raw` it writes and decrypts every `raw` it reads (src/store/SqlStore.ts).
 *
 * Cipher: AES-256-GCM (node:crypto), a fresh random 96-bit IV per blob, a 128-bit tag. The
 * blob is a versioned envelope:
 *
 * | offset     | bytes | content                                                         |
 * |------------|-------|-----------------------------------------------------------------|
 * | 0          | 5     | magic `MEB1` and a zero byte (`4d 45 42 31 00`); `1` is the version |
 * | 5          | 1     | length n of the key ID (1..32)                                  |
 * | 6          | n     | key ID, ASCII `[A-Za-z0-9._-]`                                   |
 * | 6+n        | 12    | IV                                                              |
 * | 18+n       | 16    | GCM tag                                                         |
 * | 34+n       | rest  | ciphertext (as long as the plaintext)                           |
 *
 * The additional authenticated data is the header (bytes 0 .. 6+n) followed by the table name
 * (`inbound_mail`, `outbound_mail` or `inbound_raw_chunk`): the key ID cannot be swapped, nor a
 * blob moved to the other table, without failing authentication. A chunk of a large inbound
 * mail also binds its place (`<inbound id>/<seq>`, after a zero byte): chunks cannot be
 * reordered, nor moved to another mail.
 *
 * A `raw` that does not start with the magic is plaintext (a row written before encryption was
 * turned on, or a purged row, whose `raw` is empty) and is read as it is. No mail the bridge
 * stores can start with the magic: an RFC 5322 message starts with a header field name, which
 * never holds a zero byte (inbound mail starts with the bridge's own `Received:` field).
 *
 * Keys rotate by ID: the current key encrypts; older keys (`storage.encryption_keys`) only
 * decrypt. A blob whose key ID is not configured, that fails authentication, or whose envelope
 * is cut short is a {@link RawDecryptError} naming the row and the key ID: never garbage.
 */
import { createCipheriv, createDecipheriv, randomBytes } from "node:crypto";
import { readFileSync } from "node:fs";

/** The 5-byte prefix of an encrypted blob: `MEB1` and a zero byte. */
export const RAW_ENVELOPE_MAGIC: Buffer = Buffer.from([0x4d, 0x45, 0x42, 0x31, 0x00]);

/** Length of an AES-256 key, in bytes. */
export const RAW_KEY_BYTES = 32;

const IV_BYTES = 12;
const TAG_BYTES = 16;
const ALGORITHM = "aes-256-gcm";

/** What a key ID may look like: 1 to 32 of `A-Z a-z 0-9 . _ -`. */
export const RAW_KEY_ID_PATTERN = /^[A-Za-z0-9._-]{1,32}$/;

/**
 * The tables whose stored mail is encrypted: `raw` of `inbound_mail` and `outbound_mail`, and
 * `data` of `inbound_raw_chunk` (the chunks after the first of a large inbound mail, migration 13).
 */
export type RawTable = "inbound_mail" | "outbound_mail" | "inbound_raw_chunk";

/** One AES-256 key with its ID. */
export interface RawKey {
  /** Key ID, stored in every blob the key encrypts; see {@link RAW_KEY_ID_PATTERN}. */
  id: string;
  /** The 32 key bytes. Never log them. */
  key: Buffer;
}

/** Why a stored blob could not be decrypted. */
export type RawDecryptReason = "unknown-key" | "authentication" | "malformed";

/**
 * A stored `raw` that cannot be read: its key ID is not configured, it fails authentication
 * (wrong key under that ID, or altered bytes), or its envelope is cut short. Names the row
 * (`table`, `rowId`) and the key ID.
 */
export class RawDecryptError extends Error {
  readonly table: RawTable;
  /** Row ID (`id` column), or null when not known (e.g. a blob read outside a row). */
  readonly rowId: number | null;
  /** The blob's key ID, or null when the envelope is too short to hold one. */
  readonly keyId: string | null;
  readonly reason: RawDecryptReason;
  constructor(table: RawTable, rowId: number | null, keyId: string | null, reason: RawDecryptReason) {
    const row = `${table} row ${rowId ?? "?"}`;
    const key = keyId === null ? "" : ` (key ID "${keyId}")`;
    const why =
      reason === "unknown-key"
        ? `its key ID "${keyId}" is not configured (set it as storage.encryption_key_id or list it in storage.encryption_keys)`
        : reason === "authentication"
          ? `authentication failed under key ID "${keyId}": the key configured under that ID is not the one that encrypted it, or the stored bytes were altered`
          : `its encryption envelope is malformed${key}`;
    super(`cannot decrypt the stored mail of ${row}: ${why}`);
    this.name = "RawDecryptError";
    this.table = table;
    this.rowId = rowId;
    this.keyId = keyId;
    this.reason = reason;
  }
}

/** Whether `stored` is an encrypted envelope (starts with {@link RAW_ENVELOPE_MAGIC}). */
export function isRawEnvelope(stored: Buffer): boolean {
  return stored.length >= RAW_ENVELOPE_MAGIC.length && stored.subarray(0, RAW_ENVELOPE_MAGIC.length).equals(RAW_ENVELOPE_MAGIC);
}

/**
 * The key ID of an encrypted envelope, or null for plaintext.
 * @throws RawDecryptError (`malformed`, row unknown) when the envelope is too short to hold its key ID
 */
export function rawEnvelopeKeyId(stored: Buffer, table: RawTable = "inbound_mail", rowId: number | null = null): string | null {
  if (!isRawEnvelope(stored)) return null;
  return parseHeader(stored, table, rowId).keyId;
}

/** The authenticated data after the header: the table name, then a zero byte and the chunk's place when there is one. */
function additionalData(table: RawTable, place: string | undefined): Buffer {
  return Buffer.from(place === undefined ? table : `${table}\0${place}`, "latin1");
}

interface Header {
  keyId: string;
  /** Offset of the IV, i.e. the length of the authenticated header. */
  headerEnd: number;
}

function parseHeader(stored: Buffer, table: RawTable, rowId: number | null): Header {
  const m = RAW_ENVELOPE_MAGIC.length;
  const n = stored[m];
  if (n === undefined || n < 1 || n > 32 || stored.length < m + 1 + n) throw new RawDecryptError(table, rowId, null, "malformed");
  const keyId = stored.toString("latin1", m + 1, m + 1 + n);
  if (!RAW_KEY_ID_PATTERN.test(keyId)) throw new RawDecryptError(table, rowId, null, "malformed");
  return { keyId, headerEnd: m + 1 + n };
}

/**
 * Encrypts and decrypts stored mail with a current key and older keys (see the module comment).
 * With no current key it writes plaintext; with no keys at all it still refuses to return an
 * envelope as if it were plaintext.
 */
export class RawCipher {
  readonly #current: RawKey | null;
  readonly #keys: ReadonlyMap<string, Buffer>;

  /**
   * @param opts.current the key new blobs are encrypted with, or null to write plaintext
   * @param opts.previous older keys, for decryption only
   * @throws RangeError when a key is not 32 bytes, a key ID does not match
   *   {@link RAW_KEY_ID_PATTERN}, or an ID is given twice
   */
  constructor(opts: { current: RawKey | null; previous?: readonly RawKey[] }) {
    const keys = new Map<string, Buffer>();
    for (const k of [...(opts.current ? [opts.current] : []), ...(opts.previous ?? [])]) {
      if (!RAW_KEY_ID_PATTERN.test(k.id)) throw new RangeError(`stored-mail key ID ${JSON.stringify(k.id)} must be 1 to 32 of A-Z a-z 0-9 . _ -`);
      if (k.key.length !== RAW_KEY_BYTES) throw new RangeError(`stored-mail key "${k.id}" must be ${RAW_KEY_BYTES} bytes, got ${k.key.length}`);
      if (keys.has(k.id)) throw new RangeError(`stored-mail key ID "${k.id}" is given twice`);
      keys.set(k.id, Buffer.from(k.key));
    }
    this.#current = opts.current ? { id: opts.current.id, key: keys.get(opts.current.id)! } : null;
    this.#keys = keys;
  }

  /** A cipher without keys: writes plaintext, reads plaintext, refuses envelopes. */
  static plaintext(): RawCipher {
    return new RawCipher({ current: null });
  }

  /** ID of the key new blobs are encrypted with, or null when they are written in plaintext. */
  get currentKeyId(): string | null {
    return this.#current?.id ?? null;
  }

  /** IDs of every configured key (current first), for logs. */
  get keyIds(): string[] {
    return [...this.#keys.keys()];
  }

  /**
   * What to store for `plain` in `table`: an envelope under the current key, or `plain`
   * itself when there is no current key.
   * @param place a chunk's place (`<inbound id>/<seq>`, `inbound_raw_chunk` only), bound into
   *   the authenticated data
   */
  seal(plain: Buffer, table: RawTable, place?: string): Buffer {
    const cur = this.#current;
    if (!cur) return plain;
    const id = Buffer.from(cur.id, "latin1");
    const header = Buffer.concat([RAW_ENVELOPE_MAGIC, Buffer.from([id.length]), id]);
    const iv = randomBytes(IV_BYTES);
    const cipher = createCipheriv(ALGORITHM, cur.key, iv, { authTagLength: TAG_BYTES });
    cipher.setAAD(Buffer.concat([header, additionalData(table, place)]));
    const body = Buffer.concat([cipher.update(plain), cipher.final()]);
    return Buffer.concat([header, iv, cipher.getAuthTag(), body]);
  }

  /**
   * The plaintext of a stored `raw`: decrypted when it is an envelope, as it is otherwise.
   * @param stored the column's bytes
   * @param table the row's table (part of the authenticated data)
   * @param rowId the row's ID, for the error
   * @param place a chunk's place (`<inbound id>/<seq>`), as given to {@link seal}
   * @throws RawDecryptError naming the row and key ID when the key is not configured, the
   *   blob fails authentication, or the envelope is malformed
   */
  open(stored: Buffer, table: RawTable, rowId: number | null, place?: string): Buffer {
    if (!isRawEnvelope(stored)) return stored;
    const { keyId, headerEnd } = parseHeader(stored, table, rowId);
    if (stored.length < headerEnd + IV_BYTES + TAG_BYTES) throw new RawDecryptError(table, rowId, keyId, "malformed");
    const key = this.#keys.get(keyId);
    if (!key) throw new RawDecryptError(table, rowId, keyId, "unknown-key");
    const iv = stored.subarray(headerEnd, headerEnd + IV_BYTES);
    const tag = stored.subarray(headerEnd + IV_BYTES, headerEnd + IV_BYTES + TAG_BYTES);
    const decipher = createDecipheriv(ALGORITHM, key, iv, { authTagLength: TAG_BYTES });
    decipher.setAAD(Buffer.concat([stored.subarray(0, headerEnd), additionalData(table, place)]));
    decipher.setAuthTag(tag);
    const body = decipher.update(stored.subarray(headerEnd + IV_BYTES + TAG_BYTES));
    try {
      return Buffer.concat([body, decipher.final()]);
    } catch {
      // node:crypto says only "Unsupported state or unable to authenticate data".
      throw new RawDecryptError(table, rowId, keyId, "authentication");
    }
  }

  /**
   * Whether a stored `raw` should be rewritten under the current key: a non-empty plaintext,
   * or an envelope under another key. Never without a current key; never an empty (purged) blob.
   * @throws RawDecryptError (`malformed`) when an envelope is too short to hold its key ID
   */
  needsReencryption(stored: Buffer, table: RawTable, rowId: number | null): boolean {
    const cur = this.#current;
    if (!cur) return false;
    if (!isRawEnvelope(stored)) return stored.length > 0;
    return parseHeader(stored, table, rowId).keyId !== cur.id;
  }
}

/**
 * A stored-mail key that cannot be used. `configKey` is the dotted config key it came from
 * (e.g. `storage.encryption_key_file`), `source` the key file or environment variable.
 */
export class RawKeyError extends Error {
  readonly configKey: string;
  readonly source: string;
  constructor(configKey: string, source: string, problem: string) {
    super(`${configKey} (${source}): ${problem}`);
    this.name = "RawKeyError";
    this.configKey = configKey;
    this.source = source;
  }
}

/**
 * Decode a key as written in a key file or environment variable: base64 (standard alphabet,
 * padded) of exactly 32 bytes, surrounding whitespace ignored (e.g. `openssl rand -base64 32`).
 * @returns the 32 key bytes
 * @throws Error saying what is wrong (not base64; decodes to the wrong length)
 */
export function decodeRawKey(text: string): Buffer {
  const b64 = text.trim();
  if (b64 === "") throw new Error("is empty; expected the base64 of 32 random bytes (openssl rand -base64 32)");
  const key = Buffer.from(b64, "base64");
  if (!/^[A-Za-z0-9+/]+={0,2}$/.test(b64) || key.toString("base64") !== b64) {
    throw new Error("is not base64; expected the base64 of 32 random bytes (openssl rand -base64 32)");
  }
  if (key.length !== RAW_KEY_BYTES) throw new Error(`holds ${key.length} bytes; an AES-256 key is ${RAW_KEY_BYTES} bytes (openssl rand -base64 32)`);
  return key;
}

/** Where the keys are (the `storage` config section's key settings, paths already absolute). */
export interface RawKeySources {
  /** ID of the current key; required when a current key is given. */
  encryption_key_id: string | null;
  /** File holding the current key (base64). */
  encryption_key_file: string | null;
  /** Name of the environment variable holding the current key (base64). */
  encryption_key_env: string | null;
  /** Older keys, key ID → key file, for decryption only. */
  encryption_keys: Record<string, string>;
}

function readKeyFile(configKey: string, file: string): Buffer {
  let text: string;
  try {
    text = readFileSync(file, "utf8");
  } catch (err) {
    throw new RawKeyError(configKey, file, `cannot be read (${(err as NodeJS.ErrnoException).code ?? "error"})`);
  }
  try {
    return decodeRawKey(text);
  } catch (err) {
    throw new RawKeyError(configKey, file, (err as Error).message);
  }
}

/**
 * Read the configured keys and build the store's cipher.
 * @param sources the key settings (see {@link RawKeySources})
 * @param env environment to read `encryption_key_env` from (default `process.env`)
 * @returns a cipher (without keys when none is configured: see {@link RawCipher.plaintext})
 * @throws RawKeyError naming the config key and the file or variable: both a file and a
 *   variable set, a current key without ID (or an ID without key), an ID given twice or
 *   malformed, a file that cannot be read, a variable that is not set, a key that is not the
 *   base64 of 32 bytes
 */
export function loadRawCipher(sources: RawKeySources, env: NodeJS.ProcessEnv = process.env): RawCipher {
  const { encryption_key_id: id, encryption_key_file: file, encryption_key_env: envName } = sources;
  if (file !== null && envName !== null) {
    throw new RawKeyError("storage.encryption_key_env", envName, "set together with storage.encryption_key_file; set only one of them");
  }
  if ((file !== null || envName !== null) && id === null) {
    throw new RawKeyError("storage.encryption_key_id", file ?? `$${envName}`, "is required when storage.encryption_key_file or storage.encryption_key_env is set");
  }
  if (id !== null && file === null && envName === null) {
    throw new RawKeyError("storage.encryption_key_id", id, "is set but neither storage.encryption_key_file nor storage.encryption_key_env is");
  }
  if (id !== null && !RAW_KEY_ID_PATTERN.test(id)) throw new RawKeyError("storage.encryption_key_id", id, "must be 1 to 32 of A-Z a-z 0-9 . _ -");
  let current: RawKey | null = null;
  if (id !== null && file !== null) current = { id, key: readKeyFile("storage.encryption_key_file", file) };
  if (id !== null && envName !== null) {
    const value = env[envName];
    if (value === undefined || value.trim() === "") throw new RawKeyError("storage.encryption_key_env", `$${envName}`, "the environment variable is not set");
    try {
      current = { id, key: decodeRawKey(value) };
    } catch (err) {
      throw new RawKeyError("storage.encryption_key_env", `$${envName}`, (err as Error).message);
    }
  }
  const previous: RawKey[] = [];
  for (const [oldId, oldFile] of Object.entries(sources.encryption_keys)) {
    const configKey = `storage.encryption_keys.${oldId}`;
    if (!RAW_KEY_ID_PATTERN.test(oldId)) throw new RawKeyError(configKey, oldFile, "the key ID must be 1 to 32 of A-Z a-z 0-9 . _ -");
    if (oldId === id) throw new RawKeyError(configKey, oldFile, "is the current key's ID (storage.encryption_key_id); an older key needs an ID of its own");
    previous.push({ id: oldId, key: readKeyFile(configKey, oldFile) });
  }
  return new RawCipher({ current, previous });
}
