/**
 * Loopback port allocation for test services.
 */
import { createServer } from "node:net";
import { readFileSync } from "node:fs";

/** Ports handed out by this process, never handed out twice. */
const handedOut = new Set<number>();

/**
 * The kernel's ephemeral port range (`/proc/sys/net/ipv4/ip_local_port_range`), from which it
 * picks the source port of every outgoing connection. Defaults to Linux's 32768–60999.
 */
function ephemeralRange(): [number, number] {
  try {
    const [lo, hi] = readFileSync("/proc/sys/net/ipv4/ip_local_port_range", "utf8").trim().split(/\s+/).map(Number);
    if (lo && hi) return [lo, hi];
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== "ENOENT") throw err;
  }
  return [32768, 60999];
}

function tryBind(port: number): Promise<boolean> {
  return new Promise((resolve, reject) => {
    const srv = createServer();
    srv.unref();
    srv.once("error", (err: NodeJS.ErrnoException) => (err.code === "EADDRINUSE" || err.code === "EACCES" ? resolve(false) : reject(err)));
    srv.listen(port, "127.0.0.1", () => srv.close(() => resolve(true)));
  });
}

/**
 * A TCP port that was free on 127.0.0.1 a moment ago, chosen *below* the kernel's ephemeral
 * range. A port inside that range can be taken between two runs of a service by the source port
 * of any outgoing connection — or by a loopback client that connects to it while nothing listens
 * (a TCP self-connect) — which made a restarted bridge fail with EADDRINUSE.
 * @returns a port in 10000 .. (ephemeral range start − 1)
 * @throws Error when no port could be allocated after 200 tries
 */
export async function freePort(): Promise<number> {
  const [lo] = ephemeralRange();
  const min = 10_000;
  const max = Math.max(min + 1000, lo - 1);
  for (let attempt = 0; attempt < 200; attempt++) {
    const port = min + Math.floor(Math.random() * (max - min));
    if (handedOut.has(port)) continue;
    if (await tryBind(port)) {
      handedOut.add(port);
      return port;
    }
  }
  throw new Error("could not allocate a free loopback port below the ephemeral range");
}
