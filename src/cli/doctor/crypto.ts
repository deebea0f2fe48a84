/**
 * `doctor` check: the native end-to-end-encryption binding (src/matrix/crypto.ts). Without it
 * the bridge runs with encryption off.
 */
import { prepareCrypto } from "../../matrix/crypto.ts";
import { ok, warn, type DoctorResult } from "./result.ts";

/**
 * Probe the binding the way `start` does.
 * @returns `ok` when it loads, else `warn` with the load error
 */
export function checkCrypto(): DoctorResult {
  const check = "e2e crypto";
  const status = prepareCrypto();
  if (status.available) return ok(check, "the native @matrix-org/matrix-sdk-crypto-nodejs binding loads");
  return warn(
    check,
    `the native @matrix-org/matrix-sdk-crypto-nodejs binding does not load (${status.reason ?? "unknown reason"}): end-to-end encryption is off`,
    "reinstall with install scripts allowed and network access (`npm rebuild @matrix-org/matrix-sdk-crypto-nodejs`), or run unencrypted rooms only",
  );
}
