/**
 * The appservice ping (Client-Server API › Application service ping,
 * `POST /_matrix/client/v1/appservice/{appserviceId}/ping` with the `as_token`; spec v1.7,
 * Synapse ≥ 1.84). The homeserver calls `POST /_matrix/app/v1/ping` on the registration's URL
 * with the `hs_token` and answers how that went: 200 `{duration_ms}`, or an error whose errcode
 * says what failed (`M_CONNECTION_FAILED`, `M_CONNECTION_TIMEOUT`, `M_BAD_STATUS` with the
 * appservice's `status` and `body`, `M_URL_NOT_SET`, `M_FORBIDDEN`, `M_UNKNOWN_TOKEN`).
 *
 * Its users: `doctor` proves with it that the homeserver has the registration loaded and can
 * reach the bridge (src/cli/doctor/homeserver.ts); the bridge pings once it has started
 * ({@link MatrixGateway.start}), and again after it refused transactions (./refusalPing.ts):
 * after a successful ping Synapse retries at once the transactions it held while the bridge
 * was down or refused them (synapse/rest/client/appservice_ping.py, `force_retry`), which would
 * otherwise wait for its backoff of 2 s doubling up to 512 s.
 */
import { jsonObject } from "../util/json.ts";

/** What to ping. */
export interface AppservicePingRequest {
  /** The Client-Server API base URL (`homeserver.url`), without a trailing slash or with one. */
  homeserverUrl: string;
  /** The registration's `id`. */
  appserviceId: string;
  /** The registration's `as_token`. */
  asToken: string;
  /** Sent as `transaction_id`; the homeserver passes it on to the appservice's ping route. */
  transactionId: string;
  /**
   * Longest wait for the answer, in ms. It includes the homeserver's own call to the
   * appservice, which Synapse gives up after 60 s (M_CONNECTION_TIMEOUT).
   */
  timeoutMs: number;
  /** Aborts the request (e.g. when the bridge stops); the promise then rejects with an `AbortError`. */
  signal?: AbortSignal;
}

/** The homeserver's answer, read into fields. */
export interface AppservicePingAnswer {
  /** The HTTP status of the homeserver's answer. */
  status: number;
  /** 2xx: the homeserver reached the appservice and it answered 200. */
  ok: boolean;
  /** On success, how long the homeserver's call to the appservice took, ms (null when absent). */
  durationMs: number | null;
  /** The Matrix errcode of an error answer (null when the body has none or is not JSON). */
  errcode: string | null;
  /** The error answer's `error` text (null when absent). */
  error: string | null;
  /** `M_BAD_STATUS`: the HTTP status the appservice answered the homeserver (null otherwise). */
  appserviceStatus: number | null;
  /** `M_BAD_STATUS`: the appservice's response body (null otherwise). */
  appserviceBody: string | null;
  /** The body is not a JSON object (a proxy's page, not a homeserver). */
  notJson: boolean;
}

/**
 * Ask the homeserver to ping the appservice.
 * @param req see {@link AppservicePingRequest}
 * @returns the answer, whatever its status (a 404/405 `M_UNRECOGNIZED` is a homeserver
 *   without the ping, older than spec v1.7)
 * @throws Error as `fetch` throws it when there is no answer: a network error (its `cause`
 *   names it), after `timeoutMs` a `TimeoutError`, when `signal` aborts an `AbortError`
 */
export async function requestAppservicePing(req: AppservicePingRequest): Promise<AppservicePingAnswer> {
  const hs = req.homeserverUrl.replace(/\/+$/, "");
  const res = await fetch(`${hs}/_matrix/client/v1/appservice/${encodeURIComponent(req.appserviceId)}/ping`, {
    method: "POST",
    headers: { Authorization: `Bearer ${req.asToken}`, "Content-Type": "application/json" },
    body: JSON.stringify({ transaction_id: req.transactionId }),
    signal: req.signal ? AbortSignal.any([req.signal, AbortSignal.timeout(req.timeoutMs)]) : AbortSignal.timeout(req.timeoutMs),
  });
  const body = jsonObject(await res.text());
  const text = (v: unknown): string | null => (typeof v === "string" ? v : null);
  const int = (v: unknown): number | null => (typeof v === "number" && Number.isFinite(v) ? v : null);
  return {
    status: res.status,
    ok: res.ok,
    durationMs: int(body?.duration_ms),
    errcode: text(body?.errcode),
    error: text(body?.error),
    appserviceStatus: int(body?.status),
    appserviceBody: text(body?.body),
    notJson: body === null,
  };
}
