/**
 * Test harness: a fresh, empty PostgreSQL database per call.
 *
 * With `MEB_TEST_PG_URL` set, databases are created in (and dropped from) that server.
 * Otherwise one throwaway cluster per process is started from the local PostgreSQL
 * binaries (via `runuser -u postgres` when running as root) and stopped at process exit.
 * Without either, startPostgres throws: tests must fail, never skip.
 */
import { spawn, spawnSync } from "node:child_process";
import { chownSync, existsSync, mkdtempSync, readdirSync, rmSync } from "node:fs";
import { tmpdir, userInfo } from "node:os";
import { delimiter, join } from "node:path";
import pg from "pg";
import { freePort } from "./ports.ts";

/** A fresh database; `stop` drops it. */
export interface TestPostgres {
  /** `postgres://` URL of the new, empty database. */
  url: string;
  /** Drop the database (close your connections first; remaining ones are terminated). */
  stop(): Promise<void>;
}

interface Cluster {
  /** URL of the maintenance database (`postgres`), where test databases are created. */
  adminUrl: string;
  /** Synchronous shutdown and cleanup, for process exit. */
  stopSync(): void;
}

let clusterPromise: Promise<Cluster> | null = null;
let counter = 0;

/**
 * Create a fresh, empty PostgreSQL database.
 * @returns its URL and a `stop()` that drops it
 * @throws Error "PostgreSQL not found: ..." when neither MEB_TEST_PG_URL nor local binaries exist
 * @throws Error with the server log if the throwaway cluster does not start
 */
export async function startPostgres(): Promise<TestPostgres> {
  const cluster = await getCluster();
  const name = `meb_test_${process.pid}_${++counter}_${Math.random().toString(36).slice(2, 8)}`;
  await withAdmin(cluster.adminUrl, (c) => c.query(`CREATE DATABASE ${name}`));
  const url = new URL(cluster.adminUrl);
  url.pathname = "/" + name;
  let stopped = false;
  return {
    url: url.toString(),
    async stop() {
      if (stopped) return;
      stopped = true;
      await withAdmin(cluster.adminUrl, async (c) => {
        try {
          await c.query(`DROP DATABASE IF EXISTS ${name} WITH (FORCE)`);
        } catch {
          await c.query(`DROP DATABASE IF EXISTS ${name}`); // server older than 13
        }
      });
    },
  };
}

/**
 * Stop this process's throwaway cluster now (it is also stopped at exit). No-op with MEB_TEST_PG_URL.
 */
export async function stopPostgresCluster(): Promise<void> {
  const p = clusterPromise;
  clusterPromise = null;
  if (p) (await p.catch(() => null))?.stopSync();
}

async function withAdmin<T>(adminUrl: string, fn: (c: pg.Client) => Promise<T>): Promise<T> {
  const client = new pg.Client({ connectionString: adminUrl });
  await client.connect();
  try {
    return await fn(client);
  } finally {
    await client.end();
  }
}

function getCluster(): Promise<Cluster> {
  if (!clusterPromise) {
    clusterPromise = createCluster();
    clusterPromise.catch(() => {
      clusterPromise = null;
    });
  }
  return clusterPromise;
}

async function createCluster(): Promise<Cluster> {
  const external = process.env.MEB_TEST_PG_URL;
  if (external) return { adminUrl: external, stopSync: () => undefined };

  const bin = findPgBin();
  if (!bin) {
    throw new Error(
      "PostgreSQL not found: install the Debian package postgresql (initdb/pg_ctl under /usr/lib/postgresql/*/bin) or set MEB_TEST_PG_URL",
    );
  }
  const asRoot = process.getuid?.() === 0;
  const dir = mkdtempSync(join(tmpdir(), "meb-pg-"));
  const data = join(dir, "data");
  const logFile = join(dir, "server.log");
  const superuser = asRoot ? "postgres" : userInfo().username;
  if (asRoot) chownSync(dir, pgUid(), pgGid());

  const run = (args: string[]): Promise<{ code: number | null; output: string }> =>
    new Promise((resolve, reject) => {
      const [cmd, ...rest] = asRoot ? ["runuser", "-u", "postgres", "--", ...args] : args;
      const child = spawn(cmd!, rest, { cwd: dir, stdio: ["ignore", "pipe", "pipe"] });
      let output = "";
      child.stdout.on("data", (d: Buffer) => (output += d.toString()));
      child.stderr.on("data", (d: Buffer) => (output += d.toString()));
      child.on("error", reject);
      child.on("close", (code) => resolve({ code, output }));
    });
  const cleanup = (): void => {
    if (existsSync(join(data, "postmaster.pid"))) {
      const args = [join(bin, "pg_ctl"), "stop", "-D", data, "-m", "immediate", "-w"];
      const [cmd, ...rest] = asRoot ? ["runuser", "-u", "postgres", "--", ...args] : args;
      spawnSync(cmd!, rest, { cwd: dir, stdio: "ignore" });
    }
    rmSync(dir, { recursive: true, force: true });
  };

  try {
    const init = await run([
      join(bin, "initdb"), "-D", data, "-U", superuser, "-A", "trust", "-E", "UTF8", "--locale=C", "--no-sync",
    ]);
    if (init.code !== 0) throw new Error(`initdb failed (exit ${init.code}):\n${init.output}`);

    let lastError = "";
    for (let attempt = 0; attempt < 3; attempt++) {
      const port = await freePort();
      const opts = `-c listen_addresses=127.0.0.1 -p ${port} -c unix_socket_directories=${dir} -c fsync=off -c full_page_writes=off -c synchronous_commit=off`;
      const start = await run([join(bin, "pg_ctl"), "start", "-D", data, "-l", logFile, "-w", "-t", "60", "-o", opts]);
      if (start.code === 0) {
        const adminUrl = `postgres://${encodeURIComponent(superuser)}@127.0.0.1:${port}/postgres`;
        await waitForConnections(adminUrl);
        installExitHooks(cleanup);
        return { adminUrl, stopSync: cleanup };
      }
      lastError = start.output + "\n" + readLog(logFile);
    }
    throw new Error(`PostgreSQL test cluster did not start:\n${lastError}`);
  } catch (err) {
    cleanup();
    throw err;
  }
}

/** The newest `/usr/lib/postgresql/<v>/bin` with initdb, else a PATH directory holding initdb and pg_ctl. */
function findPgBin(): string | null {
  const root = "/usr/lib/postgresql";
  if (existsSync(root)) {
    const versions = readdirSync(root)
      .filter((v) => existsSync(join(root, v, "bin", "initdb")) && existsSync(join(root, v, "bin", "pg_ctl")))
      .sort((a, b) => Number.parseFloat(b) - Number.parseFloat(a));
    if (versions[0]) return join(root, versions[0], "bin");
  }
  for (const d of (process.env.PATH ?? "").split(delimiter)) {
    if (d && existsSync(join(d, "initdb")) && existsSync(join(d, "pg_ctl"))) return d;
  }
  return null;
}

function idOf(flag: "-u" | "-g"): number {
  const res = spawnSync("id", [flag, "postgres"], { encoding: "utf8" });
  const n = Number.parseInt(res.stdout ?? "", 10);
  if (res.status !== 0 || Number.isNaN(n)) {
    throw new Error("running as root, but there is no 'postgres' system user to run initdb as (install the Debian package postgresql)");
  }
  return n;
}
const pgUid = (): number => idOf("-u");
const pgGid = (): number => idOf("-g");


async function waitForConnections(adminUrl: string): Promise<void> {
  const deadline = Date.now() + 30_000;
  for (;;) {
    try {
      await withAdmin(adminUrl, (c) => c.query("SELECT 1"));
      return;
    } catch (err) {
      if (Date.now() > deadline) throw err;
      await new Promise((r) => setTimeout(r, 100));
    }
  }
}

function readLog(file: string): string {
  try {
    return spawnSync("tail", ["-n", "30", file], { encoding: "utf8" }).stdout ?? "";
  } catch {
    return "";
  }
}

function installExitHooks(cleanup: () => void): void {
  let done = false;
  const once = (): void => {
    if (!done) {
      done = true;
      cleanup();
    }
  };
  process.once("exit", once);
  for (const sig of ["SIGINT", "SIGTERM"] as const) {
    process.once(sig, () => {
      once();
      process.kill(process.pid, sig);
    });
  }
}
