/**
 * The stored-mail envelope (src/store/rawCipher.ts): layout, fresh IVs, authentication of
 * every part, plaintext pass-through, key rules and key loading. The store's use of it runs in
 * the store contract (test/integration/storeContract.ts) on both engines.
 */
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, it } from "node:test";
import {
  RAW_ENVELOPE_MAGIC,
  RawCipher,
  RawDecryptError,
  RawKeyError,
  decodeRawKey,
  isRawEnvelope,
  loadRawCipher,
  rawEnvelopeKeyId,
  type RawKeySources,
} from "../../src/store/rawCipher.ts";

const keyA = { id: "k1", key: randomBytes(32) };
const keyB = { id: "k2", key: randomBytes(32) };
const MAIL = Buffer.from("Received: from mx.example.org\r\nSubject: hello\r\n\r\nbody\r\n");

function reason(expected: string, keyId: string | null) {
  return (err: unknown) => {
    assert.ok(err instanceof RawDecryptError, String(err));
    assert.equal(err.reason, expected);
    assert.equal(err.keyId, keyId);
    assert.equal(err.rowId, 7);
    assert.match(err.message, /inbound_mail row 7/);
    return true;
  };
}

describe("RawCipher", () => {
  it("writes the MEB1 envelope: magic, key ID, 12-byte IV, 16-byte tag, ciphertext", () => {
    const c = new RawCipher({ current: keyA });
    const sealed = c.seal(MAIL, "inbound_mail");
    assert.ok(sealed.subarray(0, 5).equals(RAW_ENVELOPE_MAGIC));
    assert.equal(sealed.subarray(0, 4).toString("latin1"), "MEB1");
    assert.equal(sealed[5], 2);
    assert.equal(sealed.subarray(6, 8).toString("latin1"), "k1");
    assert.equal(sealed.length, 8 + 12 + 16 + MAIL.length);
    assert.ok(isRawEnvelope(sealed));
    assert.equal(rawEnvelopeKeyId(sealed), "k1");
    assert.ok(c.open(sealed, "inbound_mail", 7).equals(MAIL));
    const again = c.seal(MAIL, "inbound_mail");
    assert.equal(again.subarray(8, 20).equals(sealed.subarray(8, 20)), false, "a fresh IV per blob");
    assert.equal(again.equals(sealed), false);
  });

  it("passes plaintext through, and writes plaintext without a current key", () => {
    const c = new RawCipher({ current: keyA });
    assert.equal(isRawEnvelope(MAIL), false);
    assert.equal(rawEnvelopeKeyId(MAIL), null);
    assert.ok(c.open(MAIL, "inbound_mail", 1).equals(MAIL));
    assert.equal(c.open(Buffer.alloc(0), "outbound_mail", 1).length, 0, "a purged (empty) row reads empty");
    const plain = RawCipher.plaintext();
    assert.equal(plain.currentKeyId, null);
    assert.ok(plain.seal(MAIL, "outbound_mail").equals(MAIL));
    const readOnly = new RawCipher({ current: null, previous: [keyA] });
    assert.ok(readOnly.seal(MAIL, "inbound_mail").equals(MAIL), "old keys never write");
    assert.ok(readOnly.open(c.seal(MAIL, "inbound_mail"), "inbound_mail", 1).equals(MAIL), "old keys read");
  });

  it("round-trips empty, binary and large blobs", () => {
    const c = new RawCipher({ current: keyA });
    for (const plain of [Buffer.alloc(0), Buffer.from(Array.from({ length: 256 }, (_, i) => i)), randomBytes(3 * 1024 * 1024)]) {
      assert.ok(c.open(c.seal(plain, "outbound_mail"), "outbound_mail", 1).equals(plain));
    }
  });

  it("authenticates every part: key ID, IV, tag, ciphertext and the table", () => {
    const c = new RawCipher({ current: keyA, previous: [{ id: "k3", key: keyA.key }] });
    const sealed = c.seal(MAIL, "inbound_mail");
    const flip = (at: number) => {
      const b = Buffer.from(sealed);
      b[at] = b[at]! ^ 0x01;
      return b;
    };
    assert.throws(() => c.open(flip(20), "inbound_mail", 7), reason("authentication", "k1"), "tag");
    assert.throws(() => c.open(flip(10), "inbound_mail", 7), reason("authentication", "k1"), "IV");
    assert.throws(() => c.open(flip(sealed.length - 1), "inbound_mail", 7), reason("authentication", "k1"), "ciphertext");
    // "k1" -> "k3": a configured ID with the same key bytes still fails (the header is authenticated).
    const renamed = Buffer.from(sealed);
    renamed[7] = "3".charCodeAt(0);
    assert.throws(() => c.open(renamed, "inbound_mail", 7), reason("authentication", "k3"));
    assert.throws(() => c.open(sealed, "outbound_mail", 7), (err: unknown) => err instanceof RawDecryptError && err.reason === "authentication", "moved to the other table");
  });

  it("names the row and key ID when the key is unknown or wrong, or the envelope is cut", () => {
    const sealed = new RawCipher({ current: keyA }).seal(MAIL, "inbound_mail");
    assert.throws(() => new RawCipher({ current: keyB }).open(sealed, "inbound_mail", 7), reason("unknown-key", "k1"));
    assert.throws(() => RawCipher.plaintext().open(sealed, "inbound_mail", 7), reason("unknown-key", "k1"));
    assert.throws(() => new RawCipher({ current: { id: "k1", key: randomBytes(32) } }).open(sealed, "inbound_mail", 7), reason("authentication", "k1"));
    const c = new RawCipher({ current: keyA });
    assert.throws(() => c.open(sealed.subarray(0, 30), "inbound_mail", 7), reason("malformed", "k1"));
    assert.throws(() => c.open(RAW_ENVELOPE_MAGIC, "inbound_mail", 7), reason("malformed", null));
    assert.throws(() => c.open(Buffer.concat([RAW_ENVELOPE_MAGIC, Buffer.from([40])]), "inbound_mail", 7), reason("malformed", null));
  });

  it("knows which blobs need re-encryption", () => {
    const a = new RawCipher({ current: keyA });
    const b = new RawCipher({ current: keyB, previous: [keyA] });
    const underA = a.seal(MAIL, "inbound_mail");
    assert.equal(b.needsReencryption(underA, "inbound_mail", 1), true);
    assert.equal(b.needsReencryption(b.seal(MAIL, "inbound_mail"), "inbound_mail", 1), false);
    assert.equal(b.needsReencryption(MAIL, "inbound_mail", 1), true);
    assert.equal(b.needsReencryption(Buffer.alloc(0), "inbound_mail", 1), false, "purged rows stay empty");
    assert.equal(RawCipher.plaintext().needsReencryption(MAIL, "inbound_mail", 1), false);
  });

  it("refuses bad keys and key IDs", () => {
    assert.throws(() => new RawCipher({ current: { id: "k1", key: randomBytes(16) } }), /must be 32 bytes, got 16/);
    assert.throws(() => new RawCipher({ current: { id: "bad id", key: randomBytes(32) } }), /key ID "bad id"/);
    assert.throws(() => new RawCipher({ current: { id: "x".repeat(33), key: randomBytes(32) } }), RangeError);
    assert.throws(() => new RawCipher({ current: keyA, previous: [{ id: "k1", key: randomBytes(32) }] }), /given twice/);
  });
});

describe("stored-mail keys", () => {
  const good = randomBytes(32).toString("base64");

  it("decodes the base64 of 32 bytes and nothing else", () => {
    assert.equal(decodeRawKey(`  ${good}\n`).length, 32);
    assert.throws(() => decodeRawKey(randomBytes(16).toString("base64")), /holds 16 bytes; an AES-256 key is 32 bytes/);
    assert.throws(() => decodeRawKey("not base64 at all!"), /is not base64/);
    assert.throws(() => decodeRawKey(good.slice(0, -1)), /is not base64/, "missing padding");
    assert.throws(() => decodeRawKey(""), /is empty/);
  });

  const sources = (over: Partial<RawKeySources>): RawKeySources => ({
    encryption_key_id: null,
    encryption_key_file: null,
    encryption_key_env: null,
    encryption_keys: {},
    ...over,
  });

  it("loads the current key from a file or a variable, and older keys from files", () => {
    const dir = mkdtempSync(join(tmpdir(), "meb-keys-"));
    const fileA = join(dir, "a.key");
    const fileB = join(dir, "b.key");
    writeFileSync(fileA, keyA.key.toString("base64") + "\n");
    writeFileSync(fileB, keyB.key.toString("base64"));
    assert.equal(loadRawCipher(sources({}), {}).currentKeyId, null);
    const fromFile = loadRawCipher(sources({ encryption_key_id: "k1", encryption_key_file: fileA }), {});
    assert.equal(fromFile.currentKeyId, "k1");
    const sealed = fromFile.seal(MAIL, "inbound_mail");
    const fromEnv = loadRawCipher(sources({ encryption_key_id: "k1", encryption_key_env: "MEB_KEY" }), { MEB_KEY: keyA.key.toString("base64") });
    assert.ok(fromEnv.open(sealed, "inbound_mail", 1).equals(MAIL));
    const rotated = loadRawCipher(sources({ encryption_key_id: "k2", encryption_key_file: fileB, encryption_keys: { k1: fileA } }), {});
    assert.deepEqual(rotated.keyIds, ["k2", "k1"]);
    assert.ok(rotated.open(sealed, "inbound_mail", 1).equals(MAIL));
    assert.equal(rawEnvelopeKeyId(rotated.seal(MAIL, "inbound_mail")), "k2");
  });

  it("names the config key and the file or variable in every error", () => {
    const dir = mkdtempSync(join(tmpdir(), "meb-keys-"));
    const short = join(dir, "short.key");
    writeFileSync(short, randomBytes(24).toString("base64"));
    const ok = join(dir, "ok.key");
    writeFileSync(ok, good);
    const missing = join(dir, "missing.key");
    const fails = (over: Partial<RawKeySources>, env: NodeJS.ProcessEnv, configKey: string, pattern: RegExp) =>
      assert.throws(() => loadRawCipher(sources(over), env), (err: unknown) => {
        assert.ok(err instanceof RawKeyError, String(err));
        assert.equal(err.configKey, configKey);
        assert.match(err.message, pattern);
        return true;
      });
    fails({ encryption_key_id: "k1", encryption_key_file: missing }, {}, "storage.encryption_key_file", new RegExp(`${missing}.*cannot be read \\(ENOENT\\)`));
    fails({ encryption_key_id: "k1", encryption_key_file: short }, {}, "storage.encryption_key_file", /short\.key.*holds 24 bytes/);
    fails({ encryption_key_id: "k1", encryption_key_file: ok, encryption_key_env: "K" }, { K: good }, "storage.encryption_key_env", /only one/);
    fails({ encryption_key_file: ok }, {}, "storage.encryption_key_id", /is required/);
    fails({ encryption_key_id: "k1" }, {}, "storage.encryption_key_id", /neither/);
    fails({ encryption_key_id: "k1", encryption_key_env: "MEB_KEY" }, {}, "storage.encryption_key_env", /\$MEB_KEY.*not set/);
    fails({ encryption_key_id: "k1", encryption_key_env: "MEB_KEY" }, { MEB_KEY: "short" }, "storage.encryption_key_env", /\$MEB_KEY.*not base64/);
    fails({ encryption_key_id: "k1", encryption_key_file: ok, encryption_keys: { old: missing } }, {}, "storage.encryption_keys.old", /missing\.key.*cannot be read/);
    fails({ encryption_key_id: "k1", encryption_key_file: ok, encryption_keys: { k1: ok } }, {}, "storage.encryption_keys.k1", /current key's ID/);
  });
});
