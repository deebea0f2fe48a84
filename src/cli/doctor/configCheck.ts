/**
 * `doctor` check: the config file loads and validates (src/config/load.ts).
 */
import { ConfigError, loadConfig } from "../../config/load.ts";
import type { BridgeConfig } from "../../config/schema.ts";
import { describeError, fail, ok, type DoctorResult } from "./result.ts";

/**
 * Load `file` as `start` does.
 * @returns the result and the config (null when it cannot be used); a {@link ConfigError} is a
 *   `fail` naming the key and the file
 */
export function checkConfig(file: string): { result: DoctorResult; config: BridgeConfig | null } {
  const check = "config";
  try {
    const config = loadConfig(file);
    return { result: ok(check, `${file} loads and validates`), config };
  } catch (err) {
    if (err instanceof ConfigError) {
      const where = err.key ? `set ${err.key} in ${err.file}` : `fix ${err.file}`;
      return { result: fail(check, err.message, `${where} (config.sample.yaml lists every option with its default); \`matrix-email-bridge validate-config\` checks it`), config: null };
    }
    return { result: fail(check, `${file} cannot be loaded: ${describeError(err)}`, "check the file and the key files it names"), config: null };
  }
}
