/**
 * Binding an smtp-server instance (the MX listener and the submission listener share this).
 */
import type { AddressInfo } from "node:net";
import type { SMTPServer } from "smtp-server";

/**
 * Listen on `bindAddress:port` and resolve once bound.
 * @param port the TCP port; 0 picks a free one
 * @returns the port actually bound
 * @throws the bind error (e.g. EADDRINUSE, EACCES) when the port cannot be bound
 */
export async function listenSmtp(server: SMTPServer, bindAddress: string, port: number): Promise<number> {
  await new Promise<void>((resolve, reject) => {
    const onError = (err: Error): void => reject(err);
    server.server.once("error", onError);
    server.listen(port, bindAddress, () => {
      server.server.off("error", onError);
      resolve();
    });
  });
  return (server.server.address() as AddressInfo).port;
}
