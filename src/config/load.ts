/**
 * Load and validate the YAML config against {@link configSchema}.
 */
import { readFileSync } from "node:fs";
import { dirname, isAbsolute, resolve } from "node:path";
import { Ajv, type ErrorObject } from "ajv";
import { parse as parseYaml, YAMLParseError } from "yaml";
import { configSchema, type BridgeConfig, type StorageConfig } from "./schema.ts";
import { nameserverProblem } from "../mail/dns.ts";

/**
 * A config that cannot be used. `key` is the dotted path of the offending key
 * (`smtp.port`), `file` the config file; the message names both.
 */
export class ConfigError extends Error {
  readonly key: string;
  readonly file: string;
  constructor(file: string, key: string, problem: string) {
    super(`${file}: ${key || "(top level)"}: ${problem}`);
    this.name = "ConfigError";
    this.key = key;
    this.file = file;
  }
}

const ajv = new Ajv({ allErrors: true, useDefaults: true, strict: false });
const validate = ajv.compile<BridgeConfig>(configSchema);

function keyOf(err: ErrorObject): string {
  const base = err.instancePath.replace(/^\//, "").replace(/\//g, ".");
  if (err.keyword === "required") {
    const missing = (err.params as { missingProperty: string }).missingProperty;
    return base ? `${base}.${missing}` : missing;
  }
  if (err.keyword === "additionalProperties") {
    const extra = (err.params as { additionalProperty: string }).additionalProperty;
    return base ? `${base}.${extra}` : extra;
  }
  return base;
}

function problemOf(err: ErrorObject): string {
  switch (err.keyword) {
    case "required":
      return "is required";
    case "additionalProperties":
      return "is not a known option";
    case "enum":
      return `must be one of ${(err.params as { allowedValues: unknown[] }).allowedValues.map((v) => JSON.stringify(v)).join(", ")}`;
    default:
      return err.message ?? "is invalid";
  }
}

/**
 * Validate a parsed config object (defaults are filled in place) and resolve
 * file paths against `baseDir`.
 * @param raw the parsed YAML document
 * @param file file name used in error messages
 * @param baseDir directory relative paths are resolved against
 * @param env environment the storage key variable (`storage.encryption_key_env`) is read from
 * @returns the validated config
 * @throws ConfigError naming the first offending key and the file (and a key file or variable
 *   that cannot be used)
 */
export function validateConfig(raw: unknown, file: string, baseDir: string, env: NodeJS.ProcessEnv = process.env): BridgeConfig {
  const doc = raw ?? {};
  if (typeof doc !== "object" || Array.isArray(doc)) throw new ConfigError(file, "", "must be a YAML mapping");
  if (!validate(doc)) {
    const first = validate.errors?.[0];
    if (!first) throw new ConfigError(file, "", "is invalid");
    throw new ConfigError(file, keyOf(first), problemOf(first));
  }
  const cfg = doc as BridgeConfig;
  const abs = (p: string) => (isAbsolute(p) ? p : resolve(baseDir, p));
  cfg.appservice.registration_file = abs(cfg.appservice.registration_file);
  cfg.dkim.private_key_file = abs(cfg.dkim.private_key_file);
  cfg.database.sqlite_file = abs(cfg.database.sqlite_file);
  if (cfg.smtp.tls_cert_file) cfg.smtp.tls_cert_file = abs(cfg.smtp.tls_cert_file);
  if (cfg.smtp.tls_key_file) cfg.smtp.tls_key_file = abs(cfg.smtp.tls_key_file);
  if (cfg.outbound.mode === "relay" && !cfg.outbound.relay) {
    throw new ConfigError(file, "outbound.relay", "is required when outbound.mode is \"relay\"");
  }
  if (Boolean(cfg.smtp.tls_cert_file) !== Boolean(cfg.smtp.tls_key_file)) {
    throw new ConfigError(file, cfg.smtp.tls_cert_file ? "smtp.tls_key_file" : "smtp.tls_cert_file", "must be set together with its pair");
  }
  for (const [i, pattern] of cfg.permissions.allowed_users.entries()) {
    if (!pattern.startsWith("@") || !pattern.includes(":")) {
      throw new ConfigError(file, `permissions.allowed_users.${i}`, "must look like @localpart:server (with * wildcards)");
    }
  }
  for (const [i, ns] of cfg.dns.nameservers.entries()) {
    const problem = nameserverProblem(ns);
    if (problem) throw new ConfigError(file, `dns.nameservers.${i}`, problem);
  }
  if (cfg.inbound.retry_max_ms < cfg.inbound.retry_base_ms) {
    throw new ConfigError(file, "inbound.retry_max_ms", "must be at least inbound.retry_base_ms");
  }
  cfg.auth.trusted_arc_sealers = cfg.auth.trusted_arc_sealers.map((d) => d.toLowerCase().replace(/\.$/, ""));
  if (cfg.storage.encryption_key_file) cfg.storage.encryption_key_file = abs(cfg.storage.encryption_key_file);
  for (const [id, path] of Object.entries(cfg.storage.encryption_keys)) cfg.storage.encryption_keys[id] = abs(path);
  checkStorageKeys(cfg.storage, file, env);
  return cfg;
}

/** Why `text` is not a stored-mail key (the base64 of 32 bytes), or null. Same rule as store/rawCipher.ts `decodeRawKey`. */
function storageKeyProblem(text: string): string | null {
  const b64 = text.trim();
  const key = Buffer.from(b64, "base64");
  if (!/^[A-Za-z0-9+/]+={0,2}$/.test(b64) || key.toString("base64") !== b64) return "is not base64 (expected 32 random bytes: openssl rand -base64 32)";
  return key.length === 32 ? null : `holds ${key.length} bytes; an AES-256 key is 32 bytes (openssl rand -base64 32)`;
}

/**
 * The `storage` keys' cross-field checks; every key file is read and every key decoded, so a
 * bad key stops the start here (the store reads them again: store/rawCipher.ts `loadRawCipher`).
 * @throws ConfigError naming the key, the config file and the key file or variable
 */
function checkStorageKeys(st: StorageConfig, file: string, env: NodeJS.ProcessEnv): void {
  if (st.encryption_key_file !== null && st.encryption_key_env !== null) {
    throw new ConfigError(file, "storage.encryption_key_env", "must not be set together with storage.encryption_key_file: set only one");
  }
  const hasKey = st.encryption_key_file !== null || st.encryption_key_env !== null;
  if (hasKey && st.encryption_key_id === null) {
    throw new ConfigError(file, "storage.encryption_key_id", "is required when storage.encryption_key_file or storage.encryption_key_env is set");
  }
  if (!hasKey && st.encryption_key_id !== null) {
    throw new ConfigError(file, "storage.encryption_key_id", "is set, but neither storage.encryption_key_file nor storage.encryption_key_env is");
  }
  const checkFile = (key: string, path: string): void => {
    let text: string;
    try {
      text = readFileSync(path, "utf8");
    } catch (err) {
      throw new ConfigError(file, key, `key file ${path} cannot be read (${(err as NodeJS.ErrnoException).code ?? "error"})`);
    }
    const problem = storageKeyProblem(text);
    if (problem) throw new ConfigError(file, key, `key file ${path} ${problem}`);
  };
  if (st.encryption_key_file !== null) checkFile("storage.encryption_key_file", st.encryption_key_file);
  if (st.encryption_key_env !== null) {
    const value = env[st.encryption_key_env];
    const problem = value === undefined || value.trim() === "" ? "is not set" : storageKeyProblem(value);
    if (problem) throw new ConfigError(file, "storage.encryption_key_env", `environment variable ${st.encryption_key_env} ${problem}`);
  }
  for (const [id, path] of Object.entries(st.encryption_keys)) {
    if (id === st.encryption_key_id) {
      throw new ConfigError(file, `storage.encryption_keys.${id}`, "has the ID of the current key (storage.encryption_key_id); an older key needs an ID of its own");
    }
    checkFile(`storage.encryption_keys.${id}`, path);
  }
}

/**
 * Read, parse and validate a YAML config file.
 * @param file path of the config file
 * @throws ConfigError when the file is missing, is not YAML, or fails validation
 */
export function loadConfig(file: string): BridgeConfig {
  let text: string;
  try {
    text = readFileSync(file, "utf8");
  } catch (err) {
    throw new ConfigError(file, "", `cannot be read (${(err as NodeJS.ErrnoException).code ?? "error"})`);
  }
  let raw: unknown;
  try {
    raw = parseYaml(text);
  } catch (err) {
    const where = err instanceof YAMLParseError && err.linePos ? ` at line ${err.linePos[0].line}` : "";
    throw new ConfigError(file, "", `is not valid YAML${where}`);
  }
  return validateConfig(raw, file, dirname(resolve(file)));
}
