/**
 * Test harness: a real rspamd (the Debian package's binary and stock configuration) on
 * 127.0.0.1, one per process.
 *
 * It runs in the foreground (`-f`) from a temp dir that holds everything it writes: the
 * stock `/etc/rspamd/rspamd.conf` is read, with `LOCAL_CONFDIR`, `DBDIR`, `RUNDIR` and
 * `LOGDIR` pointed into the temp dir, so nothing under /etc or /var is touched. The local
 * config binds the normal worker and the controller to free loopback ports, disables the
 * proxy worker and the fuzzy_check module (whose upstreams would be resolved with the system
 * resolver at start), logs errors to the console, and points rspamd's own resolver at
 * 127.0.0.1:1 so that no real DNS query leaves the machine (RBL and map look-ups just time out).
 *
 * Start-up takes about 10 s (most of it compiling the public suffix list). If the binary is
 * missing or rspamd does not answer `GET /ping` within 60 s, {@link startRspamd} throws:
 * tests must fail, never skip.
 */
import { spawn, spawnSync } from "node:child_process";
import type { ChildProcess } from "node:child_process";
import { existsSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { delimiter, join } from "node:path";
import { freePort } from "./ports.ts";

/** A running rspamd, shared by every caller in this process. */
export interface TestRspamd {
  /** Base URL of the normal worker, e.g. `http://127.0.0.1:40123` (no trailing slash). */
  url: string;
  /**
   * Release this handle. rspamd is killed (and its temp dir removed) when the last handle
   * is released, and in any case at process exit. Idempotent.
   */
  stop(): Promise<void>;
}

interface Instance {
  url: string;
  /** Terminate rspamd (SIGTERM, then SIGKILL after 5 s) and remove the temp dir. */
  stop(): Promise<void>;
}

/** Longest wait for `GET /ping` to answer `pong`, in ms. */
const START_TIMEOUT_MS = 60_000;
/** How much of rspamd's console output is kept for error messages, in characters. */
const OUTPUT_KEEP = 8_000;

let instancePromise: Promise<Instance> | null = null;
let users = 0;

/**
 * Start rspamd, or share the one this process already runs.
 *
 * @returns the normal worker's base URL and a `stop()` that releases this handle
 * @throws Error "rspamd not found ..." (with the install hint: Debian package `rspamd`) when
 *   there is no `rspamd` binary, or an Error with the tail of rspamd's output when it exits or
 *   does not answer `/ping` within 60 s
 */
export async function startRspamd(): Promise<TestRspamd> {
  if (!instancePromise) {
    const p = launchWithRetries();
    instancePromise = p;
    p.catch(() => {
      if (instancePromise === p) instancePromise = null;
    });
  }
  const instance = await instancePromise;
  users++;
  let released = false;
  return {
    url: instance.url,
    async stop() {
      if (released) return;
      released = true;
      users--;
      if (users === 0 && instancePromise) {
        instancePromise = null;
        await instance.stop();
      }
    },
  };
}

/** Up to 3 attempts, each with new ports, in case a free port was taken in between. */
async function launchWithRetries(): Promise<Instance> {
  const bin = findRspamd();
  if (!bin) {
    throw new Error("rspamd not found: install the Debian package rspamd (/usr/bin/rspamd), or put rspamd on PATH");
  }
  if (!existsSync("/etc/rspamd/rspamd.conf")) {
    throw new Error("rspamd's stock configuration /etc/rspamd/rspamd.conf is missing: (re)install the Debian package rspamd");
  }
  let lastError: unknown;
  for (let attempt = 0; attempt < 3; attempt++) {
    try {
      return await launch(bin);
    } catch (err) {
      lastError = err;
      if (!(err instanceof Error && /address already in use/i.test(err.message))) throw err;
    }
  }
  throw lastError;
}

async function launch(bin: string): Promise<Instance> {
  const dir = mkdtempSync(join(tmpdir(), "meb-rspamd-"));
  const localD = join(dir, "local.d");
  for (const d of [localD, join(dir, "db"), join(dir, "run"), join(dir, "log")]) mkdirSync(d, { recursive: true });
  const normalPort = await freePort();
  let controllerPort = await freePort();
  while (controllerPort === normalPort) controllerPort = await freePort();

  const files: Record<string, string> = {
    "worker-normal.inc": `bind_socket = "127.0.0.1:${normalPort}";\ncount = 1;\n`,
    "worker-controller.inc": `bind_socket = "127.0.0.1:${controllerPort}";\n`,
    "worker-proxy.inc": "enabled = false;\n",
    "logging.inc": 'type = "console";\nlevel = "error";\n',
    "options.inc": 'dns {\n  nameserver = ["127.0.0.1:1"];\n  timeout = 0.2s;\n  retransmits = 1;\n}\n',
    "fuzzy_check.conf": "enabled = false;\n",
  };
  for (const [name, text] of Object.entries(files)) writeFileSync(join(localD, name), text);

  const asRoot = process.getuid?.() === 0;
  const args = [
    "-f",
    ...(asRoot ? ["-u", "root", "-g", "root"] : []),
    "-c", "/etc/rspamd/rspamd.conf",
    "--var", `LOCAL_CONFDIR=${dir}`,
    "--var", `DBDIR=${join(dir, "db")}`,
    "--var", `RUNDIR=${join(dir, "run")}`,
    "--var", `LOGDIR=${join(dir, "log")}`,
  ];
  // detached: rspamd becomes a process group leader, so its workers can be killed with it.
  const child = spawn(bin, args, { cwd: dir, detached: true, stdio: ["ignore", "pipe", "pipe"] });
  let output = "";
  const keep = (d: Buffer): void => {
    output = (output + d.toString()).slice(-OUTPUT_KEEP);
  };
  child.stdout?.on("data", keep);
  child.stderr?.on("data", keep);
  // A forgotten stop() must not keep the test process alive; the exit hook still kills rspamd.
  child.unref();
  (child.stdout as unknown as { unref?: () => void } | null)?.unref?.();
  (child.stderr as unknown as { unref?: () => void } | null)?.unref?.();

  let exited: string | null = null;
  const exitPromise = new Promise<void>((resolve) => {
    child.once("exit", (code, signal) => {
      exited = signal ? `killed by ${signal}` : `exit code ${code}`;
      resolve();
    });
    child.once("error", (err) => {
      exited = `spawn failed: ${err.message}`;
      resolve();
    });
  });

  let cleaned = false;
  const killSync = (): void => {
    if (cleaned) return;
    cleaned = true;
    killGroup(child, "SIGKILL");
    rmSync(dir, { recursive: true, force: true });
  };
  const removeExitHooks = installExitHooks(killSync);

  const url = `http://127.0.0.1:${normalPort}`;
  const tail = (): string => output.trim().split("\n").slice(-30).join("\n");
  const deadline = Date.now() + START_TIMEOUT_MS;
  for (;;) {
    if (exited !== null) {
      removeExitHooks();
      killSync();
      throw new Error(`rspamd did not start (${exited}); last output:\n${tail()}`);
    }
    if (await pingOk(url)) break;
    if (Date.now() > deadline) {
      removeExitHooks();
      killSync();
      throw new Error(`rspamd did not answer GET ${url}/ping within ${START_TIMEOUT_MS} ms; last output:\n${tail()}`);
    }
    await new Promise((r) => setTimeout(r, 250));
  }

  return {
    url,
    async stop() {
      if (cleaned) return;
      removeExitHooks();
      if (exited === null) {
        killGroup(child, "SIGTERM");
        const timer = setTimeout(() => killGroup(child, "SIGKILL"), 5_000);
        await exitPromise;
        clearTimeout(timer);
      }
      killSync(); // reaps any worker left in the group, removes the temp dir
    },
  };
}

/** Send `signal` to rspamd's process group (main process and workers); ignores ESRCH. */
function killGroup(child: ChildProcess, signal: NodeJS.Signals): void {
  if (child.pid === undefined) return;
  try {
    process.kill(-child.pid, signal);
  } catch {
    try {
      child.kill(signal);
    } catch {
      // already gone
    }
  }
}

async function pingOk(url: string): Promise<boolean> {
  try {
    const res = await fetch(`${url}/ping`, { signal: AbortSignal.timeout(2_000) });
    const text = await res.text();
    return res.ok && text.trim() === "pong";
  } catch {
    return false;
  }
}

/** `rspamd` on PATH, else /usr/bin/rspamd or /usr/sbin/rspamd. */
function findRspamd(): string | null {
  const dirs = [...(process.env.PATH ?? "").split(delimiter), "/usr/bin", "/usr/sbin"];
  for (const d of dirs) {
    if (d && existsSync(join(d, "rspamd"))) return join(d, "rspamd");
  }
  const which = spawnSync("sh", ["-c", "command -v rspamd"], { encoding: "utf8" });
  const found = which.stdout?.trim();
  return which.status === 0 && found ? found : null;
}


/** Run `cleanup` at process exit and on SIGINT/SIGTERM; returns a function removing the hooks. */
function installExitHooks(cleanup: () => void): () => void {
  const onExit = (): void => cleanup();
  const onSignal = (sig: NodeJS.Signals): void => {
    cleanup();
    process.removeListener(sig, onSignal);
    process.kill(process.pid, sig);
  };
  process.on("exit", onExit);
  process.on("SIGINT", onSignal);
  process.on("SIGTERM", onSignal);
  return () => {
    process.removeListener("exit", onExit);
    process.removeListener("SIGINT", onSignal);
    process.removeListener("SIGTERM", onSignal);
  };
}
