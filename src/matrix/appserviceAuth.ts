/**
 * The homeserver's credentials on a request to the appservice listener
 * (Application Service API › Homeserver -> Application Service API › Authorization).
 *
 * A pure function of the request's `Authorization` header(s) and query string: no I/O,
 * no logging. The HTTP layer (./appserviceHttp.ts) calls it before anything else looks
 * at the request, and turns a refusal into the JSON error response.
 *
 * Rules (spec v1.4+, "Authorization" and its note on the legacy query parameter):
 * - `Authorization: Bearer <hs_token>`: the scheme is matched case-insensitively
 *   (RFC 9110 §11.1), followed by one or more spaces and exactly one token
 *   (RFC 9110 §11.4 / RFC 6750 §2.1 `"Bearer" 1*SP b64token`); nothing after it.
 *   Any other scheme, or a malformed header, is refused.
 * - The legacy `access_token` query parameter is accepted on its own.
 * - When both are given, both must be the `hs_token` ("Application services should ensure
 *   both match if both are provided").
 * - Nothing supplied: 401 (the spec's "The homeserver has not supplied credentials", on
 *   the query endpoints), errcode `M_UNAUTHORIZED`.
 * - Supplied and not right: 403 `M_FORBIDDEN` ("failing the request with an M_FORBIDDEN
 *   error if it does not match").
 *
 * Tokens are compared in constant time: SHA-256 of each side, then `timingSafeEqual`
 * over the two 32-byte digests, so neither the content nor the length of the secret
 * leaks through timing.
 */
import { createHash, timingSafeEqual } from "node:crypto";

/** The request headers the check reads; Node's `req.headers` or `req.headersDistinct` fit. */
export interface AppserviceAuthHeaders {
  /**
   * The `Authorization` header: a string, or one string per header line
   * (`req.headersDistinct` keeps duplicates, `req.headers` drops all but the first).
   */
  authorization?: string | readonly string[] | undefined;
}

/** The request is authenticated as the homeserver. */
export interface AppserviceAuthOk {
  ok: true;
  /** Where the token came from: the header, the legacy query parameter, or both (agreeing). */
  source: "header" | "query" | "both";
}

/** The request is refused: answer `status` with `{ errcode, error }` as the JSON body. */
export interface AppserviceAuthRefusal {
  ok: false;
  /** 401 when no credentials were supplied, 403 when they were and are not right. */
  status: 401 | 403;
  errcode: "M_UNAUTHORIZED" | "M_FORBIDDEN";
  /** A constant, human-readable reason; never contains the supplied or expected token. */
  error: string;
}

/** Result of {@link checkAppserviceAuth}. */
export type AppserviceAuthResult = AppserviceAuthOk | AppserviceAuthRefusal;

/**
 * `auth-scheme 1*SP token` (RFC 9110 §11.4), the credentials being exactly one token:
 * no spaces or other whitespace inside, nothing after it. Node trims the header value's
 * leading and trailing whitespace before we see it.
 */
const CREDENTIALS = /^([!#$%&'*+.^_`|~0-9A-Za-z-]+) +(\S+)$/;

function refuse(status: 401 | 403, error: string): AppserviceAuthRefusal {
  return { ok: false, status, errcode: status === 401 ? "M_UNAUTHORIZED" : "M_FORBIDDEN", error };
}

function digest(value: string): Buffer {
  return createHash("sha256").update(value, "utf8").digest();
}

/**
 * Whether `supplied` equals the secret whose SHA-256 digest is `expected`, in time
 * independent of where they differ and of the secret's length.
 */
function matches(supplied: string, expected: Buffer): boolean {
  return timingSafeEqual(digest(supplied), expected);
}

/**
 * Check the homeserver's credentials on one appservice request.
 * @param hsToken the registration's `hs_token` (the secret the homeserver must present)
 * @param headers the request headers (only `authorization` is read)
 * @param query the request's query string, parsed (only `access_token` is read)
 * @returns `{ ok: true, source }`, or `{ ok: false, status, errcode, error }` to send back
 * @throws Error when `hsToken` is empty (a configuration error: every request would be refused)
 */
export function checkAppserviceAuth(hsToken: string, headers: AppserviceAuthHeaders, query: URLSearchParams): AppserviceAuthResult {
  if (!hsToken) throw new Error("the appservice hs_token is empty");
  const raw = headers.authorization;
  const headerValues: readonly string[] = raw === undefined ? [] : typeof raw === "string" ? [raw] : raw;
  const queryValues = query.getAll("access_token");

  if (headerValues.length === 0 && queryValues.length === 0) return refuse(401, "Missing access token");
  if (headerValues.length > 1) return refuse(403, "More than one Authorization header");
  if (queryValues.length > 1) return refuse(403, "More than one access_token parameter");

  let headerToken: string | null = null;
  const header = headerValues[0];
  if (header !== undefined) {
    const m = CREDENTIALS.exec(header);
    if (!m) return refuse(403, "Malformed Authorization header: expected 'Bearer <token>'");
    if (m[1]!.toLowerCase() !== "bearer") return refuse(403, "Unsupported authorization scheme: expected 'Bearer <token>'");
    headerToken = m[2]!;
  }
  const queryToken = queryValues[0] ?? null;

  const expected = digest(hsToken);
  // Both comparisons run whenever both tokens are present, so timing does not tell which failed.
  const headerOk = headerToken === null ? null : matches(headerToken, expected);
  const queryOk = queryToken === null ? null : matches(queryToken, expected);

  if (headerOk !== null && queryOk !== null) {
    if (headerOk && queryOk) return { ok: true, source: "both" };
    if (headerOk || queryOk) return refuse(403, "The Authorization header and the access_token parameter disagree");
    return refuse(403, "Bad token supplied");
  }
  if (headerOk ?? queryOk) return { ok: true, source: headerOk === null ? "query" : "header" };
  return refuse(403, "Bad token supplied");
}
