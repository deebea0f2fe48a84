/**
 * The admin API's bearer token: where it comes from (`admin_api.token_file` or
 * `admin_api.token_env`, like the `storage` key) and how a request's token is checked.
 *
 * A request carries `Authorization: Bearer <token>` (RFC 6750 §2.1). The comparison takes the
 * same time whatever the presented token is: both sides are hashed with SHA-256 and the digests
 * compared with `timingSafeEqual`, so neither the length nor a common prefix leaks.
 */
import { createHash, timingSafeEqual } from "node:crypto";
import { readFileSync } from "node:fs";

/** Fewest characters a token may have (e.g. `openssl rand -hex 32` gives 64). */
export const MIN_TOKEN_LENGTH = 32;

/** The token settings of the `admin_api` section (paths already absolute). */
export interface AdminTokenSources {
  token_file: string | null;
  token_env: string | null;
}

/**
 * A token that cannot be used. `configKey` is the dotted config key (`admin_api.token_file` or
 * `admin_api.token_env`); `problem` is worded to follow it and names the file or variable.
 */
export class AdminTokenError extends Error {
  readonly configKey: string;
  readonly problem: string;
  constructor(configKey: string, problem: string) {
    super(`${configKey} ${problem}`);
    this.name = "AdminTokenError";
    this.configKey = configKey;
    this.problem = problem;
  }
}

/**
 * Why a token text is unusable, or null. Surrounding whitespace is ignored; the rest must be
 * at least {@link MIN_TOKEN_LENGTH} visible ASCII characters (RFC 6750 §2.1 b64token-ish: no
 * spaces inside).
 */
export function adminTokenProblem(text: string): string | null {
  const token = text.trim();
  if (token === "") return "is empty; expected a random token of at least 32 characters (openssl rand -hex 32)";
  if (!/^[\x21-\x7e]+$/.test(token)) return "must be visible ASCII characters without spaces (openssl rand -hex 32)";
  if (token.length < MIN_TOKEN_LENGTH) return `has ${token.length} characters; at least ${MIN_TOKEN_LENGTH} are required (openssl rand -hex 32)`;
  return null;
}

/**
 * Read the configured token.
 * @param sources `admin_api.token_file` / `admin_api.token_env`
 * @param env environment `token_env` is read from (default `process.env`)
 * @returns the token, whitespace trimmed
 * @throws AdminTokenError naming the key and the file or variable: neither or both set, a file
 *   that cannot be read, a variable that is not set, a token that is too short or malformed
 */
export function loadAdminToken(sources: AdminTokenSources, env: NodeJS.ProcessEnv = process.env): string {
  const { token_file: file, token_env: name } = sources;
  if (file !== null && name !== null) throw new AdminTokenError("admin_api.token_env", "must not be set together with admin_api.token_file: set only one");
  if (file === null && name === null) throw new AdminTokenError("admin_api.token_file", "or admin_api.token_env is required when admin_api.enabled is true");
  let text: string;
  let key: string;
  let source: string;
  if (file !== null) {
    key = "admin_api.token_file";
    source = `file ${file}`;
    try {
      text = readFileSync(file, "utf8");
    } catch (err) {
      throw new AdminTokenError(key, `${source} cannot be read (${(err as NodeJS.ErrnoException).code ?? "error"})`);
    }
  } else {
    key = "admin_api.token_env";
    source = `environment variable ${name!}`;
    const value = env[name!];
    if (value === undefined) throw new AdminTokenError(key, `${source} is not set`);
    text = value;
  }
  const problem = adminTokenProblem(text);
  if (problem) throw new AdminTokenError(key, `${source} ${problem}`);
  return text.trim();
}

/**
 * Check a request's Authorization header against the token, in constant time.
 * @param header the `Authorization` header value, or undefined when absent
 * @returns `missing` (no bearer token), `wrong`, or `ok`
 */
export function checkBearer(header: string | undefined, token: string): "missing" | "wrong" | "ok" {
  const match = /^Bearer +(\S+) *$/i.exec(header ?? "");
  if (!match) return "missing";
  const digest = (s: string): Buffer => createHash("sha256").update(s, "utf8").digest();
  return timingSafeEqual(digest(match[1]!), digest(token)) ? "ok" : "wrong";
}
