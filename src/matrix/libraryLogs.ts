/**
 * Routes the logs of matrix-appservice-bridge and matrix-bot-sdk (winston, inside the
 * library) into the bridge's one structured logger.
 *
 * Failed HTTP requests to the homeserver are logged by the library *and* surface as
 * errors in our code, which logs them once with context; so the library's own lines
 * for them (module MatrixHttpClient) go to debug. Other library warnings and errors keep
 * their level.
 */
import { Writable } from "node:stream";
import type { LogLevel } from "../util/logger.ts";
import { getLogger } from "../util/logger.ts";

const LEVELS: Record<string, LogLevel> = { error: "error", warn: "warn", info: "debug", verbose: "debug", debug: "debug", silly: "debug" };

/**
 * Configure matrix-appservice-bridge's root logger to write JSON lines into our logger.
 * @param mabLogger the `Logger` class of matrix-appservice-bridge
 */
export function routeLibraryLogs(mabLogger: { root: { configureLogging(cfg: object, stream?: NodeJS.WritableStream): void } }): void {
  const log = getLogger("matrix/lib");
  let pending = "";
  const stream = new Writable({
    write(chunk: Buffer, _enc, done) {
      pending += chunk.toString("utf8");
      let nl: number;
      while ((nl = pending.indexOf("\n")) >= 0) {
        const line = pending.slice(0, nl);
        pending = pending.slice(nl + 1);
        if (line.trim()) forward(line);
      }
      done();
    },
  });
  const forward = (line: string) => {
    let entry: { level?: string; module?: string; message?: unknown; requestId?: string };
    try {
      entry = JSON.parse(line) as typeof entry;
    } catch {
      log.debug("library log line", { line });
      return;
    }
    const module = entry.module ?? "library";
    let level = LEVELS[entry.level ?? "info"] ?? "debug";
    if (module === "MatrixHttpClient") level = "debug";
    log.log(level, "library log", { library: module, requestId: entry.requestId, detail: entry.message });
  };
  mabLogger.root.configureLogging({ console: "off", json: true }, stream);
}
