/**
 * End-to-end encryption support probe.
 *
 * matrix-bot-sdk (inside matrix-appservice-bridge) `require`s the native
 * `@matrix-org/matrix-sdk-crypto-nodejs` binding at load time. That package
 * downloads its binary in a postinstall step; where the download did not happen
 * (offline installs, npm's install-script policy), the require throws and so
 * does `import("matrix-appservice-bridge")`.
 *
 * {@link prepareCrypto} must run before matrix-appservice-bridge is imported.
 * When the real binding loads, it is left alone. When it does not, a stand-in
 * module is registered under the same name whose every use throws (the bot-sdk
 * only touches the binding when its own encryption is turned on, which the
 * bridge never does). The bridge's end-to-end encryption does not use the
 * binding: it runs on `@matrix-org/matrix-sdk-crypto-wasm` (./e2ee/).
 */
import { createRequire, registerHooks } from "node:module";
import { getLogger } from "../util/logger.ts";

const CRYPTO_PACKAGE = "@matrix-org/matrix-sdk-crypto-nodejs";
const STAND_IN_URL = "file:///matrix-email-bridge/crypto-unavailable.cjs";

const STAND_IN_SOURCE = `
const reason = "the native ${CRYPTO_PACKAGE} binding is not installed; end-to-end encryption is off";
module.exports = new Proxy({}, {
  get(_t, prop) {
    if (prop === "__esModule") return false;
    if (typeof prop === "symbol") return undefined;
    return function unavailable() { throw new Error(reason + " (" + String(prop) + ")"); };
  },
});
`;

/** Whether the native crypto binding is usable, and why not. */
export interface CryptoStatus {
  /** True when the real native binding loaded. */
  available: boolean;
  /** Why it is not available (load error message), null when available. */
  reason: string | null;
}

let status: CryptoStatus | null = null;

/**
 * Probe the native crypto binding once per process; on failure register the
 * stand-in module so matrix-appservice-bridge can load. Safe to call many times.
 * @returns the probe result (cached)
 */
export function prepareCrypto(): CryptoStatus {
  if (status) return status;
  const require = createRequire(import.meta.url);
  try {
    require(CRYPTO_PACKAGE);
    status = { available: true, reason: null };
  } catch (err) {
    const reason = err instanceof Error ? err.message.split("\n")[0] ?? err.message : String(err);
    status = { available: false, reason };
    registerHooks({
      resolve(specifier, context, nextResolve) {
        if (specifier === CRYPTO_PACKAGE) return { url: STAND_IN_URL, format: "commonjs", shortCircuit: true };
        return nextResolve(specifier, context);
      },
      load(url, context, nextLoad) {
        if (url === STAND_IN_URL) return { format: "commonjs", source: STAND_IN_SOURCE, shortCircuit: true };
        return nextLoad(url, context);
      },
    });
    getLogger("matrix/crypto").debug("matrix-bot-sdk's native crypto binding not available: a stand-in is loaded (the bridge's encryption does not need it)", {
      package: CRYPTO_PACKAGE,
      reason,
    });
  }
  return status;
}
