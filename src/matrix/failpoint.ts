/**
 * Test-only failpoints: the process kills itself with SIGKILL at a named point, so end-to-end
 * tests can prove what survives a crash there (test/e2e/transactions.test.ts).
 *
 * Armed by the environment variable `MEB_FAILPOINT=<name>`, read when the point is reached;
 * unset (the default, and the only sane production setting) they do nothing. One point per
 * process: the first time an armed point is reached, the process dies.
 */
import { getLogger, type LogContext } from "../util/logger.ts";

const log = getLogger("matrix/failpoint");

/** The environment variable that arms a failpoint. */
export const FAILPOINT_ENV = "MEB_FAILPOINT";

/**
 * The failpoints:
 * - `after-journal-commit`: an appservice transaction that brought new events is committed to
 *   the journal, before its 200 is sent and before any of its events is handled;
 * - `after-txn-ack`: the 200 of such a transaction has been sent, before any of its events is
 *   handled (the window where the bridge used to lose events).
 */
export type FailpointName = "after-journal-commit" | "after-txn-ack";

const NAMES: readonly FailpointName[] = ["after-journal-commit", "after-txn-ack"];

/**
 * The armed failpoint, or null. Logs a warning (once per call) when one is armed, and an
 * error for an unknown name (which arms nothing).
 */
export function armedFailpoint(): FailpointName | null {
  const value = process.env[FAILPOINT_ENV];
  if (!value) return null;
  if ((NAMES as readonly string[]).includes(value)) return value as FailpointName;
  log.error("unknown failpoint: nothing armed", { failpoint: value, known: NAMES });
  return null;
}

/**
 * Reach failpoint `name`: when `MEB_FAILPOINT` names it, log one line and SIGKILL this
 * process (no cleanup, no flush beyond the synchronous log write); otherwise return.
 * @param ctx log context (transaction ID, event count)
 */
export function failpoint(name: FailpointName, ctx: LogContext): void {
  if (process.env[FAILPOINT_ENV] !== name) return;
  log.warn("failpoint reached: killing the process with SIGKILL", { failpoint: name, ...ctx });
  process.kill(process.pid, "SIGKILL");
}
