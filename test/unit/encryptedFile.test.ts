/**
 * Decrypting attachments sent in encrypted rooms (Client-Server API › "Sending encrypted
 * attachments"): AES-256-CTR with the JWK key and IV the event carries, after checking the
 * ciphertext's SHA-256.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { createCipheriv, createHash, randomBytes } from "node:crypto";
import { decryptFile, encryptedFileOf, encryptFile, EncryptedFileError, type EncryptedFile } from "../../src/bridge/format/encryptedFile.ts";

/** Encrypt as a client does: a random key, a random IV with its counter half zero. */
function encrypt(plain: Buffer): { data: Buffer; file: EncryptedFile } {
  const key = randomBytes(32);
  const iv = Buffer.concat([randomBytes(8), Buffer.alloc(8)]);
  const cipher = createCipheriv("aes-256-ctr", key, iv);
  const data = Buffer.concat([cipher.update(plain), cipher.final()]);
  return {
    data,
    file: {
      url: "mxc://hs.test/abc",
      key: { kty: "oct", alg: "A256CTR", k: key.toString("base64url"), ext: true, key_ops: ["encrypt", "decrypt"] } as EncryptedFile["key"],
      iv: iv.toString("base64").replace(/=+$/, ""),
      hashes: { sha256: createHash("sha256").update(data).digest("base64").replace(/=+$/, "") },
      v: "v2",
    },
  };
}

test("an encrypted attachment decrypts to the original bytes", () => {
  const plain = Buffer.concat([Buffer.from("%PDF-1.4\n"), randomBytes(100_000)]);
  const { data, file } = encrypt(plain);
  assert.ok(!data.equals(plain));
  assert.ok(decryptFile(data, file).equals(plain));
});

test("a ciphertext that does not match its hash, a foreign algorithm or a short key is refused", () => {
  const { data, file } = encrypt(Buffer.from("secret"));
  const tampered = Buffer.from(data);
  tampered[0] = tampered[0]! ^ 1;
  assert.throws(() => decryptFile(tampered, file), (e: Error) => e instanceof EncryptedFileError && /does not match its hash/.test(e.message));
  assert.throws(() => decryptFile(data, { ...file, key: { ...file.key, alg: "A128CBC" } }), EncryptedFileError);
  assert.throws(() => decryptFile(data, { ...file, key: { ...file.key, k: "c2hvcnQ" } }), /wrong length/);
});

test("encryptedFileOf: none for a plain file, the object for an encrypted one, an error for a broken one", () => {
  assert.equal(encryptedFileOf({ msgtype: "m.file", url: "mxc://hs.test/plain" }), null);
  const { file } = encrypt(Buffer.from("x"));
  assert.equal(encryptedFileOf({ msgtype: "m.file", file })?.url, "mxc://hs.test/abc");
  assert.throws(() => encryptedFileOf({ msgtype: "m.file", file: { url: "mxc://hs.test/abc" } }), EncryptedFileError);
});

test("encryptFile: what it encrypts, decryptFile gives back; fresh key and IV each time, counter's low half zero", () => {
  const plain = Buffer.concat([Buffer.from("%PDF-1.4\n"), Buffer.alloc(70_000, 7)]);
  const a = encryptFile(plain);
  const b = encryptFile(plain);
  assert.equal(a.ciphertext.length, plain.length);
  assert.ok(!a.ciphertext.equals(plain));
  assert.notEqual(a.file.key.k, b.file.key.k);
  assert.notEqual(a.file.iv, b.file.iv);
  assert.equal(a.file.key.alg, "A256CTR");
  assert.equal(a.file.v, "v2");
  assert.ok(Buffer.from(a.file.iv, "base64").subarray(8).equals(Buffer.alloc(8)));
  assert.ok(decryptFile(a.ciphertext, { ...a.file, url: "mxc://hs/x" }).equals(plain));
  // The hash covers the ciphertext: a flipped byte is refused.
  const tampered = Buffer.from(a.ciphertext);
  tampered[0] = tampered[0]! ^ 1;
  assert.throws(() => decryptFile(tampered, { ...a.file, url: "mxc://hs/x" }), EncryptedFileError);
});
