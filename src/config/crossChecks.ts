/**
 * What load.ts does to a config after the schema accepted it: resolve relative paths against
 * the config file's folder, normalise values, and the checks one key's schema cannot express
 * (a key that needs another, a `host:port` or URL that must parse, a key file that must hold a
 * key). Each step names the sections it reads; it runs only when those sections passed the
 * schema, so every problem of a config is reported at once without a step tripping over a
 * value of the wrong type.
 *
 * A new cross-field rule: one more entry in {@link LOAD_STEPS}.
 */
import { readFileSync } from "node:fs";
import { isAbsolute, resolve } from "node:path";
import { nameserverProblem } from "../mail/dns.ts";
import { AdminTokenError, loadAdminToken } from "../admin/auth.ts";
import type { BridgeConfig, StorageConfig } from "./schema.ts";

/** What a step gets besides the config. */
export interface LoadContext {
  /** Folder of the config file: relative paths are resolved against it. */
  baseDir: string;
  /** Environment (the storage key variable, `storage.encryption_key_env`, is read from it). */
  env: NodeJS.ProcessEnv;
  /**
   * Record a problem; the load goes on and every problem ends up in one ConfigError.
   * @param key dotted path of the offending key, e.g. `smtp.tls_key_file`
   * @param problem what is wrong, worded to follow the key (`is required when ...`)
   */
  report(key: string, problem: string): void;
}

/** One step of loading: it may change `cfg` (paths, normalisation) and report problems. */
export interface LoadStep {
  /** Top-level sections the step reads or changes; it is skipped when one of them failed the schema. */
  sections: readonly (keyof BridgeConfig)[];
  /** Does the step's work on a config whose `sections` passed the schema. */
  run(cfg: BridgeConfig, ctx: LoadContext): void;
}

/** `path` made absolute against `baseDir` (unchanged when already absolute). */
function abs(baseDir: string, path: string): string {
  return isAbsolute(path) ? path : resolve(baseDir, path);
}

/**
 * Why `value` is not a usable `http(s)://` URL, or null. The schema only checks the scheme prefix.
 * @param credentials whether a user name or password in the URL is allowed
 */
function httpUrlProblem(value: string, credentials: boolean): string | null {
  const url = URL.parse(value);
  if (url === null) return `${JSON.stringify(value)} is not a valid URL`;
  if (url.protocol !== "http:" && url.protocol !== "https:") return `${JSON.stringify(value)} must be an http:// or https:// URL`;
  if (!credentials && (url.username || url.password)) return "must not contain a user name or password";
  return null;
}

/** Host names that are loopback, where `appservice.public_url` may be plain http (tests). */
const LOOPBACK_HOSTS = new Set(["localhost", "127.0.0.1", "[::1]"]);

/**
 * Why `value` is not a usable `appservice.public_url`, or null: an absolute `https://` URL
 * (`http://` only for a loopback host, which no mail reader outside the machine can reach),
 * without user name, password, query or fragment, since the bridge appends
 * `/unsubscribe/<token>` to it (RFC 8058 §3.1 wants an HTTPS URI).
 */
function publicUrlProblem(value: string): string | null {
  const url = URL.parse(value);
  if (url === null) return `${JSON.stringify(value)} is not a valid URL`;
  if (url.protocol === "http:" && !LOOPBACK_HOSTS.has(url.hostname)) return "must be an https:// URL (http:// is allowed only for localhost, 127.0.0.1 or [::1])";
  if (url.protocol !== "https:" && url.protocol !== "http:") return `${JSON.stringify(value)} must be an https:// URL`;
  if (url.username || url.password) return "must not contain a user name or password";
  if (url.search || url.hash || value.includes("?") || value.includes("#")) return "must not have a query or fragment (the bridge appends /unsubscribe/<token>)";
  return null;
}

/**
 * Why a `host:port` string is unusable, or null: the host must be non-empty and the port 1-65535.
 * Same split as mail/outbound/routes.ts `parseHostPort` (last `:`), which then cannot fail.
 */
function hostPortProblem(value: string): string | null {
  const i = value.lastIndexOf(":");
  const port = Number(value.slice(i + 1));
  if (i <= 0) return `${JSON.stringify(value)} must be host:port`;
  if (!Number.isInteger(port) || port < 1 || port > 65535) return `port of ${JSON.stringify(value)} must be 1-65535`;
  return null;
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
 * Reports name the key, and the key file or variable.
 */
function checkStorageKeys(st: StorageConfig, ctx: LoadContext): void {
  if (st.encryption_key_file !== null && st.encryption_key_env !== null) {
    ctx.report("storage.encryption_key_env", "must not be set together with storage.encryption_key_file: set only one");
  }
  const hasKey = st.encryption_key_file !== null || st.encryption_key_env !== null;
  if (hasKey && st.encryption_key_id === null) {
    ctx.report("storage.encryption_key_id", "is required when storage.encryption_key_file or storage.encryption_key_env is set");
  }
  if (!hasKey && st.encryption_key_id !== null) {
    ctx.report("storage.encryption_key_id", "is set, but neither storage.encryption_key_file nor storage.encryption_key_env is");
  }
  const checkFile = (key: string, path: string): void => {
    let text: string;
    try {
      text = readFileSync(path, "utf8");
    } catch (err) {
      ctx.report(key, `key file ${path} cannot be read (${(err as NodeJS.ErrnoException).code ?? "error"})`);
      return;
    }
    const problem = storageKeyProblem(text);
    if (problem) ctx.report(key, `key file ${path} ${problem}`);
  };
  if (st.encryption_key_file !== null) checkFile("storage.encryption_key_file", st.encryption_key_file);
  if (st.encryption_key_env !== null) {
    const value = ctx.env[st.encryption_key_env];
    const problem = value === undefined || value.trim() === "" ? "is not set" : storageKeyProblem(value);
    if (problem) ctx.report("storage.encryption_key_env", `environment variable ${st.encryption_key_env} ${problem}`);
  }
  for (const [id, path] of Object.entries(st.encryption_keys)) {
    if (id === st.encryption_key_id) {
      ctx.report(`storage.encryption_keys.${id}`, "has the ID of the current key (storage.encryption_key_id); an older key needs an ID of its own");
      continue;
    }
    checkFile(`storage.encryption_keys.${id}`, path);
  }
}

/** The steps, in the order they run (paths are resolved before the files are read). */
export const LOAD_STEPS: readonly LoadStep[] = [
  {
    sections: ["homeserver", "appservice"],
    run(cfg, ctx) {
      const homeserverProblem = httpUrlProblem(cfg.homeserver.url, true);
      if (homeserverProblem) ctx.report("homeserver.url", homeserverProblem);
      const appserviceProblem = httpUrlProblem(cfg.appservice.url, true);
      if (appserviceProblem) ctx.report("appservice.url", appserviceProblem);
      if (cfg.appservice.public_url !== null) {
        const publicProblem = publicUrlProblem(cfg.appservice.public_url);
        if (publicProblem) ctx.report("appservice.public_url", publicProblem);
        else cfg.appservice.public_url = cfg.appservice.public_url.replace(/\/+$/, "");
      }
      cfg.appservice.registration_file = abs(ctx.baseDir, cfg.appservice.registration_file);
    },
  },
  {
    sections: ["smtp"],
    run(cfg, ctx) {
      const smtp = cfg.smtp;
      if (smtp.tls_cert_file !== null) smtp.tls_cert_file = abs(ctx.baseDir, smtp.tls_cert_file);
      if (smtp.tls_key_file !== null) smtp.tls_key_file = abs(ctx.baseDir, smtp.tls_key_file);
      // RFC 3207 §4: STARTTLS needs both the certificate and its key.
      if ((smtp.tls_cert_file === null) !== (smtp.tls_key_file === null)) {
        ctx.report(smtp.tls_cert_file !== null ? "smtp.tls_key_file" : "smtp.tls_cert_file", "must be set together with its pair (smtp.tls_cert_file and smtp.tls_key_file)");
      } else if (smtp.require_tls && smtp.tls_cert_file === null) {
        ctx.report("smtp.require_tls", "needs smtp.tls_cert_file and smtp.tls_key_file (there is no STARTTLS without them)");
      }
    },
  },
  {
    sections: ["smtp", "submission"],
    run(cfg, ctx) {
      // Its TLS files are set together; enabled, it needs them (its own or smtp's), because AUTH
      // is only taken after STARTTLS (RFC 3207, RFC 4954 §4).
      const sub = cfg.submission;
      if (sub.tls_cert_file !== null) sub.tls_cert_file = abs(ctx.baseDir, sub.tls_cert_file);
      if (sub.tls_key_file !== null) sub.tls_key_file = abs(ctx.baseDir, sub.tls_key_file);
      if ((sub.tls_cert_file === null) !== (sub.tls_key_file === null)) {
        ctx.report(sub.tls_cert_file !== null ? "submission.tls_key_file" : "submission.tls_cert_file", "must be set together with its pair");
      } else if (sub.enabled && sub.tls_cert_file === null && cfg.smtp.tls_cert_file === null) {
        ctx.report("submission.tls_cert_file", "is required when submission.enabled is true (or set smtp.tls_cert_file): STARTTLS is required before AUTH");
      }
    },
  },
  {
    sections: ["outbound"],
    run(cfg, ctx) {
      if (cfg.outbound.mode === "relay" && cfg.outbound.relay === null) {
        ctx.report("outbound.relay", "is required when outbound.mode is \"relay\"");
      }
      for (const [domain, target] of Object.entries(cfg.outbound.static_routes)) {
        const problem = hostPortProblem(target);
        if (problem) ctx.report(`outbound.static_routes.${domain}`, problem);
      }
    },
  },
  {
    sections: ["dkim", "database"],
    run(cfg, ctx) {
      cfg.dkim.private_key_file = abs(ctx.baseDir, cfg.dkim.private_key_file);
      cfg.database.sqlite_file = abs(ctx.baseDir, cfg.database.sqlite_file);
      if (cfg.database.url !== null && !URL.canParse(cfg.database.url)) {
        ctx.report("database.url", "is not a valid URL (postgres://user:password@host:port/database)");
      }
    },
  },
  {
    sections: ["permissions"],
    run(cfg, ctx) {
      for (const [i, pattern] of cfg.permissions.allowed_users.entries()) {
        if (!pattern.startsWith("@") || !pattern.includes(":")) {
          ctx.report(`permissions.allowed_users.${i}`, "must look like @localpart:server (with * wildcards)");
        }
      }
    },
  },
  {
    sections: ["spam"],
    run(cfg, ctx) {
      // mail/inbound/rspamd.ts refuses such a URL on every mail; refuse it once here.
      const problem = cfg.spam.rspamd_url === null ? null : httpUrlProblem(cfg.spam.rspamd_url, false);
      if (problem) ctx.report("spam.rspamd_url", problem);
    },
  },
  {
    sections: ["inbound"],
    run(cfg, ctx) {
      if (cfg.inbound.retry_max_ms < cfg.inbound.retry_base_ms) {
        ctx.report("inbound.retry_max_ms", "must be at least inbound.retry_base_ms");
      }
    },
  },
  {
    sections: ["dns"],
    run(cfg, ctx) {
      for (const [i, ns] of cfg.dns.nameservers.entries()) {
        const problem = nameserverProblem(ns);
        if (problem) ctx.report(`dns.nameservers.${i}`, problem);
      }
    },
  },
  {
    sections: ["auth"],
    run(cfg) {
      // Domain names compare case-insensitively, without the root dot (RFC 4343).
      cfg.auth.trusted_arc_sealers = cfg.auth.trusted_arc_sealers.map((d) => d.toLowerCase().replace(/\.$/, ""));
    },
  },
  {
    sections: ["encryption"],
    run(cfg, ctx) {
      const e = cfg.encryption;
      if (e.store_key_file !== null && e.store_key_env !== null) ctx.report("encryption.store_key_env", "must not be set together with encryption.store_key_file: set only one");
      if (e.store_key_file !== null) {
        e.store_key_file = abs(ctx.baseDir, e.store_key_file);
        let text: string | null = null;
        try {
          text = readFileSync(e.store_key_file, "utf8");
        } catch (err) {
          ctx.report("encryption.store_key_file", `key file ${e.store_key_file} cannot be read (${(err as NodeJS.ErrnoException).code ?? "error"})`);
        }
        const problem = text === null ? null : storageKeyProblem(text);
        if (problem) ctx.report("encryption.store_key_file", `key file ${e.store_key_file} ${problem}`);
      }
      if (e.store_key_env !== null) {
        const value = ctx.env[e.store_key_env];
        const problem = value === undefined || value.trim() === "" ? "is not set" : storageKeyProblem(value);
        if (problem) ctx.report("encryption.store_key_env", `environment variable ${e.store_key_env} ${problem}`);
      }
    },
  },
  {
    sections: ["storage"],
    run(cfg, ctx) {
      const st = cfg.storage;
      if (st.encryption_key_file !== null) st.encryption_key_file = abs(ctx.baseDir, st.encryption_key_file);
      for (const [id, path] of Object.entries(st.encryption_keys)) st.encryption_keys[id] = abs(ctx.baseDir, path);
      checkStorageKeys(st, ctx);
    },
  },
  {
    sections: ["admin_api"],
    run(cfg, ctx) {
      const api = cfg.admin_api;
      if (api.token_file !== null) api.token_file = abs(ctx.baseDir, api.token_file);
      if (!api.enabled) return;
      // The token is read now, so a missing file or variable is a config error, not a failed start.
      try {
        loadAdminToken(api, ctx.env);
      } catch (err) {
        if (!(err instanceof AdminTokenError)) throw err;
        ctx.report(err.configKey, err.problem);
      }
    },
  },
];
