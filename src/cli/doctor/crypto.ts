/**
 * `doctor` check: the native end-to-end-encryption binding (src/matrix/crypto.ts). Without it
 * the bridge runs with encryption off.
 */
import { prepareCrypto } from "../../matrix/crypto.ts";
import { ok, warn, type DoctorResult } from "./result.ts";

/**
 * Probe the binding the way `start` does.
 * @param enabled `encryption.enabled`, or null when the config could not be read
 * @returns `ok` when it loads or encryption is turned off in the config, else `warn` with the
 *   load error (the bridge then runs with encryption off)
 */
export function checkCrypto(enabled: boolean | null): DoctorResult {
  const check = "e2e crypto";
  if (enabled === false) return ok(check, "encryption.enabled is false: the bridge stays out of encrypted rooms");
  const status = prepareCrypto();
  if (status.available) return ok(check, "the native @matrix-org/matrix-sdk-crypto-nodejs binding loads");
  return warn(
    check,
    `the native @matrix-org/matrix-sdk-crypto-nodejs binding does not load (${status.reason ?? "unknown reason"}): end-to-end encryption is off`,
    "reinstall with install scripts allowed and network access (`npm rebuild @matrix-org/matrix-sdk-crypto-nodejs`), or set encryption.enabled: false",
  );
}
