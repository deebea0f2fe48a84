/**
 * `doctor` check: end-to-end-encrypted rooms (docs/encryption.md). The bridge's devices run
 * on `@matrix-org/matrix-sdk-crypto-wasm` (no native binding); what they need of the
 * deployment is the registration's keys (MSC2409 `receive_ephemeral`, MSC3202, MSC4190) and
 * Synapse's `experimental_features`, which only the running bridge can observe (its start
 * probe logs when they are missing).
 */
import { readFileSync } from "node:fs";
import { parse } from "yaml";
import { ok, warn, type DoctorResult } from "./result.ts";

/** The registration keys the bridge's devices need, with the value each must have. */
export const E2EE_REGISTRATION_KEYS = ["receive_ephemeral", "de.sorunome.msc2409.push_ephemeral", "org.matrix.msc3202", "io.element.msc4190"] as const;

/** What Synapse's homeserver.yaml needs for appservice encryption. */
const SYNAPSE_SETTINGS = "experimental_features: { msc2409_to_device_messages_enabled: true, msc3202_transaction_extensions: true }";

/**
 * Check that the crypto library loads and the registration asks for what encryption needs.
 * @param enabled `encryption.enabled`, or null when the config could not be read
 * @param registrationFile `appservice.registration_file`, when the config was read
 * @returns `ok` when encryption is off in the config, or the library loads and the registration
 *   has every key of {@link E2EE_REGISTRATION_KEYS}; else `warn` with the fix (the bridge then
 *   stays out of encrypted rooms, with a notice)
 */
export async function checkCrypto(enabled: boolean | null, registrationFile?: string): Promise<DoctorResult> {
  const check = "e2e crypto";
  if (enabled === false) return ok(check, "encryption.enabled is false: the bridge stays out of encrypted rooms");
  let version: string;
  try {
    const wasm = await import("@matrix-org/matrix-sdk-crypto-wasm");
    version = wasm.getVersions().matrix_sdk_crypto;
  } catch (err) {
    return warn(check, `@matrix-org/matrix-sdk-crypto-wasm does not load (${err instanceof Error ? err.message.split("\n")[0] : String(err)}): encrypted rooms are not bridged`, "reinstall the bridge's dependencies (npm ci)");
  }
  if (registrationFile === undefined) return ok(check, `matrix-sdk-crypto ${version} loads`);
  let reg: Record<string, unknown>;
  try {
    reg = (parse(readFileSync(registrationFile, "utf8")) ?? {}) as Record<string, unknown>;
  } catch (err) {
    return warn(check, `registration file ${registrationFile} cannot be read (${(err as NodeJS.ErrnoException).code ?? "error"})`, "run `matrix-email-bridge generate-registration -c <config>`");
  }
  const missing = E2EE_REGISTRATION_KEYS.filter((k) => reg[k] !== true);
  if (missing.length > 0) {
    return warn(
      check,
      `the registration lacks ${missing.join(", ")}: encrypted rooms are not bridged`,
      `run \`matrix-email-bridge generate-registration -c <config>\` (keeps the tokens), give Synapse the new file and ${SYNAPSE_SETTINGS}, restart Synapse`,
    );
  }
  return ok(check, `matrix-sdk-crypto ${version} loads and the registration asks for to-device messages, key counts and device management; Synapse also needs ${SYNAPSE_SETTINGS} (the bridge's log says at start if they are missing)`);
}
