/**
 * The `storage` config section (src/config/schema.ts, cross-field checks in src/config/load.ts):
 * defaults, paths, and key errors that name the key and the file.
 */
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, it } from "node:test";
import { ConfigError, validateConfig } from "../../src/config/load.ts";
import { loadRawCipher } from "../../src/store/rawCipher.ts";

const minimal = (storage?: Record<string, unknown>) => ({
  homeserver: { url: "http://127.0.0.1:8008", domain: "hs.example" },
  appservice: { url: "http://127.0.0.1:8090" },
  mail: { domain: "bridge.example" },
  smtp: { hostname: "mx.bridge.example" },
  ...(storage ? { storage } : {}),
});

/** A config folder with a good key (`good.key`) and a 16-byte one (`short.key`). */
function keyDir(): string {
  const dir = mkdtempSync(join(tmpdir(), "meb-storage-cfg-"));
  writeFileSync(join(dir, "good.key"), randomBytes(32).toString("base64") + "\n");
  writeFileSync(join(dir, "old.key"), randomBytes(32).toString("base64"));
  writeFileSync(join(dir, "short.key"), randomBytes(16).toString("base64"));
  return dir;
}

function configError(storage: Record<string, unknown>, dir: string, key: string, pattern: RegExp, env: NodeJS.ProcessEnv = {}): void {
  const file = join(dir, "config.yaml");
  assert.throws(
    () => validateConfig(minimal(storage), file, dir, env),
    (err: unknown) => {
      assert.ok(err instanceof ConfigError, String(err));
      assert.equal(err.key, key);
      assert.equal(err.file, file);
      assert.ok(err.message.startsWith(`${file}: ${key}: `), err.message);
      assert.match(err.message, pattern);
      return true;
    },
  );
}

describe("storage config", () => {
  it("defaults: 30 days retention, hourly purge, no encryption", () => {
    const cfg = validateConfig(minimal(), "/etc/meb/config.yaml", "/etc/meb", {});
    assert.deepEqual(cfg.storage, {
      raw_retention_days: 30,
      purge_interval_ms: 3_600_000,
      purge_batch_size: 500,
      encryption_key_id: null,
      encryption_key_file: null,
      encryption_key_env: null,
      encryption_keys: {},
    });
    assert.equal(loadRawCipher(cfg.storage, {}).currentKeyId, null);
  });

  it("accepts null retention (keep forever) and resolves key files against the config folder", () => {
    const dir = keyDir();
    const cfg = validateConfig(minimal({ raw_retention_days: null, encryption_key_id: "2025", encryption_key_file: "good.key", encryption_keys: { "2024": "old.key" } }), join(dir, "c.yaml"), dir, {});
    assert.equal(cfg.storage.raw_retention_days, null);
    assert.equal(cfg.storage.encryption_key_file, join(dir, "good.key"));
    assert.deepEqual(cfg.storage.encryption_keys, { "2024": join(dir, "old.key") });
    const cipher = loadRawCipher(cfg.storage, {});
    assert.deepEqual(cipher.keyIds, ["2025", "2024"]);
  });

  it("takes the key from an environment variable", () => {
    const dir = keyDir();
    const env = { MEB_STORAGE_KEY: randomBytes(32).toString("base64") };
    const cfg = validateConfig(minimal({ encryption_key_id: "k1", encryption_key_env: "MEB_STORAGE_KEY" }), join(dir, "c.yaml"), dir, env);
    assert.equal(loadRawCipher(cfg.storage, env).currentKeyId, "k1");
  });

  it("names the key, the config file and the key file or variable in errors", () => {
    const dir = keyDir();
    configError({ encryption_key_id: "k1", encryption_key_file: "missing.key" }, dir, "storage.encryption_key_file", /key file .*missing\.key cannot be read \(ENOENT\)/);
    configError({ encryption_key_id: "k1", encryption_key_file: "short.key" }, dir, "storage.encryption_key_file", /short\.key holds 16 bytes; an AES-256 key is 32 bytes/);
    configError({ encryption_key_id: "k1", encryption_key_file: "config.yaml" }, dir, "storage.encryption_key_file", /cannot be read|is not base64/);
    configError({ encryption_key_id: "k1", encryption_key_file: "good.key", encryption_key_env: "K" }, dir, "storage.encryption_key_env", /not be set together with storage\.encryption_key_file/, { K: "x" });
    configError({ encryption_key_file: "good.key" }, dir, "storage.encryption_key_id", /is required/);
    configError({ encryption_key_id: "k1" }, dir, "storage.encryption_key_id", /neither/);
    configError({ encryption_key_id: "k 1", encryption_key_file: "good.key" }, dir, "storage.encryption_key_id", /pattern/);
    configError({ encryption_key_id: "k1", encryption_key_env: "MEB_KEY" }, dir, "storage.encryption_key_env", /environment variable MEB_KEY is not set/);
    configError({ encryption_key_id: "k1", encryption_key_env: "MEB_KEY" }, dir, "storage.encryption_key_env", /MEB_KEY holds 8 bytes/, { MEB_KEY: randomBytes(8).toString("base64") });
    configError({ encryption_key_id: "k1", encryption_key_env: "bad-name" }, dir, "storage.encryption_key_env", /pattern/);
    configError({ encryption_key_id: "k1", encryption_key_file: "good.key", encryption_keys: { old: "nope.key" } }, dir, "storage.encryption_keys.old", /nope\.key cannot be read/);
    configError({ encryption_key_id: "k1", encryption_key_file: "good.key", encryption_keys: { k1: "old.key" } }, dir, "storage.encryption_keys.k1", /ID of the current key/);
    configError({ raw_retention_days: -1 }, dir, "storage.raw_retention_days", />= 0/);
    configError({ purge_interval_ms: 0 }, dir, "storage.purge_interval_ms", />= 10/);
  });

  it("reports every key problem at once", () => {
    const dir = keyDir();
    const file = join(dir, "config.yaml");
    assert.throws(
      () => validateConfig(minimal({ encryption_key_id: "k1", encryption_key_file: "short.key", encryption_keys: { old: "nope.key", k1: "old.key" } }), file, dir, {}),
      (err: unknown) => {
        assert.ok(err instanceof ConfigError, String(err));
        assert.deepEqual(err.problems.map((p) => p.key), ["storage.encryption_key_file", "storage.encryption_keys.old", "storage.encryption_keys.k1"]);
        assert.ok(err.message.split("\n").every((line) => line.startsWith(`${file}: storage.`)), err.message);
        return true;
      },
    );
  });
});
