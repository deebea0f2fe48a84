/**
 * Trying a listening address, for the `doctor` checks that must tell "free", "taken (by whom?)"
 * and "not allowed" apart.
 */
import type { Server } from "node:net";

/** What binding an address gave. */
export type BindOutcome =
  /** Bound: the server listens (the caller closes it). */
  | { bound: true }
  /** Not bound: the node error code (EADDRINUSE, EACCES, EADDRNOTAVAIL, ...) and message. */
  | { bound: false; code: string; message: string };

/**
 * Make `server` listen on `host`:`port`.
 * @returns whether it listens, or the error code why not; never rejects
 */
export function tryListen(server: Server, port: number, host: string): Promise<BindOutcome> {
  return new Promise((resolve) => {
    const onError = (err: NodeJS.ErrnoException) => resolve({ bound: false, code: err.code ?? "EUNKNOWN", message: err.message });
    server.once("error", onError);
    server.listen(port, host, () => {
      server.off("error", onError);
      resolve({ bound: true });
    });
  });
}

/** Close a listening server. */
export function closeServer(server: Server): Promise<void> {
  return new Promise((resolve) => server.close(() => resolve()));
}

/** The address to connect to for a listener bound to `bindAddress` (a wildcard becomes loopback). */
export function connectAddress(bindAddress: string): string {
  if (bindAddress === "0.0.0.0" || bindAddress === "") return "127.0.0.1";
  if (bindAddress === "::") return "::1";
  return bindAddress;
}
