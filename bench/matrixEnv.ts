/**
 * The Matrix side of the benchmark: a real Synapse, the loopback DNS server and the SMTP sink
 * from test/e2e/env.ts `prepareEnv` (SQLite store), and the bridge in a process of its own
 * (`node <build>/src/main.js start -c <config>`), so that its RSS can be read from /proc.
 *
 * The bridge runs compiled, as the Dockerfile ships it (`npm run build`, here into
 * `node_modules/.cache/`): Node's type stripping of the sources costs about 17 MiB of RSS that a production
 * bridge does not pay. `BENCH_BRIDGE_FROM=src` runs `src/main.ts` instead. It gets the node flags
 * it ships with (`--max-semi-space-size=4 --expose-gc`), then `BENCH_BRIDGE_NODE_ARGS`, and the environment it
 * ships with (`MALLOC_MMAP_THRESHOLD_=65536 MALLOC_ARENA_MAX=1`, unless the bench's own environment sets them).
 *
 * Config changes from prepareEnv's (all through its `config` option):
 * - smtp: the per-IP and per-sender-domain message rate limits off (all load comes from
 *   127.0.0.1 and example.org), 100 connections per IP, max_message_bytes 64 MiB (a 25 MiB
 *   attachment is ~34 MB in base64);
 * - outbound: the per-user abuse limits off (200 mails per hour would stop the bench), and
 *   batching off (`batch_delay_ms` 0: the latency figure is the bridge's, not the 5 s wait);
 * - dns: the production cache (300 s) instead of prepareEnv's none;
 * - logging: level info (the production default), JSON, into a file.
 * Mail to example.org goes to the sink through prepareEnv's `outbound.static_routes`.
 */
import { execFileSync, spawn, type ChildProcess } from "node:child_process";
import { closeSync, openSync, readFileSync, rmSync } from "node:fs";
import { join } from "node:path";
import { parse } from "yaml";
import { prepareEnv, type PreparedEnv } from "../test/e2e/env.ts";
import type { MatrixTestClient } from "../test/harness/matrixClient.ts";
import { progress, sleep } from "./util.ts";

const REPO = new URL("../", import.meta.url).pathname;
/** Node flags the bridge is shipped with (the Dockerfile's ENTRYPOINT, `bin/matrix-email-bridge.js`'s `#!` line). */
const SHIPPED_NODE_FLAGS = ["--max-semi-space-size=4", "--expose-gc"];
/** The environment the bridge ships with (bin/matrix-email-bridge.js, Dockerfile; docs/operations.md "Memory"). */
const SHIPPED_ENV = { MALLOC_MMAP_THRESHOLD_: "65536", MALLOC_ARENA_MAX: "1" };

let builtMain: string | null = null;

/**
 * The bridge's entry point: the sources with `BENCH_BRIDGE_FROM=src`, else a build of them
 * (`tsc -p tsconfig.build.json` into `node_modules/.cache/meb-bench-build/`, where the packages
 * resolve, once per bench run, ~5 s).
 * @throws Error when tsc fails
 */
function bridgeMain(): string {
  if (process.env.BENCH_BRIDGE_FROM === "src") return join(REPO, "src", "main.ts");
  if (builtMain) return builtMain;
  const outDir = join(REPO, "node_modules", ".cache", "meb-bench-build");
  rmSync(outDir, { recursive: true, force: true });
  const t0 = Date.now();
  execFileSync(process.execPath, [join(REPO, "node_modules", "typescript", "bin", "tsc"), "-p", join(REPO, "tsconfig.build.json"), "--outDir", outDir], { cwd: REPO, stdio: "inherit" });
  progress(`[bridge] compiled into ${outDir} in ${((Date.now() - t0) / 1000).toFixed(1)} s (BENCH_BRIDGE_FROM=src runs the sources)`);
  builtMain = join(outDir, "src", "main.js");
  return builtMain;
}

/** The bridge running as a child process. */
export interface BridgeProcess {
  pid: number;
  /** The SMTP listener's port (from the "bridge started" log line). */
  smtpPort: number;
  /** From spawn until "bridge started" was logged, ms. */
  startMs: number;
  /** The bridge's log (JSON lines, level info). */
  logFile: string;
  /** Last lines of the log, for diagnostics. */
  logTail(lines?: number): string;
  /** Warnings and errors logged so far (count). */
  problems(): { warn: number; error: number; first: string[] };
  /** SIGTERM; SIGKILL after 15 s. Resolves once it has exited. Idempotent. */
  stop(): Promise<void>;
}

/** Everything parts 2-4 run against. */
export interface MatrixBench {
  env: PreparedEnv;
  /** The bridge process running now (a new one after {@link restartBridge}). */
  bridge: BridgeProcess;
  /**
   * Stop the bridge (SIGTERM), run `whileDown`, start a new bridge process on the same config,
   * store and log.
   * @returns the new process (also in `bridge`)
   */
  restartBridge(whileDown: () => Promise<void>): Promise<BridgeProcess>;
  /** The appservice's as_token (from the registration file). */
  asToken: string;
  /** A local user (allowed to bridge) who watches and sends. */
  alice: MatrixTestClient;
  /** Stop the bridge, then Synapse, the sink and the DNS server. */
  stop(): Promise<void>;
}

function readLog(file: string): string {
  try {
    return readFileSync(file, "utf8");
  } catch {
    return "";
  }
}

/**
 * Start the bridge from `configFile` in its own node process and wait for "bridge started".
 * @param configFile the bridge's config (logging must be JSON)
 * @param logFile where its stderr/stdout go
 * @throws Error with the log tail when it exits or is not up within 90 s
 */
export async function spawnBridge(configFile: string, logFile: string): Promise<BridgeProcess> {
  const main = bridgeMain();
  const fd = openSync(logFile, "a");
  // A restart appends to the same log: only lines after this offset are this process's.
  const from = readLog(logFile).length;
  const { NODE_TEST_CONTEXT: _, ...inherited } = process.env;
  const env = { ...SHIPPED_ENV, ...inherited };
  const t0 = Date.now();
  let child: ChildProcess;
  try {
    // BENCH_BRIDGE_NODE_ARGS: extra node flags for the bridge, e.g. `--cpu-prof --cpu-prof-dir=/tmp/prof`.
    // The flags the bridge ships with (Dockerfile, bin/matrix-email-bridge.js; docs/operations.md "Memory").
    const nodeArgs = [...SHIPPED_NODE_FLAGS, ...(process.env.BENCH_BRIDGE_NODE_ARGS ?? "").split(/\s+/).filter(Boolean)];
    child = spawn(process.execPath, [...nodeArgs, main, "start", "-c", configFile], { cwd: REPO, stdio: ["ignore", fd, fd], env });
  } finally {
    closeSync(fd);
  }
  let exited: string | null = null;
  const exit = new Promise<void>((resolve) =>
    child.once("exit", (code, signal) => {
      exited = `exited (code ${code}, signal ${signal})`;
      resolve();
    }),
  );
  const killAtExit = (): void => {
    child.kill("SIGKILL");
  };
  process.on("exit", killAtExit);
  const logTail = (lines = 20): string => readLog(logFile).trimEnd().split("\n").slice(-lines).join("\n");

  let smtpPort = 0;
  const deadline = t0 + 90_000;
  while (!smtpPort) {
    if (exited) throw new Error(`the bridge ${exited} before it started; log:\n${logTail()}`);
    if (Date.now() > deadline) {
      child.kill("SIGKILL");
      throw new Error(`the bridge did not log "bridge started" within 90 s; log:\n${logTail()}`);
    }
    for (const line of readLog(logFile).slice(from).split("\n")) {
      if (!line.includes('"bridge started"')) continue;
      const m = /:(\d+)$/.exec(String((JSON.parse(line) as { smtp?: unknown }).smtp ?? ""));
      if (m) smtpPort = Number(m[1]);
    }
    if (!smtpPort) await sleep(50);
  }
  const startMs = Date.now() - t0;
  let stopping: Promise<void> | null = null;
  return {
    pid: child.pid!,
    smtpPort,
    startMs,
    logFile,
    logTail,
    problems() {
      let warn = 0;
      let error = 0;
      const first: string[] = [];
      for (const line of readLog(logFile).split("\n")) {
        const level = /"level":"(warn|error)"/.exec(line)?.[1];
        if (!level) continue;
        if (level === "warn") warn++;
        else error++;
        if (first.length < 3) first.push(line.slice(0, 300));
      }
      return { warn, error, first };
    },
    stop() {
      stopping ??= (async () => {
        if (!exited) {
          child.kill("SIGTERM");
          const timer = setTimeout(() => child.kill("SIGKILL"), 15_000);
          await exit;
          clearTimeout(timer);
        }
        process.off("exit", killAtExit);
      })();
      return stopping;
    },
  };
}

/**
 * Start Synapse, DNS and the sink (prepareEnv, SQLite store), then the bridge as a child
 * process, and register the user `alice`.
 * @throws Error when Synapse or the bridge do not start (what was started is stopped)
 */
export async function startMatrixBench(): Promise<MatrixBench> {
  const t0 = Date.now();
  const env = await prepareEnv("sqlite", {
    logLevel: "info",
    config: {
      smtp: {
        max_message_bytes: 64 * 1024 * 1024,
        max_connections_per_ip: 100,
        max_messages_per_ip: 0,
        max_messages_per_sender_domain: 0,
      },
      outbound: { max_mails_per_user_per_hour: 0, max_new_recipients_per_user_per_day: 0, batch_delay_ms: 0 },
      dns: { cache_ttl_ms: 300_000 },
      logging: { format: "json" },
    },
  });
  progress(`[matrix] Synapse up in ${(env.synapse.startupMs / 1000).toFixed(1)} s (${env.synapse.url}); sink on ${env.sink.port}, DNS ${env.dns.nameserver}`);
  let bridge: BridgeProcess;
  try {
    bridge = await spawnBridge(env.configFile, join(env.dir, "bridge.log"));
  } catch (err) {
    await env.stop();
    throw err;
  }
  env.smtpPort = bridge.smtpPort;
  progress(`[matrix] bridge process ${bridge.pid} up in ${(bridge.startMs / 1000).toFixed(1)} s, SMTP on ${bridge.smtpPort} (environment ready after ${((Date.now() - t0) / 1000).toFixed(0)} s)`);
  const registration = parse(readFileSync(env.config.appservice.registration_file, "utf8")) as { as_token: string };
  let alice: MatrixTestClient;
  try {
    alice = await env.synapse.registerUser("alice", { displayName: "Alice Bench" });
  } catch (err) {
    await bridge.stop();
    await env.stop();
    throw err;
  }
  const mb: MatrixBench = {
    env,
    bridge,
    asToken: registration.as_token,
    alice,
    async restartBridge(whileDown) {
      await this.bridge.stop();
      await whileDown();
      this.bridge = await spawnBridge(env.configFile, this.bridge.logFile);
      env.smtpPort = this.bridge.smtpPort;
      return this.bridge;
    },
    async stop() {
      const p = this.bridge.problems();
      if (p.warn || p.error) progress(`[matrix] the bridge logged ${p.warn} warnings and ${p.error} errors, e.g.:\n  ${p.first.join("\n  ")}`);
      await this.bridge.stop();
      await env.stop();
    },
  };
  return mb;
}
