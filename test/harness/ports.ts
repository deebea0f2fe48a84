/**
 * Loopback port allocation for test services.
 */
import { createServer } from "node:net";

/**
 * A TCP port that was free on 127.0.0.1 a moment ago (bind to port 0, read it, close).
 * Another process may take it before the caller binds it; harnesses retry on that.
 * @throws Error when no port could be allocated
 */
export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = createServer();
    srv.unref();
    srv.on("error", reject);
    srv.listen(0, "127.0.0.1", () => {
      const addr = srv.address();
      const port = typeof addr === "object" && addr ? addr.port : 0;
      srv.close(() => (port ? resolve(port) : reject(new Error("could not allocate a port"))));
    });
  });
}
