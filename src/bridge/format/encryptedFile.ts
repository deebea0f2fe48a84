/**
 * Files sent in end-to-end-encrypted rooms: the `file` object of an `m.image`/`m.file`/
 * `m.audio`/`m.video` message (Client-Server API › End-to-end encryption › "Sending encrypted
 * attachments"). The media repository holds the AES-256-CTR ciphertext; the event carries the
 * key (a JWK), the IV and the SHA-256 of the ciphertext.
 */
import { createCipheriv, createDecipheriv, createHash, randomBytes } from "node:crypto";

/** The `file` field of an encrypted attachment (EncryptedFile), as far as decrypting needs it. */
export interface EncryptedFile {
  /** `mxc://` URI of the ciphertext. */
  url: string;
  key: { alg?: unknown; k?: unknown; kty?: unknown };
  /** 128-bit counter block, unpadded base64. */
  iv: string;
  /** `sha256`: SHA-256 of the ciphertext, unpadded base64. */
  hashes: Record<string, unknown>;
  v?: unknown;
}

/** An encrypted attachment that cannot be decrypted: malformed, or its hash does not match. */
export class EncryptedFileError extends Error {
  override name = "EncryptedFileError";
}

/**
 * The `file` object of a message's content, when it is a well-formed EncryptedFile.
 * @returns null when the content has no `file` (the file is not encrypted)
 * @throws EncryptedFileError when `file` is there but not usable (no URL, key, IV or hash)
 */
export function encryptedFileOf(content: Record<string, unknown>): EncryptedFile | null {
  const file = content.file as Partial<EncryptedFile> | undefined;
  if (file === undefined || file === null) return null;
  if (typeof file !== "object" || typeof file.url !== "string" || typeof file.iv !== "string" || typeof file.key !== "object" || file.key === null || typeof file.hashes !== "object" || file.hashes === null) {
    throw new EncryptedFileError("the encrypted file's description is incomplete (url, key, iv, hashes)");
  }
  return file as EncryptedFile;
}

/**
 * Decrypt an attachment's ciphertext.
 * @param data the ciphertext as downloaded from `file.url`
 * @returns the plaintext, as long as the ciphertext
 * @throws EncryptedFileError when the algorithm is not `A256CTR`, the key or IV is malformed, or
 *   the ciphertext's SHA-256 differs from `hashes.sha256` (the spec requires the check)
 */
export function decryptFile(data: Buffer, file: EncryptedFile): Buffer {
  if (file.key.alg !== "A256CTR" || typeof file.key.k !== "string") throw new EncryptedFileError(`unsupported attachment encryption: ${String(file.key.alg)}`);
  const key = Buffer.from(file.key.k, "base64url");
  const iv = Buffer.from(file.iv, "base64");
  if (key.length !== 32 || iv.length !== 16) throw new EncryptedFileError("the encrypted file's key or IV has the wrong length");
  const expected = file.hashes.sha256;
  if (typeof expected !== "string") throw new EncryptedFileError("the encrypted file has no SHA-256 hash");
  const actual = createHash("sha256").update(data).digest("base64").replace(/=+$/, "");
  if (actual !== expected.replace(/=+$/, "")) throw new EncryptedFileError("the encrypted file does not match its hash");
  const decipher = createDecipheriv("aes-256-ctr", key, iv);
  return Buffer.concat([decipher.update(data), decipher.final()]);
}

/** An attachment encrypted for an encrypted room, before its ciphertext is uploaded. */
export interface EncryptedUpload {
  /** What to upload (as `application/octet-stream`): the AES-256-CTR ciphertext, as long as the file. */
  ciphertext: Buffer;
  /** The event's `file` object but for `url`, which is the ciphertext's `mxc://` URI once uploaded. */
  file: Omit<EncryptedFile, "url">;
}

/**
 * Encrypt a file for an end-to-end-encrypted room (Client-Server API › End-to-end encryption ›
 * "Sending encrypted attachments"): a fresh 256-bit key, AES-CTR with a 128-bit counter block
 * whose top 64 bits are random and bottom 64 bits zero (as the spec advises, so that clients
 * that count in 64 bits agree), the key as a JWK, and the SHA-256 of the ciphertext. The
 * homeserver only ever sees the ciphertext; the key travels inside the encrypted event.
 * @param data the file
 * @returns the ciphertext to upload and the `file` object (without `url`), version `v2`
 */
export function encryptFile(data: Buffer): EncryptedUpload {
  const key = randomBytes(32);
  const iv = Buffer.concat([randomBytes(8), Buffer.alloc(8)]);
  const cipher = createCipheriv("aes-256-ctr", key, iv);
  const ciphertext = Buffer.concat([cipher.update(data), cipher.final()]);
  return {
    ciphertext,
    file: {
      key: { kty: "oct", key_ops: ["encrypt", "decrypt"], alg: "A256CTR", k: key.toString("base64url"), ext: true } as EncryptedFile["key"],
      iv: iv.toString("base64").replace(/=+$/, ""),
      hashes: { sha256: createHash("sha256").update(ciphertext).digest("base64").replace(/=+$/, "") },
      v: "v2",
    },
  };
}
