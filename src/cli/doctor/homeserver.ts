/**
 * `doctor` check: the homeserver is reachable, has the bridge's registration loaded, and can
 * reach the bridge's appservice URL, all proven by one appservice ping (Client-Server API ›
 * Application service ping, `POST /_matrix/client/v1/appservice/{appserviceId}/ping` with the
 * `as_token`; Synapse ≥ 1.84). The homeserver then calls `POST /_matrix/app/v1/ping` on the
 * registration's URL with the `hs_token`: when the bridge is not running, `doctor` answers it
 * itself (./pingResponder.ts) on `appservice.bind_address`:`port`; when the port is taken, the
 * running bridge answers.
 */
import { randomBytes } from "node:crypto";
import type { BridgeConfig } from "../../config/schema.ts";
import { readRegistration, type Registration } from "../registration.ts";
import { startPingResponder, type PingResponder } from "./pingResponder.ts";
import { requestAppservicePing, type AppservicePingAnswer } from "../../matrix/appservicePing.ts";
import { jsonObject } from "../../util/json.ts";
import { describeError, fail, ok, warn, type DoctorResult } from "./result.ts";

/** Options of {@link checkHomeserver}. */
export interface HomeserverCheckOptions {
  /** Longest wait for the homeserver's `/versions` answer (is it reachable at all?), in ms. */
  connectTimeoutMs: number;
  /**
   * Longest wait for the ping's answer, in ms. It includes the homeserver's own call to the
   * appservice, which Synapse gives up after 60 s (M_CONNECTION_TIMEOUT): wait longer than that.
   */
  timeoutMs: number;
}

const CHECK = "homeserver";

/**
 * Ping the appservice through the homeserver and tell what works.
 * @returns `ok` when the homeserver reached the appservice URL and the answer came from this
 *   host's appservice port (doctor's responder, or the running bridge); `warn` when the
 *   homeserver does not support the ping; `fail` naming what is broken: homeserver unreachable,
 *   `as_token` unknown (registration not loaded), appservice URL unreachable from the
 *   homeserver, `hs_token` refused (the homeserver has an older registration)
 */
export async function checkHomeserver(cfg: BridgeConfig, opts: HomeserverCheckOptions): Promise<DoctorResult> {
  const file = cfg.appservice.registration_file;
  let reg: Registration;
  try {
    reg = readRegistration(file);
  } catch (err) {
    return fail(CHECK, `the registration ${file} cannot be read: ${describeError(err)}`, "run `matrix-email-bridge generate-registration`, add the file to app_service_config_files in homeserver.yaml and restart Synapse");
  }
  const started = await startPingResponder(reg.hs_token, cfg.appservice.port, cfg.appservice.bind_address);
  const responder = started.responder;
  const where = `${cfg.appservice.bind_address}:${cfg.appservice.port}`;
  let who = "doctor (the bridge is not running)";
  if (!started.responder) {
    const { outcome } = started;
    const code = outcome.bound ? "" : outcome.code;
    who = code === "EADDRINUSE" ? `the program holding ${where} (the bridge, if it runs)` : `nobody: doctor could not listen on ${where} (${code})`;
  }
  try {
    const result = await ping(cfg, reg, responder, opts, who);
    if (result.status === "ok" && reg.url !== cfg.appservice.url) {
      return warn(CHECK, `${result.found}; but ${file} has url ${reg.url}, the config says ${cfg.appservice.url}`, "run `matrix-email-bridge generate-registration` (it keeps the tokens) and restart Synapse");
    }
    return result;
  } finally {
    await responder?.close();
  }
}

/**
 * Ask the homeserver for the ping and read its answer.
 * @param who who answers at this host's appservice port, for the report
 */
async function ping(cfg: BridgeConfig, reg: Registration, responder: PingResponder | null, opts: HomeserverCheckOptions, who: string): Promise<DoctorResult> {
  const hs = cfg.homeserver.url.replace(/\/+$/, "");
  const endpoint = `${hs}/_matrix/client/v1/appservice/${encodeURIComponent(reg.id)}/ping`;
  const txnId = `doctor-${randomBytes(8).toString("hex")}`;
  const unreachable = "check homeserver.url (the Client-Server API base URL), that Synapse runs, and that this host can reach it";
  // Reachable at all, and a homeserver (Client-Server API › Versions)? Asked first, with a short wait.
  try {
    const versions = await fetch(`${hs}/_matrix/client/versions`, { signal: AbortSignal.timeout(opts.connectTimeoutMs) });
    const body = jsonObject(await versions.text());
    if (!versions.ok || !Array.isArray(body?.versions)) {
      return fail(CHECK, `${hs} answered HTTP ${versions.status} to /_matrix/client/versions: not a Matrix homeserver`, unreachable);
    }
  } catch (err) {
    return fail(CHECK, `homeserver unreachable at ${hs}: ${fetchFailure(err, opts.connectTimeoutMs)}`, unreachable);
  }
  let answer: AppservicePingAnswer;
  try {
    answer = await requestAppservicePing({ homeserverUrl: hs, appserviceId: reg.id, asToken: reg.as_token, transactionId: txnId, timeoutMs: opts.timeoutMs });
  } catch (err) {
    return fail(CHECK, `no answer to the appservice ping from ${hs}: ${fetchFailure(err, opts.timeoutMs)}`, `check Synapse's log for the ping to ${reg.url}`);
  }
  const registrationNotLoaded = `registration not loaded: add ${cfg.appservice.registration_file} to app_service_config_files in Synapse's homeserver.yaml and restart Synapse`;
  if (answer.ok) {
    if (responder && !responder.received.includes(txnId)) {
      return fail(CHECK, `the homeserver pinged ${reg.url}, but something other than this host's ${cfg.appservice.bind_address}:${cfg.appservice.port} answered`, `point appservice.url at this bridge host (then generate-registration and restart Synapse)`);
    }
    const reached = responder ? `reached ${reg.url}` : `reached the running bridge at ${reg.url}`;
    return ok(CHECK, `${hs} has the registration "${reg.id}" loaded and ${reached} in ${answer.durationMs ?? "?"} ms (answered by ${who})`);
  }
  const errcode = answer.errcode ?? `HTTP ${answer.status}`;
  switch (answer.errcode) {
    case "M_UNKNOWN_TOKEN":
    case "M_MISSING_TOKEN":
      return fail(CHECK, `token unknown: ${hs} does not know the as_token of ${cfg.appservice.registration_file} (${errcode})`, registrationNotLoaded);
    case "M_FORBIDDEN":
      return fail(CHECK, `${hs} knows the as_token, but not as appservice "${reg.id}" (${answer.error ?? errcode})`, `Synapse has another registration with this token loaded; ${registrationNotLoaded}`);
    case "M_URL_NOT_SET":
      return fail(CHECK, `the registration Synapse loaded has no url (${errcode})`, "run `matrix-email-bridge generate-registration` and restart Synapse");
    case "M_CONNECTION_FAILED":
    case "M_CONNECTION_TIMEOUT":
      return fail(
        CHECK,
        `homeserver cannot reach the appservice URL ${reg.url}: ${answer.error ?? errcode} (answering: ${who})`,
        `appservice.url must be reachable from the Synapse host and lead to appservice.bind_address:port (${cfg.appservice.bind_address}:${cfg.appservice.port}); check the address, firewalls and containers' networks`,
      );
    case "M_BAD_STATUS":
      return badStatus(answer, reg, hs, responder, who);
    case "M_UNRECOGNIZED":
      if (answer.status === 404 || answer.status === 405) {
        return warn(CHECK, `${hs} does not support the appservice ping (${errcode}); reachability not checked`, "upgrade Synapse (1.84 or newer supports it)");
      }
  }
  return fail(CHECK, `${endpoint} answered ${answer.status} ${errcode}${answer.error ? `: ${answer.error}` : ""}`, "check homeserver.url (the Client-Server API base URL) and Synapse's log");
}

/** Why a fetch failed: the network error under undici's "fetch failed", or the timeout. */
function fetchFailure(err: unknown, timeoutMs: number): string {
  if (err instanceof Error && (err.name === "TimeoutError" || err.name === "AbortError")) return `no answer within ${timeoutMs} ms`;
  return describeError((err as { cause?: unknown }).cause ?? err);
}

/**
 * M_BAD_STATUS: the homeserver reached the appservice URL, which answered an error.
 * The running bridge checks the `hs_token` before anything else, so a 401/403 means the
 * homeserver has another `hs_token` (an older registration); a 404 `M_UNRECOGNIZED` after that
 * check means a bridge from before the ping route accepted the token: the homeserver reached
 * it, which is what the check is for. (The bridge answers the ping with 200 since then.)
 */
function badStatus(answer: AppservicePingAnswer, reg: Registration, hs: string, responder: PingResponder | null, who: string): DoctorResult {
  const status = answer.appserviceStatus;
  if (status === 401 || status === 403) {
    return fail(CHECK, `${hs} reached ${reg.url}, but ${who} refused its hs_token (HTTP ${status}): Synapse has an older registration loaded`, "restart Synapse so it reads the current registration file (after `generate-registration --rotate` it must)");
  }
  const answerCode = jsonObject(answer.appserviceBody ?? "")?.errcode;
  if (!responder && status === 404 && answerCode === "M_UNRECOGNIZED") {
    return ok(CHECK, `${hs} has the registration "${reg.id}" loaded and reached the running bridge at ${reg.url} (it accepted the hs_token; it answers the ping route with 404)`);
  }
  return fail(CHECK, `${hs} reached ${reg.url}, which answered HTTP ${status ?? "?"} (${(answer.appserviceBody ?? "").slice(0, 120)})`, "make sure appservice.url leads to this bridge (not another service or proxy)");
}
