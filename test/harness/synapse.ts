/**
 * Test harness that runs a real Synapse homeserver as a child process.
 *
 * Each {@link startSynapse} call gets its own temp directory (config, SQLite
 * database, media store, signing key, logs) and its own loopback port.
 * Synapse comes from the virtualenv made by scripts/install-synapse.sh:
 * `$MEB_SYNAPSE_VENV`, else `${MEB_CACHE:-$HOME/.cache/matrix-email-bridge}/synapse-venv`.
 *
 * If Synapse cannot be started, {@link startSynapse} throws: tests fail, they
 * are never skipped.
 */
import { spawn, type ChildProcess } from "node:child_process";
import { createHmac, randomBytes } from "node:crypto";
import { existsSync, openSync, closeSync, readFileSync, rmSync, statSync } from "node:fs";
import { connect } from "node:net";
import { mkdtemp, writeFile, rm } from "node:fs/promises";
import { homedir, tmpdir } from "node:os";
import { join } from "node:path";
import { MatrixTestClient } from "./matrixClient.ts";

/** Options for {@link startSynapse}. */
export interface StartSynapseOptions {
  /** Absolute paths of application service registration YAML files (`app_service_config_files`). */
  registrationFiles: string[];
  /** Homeserver `server_name`; default "localhost". */
  serverName?: string;
  /** How long to wait for `/_matrix/client/versions` to answer, in ms; default 90000. */
  startTimeoutMs?: number;
  /** Extra top-level homeserver.yaml keys, shallow-merged over the harness defaults. */
  extraConfig?: Record<string, unknown>;
  /**
   * Turn on the experimental features appservice end-to-end encryption needs
   * (`experimental_features`: `msc2409_to_device_messages_enabled`,
   * `msc3202_transaction_extensions`; docs/encryption.md); default false, as a stock Synapse.
   */
  e2ee?: boolean;
}

/** The `experimental_features` {@link StartSynapseOptions.e2ee} turns on. */
export const E2EE_EXPERIMENTAL_FEATURES = { msc2409_to_device_messages_enabled: true, msc3202_transaction_extensions: true };

/** Options for {@link SynapseHandle.registerUser}. */
export interface RegisterUserOptions {
  /** Make the user a server admin; default false. */
  admin?: boolean;
  /** Initial display name. */
  displayName?: string;
  /** Password; default random. */
  password?: string;
}

/** A running Synapse started by {@link startSynapse}. */
export interface SynapseHandle {
  /** Base URL, e.g. "http://127.0.0.1:41234" (no trailing slash). */
  url: string;
  /** The homeserver's `server_name`. */
  serverName: string;
  /** TCP port on 127.0.0.1. */
  port: number;
  /** Temp directory holding config, database, media and logs (removed by stop() unless MEB_KEEP_SYNAPSE_DATA=1). */
  dataDir: string;
  /** Path of the generated homeserver.yaml. */
  configFile: string;
  /** Synapse's log file (Python logging, level WARNING unless MEB_SYNAPSE_LOG_LEVEL is set). */
  logFile: string;
  /** Synapse's captured stdout/stderr (startup errors end up here). */
  stdioFile: string;
  /** The `registration_shared_secret` in use. */
  registrationSharedSecret: string;
  /** Time from spawning Synapse until its client API answered, in ms (of the most recent start). */
  readonly startupMs: number;
  /** Whether the Synapse process is currently running (false after stopProcess() or stop()). */
  readonly running: boolean;
  /**
   * Registers a local user via the shared-secret admin API
   * (`/_synapse/admin/v1/register`: GET nonce, POST with HMAC-SHA1 mac) and
   * returns a client logged in as that user. Throws MatrixApiError on failure
   * (e.g. M_USER_IN_USE, or M_EXCLUSIVE... for appservice namespaces).
   */
  registerUser(localpart: string, opts?: RegisterUserOptions): Promise<MatrixTestClient>;
  /** Last `maxBytes` (default 8000) of the log file and stdio capture, for diagnostics. */
  logTail(maxBytes?: number): string;
  /**
   * Stops only the Synapse process, as for a homeserver restart or upgrade:
   * SIGTERM, then SIGKILL after 10 s; resolves once it has exited and
   * 127.0.0.1:`port` refuses connections. Keeps the data dir, config,
   * database, signing key and port. Idempotent (no-op while stopped).
   */
  stopProcess(): Promise<void>;
  /**
   * Starts Synapse again with the same config and data (same server, users,
   * rooms, access tokens, appservice registrations) on the same port, and
   * waits until `/_matrix/client/versions` answers (same start timeout as
   * startSynapse). Retries a few times if the port is briefly still in use.
   * No-op while running. Throws an Error with {@link logTail} on failure,
   * and after stop().
   */
  startProcess(): Promise<void>;
  /** stopProcess(), wait `downMs` (default 0), startProcess(). */
  restart(downMs?: number): Promise<void>;
  /**
   * Stops Synapse if it runs (SIGTERM, then SIGKILL after 10 s) and removes
   * `dataDir` unless MEB_KEEP_SYNAPSE_DATA=1. Works whether the process is
   * running or stopped; idempotent. The handle cannot be restarted afterwards.
   */
  stop(): Promise<void>;
}

/** One per handle, from start until stop(); `child` is the current Synapse process, if any. */
interface LiveEntry {
  child: ChildProcess | undefined;
  dataDir: string;
}

/** Handles not yet stopped; their child is killed (and data dir removed) synchronously if the test process exits without stop(). */
const liveChildren = new Set<LiveEntry>();
let exitHookInstalled = false;

function installExitHook(): void {
  if (exitHookInstalled) return;
  exitHookInstalled = true;
  process.on("exit", () => {
    for (const entry of liveChildren) {
      try {
        entry.child?.kill("SIGKILL");
      } catch {
        /* already gone */
      }
      if (process.env["MEB_KEEP_SYNAPSE_DATA"] !== "1") rmSync(entry.dataDir, { recursive: true, force: true });
    }
  });
}

/**
 * Path of the Synapse virtualenv the harness uses: `$MEB_SYNAPSE_VENV`, else
 * `${MEB_CACHE:-$HOME/.cache/matrix-email-bridge}/synapse-venv`. Does no I/O.
 */
export function synapseVenvPath(): string {
  const explicit = process.env["MEB_SYNAPSE_VENV"];
  if (explicit) return explicit;
  const cache = process.env["MEB_CACHE"] || join(homedir(), ".cache", "matrix-email-bridge");
  return join(cache, "synapse-venv");
}


function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

function tailOf(file: string, maxBytes: number): string {
  try {
    const buf = readFileSync(file);
    const text = buf.subarray(Math.max(0, buf.length - maxBytes)).toString("utf8");
    return text.trim() || "(empty)";
  } catch {
    return "(missing)";
  }
}

/** Size of `file` in bytes, 0 if it does not exist. */
function sizeOf(file: string): number {
  try {
    return statSync(file).size;
  } catch {
    return 0;
  }
}

/** Contents of `file` from byte `offset` on ("" if missing). */
function readFrom(file: string, offset: number): string {
  try {
    return readFileSync(file).subarray(offset).toString("utf8");
  } catch {
    return "";
  }
}

/** Whether something accepts TCP connections on 127.0.0.1:`port` right now. */
function portAcceptsConnections(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const sock = connect({ host: "127.0.0.1", port });
    const done = (accepted: boolean): void => {
      sock.destroy();
      resolve(accepted);
    };
    sock.setTimeout(1000, () => done(false));
    sock.once("connect", () => done(true));
    sock.once("error", () => done(false));
  });
}

/** Waits until 127.0.0.1:`port` refuses connections; throws after `timeoutMs`. */
async function waitPortClosed(port: number, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (await portAcceptsConnections(port)) {
    if (Date.now() > deadline) {
      throw new Error(`port ${port} still accepts connections ${timeoutMs} ms after Synapse exited`);
    }
    await sleep(100);
  }
}

/** Synapse could not bind its port (its own output says "Address already in use"). */
class AddressInUseError extends Error {}

/** One spawned Synapse process. */
interface SynapseProcess {
  child: ChildProcess;
  spawnedAt: number;
  /** Set once the process has exited (or could not be spawned). */
  exited?: { code: number | null; signal: NodeJS.Signals | null };
  spawnError?: Error;
  /** Resolves when the process has exited. */
  exitPromise: Promise<void>;
  /** Log file and stdio output written since this process was spawned. */
  logSinceSpawn(): string;
}

/** Unpadded standard base64 (Matrix "unpadded Base64", spec appendix §"Unpadded Base64"). */
function unpaddedBase64(buf: Buffer): string {
  return buf.toString("base64").replace(/=+$/, "");
}

/** Rate limit that never triggers in tests. */
const NO_LIMIT = { per_second: 100_000, burst_count: 1_000_000 };

/** Builds the homeserver config object (written as JSON, which is valid YAML). */
function buildConfig(p: {
  serverName: string;
  port: number;
  dataDir: string;
  logConfigFile: string;
  signingKeyFile: string;
  secret: string;
  registrationFiles: string[];
  extra: Record<string, unknown>;
}): Record<string, unknown> {
  return {
    server_name: p.serverName,
    public_baseurl: `http://127.0.0.1:${p.port}/`,
    pid_file: join(p.dataDir, "homeserver.pid"),
    listeners: [
      {
        port: p.port,
        bind_addresses: ["127.0.0.1"],
        type: "http",
        tls: false,
        x_forwarded: false,
        resources: [{ names: ["client"], compress: false }],
      },
    ],
    database: { name: "sqlite3", args: { database: join(p.dataDir, "homeserver.db") } },
    log_config: p.logConfigFile,
    media_store_path: join(p.dataDir, "media_store"),
    signing_key_path: p.signingKeyFile,
    registration_shared_secret: p.secret,
    macaroon_secret_key: randomBytes(24).toString("hex"),
    form_secret: randomBytes(24).toString("hex"),
    enable_registration: false,
    report_stats: false,
    suppress_key_server_warning: true,
    trusted_key_servers: [],
    app_service_config_files: p.registrationFiles,
    use_appservice_legacy_authorization: false,
    presence: { enabled: false },
    url_preview_enabled: false,
    enable_metrics: false,
    rc_message: NO_LIMIT,
    rc_registration: NO_LIMIT,
    rc_registration_token_validity: NO_LIMIT,
    rc_login: { address: NO_LIMIT, account: NO_LIMIT, failed_attempts: NO_LIMIT },
    rc_joins: { local: NO_LIMIT, remote: NO_LIMIT },
    rc_joins_per_room: NO_LIMIT,
    rc_invites: { per_room: NO_LIMIT, per_user: NO_LIMIT, per_issuer: NO_LIMIT },
    rc_third_party_invite: NO_LIMIT,
    rc_3pid_validation: NO_LIMIT,
    rc_admin_redaction: NO_LIMIT,
    rc_key_requests: NO_LIMIT,
    rc_media_create: NO_LIMIT,
    rc_presence: { per_user: NO_LIMIT },
    rc_delayed_event_mgmt: NO_LIMIT,
    rc_room_creation: NO_LIMIT,
    rc_reports: NO_LIMIT,
    rc_user_directory: NO_LIMIT,
    rc_profile: NO_LIMIT,
    ...p.extra,
  };
}

/** Python logging dictConfig for Synapse: everything at `level` into `logFile`. */
function buildLogConfig(logFile: string, level: string): Record<string, unknown> {
  return {
    version: 1,
    formatters: {
      precise: { format: "%(asctime)s - %(name)s - %(lineno)d - %(levelname)s - %(request)s - %(message)s" },
    },
    handlers: {
      file: { class: "logging.FileHandler", formatter: "precise", filename: logFile, encoding: "utf8" },
    },
    loggers: { "synapse.storage.SQL": { level: "WARNING" } },
    root: { level, handlers: ["file"] },
    disable_existing_loggers: false,
  };
}

/**
 * Python bootstrap: asks the kernel to SIGTERM Synapse when the Node test
 * process dies (PR_SET_PDEATHSIG, Linux only; ignored elsewhere), then runs
 * `synapse.app.homeserver` exactly like `python -m synapse.app.homeserver`.
 */
const BOOTSTRAP = `
import os, sys, signal, runpy
try:
    import ctypes
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    if os.getppid() != int(os.environ.get("MEB_PARENT_PID", os.getppid())):
        sys.exit("parent already exited")
except (OSError, AttributeError):
    pass
sys.argv = ["synapse.app.homeserver"] + sys.argv[1:]
runpy.run_module("synapse.app.homeserver", run_name="__main__", alter_sys=True)
`;
import { freePort } from "./ports.ts";

/**
 * Starts a fresh Synapse (SQLite, loopback only, no federation, relaxed rate
 * limits, registration only via shared secret) with the given appservice
 * registrations, and waits until `GET /_matrix/client/versions` answers.
 *
 * Throws an Error (including the tail of Synapse's logs) if the venv is
 * missing, Synapse exits early, or it does not answer within
 * `opts.startTimeoutMs` (default 90000 ms). Retries twice on a port clash.
 * Call {@link SynapseHandle.stop} when done (an exit hook kills leftovers).
 */
export async function startSynapse(opts: StartSynapseOptions): Promise<SynapseHandle> {
  const venv = synapseVenvPath();
  const python = join(venv, "bin", "python");
  if (!existsSync(python)) {
    throw new Error(
      `Synapse virtualenv not found: ${python} does not exist. ` +
        `Run "bash scripts/install-synapse.sh" (or set MEB_SYNAPSE_VENV / MEB_CACHE).`,
    );
  }
  for (const f of opts.registrationFiles) {
    if (!existsSync(f)) throw new Error(`startSynapse: appservice registration file not found: ${f}`);
  }
  let lastError: Error | undefined;
  for (let attempt = 0; attempt < 3; attempt++) {
    try {
      return await startOnce(python, opts);
    } catch (err) {
      lastError = err as Error;
      if (!/Address already in use/i.test(lastError.message)) throw lastError;
    }
  }
  throw lastError ?? new Error("startSynapse failed");
}

async function startOnce(python: string, opts: StartSynapseOptions): Promise<SynapseHandle> {
  const serverName = opts.serverName ?? "localhost";
  const timeoutMs = opts.startTimeoutMs ?? 90_000;
  const dataDir = await mkdtemp(join(tmpdir(), "meb-synapse-"));
  const port = await freePort();
  const url = `http://127.0.0.1:${port}`;
  const configFile = join(dataDir, "homeserver.yaml");
  const logConfigFile = join(dataDir, "log.config.yaml");
  const logFile = join(dataDir, "homeserver.log");
  const stdioFile = join(dataDir, "synapse.stdio.log");
  const signingKeyFile = join(dataDir, "signing.key");
  const bootstrapFile = join(dataDir, "run_synapse.py");
  const secret = randomBytes(24).toString("hex");
  const level = process.env["MEB_SYNAPSE_LOG_LEVEL"] || "WARNING";

  await writeFile(
    signingKeyFile,
    `ed25519 a_${randomBytes(3).toString("hex")} ${unpaddedBase64(randomBytes(32))}\n`,
    { mode: 0o600 },
  );
  await writeFile(bootstrapFile, BOOTSTRAP);
  await writeFile(logConfigFile, JSON.stringify(buildLogConfig(logFile, level), null, 2));
  await writeFile(
    configFile,
    JSON.stringify(
      buildConfig({
        serverName,
        port,
        dataDir,
        logConfigFile,
        signingKeyFile,
        secret,
        registrationFiles: opts.registrationFiles,
        extra: { ...(opts.e2ee ? { experimental_features: E2EE_EXPERIMENTAL_FEATURES } : {}), ...opts.extraConfig },
      }),
      null,
      2,
    ),
  );

  const logTail = (maxBytes = 8000): string =>
    `--- ${logFile} (tail) ---\n${tailOf(logFile, maxBytes)}\n--- ${stdioFile} (tail) ---\n${tailOf(stdioFile, maxBytes)}`;

  installExitHook();
  /** Registered with the exit hook from now until stop(); `child` follows restarts. */
  const entry: LiveEntry = { child: undefined, dataDir };
  liveChildren.add(entry);

  /** The current Synapse process, undefined while stopped. */
  let current: SynapseProcess | undefined;
  /** stop() was called: the handle is finished. */
  let stopped = false;
  /** Spawn-to-ready time of the most recent successful start. */
  let startupMs = 0;

  /** Spawns Synapse with the (unchanged) config and tracks it until it exits. */
  const spawnProcess = (): SynapseProcess => {
    const logOffset = sizeOf(logFile);
    const stdioOffset = sizeOf(stdioFile);
    const stdioFd = openSync(stdioFile, "a");
    let child: ChildProcess;
    try {
      child = spawn(python, [bootstrapFile, "-c", configFile], {
        cwd: dataDir,
        stdio: ["ignore", stdioFd, stdioFd],
        env: { ...process.env, PYTHONUNBUFFERED: "1", MEB_PARENT_PID: String(process.pid) },
      });
    } finally {
      closeSync(stdioFd);
    }
    child.unref();
    entry.child = child;
    let markGone!: () => void;
    const proc: SynapseProcess = {
      child,
      spawnedAt: Date.now(),
      exitPromise: new Promise<void>((resolve) => (markGone = resolve)),
      logSinceSpawn: () => `${readFrom(logFile, logOffset)}\n${readFrom(stdioFile, stdioOffset)}`,
    };
    const onGone = (): void => {
      if (entry.child === child) entry.child = undefined;
      markGone();
    };
    child.once("exit", (code, signal) => {
      proc.exited ??= { code, signal };
      onGone();
    });
    child.once("error", (err) => {
      proc.spawnError = err;
      proc.exited ??= { code: null, signal: null };
      onGone();
    });
    return proc;
  };

  /** SIGTERM, then SIGKILL after 10 s; resolves once the process is gone. */
  const terminate = async (proc: SynapseProcess): Promise<void> => {
    if (proc.exited) return;
    proc.child.kill("SIGTERM");
    let timer: NodeJS.Timeout | undefined;
    const gone = await Promise.race([
      proc.exitPromise.then(() => true),
      new Promise<boolean>((resolve) => (timer = setTimeout(() => resolve(false), 10_000))),
    ]);
    clearTimeout(timer);
    if (!gone) {
      proc.child.kill("SIGKILL");
      await proc.exitPromise;
    }
  };

  /**
   * Spawns Synapse and waits until the client API answers. On an early exit
   * throws {@link AddressInUseError} if this process' own output says the
   * port was taken, else an Error with the log tail; on timeout terminates it
   * and throws. `current` is set while the process may be running.
   */
  const launch = async (): Promise<SynapseProcess> => {
    const proc = spawnProcess();
    current = proc;
    for (;;) {
      if (proc.exited) {
        if (current === proc) current = undefined;
        const how = proc.spawnError
          ? `could not be spawned (${proc.spawnError.message})`
          : `exited early (code ${proc.exited.code}, signal ${proc.exited.signal})`;
        if (/Address already in use/i.test(proc.logSinceSpawn())) {
          throw new AddressInUseError(`Synapse ${how}: Address already in use (port ${port})`);
        }
        throw new Error(`Synapse ${how} while starting on port ${port} (data dir ${dataDir}).\n${logTail()}`);
      }
      try {
        const res = await fetch(`${url}/_matrix/client/versions`, { signal: AbortSignal.timeout(2000) });
        await res.body?.cancel();
        if (res.ok && !proc.exited) break;
      } catch {
        /* not listening yet */
      }
      if (!proc.exited && Date.now() - proc.spawnedAt > timeoutMs) {
        await terminate(proc);
        if (current === proc) current = undefined;
        throw new Error(
          `Synapse did not answer ${url}/_matrix/client/versions within ${timeoutMs} ms ` +
            `(data dir ${dataDir}).\n${logTail()}`,
        );
      }
      await sleep(200);
    }
    startupMs = Date.now() - proc.spawnedAt;
    return proc;
  };

  /** Serializes stopProcess/startProcess so concurrent calls cannot interleave. */
  let queue: Promise<unknown> = Promise.resolve();
  const serialized = <T>(fn: () => Promise<T>): Promise<T> => {
    const run = queue.then(fn, fn);
    queue = run.catch(() => undefined);
    return run;
  };

  const stopProcessNow = async (): Promise<void> => {
    const proc = current;
    if (proc) {
      await terminate(proc);
      if (current === proc) current = undefined;
    }
    await waitPortClosed(port, 10_000);
  };

  const stopProcess = (): Promise<void> =>
    serialized(async () => {
      if (!stopped) await stopProcessNow();
    });

  const startProcess = (): Promise<void> =>
    serialized(async () => {
      if (stopped) throw new Error(`startProcess: Synapse on port ${port} was stopped with stop()`);
      if (current && !current.exited) return;
      const attempts = 6;
      for (let attempt = 1; ; attempt++) {
        if (stopped) throw new Error(`startProcess: Synapse on port ${port} was stopped with stop()`);
        try {
          await launch();
          return;
        } catch (err) {
          if (!(err instanceof AddressInUseError) || attempt >= attempts || stopped) {
            if (err instanceof AddressInUseError) {
              throw new Error(`${err.message}; gave up after ${attempt} attempts.\n${logTail()}`, { cause: err });
            }
            throw err;
          }
          await sleep(250 * attempt);
        }
      }
    });

  const restart = async (downMs = 0): Promise<void> => {
    await stopProcess();
    if (downMs > 0) await sleep(downMs);
    await startProcess();
  };

  const stop = async (): Promise<void> => {
    if (stopped) return;
    stopped = true;
    // Kill whatever runs now (this also aborts a pending startProcess), then
    // once queued operations have settled, whatever they may have started.
    if (current) await terminate(current);
    await queue;
    if (current) await terminate(current);
    current = undefined;
    liveChildren.delete(entry);
    if (process.env["MEB_KEEP_SYNAPSE_DATA"] !== "1") await rm(dataDir, { recursive: true, force: true });
  };

  // Initial start. A port clash discards this data dir (startSynapse retries
  // with a fresh port); other failures keep it for inspection.
  try {
    await launch();
  } catch (err) {
    liveChildren.delete(entry);
    if (err instanceof AddressInUseError) await rm(dataDir, { recursive: true, force: true });
    throw err;
  }

  const registerUser = async (localpart: string, ropts: RegisterUserOptions = {}): Promise<MatrixTestClient> => {
    const anon = new MatrixTestClient({ baseUrl: url, userId: "", accessToken: "" });
    const path = "/_synapse/admin/v1/register";
    const { nonce } = await anon.request<{ nonce: string }>("GET", path, undefined, { noAuth: true });
    const password = ropts.password ?? randomBytes(16).toString("hex");
    const admin = ropts.admin ?? false;
    const mac = createHmac("sha1", secret)
      .update(`${nonce}\0${localpart}\0${password}\0${admin ? "admin" : "notadmin"}`)
      .digest("hex");
    const res = await anon.request<{ user_id: string; access_token: string }>(
      "POST",
      path,
      {
        nonce,
        username: localpart,
        password,
        admin,
        mac,
        ...(ropts.displayName !== undefined ? { displayname: ropts.displayName } : {}),
      },
      { noAuth: true },
    );
    return new MatrixTestClient({ baseUrl: url, userId: res.user_id, accessToken: res.access_token });
  };

  return {
    url,
    serverName,
    port,
    dataDir,
    configFile,
    logFile,
    stdioFile,
    registrationSharedSecret: secret,
    get startupMs() {
      return startupMs;
    },
    get running() {
      return current !== undefined && !current.exited;
    },
    registerUser,
    logTail,
    stopProcess,
    startProcess,
    restart,
    stop,
  };
}
