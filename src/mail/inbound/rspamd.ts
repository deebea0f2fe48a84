/**
 * A small client for rspamd's normal worker HTTP API (`POST /checkv2`), the verdict →
 * SMTP reply mapping, and the one header line through which the bridge records a verdict
 * in the message it stores.
 *
 * Protocol (https://rspamd.com/doc/developers/protocol.html): the request body is the raw
 * RFC 5322 message; the SMTP envelope travels in request headers (`IP`, `Helo`,
 * `Hostname`, `From`, `Rcpt`, `Queue-Id`); the answer is a JSON object with `action`,
 * `score`, `required_score` and `symbols` (an object keyed by symbol name).
 *
 * Verified against rspamd 3.4 (Debian): Node's `fetch` (undici) sends the values of a
 * header appended several times as ONE header, joined with `", "` (Fetch standard
 * "combine"); rspamd reads a `Rcpt` value as an address list, so `Rcpt: a@x, b@y` gives
 * it both recipients, exactly like two `Rcpt` headers would.
 */
import { getLogger } from "../../util/logger.ts";
import { SmtpReply } from "./rejections.ts";
import type { InboundEnvelope } from "./SmtpListener.ts";

const log = getLogger("mail/inbound/rspamd");

/** The actions this client understands, as rspamd spells them in `/checkv2` answers. */
export const SPAM_ACTIONS = ["no action", "greylist", "add header", "rewrite subject", "soft reject", "reject"] as const;

/** One of {@link SPAM_ACTIONS}. */
export type SpamAction = (typeof SPAM_ACTIONS)[number];

/**
 * rspamd's verdict on one message (from `/checkv2`).
 *
 * Action semantics (https://rspamd.com/doc/configuration/metrics.html): `no action` allow;
 * `greylist` greylisting threshold reached; `add header` / `rewrite subject` deliver but mark
 * as probable spam; `soft reject` temporarily delay (greylisting, rate limits); `reject`
 * ultimately reject.
 */
export interface SpamVerdict {
  /** The action rspamd recommends. */
  action: SpamAction;
  /** The message's score (sum of symbol scores); higher is spammier. */
  score: number;
  /** rspamd's `required_score`: the score of the `reject` action threshold (15 by default). */
  requiredScore: number;
  /** Names of the symbols (rules) that matched, e.g. `["GTUBE"]`, sorted. */
  symbols: string[];
}

/** Options of {@link checkWithRspamd}. */
export interface RspamdOptions {
  /** Base URL of rspamd's normal worker, e.g. `http://127.0.0.1:11333` (`/checkv2` is appended). */
  url: string;
  /** Longest wait for the whole answer (connect, scan, body), in milliseconds. */
  timeoutMs: number;
}


/** Longest answer body kept in an error message, in characters. */
const MAX_ERROR_BODY = 200;

/**
 * Ask rspamd about one message.
 *
 * Sends `POST <url>/checkv2` with `raw` as the body and the envelope as rspamd protocol
 * headers: `IP` (client address), `Helo`, `Hostname` (only when the client's reverse name is
 * known, i.e. `clientHostname` is not the `[ip]` placeholder), `From` (MAIL FROM; `<>` for the
 * null reverse-path), `Rcpt` (each RCPT TO, appended once per recipient) and `Queue-Id` (the
 * SMTP session id). Header values are sent as UTF-8 bytes with control characters removed.
 *
 * @param opts rspamd's base URL and the timeout in milliseconds
 * @param raw the message exactly as received in DATA
 * @param envelope the SMTP envelope of the transaction
 * @returns rspamd's verdict
 * @throws Error whose message is `rspamd at <url>: <cause>` (user name and password never
 *   shown), when the URL is invalid (not http/https, or with credentials, which fetch
 *   refuses), rspamd is unreachable, does not answer within `opts.timeoutMs`, answers with a
 *   non-2xx status, answers something that is not a `/checkv2` JSON object, or recommends an
 *   action not in {@link SPAM_ACTIONS} (e.g. `discard`, `quarantine` or a custom action).
 *   A lower-level error, if any, is the `cause`. Callers should map it to 451 4.3.0
 *   (`toSmtpReply` does) so the sender retries.
 */
export async function checkWithRspamd(opts: RspamdOptions, raw: Buffer, envelope: InboundEnvelope): Promise<SpamVerdict> {
  const shown = redactUrl(opts.url);
  const fail = (what: string, cause?: unknown): Error =>
    new Error(`rspamd at ${shown}: ${what}`, cause === undefined ? undefined : { cause });

  let endpoint: URL;
  try {
    endpoint = new URL(opts.url);
  } catch (err) {
    throw fail("invalid URL", err);
  }
  if (endpoint.protocol !== "http:" && endpoint.protocol !== "https:") throw fail("URL must be http: or https:");
  if (endpoint.username || endpoint.password) throw fail("URL must not contain a user name or password");
  endpoint.pathname = endpoint.pathname.replace(/\/+$/, "") + "/checkv2";
  const headers = new Headers();
  const put = (name: string, value: string): void => {
    const v = headerValue(value);
    if (v) headers.append(name, v);
  };
  put("IP", envelope.remoteAddress);
  put("Helo", envelope.heloName);
  if (envelope.clientHostname && !envelope.clientHostname.startsWith("[")) put("Hostname", envelope.clientHostname);
  put("From", envelope.mailFrom ?? "<>");
  for (const rcpt of envelope.rcptTo) put("Rcpt", rcpt);
  put("Queue-Id", envelope.sessionId);

  const started = Date.now();
  let status: number;
  let text: string;
  try {
    const res = await fetch(endpoint, {
      method: "POST",
      headers,
      body: raw,
      signal: AbortSignal.timeout(opts.timeoutMs),
    });
    status = res.status;
    text = await res.text();
  } catch (err) {
    if (err instanceof Error && err.name === "TimeoutError") {
      throw fail(`no answer within ${opts.timeoutMs} ms`, err);
    }
    const cause = err instanceof Error ? ((err.cause as Error | undefined)?.message ?? err.message) : String(err);
    throw fail(`request failed: ${cause}`, err);
  }
  if (status < 200 || status > 299) {
    throw fail(`HTTP status ${status}: ${truncate(text)}`);
  }
  const verdict = parseCheckV2(text);
  if (typeof verdict === "string") throw fail(verdict);
  log.debug("rspamd verdict", {
    session: envelope.sessionId,
    action: verdict.action,
    score: verdict.score,
    requiredScore: verdict.requiredScore,
    symbols: verdict.symbols,
    ms: Date.now() - started,
  });
  return verdict;
}

/**
 * The SMTP reply for a verdict, given to DATA instead of 250.
 *
 * - `reject` → `550 5.7.1 message rejected as spam`: rspamd's "ultimately reject message"
 *   (https://rspamd.com/doc/configuration/metrics.html); RFC 3463 X.7.1 "delivery not
 *   authorized, message refused" (rspamd's own milter uses 5.7.1 too, with 554).
 * - `soft reject`, `greylist` → `451 4.7.1 message deferred, try again later`: rspamd's
 *   "temporarily delay message" (greylisting, rate limits); RFC 5321 §4.2.2 451 is transient
 *   so the sender retries; 4.7.1 is RFC 3463's persistent-transient security/policy code,
 *   as rspamd's milter answers soft reject (`451 4.7.1 Try again later`).
 * - `no action`, `add header`, `rewrite subject` → null: accept (the verdict is recorded with
 *   {@link spamHeader}).
 *
 * @param v the verdict from {@link checkWithRspamd}
 * @returns a new SmtpReply to refuse the message, or null to accept it
 */
export function verdictReply(v: Pick<SpamVerdict, "action">): SmtpReply | null {
  switch (v.action) {
    case "reject":
      return new SmtpReply(550, "5.7.1", "message rejected as spam");
    case "soft reject":
    case "greylist":
      return new SmtpReply(451, "4.7.1", "message deferred, try again later");
    case "no action":
    case "add header":
    case "rewrite subject":
      return null;
  }
}

function isSpamAction(a: unknown): a is SpamAction {
  return typeof a === "string" && (SPAM_ACTIONS as readonly string[]).includes(a);
}

/** Parse a `/checkv2` answer; a string is the reason it is unusable. */
function parseCheckV2(text: string): SpamVerdict | string {
  let body: unknown;
  try {
    body = JSON.parse(text);
  } catch {
    return `answer is not JSON: ${truncate(text)}`;
  }
  if (typeof body !== "object" || body === null || Array.isArray(body)) return `answer is not a JSON object: ${truncate(text)}`;
  const o = body as Record<string, unknown>;
  if (!isSpamAction(o.action)) return `unknown action ${JSON.stringify(o.action)}`;
  const score = o.score;
  const required = o.required_score;
  if (typeof score !== "number" || !Number.isFinite(score)) return `answer has no numeric score: ${truncate(text)}`;
  if (typeof required !== "number" || !Number.isFinite(required)) return `answer has no numeric required_score: ${truncate(text)}`;
  const symbols = typeof o.symbols === "object" && o.symbols !== null ? Object.keys(o.symbols).sort() : [];
  return { action: o.action, score, requiredScore: required, symbols };
}

/** A header value fetch accepts: control characters removed, UTF-8 bytes as a byte string. */
function headerValue(s: string): string {
  const clean = s.replace(/[\u0000-\u001f\u007f]/g, "").trim();
  return Buffer.from(clean, "utf8").toString("latin1");
}

/** The URL for messages, without user name or password. */
function redactUrl(url: string): string {
  try {
    const u = new URL(url);
    u.username = "";
    u.password = "";
    return u.toString().replace(/\/$/, "");
  } catch {
    return url;
  }
}

function truncate(s: string): string {
  const one = s.replace(/\s+/g, " ").trim();
  return one.length > MAX_ERROR_BODY ? one.slice(0, MAX_ERROR_BODY) + "…" : one;
}
